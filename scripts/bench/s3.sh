#!/usr/bin/env bash
# Benchmark: storfs's FUSE mount on the S3 backend against s3fs and
# `rclone mount`, all three on the same S3 server (storfs-s3d, in memory,
# on this host), side by side in one run, printing ratios and the S3
# requests each one makes.
#
#   scripts/bench/s3.sh [ROUNDS]       (default 3; run as root)
#
# Each round starts, for each client in turn, a fresh storfs-s3d with an
# empty bucket, mounts the client on it, and runs:
#
#   seq-write    dd 1 GiB of random data (from a file in the page cache)
#                with 1 MiB writes and conv=fsync
#   seq-read     dd that file back, page cache dropped; storfs is restarted
#                with its disk cache deleted first, so it reads the bucket
#                like the other two (neither keeps a local cache by default)
#   small-files  create 10,000 files of 4 KiB (distinct contents), one
#                process, then syncfs
#
# Times run until the data is in the bucket. s3fs and rclone upload at
# close, so that is when dd or the file loop returns; storfs acknowledges
# fsync once the data is in its local write-ahead log and uploads behind,
# so its clock stops after `storfs flush` returns (every pack uploaded and
# committed). Its acknowledged figure (before the flush) is printed too.
#
# Requests come from the server's own counters (`GET /_stats`), reset before
# each workload. "PUTs" are PutObject + UploadPart: the requests that carry
# data up, and what S3 bills per request.
#
# AWS_CA_BUNDLE is unset for rclone: it refuses any bundle on a plain-HTTP
# endpoint. s3fs and rclone run with their defaults (no local cache: s3fs without
# use_cache, rclone with --vfs-cache-mode off), as their manuals present them.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-3}
BASE=${BENCH_DIR:-/var/tmp}
WORK=$(mktemp -d "$BASE/storfs-s3bench.XXXXXX")
BIN=target/release/storfs
S3D=target/release/storfs-s3d
BUCKET=bench
export AWS_ACCESS_KEY_ID=storfs-test AWS_SECRET_ACCESS_KEY=storfs-test-secret-7f3a9c
SOCK=$WORK/storfs.sock
MNT=$WORK/mnt
SMALL=10000

[ "$(id -u)" -eq 0 ] || { echo "run as root (mounts and drops caches)" >&2; exit 1; }
for t in s3fs rclone curl; do
  command -v $t >/dev/null || { echo "$t is required (apt install s3fs rclone curl)" >&2; exit 1; }
done
cargo build --release --quiet --bins

S3PID= DPID= RPID=
stop_s3d() { if [ -n "$S3PID" ]; then kill "$S3PID" 2>/dev/null || true; wait "$S3PID" 2>/dev/null || true; S3PID=; fi; }
stop_daemon() { if [ -n "$DPID" ]; then kill "$DPID" 2>/dev/null || true; wait "$DPID" 2>/dev/null || true; DPID=; fi; }
unmount() {
  if mountpoint -q "$MNT"; then umount "$MNT" 2>/dev/null || umount -l "$MNT"; fi
  if [ -n "$RPID" ]; then wait "$RPID" 2>/dev/null || true; RPID=; fi
}
cleanup() { unmount; stop_daemon; stop_s3d; rm -rf "$WORK"; }
trap cleanup EXIT

start_s3d() { # fresh server, empty bucket; sets S3PID and ENDPOINT
  stop_s3d
  coproc S3 { exec "$S3D" --listen 127.0.0.1:0 --bucket "$BUCKET"; }
  S3PID=$S3_PID
  local line; read -r line <&"${S3[0]}"
  ENDPOINT=http://${line#listening on }
}
s3_admin() { curl -sf -X POST "$ENDPOINT/_fault?$1" >/dev/null; }
s3_stats() { curl -sf "$ENDPOINT/_stats"; }

start_storfs() { # on the current s3d; keeps the data dir if it exists
  cat > "$WORK/storfs.toml" <<EOF
data_dir = "$WORK/data"
[control]
socket = "$SOCK"
[nfs]
enabled = false
[nbd]
enabled = false
[backend]
kind = "s3"
bucket = "$BUCKET"
endpoint = "$ENDPOINT"
path_style = true
EOF
  "$BIN" --config "$WORK/storfs.toml" serve 2>>"$WORK/daemon.log" &
  DPID=$!
  for _ in $(seq 100); do "$BIN" --socket "$SOCK" status >/dev/null 2>&1 && break; sleep 0.1; done
  "$BIN" --socket "$SOCK" mount "$MNT" >/dev/null
}

mount_side() { # SIDE
  mkdir -p "$MNT"
  case $1 in
    storfs) rm -rf "$WORK/data"; start_storfs ;;
    s3fs)
      echo "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" > "$WORK/s3fs.passwd"; chmod 600 "$WORK/s3fs.passwd"
      s3fs "$BUCKET" "$MNT" -o passwd_file="$WORK/s3fs.passwd" -o url="$ENDPOINT" -o use_path_request_style \
        -o endpoint=us-east-1 -o sigv4 ;;
    rclone)
      RCLONE_CONFIG_BENCH_TYPE=s3 RCLONE_CONFIG_BENCH_PROVIDER=Other RCLONE_CONFIG_BENCH_ENDPOINT="$ENDPOINT" \
        RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY \
        env -u AWS_CA_BUNDLE rclone mount "bench:$BUCKET" "$MNT" --vfs-cache-mode off 2>>"$WORK/rclone.log" &
      RPID=$! ;;
  esac
  for _ in $(seq 100); do mountpoint -q "$MNT" && return; sleep 0.1; done
  echo "$1 did not mount" >&2; exit 1
}

unmount_side() { # SIDE
  unmount
  [ "$1" = storfs ] && stop_daemon
  return 0
}

cold() { # SIDE: nothing of the data left on this machine but in the bucket
  if [ "$1" = storfs ]; then
    unmount; stop_daemon
    rm -rf "$WORK/data/state/cache"
    start_storfs
  fi
  sync; echo 3 > /proc/sys/vm/drop_caches
}

now() { date +%s.%N; }
rate() { python3 -c "import sys; print(f'{float(sys.argv[1]) / (float(sys.argv[3]) - float(sys.argv[2])):.0f}')" "$@"; }
# Requests counted by the server since the last reset: PUTS TOTAL GETS.
requests() { s3_stats | python3 -c '
import json, sys
r = json.load(sys.stdin)["requests"]
print(r.get("put", 0) + r.get("upload_part", 0), sum(r.values()), r.get("get", 0))'; }
per() { python3 -c "import sys; print(f'{float(sys.argv[1]) * float(sys.argv[3]) / float(sys.argv[2]):.1f}')" "$@"; }

small_files() { # DIR → seconds spent creating and syncing
  python3 - "$1" "$SMALL" <<'PY'
import os, subprocess, sys, time
base, total = sys.argv[1], int(sys.argv[2])
os.mkdir(base)
t = time.perf_counter()
for i in range(total):
    fd = os.open(os.path.join(base, f"f{i:05d}"), os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
    os.write(fd, os.urandom(4096))
    os.close(fd)
subprocess.run(["sync", "-f", base], check=True)
print(f"{time.perf_counter() - t:.3f}")
PY
}

head -c 1G /dev/urandom > "$WORK/src.bin"
SIZE_MIB=1024
declare -A R
for round in $(seq "$ROUNDS"); do
  for side in s3fs rclone storfs; do
    echo "== round $round: $side" >&2
    start_s3d
    mount_side $side

    s3_admin reset_stats=1
    cat "$WORK/src.bin" > /dev/null
    t0=$(now)
    dd if="$WORK/src.bin" of="$MNT/big" bs=1M conv=fsync status=none
    t1=$(now)
    [ $side = storfs ] && "$BIN" --socket "$SOCK" flush
    t2=$(now)
    read -r puts total _ <<< "$(requests)"
    R[$side.seqw]+="$(rate $SIZE_MIB "$t0" "$t2") "
    R[$side.seqw_ack]+="$(rate $SIZE_MIB "$t0" "$t1") "
    R[$side.seqw_puts]+="$(per "$puts" $SIZE_MIB 1024) "
    R[$side.seqw_reqs]+="$(per "$total" $SIZE_MIB 1024) "

    cold $side
    s3_admin reset_stats=1
    t0=$(now)
    dd if="$MNT/big" of=/dev/null bs=1M status=none
    t1=$(now)
    read -r _ total gets <<< "$(requests)"
    R[$side.seqr]+="$(rate $SIZE_MIB "$t0" "$t1") "
    R[$side.seqr_gets]+="$(per "$gets" $SIZE_MIB 1024) "
    cmp "$MNT/big" "$WORK/src.bin" || { echo "$side: the file read back differs" >&2; exit 1; }

    s3_admin reset_stats=1
    secs=$(small_files "$MNT/small")
    t1=$(now)
    [ $side = storfs ] && "$BIN" --socket "$SOCK" flush
    flush_secs=$(python3 -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$t1" "$(now)")
    read -r puts total _ <<< "$(requests)"
    R[$side.small]+="$(python3 -c "import sys; print(f'{int(sys.argv[1]) / (float(sys.argv[2]) + float(sys.argv[3])):.0f}')" $SMALL "$secs" "$flush_secs") "
    R[$side.small_ack]+="$(python3 -c "import sys; print(f'{int(sys.argv[1]) / float(sys.argv[2]):.0f}')" $SMALL "$secs") "
    R[$side.small_puts]+="$(per "$puts" $SMALL 1000) "
    R[$side.small_reqs]+="$(per "$total" $SMALL 1000) "
    n=$(find "$MNT/small" -type f | wc -l)
    [ "$n" -eq $SMALL ] || { echo "$side: $n small files, expected $SMALL" >&2; exit 1; }

    unmount_side $side
    stop_s3d
  done
done

. scripts/bench/table.sh
for OTHER in s3fs rclone; do
  printf '\nstorfs vs %s, medians of %s rounds (until the data is in the bucket)\n' "$OTHER" "$ROUNDS"
  header $OTHER
  row "seq write 1 GiB (MiB/s)" seqw
  row "seq read 1 GiB, cold (MiB/s)" seqr
  row "create 10k x 4 KiB (files/s)" small
done
printf '\nstorfs acknowledged (fsync returned, data in the local WAL), medians: seq write %s MiB/s, small files %s files/s\n' \
  "$(median "${R[storfs.seqw_ack]}")" "$(median "${R[storfs.small_ack]}")"
printf '\nS3 requests (medians)   %10s %10s %10s\n' s3fs rclone storfs
for k in "seqw_puts:PUTs per GiB written" "seqw_reqs:requests per GiB written" "seqr_gets:GETs per GiB read" \
         "small_puts:PUTs per 1,000 small files" "small_reqs:requests per 1,000 small files"; do
  printf '%-36s' "${k#*:}"
  for side in s3fs rclone storfs; do printf ' %10s' "$(python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.1f}')" ${R[$side.${k%%:*}]})"; done
  printf '\n'
done
