#!/usr/bin/env bash
# Scale: how storfs's costs grow with the amount of data, at several sizes
# in one run. Each part prints one line per size; a cost that stays flat or
# grows like the logarithm of the size is as designed, one that grows
# linearly is a finding (see docs/BENCHMARKS.md, "Scale").
#
#   scripts/bench/scale.sh files   "100000 200000 500000"   (files in one file system)
#   scripts/bench/scale.sh dirs    "1000 10000 100000"      (entries in one directory)
#   scripts/bench/scale.sh volume  "2 8"                    (GiB written at random into a 1 TiB volume)
#   scripts/bench/scale.sh packs   "2000 10000"             (packs in an S3 bucket)
#
# files:  the file system grows from one size to the next (files of 1 KiB,
#         created by 4 processes in directories of 1,000 over FUSE); at each
#         size: create rate of the step, stat and open+read latency of 2,000
#         random files (page cache dropped), daemon RSS, metadata size on
#         disk, time to start the daemon (clean stop before), and time to
#         start it after kill -9 with the step's creates only in the WAL
#         (flush_interval 1 h: the replay of a full log).
# dirs:   one directory grown to each size; at each: create latency of the
#         step, lookup (stat of a random name, cache dropped) and the time
#         per READDIR page (the whole directory listed, divided by pages of
#         100 entries).
# volume: a 1 TiB sparse volume written with 256 KiB random writes (fio's
#         nbd engine, QD32) up to each size; at each: 4 KiB random write
#         IOPS for 10 s, metadata size, snapshot create time and the time of
#         a changed-block diff between two snapshots 64 MiB of writes apart;
#         and where the local disk goes: the most the data directory held
#         while the step ran (sampled every 2 s), and at its end the packs
#         and the WAL (GC is off, so packs also hold what later writes
#         replaced).
# packs:  storfs on storfs-s3d with 64 KiB blocks and packs (a bench-only
#         setting: every pack one chunk) grown to each number of packs; at
#         each: daemon start time, a GC pass, and `recover --from-bucket`
#         into an empty state directory.
set -euo pipefail
cd "$(dirname "$0")/../.."
PART=${1:?usage: scale.sh files|dirs|volume|packs "SIZES"}
SIZES=${2:?sizes}
BASE=${BENCH_DIR:-/var/tmp}
WORK=$(mktemp -d "$BASE/storfs-scale.XXXXXX")
BIN=target/release/storfs
S3D=target/release/storfs-s3d
SOCK=$WORK/storfs.sock
MNT=$WORK/mnt
[ "$(id -u)" -eq 0 ] || { echo "run as root (mounts and drops caches)" >&2; exit 1; }
cargo build --release --quiet --bins

PID= S3PID=
cleanup() {
  umount -l "$MNT" 2>/dev/null || true
  [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
  [ -n "$S3PID" ] && kill "$S3PID" 2>/dev/null || true
  jobs -p | xargs -r kill 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
cli() { "$BIN" --socket "$SOCK" "$@"; }
now() { date +%s.%N; }
since() { python3 -c "import sys,time; print(f'{time.time() - float(sys.argv[1]):.2f}')" "$1"; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
rss_mib() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$PID/status"; }
meta_mib() { du -sm "$WORK/data/state/meta.redb" | cut -f1; }

write_config() { # EXTRA_TOML
  cat > "$WORK/storfs.toml" <<EOF
data_dir = "$WORK/data"
[control]
socket = "$SOCK"
[nfs]
enabled = false
[nbd]
listen = "127.0.0.1:20612"
[gc]
interval = "0"
$1
EOF
}
start() { # sets START_S: seconds until `status` answers
  local t; t=$(now)
  "$BIN" --config "$WORK/storfs.toml" serve >/dev/null 2>>"$WORK/daemon.log" & PID=$!
  until cli status >/dev/null 2>&1; do
    kill -0 "$PID" 2>/dev/null || { echo "daemon died:"; tail "$WORK/daemon.log"; exit 1; } >&2
    sleep 0.05
  done
  START_S=$(since "$t")
}
stop() { umount "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true; kill "$PID"; wait "$PID" || true; PID=; }
kill9() { kill -9 "$PID"; wait "$PID" 2>/dev/null || true; PID=; umount -l "$MNT" 2>/dev/null || true; }
mount_fs() { mkdir -p "$MNT"; cli mount "$MNT" >/dev/null; }

part_files() {
  write_config $'[cache]\nflush_interval = "1h"'
  start; mount_fs
  local have=0
  printf '%10s %10s %9s %9s %8s %9s %8s %9s\n' files create/s stat_us open_us rss_MiB meta_MiB start_s replay_s
  for n in $SIZES; do
    local t rate
    t=$(now)
    python3 - "$MNT" "$have" "$n" <<'PY'
import os, sys
from multiprocessing import Pool
mnt, lo, hi = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def make(d):
    p = os.path.join(mnt, f"d{d:06d}")
    os.makedirs(p, exist_ok=True)
    for i in range(max(lo, d * 1000), min(hi, (d + 1) * 1000)):
        with open(os.path.join(p, f"f{i:09d}"), "wb") as f:
            f.write(i.to_bytes(8, "little") * 128)
with Pool(4) as pool:
    pool.map(make, range(lo // 1000, (hi + 999) // 1000), chunksize=1)
PY
    rate=$(python3 -c "print(f'{($n - $have) / ($(now) - $t):.0f}')")
    # kill -9 with the step's creates only in the WAL: the next start replays them.
    kill9
    start; local replay=$START_S; mount_fs
    cli flush >/dev/null
    drop
    read -r stat_us open_us < <(python3 - "$MNT" "$n" <<'PY'
import os, random, sys, time
mnt, n = sys.argv[1], int(sys.argv[2])
names = [os.path.join(mnt, f"d{i // 1000:06d}", f"f{i:09d}") for i in random.sample(range(n), min(n, 2000))]
t = time.perf_counter()
for p in names[:1000]: os.stat(p)
s = (time.perf_counter() - t) / 1000 * 1e6
t = time.perf_counter()
for p in names[1000:]:
    with open(p, "rb") as f: f.read()
o = (time.perf_counter() - t) / max(1, len(names) - 1000) * 1e6
print(f"{s:.0f} {o:.0f}")
PY
)
    local rss meta st
    rss=$(rss_mib); meta=$(meta_mib)
    stop; start; st=$START_S; mount_fs
    printf '%10s %10s %9s %9s %8s %9s %8s %9s\n' "$n" "$rate" "$stat_us" "$open_us" "$rss" "$meta" "$st" "$replay"
    have=$n
  done
}

part_dirs() {
  write_config ""
  start; mount_fs
  mkdir "$MNT/big"
  local have=0
  printf '%10s %11s %10s %14s\n' entries create_us lookup_us readdir_page_us
  for n in $SIZES; do
    python3 - "$MNT/big" "$have" "$n" <<'PY'
import os, random, sys, time, subprocess
d, lo, hi = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
t = time.perf_counter()
for i in range(lo, hi):
    os.close(os.open(os.path.join(d, f"entry-{i:09d}"), os.O_CREAT | os.O_WRONLY, 0o644))
c = (time.perf_counter() - t) / (hi - lo) * 1e6
subprocess.run(["sync", "-f", d], check=True)
open("/proc/sys/vm/drop_caches", "w").write("3")
names = [os.path.join(d, f"entry-{i:09d}") for i in random.sample(range(hi), min(hi, 1000))]
t = time.perf_counter()
for p in names: os.stat(p)
l = (time.perf_counter() - t) / len(names) * 1e6
open("/proc/sys/vm/drop_caches", "w").write("3")
t = time.perf_counter()
count = sum(1 for _ in os.scandir(d))
r = (time.perf_counter() - t) / max(1, count / 100) * 1e6
print(f"{hi:10d} {c:11.0f} {l:10.0f} {r:14.0f}")
PY
    have=$n
  done
}

part_volume() {
  command -v fio >/dev/null && fio --enghelp 2>/dev/null | grep -qw nbd || { echo "fio with the nbd engine is required" >&2; exit 1; }
  write_config ""
  start
  cli volume create big --size 1TiB >/dev/null
  local uri=nbd://127.0.0.1:20612/big have=0 snap=0
  # Every fio run draws its own offsets: with fio's default fixed seed, each
  # fill rewrote the blocks of the fills before it and the 4 KiB phase hit
  # exactly the blocks the fill had just written (the same random stream in
  # other units), so every 4 KiB write re-stored a whole 256 KiB block.
  printf '%8s %10s %9s %10s %8s %9s %9s %8s\n' GiB rand4k_iops meta_MiB snapshot_s diff_s peak_GiB packs_GiB wal_GiB
  for g in $SIZES; do
    # The most the data directory holds during the step, sampled.
    ( peak=0; while :; do
        s=$(du -sb "$WORK/data" 2>/dev/null | cut -f1); [ "${s:-0}" -gt "$peak" ] && peak=$s && echo "$peak" > "$WORK/peak"
        sleep 2; done ) & local sampler=$!
    fio --name=fill --randrepeat=0 --ioengine=nbd --uri="$uri" --rw=randwrite --bs=256k --iodepth=32 --size=1T \
      --io_size=$(( (g - have) ))G --output-format=terse >/dev/null
    local iops t snap_s diff_s
    iops=$(fio --name=r --randrepeat=0 --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k --iodepth=32 --size=1T \
      --time_based --runtime=10 --output-format=json | python3 -c '
import json, sys
t = sys.stdin.read(); print(round(json.loads(t[t.index("{"):])["jobs"][0]["write"]["iops"]))')
    cli flush >/dev/null
    snap=$((snap + 1)); t=$(now); cli snapshot create --volume big "s$snap" >/dev/null; snap_s=$(since "$t")
    fio --name=d --randrepeat=0 --ioengine=nbd --uri="$uri" --rw=randwrite --bs=256k --iodepth=32 --size=1T --io_size=64M \
      --output-format=terse >/dev/null
    snap=$((snap + 1)); cli snapshot create --volume big "s$snap" >/dev/null
    t=$(now); cli snapshot diff --volume big "s$((snap - 1))" "s$snap" >/dev/null; diff_s=$(since "$t")
    kill "$sampler"; wait "$sampler" 2>/dev/null || true
    local gib='{printf "%.1f", $1 / 2^30}'
    printf '%8s %10s %9s %10s %8s %9s %9s %8s\n' "$g" "$iops" "$(meta_mib)" "$snap_s" "$diff_s" \
      "$(awk "$gib" "$WORK/peak")" "$(du -sb "$WORK/data/objects" | awk "$gib")" "$(du -sb "$WORK/data/state/wal" | awk "$gib")"
    have=$g
  done
}

part_packs() {
  export AWS_ACCESS_KEY_ID=storfs-test AWS_SECRET_ACCESS_KEY=storfs-test-secret-7f3a9c
  coproc S3 { exec "$S3D" --listen 127.0.0.1:0 --bucket scale; }
  S3PID=$S3_PID
  local line; read -r line <&"${S3[0]}"
  local s3
  s3=$(printf '[backend]\nkind = "s3"\nbucket = "scale"\nendpoint = "http://%s"\npath_style = true\n[storage]\nblock_size = "64KiB"\npack_size = "64KiB"' "${line#listening on }")
  write_config "$s3"
  start; mount_fs
  local have=0
  printf '%8s %8s %8s %10s\n' packs start_s gc_s recover_s
  for n in $SIZES; do
    # One 64 KiB chunk per pack: n packs are n distinct 64 KiB blocks.
    python3 - "$MNT/data" "$have" "$n" <<'PY'
import os, sys
p, lo, hi = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(p, "ab") as f:
    for i in range(lo, hi):
        f.write(os.urandom(65536))  # incompressible: one chunk fills a pack
    os.fsync(f.fileno())
PY
    cli flush >/dev/null
    local t gc st rec
    t=$(now); cli gc >/dev/null; gc=$(since "$t")
    stop; start; st=$START_S; mount_fs
    cli flush >/dev/null
    stop
    mv "$WORK/data" "$WORK/data.keep"
    t=$(now); "$BIN" --config "$WORK/storfs.toml" recover --from-bucket >/dev/null 2>>"$WORK/daemon.log"; rec=$(since "$t")
    rm -rf "$WORK/data"; mv "$WORK/data.keep" "$WORK/data"
    start; mount_fs
    printf '%8s %8s %8s %10s\n' "$(cli status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["storage"]["packs"])')" "$st" "$gc" "$rec"
    have=$n
  done
}

"part_$PART"
