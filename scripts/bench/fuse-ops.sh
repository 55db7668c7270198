#!/usr/bin/env bash
# Benchmark: where a FUSE file create and a 4 KiB write spend their time,
# request by request, from the kernel's own fuse tracepoints
# (fuse:fuse_request_send / fuse:fuse_request_end, Linux 6.x), next to the
# same loop on a plain directory.
#
#   scripts/bench/fuse-ops.sh [FILES] [BIN]     (defaults 2000 and target/release/storfs; run as root)
#
# Prints, per FUSE opcode: requests per file (or per write), and the time
# from the kernel sending the request to the daemon's reply ending it (mean,
# median, 90th percentile). A request's time is the whole round trip: the
# kernel queueing it, a daemon thread waking and reading it, the work, the
# reply and the caller waking. Their sum per file bounds the create rate of
# any FUSE daemon on the machine, whatever the daemon does.
#
# Then the cost of locks at close: the same create loop, three rounds
# alternating between this mount (locks on: every close sends FLUSH, which
# drops the closing process's locks) and a second daemon's mount with
# `[locks] enabled = false` (FLUSH answered ENOSYS once, then never sent).
set -euo pipefail
cd "$(dirname "$0")/../.."
FILES=${1:-2000}
BIN=${2:-target/release/storfs}
BASE=${BENCH_DIR:-/var/tmp}
WORK=$(mktemp -d "$BASE/storfs-ops.XXXXXX")
SOCK=$WORK/storfs.sock

[ "$(id -u)" -eq 0 ] || { echo "run as root (mounts)" >&2; exit 1; }
command -v perf >/dev/null || { echo "perf is required (apt install linux-perf)" >&2; exit 1; }
command -v fio >/dev/null || { echo "fio is required (apt install fio)" >&2; exit 1; }
[[ "$(perf list 2>/dev/null)" == *fuse:fuse_request_send* ]] || { echo "this kernel has no fuse tracepoints" >&2; exit 1; }
[ "$BIN" = target/release/storfs ] && cargo build --release --quiet

cleanup() {
  umount -l "$WORK/mnt" 2>/dev/null || true
  umount -l "$WORK/mnt-nolocks" 2>/dev/null || true
  for p in ${PID:-} ${PID2:-}; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

creates() { # DIR → seconds per file
  python3 - "$1" "$FILES" <<'PY'
import os, sys, time
d, n = sys.argv[1], int(sys.argv[2])
os.mkdir(d)
data = [os.urandom(4096) for _ in range(n)]
t = time.perf_counter()
for i in range(n):
    fd = os.open(os.path.join(d, f"f{i:05d}"), os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
    os.write(fd, data[i])
    os.close(fd)
print((time.perf_counter() - t) / n)
PY
}

mkdir -p "$WORK/plain"
plain=$(creates "$WORK/plain/c")   # before the daemon starts, on an idle disk

cat > "$WORK/storfs.toml" <<EOF
data_dir = "$WORK/data"
[control]
socket = "$SOCK"
EOF
"$BIN" --config "$WORK/storfs.toml" serve 2>"$WORK/daemon.log" &
PID=$!
for _ in $(seq 100); do "$BIN" --socket "$SOCK" status >/dev/null 2>&1 && break; sleep 0.1; done
mkdir -p "$WORK/mnt"
"$BIN" --socket "$SOCK" mount "$WORK/mnt" >/dev/null

cat > "$WORK/summary.py" <<'PY'
import collections, re, sys
div = int(sys.argv[1])
send, lat = {}, collections.defaultdict(list)
pat = re.compile(r"\s(\d+\.\d+):\s+fuse:fuse_request_(send|end): connection \d+ req (\d+)(?: opcode \d+ \((\w+)\))?")
for line in sys.stdin:
    m = pat.search(line)
    if not m:
        continue
    t, kind, req, op = float(m.group(1)), m.group(2), m.group(3), m.group(4)
    if kind == "send":
        send[req] = (t, op)
    elif req in send:
        t0, op = send.pop(req)
        lat[op].append((t - t0) * 1e6)
print(f"  {'request':16} {'per item':>8} {'mean us':>8} {'p50 us':>8} {'p90 us':>8}")
total = 0.0
for op, v in sorted(lat.items(), key=lambda kv: -len(kv[1])):
    if len(v) * 10 < div:
        continue
    v.sort()
    mean = sum(v) / len(v)
    total += mean * len(v) / div
    print(f"  {op.removeprefix('FUSE_'):16} {len(v) / div:8.2f} {mean:8.1f} {v[len(v) // 2]:8.1f} {v[int(len(v) * 0.9)]:8.1f}")
print(f"  sum of request times per item: {total:.1f} us")
PY

summary() { # PERF_DATA DIVISOR → per-opcode table
  perf script -i "$1" 2>/dev/null | python3 "$WORK/summary.py" "$2"
}

perf record -q -e fuse:fuse_request_send -e fuse:fuse_request_end -a -o "$WORK/create.data" -- \
  bash -c "creates() { $(declare -f creates | tail -n +2); }; FILES=$FILES; creates $WORK/mnt/c" > "$WORK/storfs.s" 2>/dev/null
storfs=$(cat "$WORK/storfs.s")
python3 -c "import sys; p, s = map(float, sys.argv[1:]); print(f'create + 4 KiB write + close: plain {p*1e6:.1f} us/file, storfs {s*1e6:.1f} us/file, ratio {p/s:.2f}')" "$plain" "$storfs"
summary "$WORK/create.data" "$FILES"

fio --directory="$WORK/mnt" --name=prep --ioengine=psync --rw=write --bs=1M --size=256M >/dev/null
perf record -q -e fuse:fuse_request_send -e fuse:fuse_request_end -a -o "$WORK/write.data" -- \
  fio --directory="$WORK/mnt" --name=prep --ioengine=psync --rw=randwrite --bs=4k --size=256M \
      --runtime=5 --time_based --output-format=json > "$WORK/fio.json" 2>/dev/null
writes=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['jobs'][0]['write']['total_ios'])" "$WORK/fio.json")
echo "4 KiB random writes (fio psync, 5 s): $writes writes"
summary "$WORK/write.data" "$writes"

# Locks on and off, side by side.
mkdir -p "$WORK/nolocks" "$WORK/mnt-nolocks"
cat > "$WORK/nolocks/storfs.toml" <<EOF
data_dir = "$WORK/nolocks/data"
[control]
socket = "$WORK/nolocks/storfs.sock"
[nfs]
enabled = false
[nbd]
enabled = false
[locks]
enabled = false
EOF
"$BIN" --config "$WORK/nolocks/storfs.toml" serve 2>"$WORK/nolocks/daemon.log" &
PID2=$!
for _ in $(seq 100); do "$BIN" --socket "$WORK/nolocks/storfs.sock" status >/dev/null 2>&1 && break; sleep 0.1; done
"$BIN" --socket "$WORK/nolocks/storfs.sock" mount "$WORK/mnt-nolocks" >/dev/null
on=() off=()
for r in 1 2 3; do
  on+=("$(creates "$WORK/mnt/locks-$r")")
  off+=("$(creates "$WORK/mnt-nolocks/c-$r")")
done
python3 - "${on[@]}" "${off[@]}" <<'PY'
import statistics, sys
v = [float(x) * 1e6 for x in sys.argv[1:]]
on, off = v[:3], v[3:]
print("create + 4 KiB write + close, locks on / off (us/file), rounds:",
      ", ".join(f"{a:.1f} / {b:.1f}" for a, b in zip(on, off)))
m_on, m_off = statistics.median(on), statistics.median(off)
print(f"  medians: locks on {m_on:.1f}, off {m_off:.1f}; files/s ratio on/off {m_off / m_on:.2f}")
PY
