#!/usr/bin/env bash
# Benchmark: a storfs FUSE mount against a plain directory on the same disk,
# side by side in one run, printing storfs/plain ratios.
#
#   scripts/bench/fuse.sh [ROUNDS] [SIZE_MIB]     (defaults 3 and 2048; run as root)
#
# Each round runs every workload on the plain directory, then on a storfs
# mount with default options, then on one mounted `--writeback-cache`
# (column storfs-wb; WRITEBACK=0 leaves it out); the table shows the median of the rounds (shared virtual disks vary a lot
# from one minute to the next, so single runs mislead).
#
#   seq-write    fio, 1 MiB writes of SIZE, fsync at the end
#   seq-read     fio, 1 MiB reads of that file, page cache dropped first
#   rand-write   fio, 4 KiB random writes over a 1 GiB file for 20 s, fsync at the end
#   rand-read    fio, 4 KiB random reads of that file for 20 s, page cache dropped first
#   cold-read    fio, 4 KiB random reads of the SIZE file for 20 s, page cache
#                dropped first: with the default SIZE a working set 4x the
#                daemon's memory cache (set to 512 MiB here, the default)
#   small-files  create 10,000 files of 4 KiB (distinct contents), then syncfs
#                and fsync of the last file (syncfs does not reach a FUSE
#                daemon; storfs's fsync makes every change durable), by 1
#                process and by 4 processes at once
#
# Before each read workload storfs is flushed (`storfs flush`, its `sync`)
# and the page cache dropped, so reads come from pack files, as they would
# on a server that has been running for a while.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-3}
SIZE_MIB=${2:-2048}
BASE=${BENCH_DIR:-/var/tmp}
WORK=$(mktemp -d "$BASE/storfs-bench.XXXXXX")
BIN=target/release/storfs
SOCK=$WORK/storfs.sock

[ "$(id -u)" -eq 0 ] || { echo "run as root (mounts and drops caches)" >&2; exit 1; }
command -v fio >/dev/null || { echo "fio is required (apt install fio)" >&2; exit 1; }
cargo build --release --quiet

SIDES="plain storfs"
[ "${WRITEBACK:-1}" = 1 ] && SIDES+=" storfs-wb"

cleanup() {
  umount -l "$WORK/mnt" 2>/dev/null || true
  umount -l "$WORK/mnt-wb" 2>/dev/null || true
  if [ -n "${PID:-}" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

cat > "$WORK/storfs.toml" <<EOF
data_dir = "$WORK/data"
[cache]
memory = "512MiB"
[control]
socket = "$SOCK"
EOF
"$BIN" --config "$WORK/storfs.toml" serve 2>"$WORK/daemon.log" &
PID=$!
for _ in $(seq 100); do "$BIN" --socket "$SOCK" status >/dev/null 2>&1 && break; sleep 0.1; done
mkdir -p "$WORK/mnt" "$WORK/mnt-wb" "$WORK/plain"
"$BIN" --socket "$SOCK" mount "$WORK/mnt" >/dev/null
"$BIN" --socket "$SOCK" mount "$WORK/mnt-wb" --writeback-cache >/dev/null

settle() { # SIDE: make everything written so far durable and uncached
  [ "$1" != plain ] && "$BIN" --socket "$SOCK" flush
  sync
  echo 3 > /proc/sys/vm/drop_caches
}

. scripts/bench/fio.sh

declare -A R
for round in $(seq "$ROUNDS"); do
  for side in $SIDES; do
    case $side in plain) dir=$WORK/plain ;; storfs) dir=$WORK/mnt ;; storfs-wb) dir=$WORK/mnt-wb ;; esac
    echo "== round $round: $side" >&2
    rm -rf "${dir:?}"/*
    settle $side
    R[$side.seqw]+="$(fio_run "$dir" bw --name=seq --rw=write --bs=1M --size=${SIZE_MIB}M --end_fsync=1) "
    settle $side
    R[$side.seqr]+="$(fio_run "$dir" bw --name=seq --rw=read --bs=1M --size=${SIZE_MIB}M) "
    settle $side
    R[$side.coldr]+="$(fio_run "$dir" iops --name=seq --rw=randread --bs=4k --size=${SIZE_MIB}M --time_based --runtime=20) "
    R[$side.randw]+="$(fio_run "$dir" iops --name=rand --rw=randwrite --bs=4k --size=1G --time_based --runtime=20 --end_fsync=1) "
    settle $side
    R[$side.randr]+="$(fio_run "$dir" iops --name=rand --rw=randread --bs=4k --size=1G --time_based --runtime=20) "
    R[$side.small1]+="$(small_files "$dir/s1" 1) "
    R[$side.small4]+="$(small_files "$dir/s4" 4) "
  done
done

OTHER=plain
[ "${WRITEBACK:-1}" = 1 ] && THIRD=storfs-wb
. scripts/bench/table.sh
printf '\nmedians of %s rounds, %s MiB sequential file\n' "$ROUNDS" "$SIZE_MIB"
header plain
row "seq write 1 MiB (MiB/s)" seqw
row "seq read 1 MiB (MiB/s)" seqr
row "rand write 4 KiB (IOPS)" randw
row "rand read 4 KiB (IOPS)" randr
row "rand read 4 KiB, ${SIZE_MIB} MiB cold (IOPS)" coldr
row "create 10k x 4 KiB, 1 process (files/s)" small1
row "create 10k x 4 KiB, 4 processes (files/s)" small4
