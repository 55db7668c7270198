#!/usr/bin/env bash
# Benchmark: what Prometheus metrics cost. Two daemons on the local backend,
# side by side in one run: `[metrics] listen = "off"` and metrics on (and
# scraped every 5 s, as Prometheus would); each with a FUSE mount and a
# volume over NBD. Prints on/off ratios (1.00 = free; the target is at
# most 3 % slower).
#
#   scripts/bench/metrics.sh [ROUNDS]     (default 5; run as root)
#
# Workloads, each on both daemons in turn within a round:
#   small1     10,000 files of 4 KiB created by 1 process through FUSE, files/s
#   fuse-randw fio, 4 KiB random writes to a 1 GiB file for 20 s, IOPS
#   nbd-randw  fio's nbd engine, 4 KiB random writes at QD32 for 20 s, IOPS
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-5}
BASE=${BENCH_DIR:-/var/tmp}
WORK=$(mktemp -d "$BASE/storfs-bench-metrics.XXXXXX")
BIN=target/release/storfs
SIDES="off on"
METRICS=127.0.0.1:20629

[ "$(id -u)" -eq 0 ] || { echo "run as root (mounts and drops caches)" >&2; exit 1; }
command -v fio >/dev/null || { echo "fio is required (apt install fio)" >&2; exit 1; }
command -v curl >/dev/null || { echo "curl is required (apt install curl)" >&2; exit 1; }
cargo build --release --quiet

PIDS=()
cleanup() {
  for s in $SIDES; do umount -l "$WORK/$s/mnt" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

nbd_port() { [ "$1" = off ] && echo 20620 || echo 20621; }
for s in $SIDES; do
  mkdir -p "$WORK/$s/mnt"
  listen=off
  [ "$s" = on ] && listen=$METRICS
  printf '%s\n' "data_dir = \"$WORK/$s/data\"" "[control]" "socket = \"$WORK/$s/storfs.sock\"" \
    "[metrics]" "listen = \"$listen\"" "[nfs]" "enabled = false" "[nbd]" "listen = \"127.0.0.1:$(nbd_port "$s")\"" \
    > "$WORK/$s/storfs.toml"
  "$BIN" --config "$WORK/$s/storfs.toml" serve 2>"$WORK/$s/daemon.log" &
  PIDS+=($!)
  for _ in $(seq 100); do "$BIN" --socket "$WORK/$s/storfs.sock" status >/dev/null 2>&1 && break; sleep 0.1; done
  "$BIN" --socket "$WORK/$s/storfs.sock" mount "$WORK/$s/mnt" >/dev/null
  "$BIN" --socket "$WORK/$s/storfs.sock" volume create vol --size 1GiB >/dev/null
done
# The scraper, as Prometheus would.
( while sleep 5; do curl -s "http://$METRICS/metrics" > /dev/null || true; done ) &
PIDS+=($!)

cli() { local s=$1; shift; "$BIN" --socket "$WORK/$s/storfs.sock" "$@"; }
settle() { cli "$1" flush; sync; echo 3 > /proc/sys/vm/drop_caches; }

. scripts/bench/fio.sh

nbd_randw() { # SIDE → IOPS
  fio --name=b --ioengine=nbd --uri="nbd://127.0.0.1:$(nbd_port "$1")/vol" --size=1G --rw=randwrite --bs=4k \
    --iodepth=32 --time_based --runtime=20 --end_fsync=1 --output-format=json > "$WORK/fio.json"
  python3 - "$WORK/fio.json" <<'EOP'
import json, sys
text = open(sys.argv[1]).read()
print(f'{json.loads(text[text.index("{"):])["jobs"][0]["write"]["iops"]:.0f}')
EOP
}

declare -A R
for round in $(seq "$ROUNDS"); do
  for s in $SIDES; do
    echo "== round $round: metrics $s" >&2
    rm -rf "${WORK:?}/$s/mnt/"*
    settle "$s"
    R[$s.small1]+="$(small_files "$WORK/$s/mnt/s1" 1) "
    settle "$s"
    R[$s.fuserandw]+="$(fio_run "$WORK/$s/mnt" iops --name=rand --rw=randwrite --bs=4k --size=1G --time_based --runtime=20 --end_fsync=1) "
    settle "$s"
    R[$s.nbdrandw]+="$(nbd_randw "$s") "
  done
done

. scripts/bench/table.sh
printf '\nmedians of %s rounds\n' "$ROUNDS"
printf '%-42s %11s %10s %7s   all runs\n' workload "metrics off" "on" "on/off"
for k in small1 fuserandw nbdrandw; do
  case $k in
    small1) label="create 10k x 4 KiB, 1 process (files/s)" ;;
    fuserandw) label="FUSE rand write 4 KiB (IOPS)" ;;
    nbdrandw) label="NBD rand write 4 KiB QD32 (IOPS)" ;;
  esac
  o=$(median "${R[off.$k]}"); n=$(median "${R[on.$k]}")
  printf '%-42s %11s %10s %7s   off: %s on: %s\n' "$label" "$o" "$n" "$(ratio "$n" "$o")" "${R[off.$k]}" "${R[on.$k]}"
done
