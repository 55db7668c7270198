#!/usr/bin/env bash
# Benchmark: snapshots of storfs volumes.
#
#   scripts/bench/snapshot.sh [ROUNDS]        (default 3 rounds; run as root)
#
# Per round, for a 1 GiB and a 64 GiB sparse volume (256 KiB blocks):
# 1,000 random blocks written, snapshot s1; 1,000 more, snapshot s2; 100
# more, snapshot s3. Times: `snapshot create` (s2), `volume create
# --from-snapshot` (clone of s2), `snapshot diff` s1..s2 (1,000 changed
# blocks) and s2..s3 (100). Side by side, qcow2 through qemu-img on the same
# disk: an internal snapshot (`qemu-img snapshot -c`) and a clone as an
# overlay (`qemu-img create -b`) of a qcow2 image with the same writes.
# Then NBD 4 KiB random write IOPS (fio, QD32, 20 s) on a 1 GiB volume with
# no snapshot and on one with 10 snapshots taken between rounds of random
# writes, and how long the `storfs flush` after each takes (where the
# versions kept for snapshots cost). Every round is printed; the tables
# show medians.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-3}
BASE=${BENCH_DIR:-/var/tmp}
WORK=$(mktemp -d "$BASE/storfs-snapbench.XXXXXX")
BIN=target/release/storfs
SOCK=$WORK/storfs.sock
PORT=20620

[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }
for t in qemu-img qemu-io fio nbdinfo; do command -v $t >/dev/null || { echo "$t is required" >&2; exit 1; }; done
cargo build --release --quiet

cleanup() {
  [ -n "${SPID:-}" ] && kill "$SPID" 2>/dev/null && wait "$SPID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

cli() { "$BIN" --socket "$SOCK" "$@"; }

start_storfs() {
  rm -rf "$WORK/data"
  cat > "$WORK/storfs.toml" <<EOC
data_dir = "$WORK/data"
[control]
socket = "$SOCK"
[nfs]
enabled = false
[nbd]
listen = "127.0.0.1:$PORT"
EOC
  "$BIN" --config "$WORK/storfs.toml" serve 2>"$WORK/daemon.log" &
  SPID=$!
  for _ in $(seq 100); do cli status >/dev/null 2>&1 && break; sleep 0.1; done
}

stop_storfs() { kill "$SPID"; wait "$SPID" || true; SPID=; }

# Milliseconds that CMD... takes.
ms() {
  local t0 t1
  t0=$(date +%s%N)
  "$@" >/dev/null
  t1=$(date +%s%N)
  echo $(((t1 - t0) / 1000000))
}

# qemu-io commands writing N random 4 KiB pieces, one per distinct 256 KiB
# block of a SIZE_GIB volume (seeded by SEED).
writes() { # N SIZE_GIB SEED
  python3 - "$@" <<'EOP'
import random, sys
n, gib, seed = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
r = random.Random(seed)
for b in r.sample(range(gib * 4096), n):
    print(f"-c\nwrite -P {(b + seed * 7) % 250 + 1} {b * 262144} 4k")
EOP
}

write_random() { # TARGET FORMAT N SIZE_GIB SEED
  local args
  mapfile -t args < <(writes "$3" "$4" "$5")
  qemu-io -f "$2" "${args[@]}" "$1" >/dev/null
}

declare -A R
snap_round() { # SIZE_GIB
  local g=$1 v="v$1" uri="nbd://127.0.0.1:$PORT/v$1" q="$WORK/q$1.qcow2"
  cli volume create "$v" --size "${g}GiB" >/dev/null
  write_random "$uri" raw 1000 "$g" 1
  cli snapshot create --volume "$v" s1 >/dev/null
  write_random "$uri" raw 1000 "$g" 2
  cli flush >/dev/null
  R[storfs.create$g]+="$(ms cli snapshot create --volume "$v" s2) "
  write_random "$uri" raw 100 "$g" 3
  cli snapshot create --volume "$v" s3 >/dev/null
  cli flush >/dev/null
  R[storfs.clone$g]+="$(ms cli volume create "c$g" --from-snapshot "$v@s2") "
  R[storfs.diff1000_$g]+="$(ms cli snapshot diff --volume "$v" s1 s2 --json) "
  R[storfs.diff100_$g]+="$(ms cli snapshot diff --volume "$v" s2 s3 --json) "
  local n
  n=$(cli snapshot diff --volume "$v" s1 s2 --json | python3 -c "import json,sys; print(sum(e['length'] for e in json.load(sys.stdin)) // 262144)")
  echo "   ${g} GiB: diff s1..s2 lists $n changed blocks" >&2
  # qcow2 with the same writes.
  rm -f "$q" "$q.clone"
  qemu-img create -q -f qcow2 -o cluster_size=262144 "$q" "${g}G"
  write_random "$q" qcow2 1000 "$g" 1
  qemu-img snapshot -c s1 "$q"
  write_random "$q" qcow2 1000 "$g" 2
  sync
  R[qcow2.create$g]+="$(ms qemu-img snapshot -c s2 "$q") "
  R[qcow2.clone$g]+="$(ms qemu-img create -q -f qcow2 -b "$q" -F qcow2 "$q.clone") "
  R[qcow2.diff1000_$g]+="- "
  R[qcow2.diff100_$g]+="- "
  rm -f "$q" "$q.clone"
}

# fio random 4 KiB writes for SECONDS on volume V; prints IOPS.
randwrite() { # V SECONDS
  fio --name=b --ioengine=nbd --uri="nbd://127.0.0.1:$PORT/$1" --size=1G --rw=randwrite --bs=4k \
    --iodepth=32 --time_based --runtime="$2" --output-format=json > "$WORK/fio.json"
  python3 - "$WORK/fio.json" <<'EOP'
import json, sys
text = open(sys.argv[1]).read()
print(f'{json.loads(text[text.index("{"):])["jobs"][0]["write"]["iops"]:.0f}')
EOP
}

iops_round() {
  for side in none ten; do
    cli volume create "w$side" --size 1GiB >/dev/null
    fio --name=fill --ioengine=nbd --uri="nbd://127.0.0.1:$PORT/w$side" --size=1G --rw=write --bs=1M \
      --iodepth=8 --output-format=json >/dev/null
    cli flush >/dev/null
    if [ $side = ten ]; then
      for i in $(seq 10); do
        randwrite "w$side" 1 >/dev/null
        cli snapshot create --volume "w$side" "n$i" >/dev/null
      done
      cli flush >/dev/null
    fi
    R[$side.iops]+="$(randwrite "w$side" 20) "
    R[$side.flush]+="$(ms cli flush) "
  done
}

for round in $(seq "$ROUNDS"); do
  echo "== round $round" >&2
  start_storfs
  snap_round 1
  snap_round 64
  iops_round
  stop_storfs
done

. scripts/bench/table.sh
median() { python3 -c "
import statistics,sys
v=[float(x) for x in sys.argv[1:] if x != '-']
print(f'{statistics.median(v):.0f}' if v else '-')" $1; }
printf '\nsnapshots: medians of %s rounds (milliseconds, through the CLI)\n' "$ROUNDS"
printf '%-44s %8s %8s   all runs\n' "operation" "qcow2" "storfs"
for g in 1 64; do
  for k in create clone diff1000_ diff100_; do
    key=$k$g
    label="${k%_} ($g GiB volume)"
    case $k in diff1000_) label="diff, 1,000 changed blocks ($g GiB)" ;; diff100_) label="diff, 100 changed blocks ($g GiB)" ;; esac
    printf '%-44s %8s %8s   qcow2: %s storfs: %s\n' "$label" "$(median "${R[qcow2.$key]}")" "$(median "${R[storfs.$key]}")" \
      "${R[qcow2.$key]}" "${R[storfs.$key]}"
  done
done
OTHER=none
printf '\nNBD 4 KiB random write QD32, 1 GiB volume, storfs alone: no snapshot vs 10 snapshots\n'
printf '%-42s %10s %10s %7s   all runs\n' "workload" "none" "10 snaps" "ratio"
for k in iops flush; do
  o=$(median "${R[none.$k]}"); s=$(median "${R[ten.$k]}")
  label="rand write (IOPS)"; [ $k = flush ] && label="flush after it (ms)"
  printf '%-42s %10s %10s %7s   none: %s ten: %s\n' "$label" "$o" "$s" "$(python3 -c "print(f'{$s / $o:.2f}')")" \
    "${R[none.$k]}" "${R[ten.$k]}"
done
