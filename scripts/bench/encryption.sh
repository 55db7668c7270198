#!/usr/bin/env bash
# Benchmark: what encryption at rest costs. Three daemons on the local
# backend, side by side in one run: encryption off, aes-256-gcm and
# xchacha20-poly1305, each with a FUSE mount; prints each cipher's ratio to
# "off" (1.00 = free).
#
#   scripts/bench/encryption.sh [ROUNDS] [SIZE_MIB]     (defaults 3 and 2048; run as root)
#
# Workloads, each run on the three mounts in turn within a round:
#   write+flush  fio, 1 MiB writes of a SIZE file with fsync, then `storfs
#                flush` (sealing happens when packs are made), MiB/s
#   seq-read     the file read back with 1 MiB reads, page cache dropped
#                first; the daemons' memory cache is 256 MiB, so with the
#                default SIZE most reads open chunks from the pack files, MiB/s
#   cold-read    fio, 4 KiB random reads of the file for 20 s, page cache
#                dropped first: chunks are read by 32 KiB frame, sealed ones
#                frame by frame too (docs/SEMANTICS.md, Security), IOPS
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-3}
SIZE_MIB=${2:-2048}
BASE=${BENCH_DIR:-/var/tmp}
WORK=$(mktemp -d "$BASE/storfs-bench-enc.XXXXXX")
BIN=target/release/storfs
SIDES="off aes-256-gcm xchacha20-poly1305"

[ "$(id -u)" -eq 0 ] || { echo "run as root (mounts and drops caches)" >&2; exit 1; }
command -v fio >/dev/null || { echo "fio is required (apt install fio)" >&2; exit 1; }
cargo build --release --quiet

PIDS=()
cleanup() {
  for s in $SIDES; do umount -l "$WORK/$s/mnt" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

"$BIN" key generate > "$WORK/storfs.key"
chmod 600 "$WORK/storfs.key"
for s in $SIDES; do
  mkdir -p "$WORK/$s/mnt"
  cat > "$WORK/$s/storfs.toml" <<EOF
data_dir = "$WORK/$s/data"
[cache]
memory = "256MiB"
[control]
socket = "$WORK/$s/storfs.sock"
[storage]
encryption = "$s"
encryption_key_file = "$WORK/storfs.key"
[nfs]
enabled = false
[nbd]
enabled = false
EOF
  "$BIN" --config "$WORK/$s/storfs.toml" serve 2>"$WORK/$s/daemon.log" &
  PIDS+=($!)
  for _ in $(seq 100); do "$BIN" --socket "$WORK/$s/storfs.sock" status >/dev/null 2>&1 && break; sleep 0.1; done
  "$BIN" --socket "$WORK/$s/storfs.sock" mount "$WORK/$s/mnt" >/dev/null
done

cli() { local s=$1; shift; "$BIN" --socket "$WORK/$s/storfs.sock" "$@"; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }

. scripts/bench/fio.sh

declare -A R
echo "round workload $SIDES"
for round in $(seq "$ROUNDS"); do
  for s in $SIDES; do
    rm -f "$WORK/$s/mnt/f"
    cli "$s" flush
    start=$(date +%s.%N)
    fio --directory="$WORK/$s/mnt" --name=f --filename=f --rw=write --bs=1M --size="${SIZE_MIB}M" \
      --end_fsync=1 --ioengine=psync --output-format=json > /dev/null
    cli "$s" flush
    end=$(date +%s.%N)
    R[$round,write,$s]=$(python3 -c "print(f'{$SIZE_MIB / ($end - $start):.0f}')")
  done
  for s in $SIDES; do
    drop
    R[$round,seq,$s]=$(fio_run "$WORK/$s/mnt" bw --name=f --filename=f --rw=read --bs=1M --size="${SIZE_MIB}M")
  done
  for s in $SIDES; do
    drop
    R[$round,cold,$s]=$(fio_run "$WORK/$s/mnt" iops --name=f --filename=f --rw=randread --bs=4k \
      --size="${SIZE_MIB}M" --time_based --runtime=20)
  done
  for w in write seq cold; do
    line="$round $w"
    for s in $SIDES; do line+=" ${R[$round,$w,$s]}"; done
    echo "$line"
  done
done

. scripts/bench/table.sh
echo
echo "median of $ROUNDS rounds, ${SIZE_MIB} MiB file (write/seq: MiB/s, cold: IOPS)"
printf '%-12s %8s %12s %20s %10s %10s\n' workload off aes-256-gcm xchacha20-poly1305 aes/off xchacha/off
for w in write seq cold; do
  vals=()
  for s in $SIDES; do
    col=()
    for round in $(seq "$ROUNDS"); do col+=("${R[$round,$w,$s]}"); done
    vals+=("$(median "${col[*]}")")
  done
  python3 -c "
o,a,x=$((vals[0])),$((vals[1])),$((vals[2]))
print(f'%-12s %8d %12d %20d %10.2f %10.2f' % ('$w', o, a, x, a/o if o else 0, x/o if o else 0))"
done
