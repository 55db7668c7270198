#!/usr/bin/env bash
# Benchmark: lifecycle tiering and compression.
#
#   scripts/bench/tiering.sh [ROUNDS] [MIB]   (default 3 rounds of 1024 MiB; run as root)
#
# Tiering, on storfs-s3d (the S3 test server, in memory), with the disk
# cache off and a 16 MiB memory cache so every read below goes to the
# server: write MIB of random data to a file system and MIB/4 to one whose
# lifecycle is "off" (it stays Standard); let it go cold; `storfs tier run`
# moves the first to STANDARD_IA (wall time, per GiB, requests and bytes
# from the server's counters). Then cold sequential reads of 10 % of each
# (page cache dropped, daemon restarted): read throughput from IA packs
# versus Standard packs; and the next pass brings the 10 % read back.
#
# Compression, on the local backend: MIB of a real mixed data set (the
# start of a tar of /usr/share and /usr/lib) written sequentially through
# FUSE, with compression "off", "zstd" (level 1, the default) and "lz4":
# write throughput (dd with fsync, then `storfs flush`: the flusher
# compresses) and the compression ratio `status` reports. Every round is
# printed; the tables show medians, and ratios against "off".
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-3}
MIB=${2:-1024}
BASE=${BENCH_DIR:-/var/tmp}
WORK=$(mktemp -d "$BASE/storfs-tierbench.XXXXXX")
BIN=target/release/storfs
S3D=target/release/storfs-s3d
SOCK=$WORK/storfs.sock
MNT=$WORK/mnt
export AWS_ACCESS_KEY_ID=storfs-test AWS_SECRET_ACCESS_KEY=storfs-test-secret-7f3a9c

[ "$(id -u)" -eq 0 ] || { echo "run as root (mounts and drops caches)" >&2; exit 1; }
for t in curl python3; do command -v $t >/dev/null || { echo "$t is required" >&2; exit 1; }; done
cargo build --release --quiet --bins

S3PID= DPID=
stop_s3d() { if [ -n "$S3PID" ]; then kill "$S3PID" 2>/dev/null || true; wait "$S3PID" 2>/dev/null || true; S3PID=; fi; }
stop_storfs() {
  if mountpoint -q "$MNT" 2>/dev/null; then umount "$MNT" 2>/dev/null || umount -l "$MNT"; fi
  for m in "$WORK"/hot; do mountpoint -q "$m" 2>/dev/null && { umount "$m" 2>/dev/null || umount -l "$m"; }; done
  if [ -n "$DPID" ]; then kill "$DPID" 2>/dev/null || true; wait "$DPID" 2>/dev/null || true; DPID=; fi
}
cleanup() { stop_storfs; stop_s3d; rm -rf "$WORK"; }
trap cleanup EXIT

cli() { "$BIN" --socket "$SOCK" "$@"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {'d': d}))" "$1"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

start_s3d() {
  stop_s3d
  coproc S3 { exec "$S3D" --listen 127.0.0.1:0 --bucket bench; }
  S3PID=$S3_PID
  local line; read -r line <&"${S3[0]}"
  ENDPOINT=http://${line#listening on }
}
s3_requests() { curl -sf "$ENDPOINT/_stats" | tail -1; }

start_storfs() { # BACKEND_TOML EXTRA_TOML
  cat > "$WORK/storfs.toml" <<EOF
data_dir = "$WORK/data"
[control]
socket = "$SOCK"
[nfs]
enabled = false
[nbd]
enabled = false
[gc]
interval = "0"
$1
$2
EOF
  "$BIN" --config "$WORK/storfs.toml" serve 2>>"$WORK/daemon.log" &
  DPID=$!
  for _ in $(seq 200); do cli status >/dev/null 2>&1 && break; sleep 0.1; done
  mkdir -p "$MNT"; cli mount "$MNT" >/dev/null
}

# MiB/s of a cold sequential read of COUNT MiB of FILE.
read_mibs() { # FILE COUNT
  sync; echo 3 > /proc/sys/vm/drop_caches
  local t0 t1; t0=$(now_ms)
  dd if="$1" of=/dev/null bs=1M count="$2" status=none
  t1=$(now_ms)
  python3 -c "print(f'{$2 * 1000 / max($t1 - $t0, 1):.0f}')"
}

declare -A R
tier_round() {
  start_s3d
  rm -rf "$WORK/data"
  local s3="[backend]
kind = \"s3\"
bucket = \"bench\"
endpoint = \"$ENDPOINT\"
path_style = true
[cache]
disk = \"0\"
memory = \"16MiB\"
readahead = \"4MiB\""
  local life="[lifecycle]
transition_to_ia = \"20s\"
interval = \"0\"
[lifecycle.fs.hot]
transition_to_ia = \"off\""
  start_storfs "$s3" "$life"
  cli fs create hot >/dev/null
  mkdir -p "$WORK/hot"; cli mount --fs hot "$WORK/hot" >/dev/null
  head -c "$((MIB << 20))" /dev/urandom > "$MNT/cold"
  head -c "$((MIB << 18))" /dev/urandom > "$WORK/hot/data"
  sync; cli flush >/dev/null
  sleep 21
  local before after t0 t1 rep
  before=$(s3_requests)
  t0=$(now_ms); rep=$(cli tier run --json); t1=$(now_ms)
  after=$(s3_requests)
  local moved; moved=$(echo "$rep" | json 'd["to_ia_bytes"]')
  R[tier.s_per_gib]+="$(python3 -c "print(f'{($t1 - $t0) / 1000 / ($moved / 2**30):.1f}')") "
  R[tier.requests]+="$(python3 - "$before" "$after" <<'EOP'
import json, sys
b, a = (json.loads(x)["requests"] for x in sys.argv[1:])
print("/".join(f"{k}:{a.get(k, 0) - b.get(k, 0)}" for k in sorted(a) if a.get(k, 0) != b.get(k, 0)))
EOP
) "
  R[tier.moved_mib]+="$((moved >> 20)) "
  # Cold reads: a fresh daemon (empty memory cache), page cache dropped.
  cli umount "$WORK/hot" >/dev/null; stop_storfs; start_storfs "$s3" "$life"
  mkdir -p "$WORK/hot"; cli mount --fs hot "$WORK/hot" >/dev/null
  local tenth=$((MIB / 10))
  R[read.ia]+="$(read_mibs "$MNT/cold" "$tenth") "
  R[read.standard]+="$(read_mibs "$WORK/hot/data" "$tenth") "
  sleep 1
  before=$(s3_requests)
  t0=$(now_ms); rep=$(cli tier run --json); t1=$(now_ms)
  after=$(s3_requests)
  R[back.mib]+="$(($(echo "$rep" | json 'd["to_standard_bytes"]') >> 20)) "
  R[back.s]+="$(python3 -c "print(f'{($t1 - $t0) / 1000:.1f}')") "
  cli umount "$WORK/hot" >/dev/null
  stop_storfs
  stop_s3d
}

# Data set for compression: a real mixed tree (text, man pages, binaries).
dataset() {
  [ -s "$WORK/dataset" ] && return
  tar -cf - /usr/share /usr/lib 2>/dev/null | head -c "$((MIB << 20))" > "$WORK/dataset" || true
}

compress_round() {
  dataset
  for mode in off zstd lz4; do
    rm -rf "$WORK/data"
    start_storfs "[storage]
compression = \"$mode\"" "[lifecycle]
interval = \"0\""
    sync; echo 3 > /proc/sys/vm/drop_caches
    cat "$WORK/dataset" > /dev/null
    local t0 t1; t0=$(now_ms)
    dd if="$WORK/dataset" of="$MNT/set" bs=1M conv=fsync status=none
    cli flush >/dev/null
    t1=$(now_ms)
    R[w.$mode]+="$(python3 -c "print(f'{$MIB * 1000 / ($t1 - $t0):.0f}')") "
    R[ratio.$mode]+="$(cli status --json | json 'round(d["storage"]["unique_bytes"] / d["storage"]["stored_bytes"], 2)') "
    stop_storfs
  done
}

for round in $(seq "$ROUNDS"); do
  echo "== round $round" >&2
  tier_round
  compress_round
done

median() { python3 -c "
import statistics,sys
v=[float(x) for x in sys.argv[1:]]
print(f'{statistics.median(v):g}' if v else '-')" $1; }
printf '\ntiering %s MiB of cold data on storfs-s3d, %s rounds (medians; every round after the bar)\n' "$MIB" "$ROUNDS"
printf '%-46s %10s   | %s\n' "moved to STANDARD_IA (MiB)" "$(median "${R[tier.moved_mib]}")" "${R[tier.moved_mib]}"
printf '%-46s %10s   | %s\n' "tier pass, seconds per GiB" "$(median "${R[tier.s_per_gib]}")" "${R[tier.s_per_gib]}"
printf '%-46s %10s   | %s\n' "requests of the pass (server counters)" "" "${R[tier.requests]}"
printf '%-46s %10s   | %s\n' "cold read from IA packs (MiB/s)" "$(median "${R[read.ia]}")" "${R[read.ia]}"
printf '%-46s %10s   | %s\n' "cold read from Standard packs (MiB/s)" "$(median "${R[read.standard]}")" "${R[read.standard]}"
printf '%-46s %10s   | %s\n' "read 10%, next pass brings back (MiB)" "$(median "${R[back.mib]}")" "${R[back.mib]}"
printf '%-46s %10s   | %s\n' "that pass (seconds)" "$(median "${R[back.s]}")" "${R[back.s]}"
printf '\ncompression: %s MiB of a tar of /usr/share and /usr/lib, written through FUSE (dd conv=fsync + storfs flush)\n' "$MIB"
printf '%-8s %12s %8s %8s   | all runs (MiB/s; ratio)\n' "mode" "write MiB/s" "vs off" "ratio"
off=$(median "${R[w.off]}")
for mode in off zstd lz4; do
  w=$(median "${R[w.$mode]}")
  printf '%-8s %12s %8s %8s   | %s; %s\n' "$mode" "$w" "$(python3 -c "print(f'{$w / $off:.2f}')")" \
    "$(median "${R[ratio.$mode]}")" "${R[w.$mode]}" "${R[ratio.$mode]}"
done
