#!/usr/bin/env bash
# Benchmark: storfs's NBD server against qemu-nbd serving a raw file on the
# same disk, both driven by fio's nbd engine from this host, side by side in
# one run, printing storfs/qemu-nbd ratios.
#
#   scripts/bench/nbd.sh [ROUNDS] [SIZE_MIB]     (default 3 rounds, 2048 MiB; run as root)
#
# Each round starts both servers on fresh data and runs, against each:
# 1 MiB sequential write (end fsync), 1 MiB sequential read (page cache
# dropped first; storfs flushed to packs first), 4 KiB random write and
# 4 KiB random read at queue depth 32 for 20 s each (random write ends with
# a flush). The table shows medians.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-3}
SIZE=${2:-2048}
BASE=${BENCH_DIR:-/var/tmp}
WORK=$(mktemp -d "$BASE/storfs-nbdbench.XXXXXX")
BIN=target/release/storfs

[ "$(id -u)" -eq 0 ] || { echo "run as root (drops caches)" >&2; exit 1; }
command -v qemu-nbd >/dev/null || { echo "qemu-nbd is required (apt install qemu-utils)" >&2; exit 1; }
fio --enghelp 2>/dev/null | grep -qw nbd || { echo "fio with the nbd engine is required" >&2; exit 1; }
cargo build --release --quiet

cleanup() {
  [ -n "${SPID:-}" ] && kill "$SPID" 2>/dev/null && wait "$SPID" 2>/dev/null || true
  [ -n "${QPID:-}" ] && kill "$QPID" 2>/dev/null && wait "$QPID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

start_storfs() {
  rm -rf "$WORK/storfs"
  mkdir -p "$WORK/storfs"
  cat > "$WORK/storfs/storfs.toml" <<EOC
data_dir = "$WORK/storfs/data"
[control]
socket = "$WORK/storfs/storfs.sock"
[nfs]
enabled = false
[nbd]
listen = "127.0.0.1:20610"
EOC
  "$BIN" --config "$WORK/storfs/storfs.toml" serve 2>"$WORK/storfs/daemon.log" &
  SPID=$!
  for _ in $(seq 100); do "$BIN" --socket "$WORK/storfs/storfs.sock" status >/dev/null 2>&1 && break; sleep 0.1; done
  "$BIN" --socket "$WORK/storfs/storfs.sock" volume create vol --size "${SIZE}MiB" >/dev/null
}

start_qemu() {
  rm -f "$WORK/vol.raw"
  truncate -s "${SIZE}M" "$WORK/vol.raw"
  qemu-nbd -f raw -x vol -b 127.0.0.1 -p 20611 --persistent --shared=8 "$WORK/vol.raw" &
  QPID=$!
  for _ in $(seq 100); do nbdinfo --size nbd://127.0.0.1:20611/vol >/dev/null 2>&1 && break; sleep 0.1; done
}

# fio JOB_ARGS... → prints "iops bw_mib_s" of the job's main direction.
run_fio() {
  fio --name=b --ioengine=nbd --output-format=json "$@" > "$WORK/fio.json"
  python3 - "$WORK/fio.json" <<'EOP'
import json, sys
text = open(sys.argv[1]).read()
j = json.loads(text[text.index("{"):])["jobs"][0]  # after fio's "connected" line
d = j["write"] if j["write"]["io_bytes"] > 0 else j["read"]
print(f'{d["iops"]:.0f} {d["bw"] / 1024:.1f}')
EOP
}

declare -A R
run_side() { # SIDE
  local side=$1 uri
  if [ "$side" = qemu ]; then start_qemu; uri=nbd://127.0.0.1:20611/vol; else start_storfs; uri=nbd://127.0.0.1:20610/vol; fi
  local common=(--uri="$uri" --size="${SIZE}M")
  R[$side.seqw]+="$(run_fio "${common[@]}" --rw=write --bs=1M --iodepth=8 --end_fsync=1 | cut -d' ' -f2) "
  if [ "$side" = storfs ]; then "$BIN" --socket "$WORK/storfs/storfs.sock" flush; fi
  sync; echo 3 > /proc/sys/vm/drop_caches
  R[$side.seqr]+="$(run_fio "${common[@]}" --rw=read --bs=1M --iodepth=8 | cut -d' ' -f2) "
  R[$side.randw]+="$(run_fio "${common[@]}" --rw=randwrite --bs=4k --iodepth=32 --time_based --runtime=20 --end_fsync=1 | cut -d' ' -f1) "
  if [ "$side" = storfs ]; then "$BIN" --socket "$WORK/storfs/storfs.sock" flush; fi
  sync; echo 3 > /proc/sys/vm/drop_caches
  R[$side.randr]+="$(run_fio "${common[@]}" --rw=randread --bs=4k --iodepth=32 --time_based --runtime=20 | cut -d' ' -f1) "
  if [ "$side" = storfs ]; then kill "$SPID"; wait "$SPID" || true; SPID=; else kill "$QPID"; wait "$QPID" || true; QPID=; fi
}

for round in $(seq "$ROUNDS"); do
  for side in qemu storfs; do
    echo "== round $round: $side" >&2
    run_side $side
  done
done

OTHER=qemu
. scripts/bench/table.sh
printf '\nmedians of %s rounds, %s MiB volume\n' "$ROUNDS" "$SIZE"
header qemu-nbd
row "seq write 1 MiB (MiB/s)" seqw
row "seq read 1 MiB (MiB/s)" seqr
row "rand write 4 KiB QD32 (IOPS)" randw
row "rand read 4 KiB QD32 (IOPS)" randr
