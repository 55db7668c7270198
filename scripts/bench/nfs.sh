#!/usr/bin/env bash
# Benchmark: storfs's NFSv3 server against nfs-ganesha (VFS FSAL) exporting
# a plain directory of the same disk, driven from this host by the same
# client (examples/nfsload.rs, built on the nfs3_client crate), side by side
# in one run, printing storfs/ganesha ratios.
#
#   scripts/bench/nfs.sh [ROUNDS]       (default 3; run as root)
#
# Each round runs every workload against ganesha, then against storfs, on
# fresh data; the table shows medians. Workloads: sequential write of 1 GiB
# (1 MiB UNSTABLE writes then COMMIT), sequential read of it (page cache
# dropped first; storfs flushed first), creating 5,000 files of 4 KiB
# (CREATE + WRITE + COMMIT each), and 4 parallel clients (1 GiB written in
# total, then 5,000 small files in total).
#
# The client runs on the host: inside the emulated VM every server measures
# the same ~200 files/s because the guest CPU is the bottleneck.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-3}
BASE=${BENCH_DIR:-/var/tmp}
WORK=$(mktemp -d "$BASE/storfs-nfsbench.XXXXXX")
BIN=target/release/storfs
LOAD=target/release/examples/nfsload

[ "$(id -u)" -eq 0 ] || { echo "run as root (drops caches, runs ganesha)" >&2; exit 1; }
command -v ganesha.nfsd >/dev/null || { echo "nfs-ganesha is required (apt install nfs-ganesha nfs-ganesha-vfs rpcbind)" >&2; exit 1; }
cargo build --release --quiet
cargo build --release --quiet --example nfsload

STARTED_RPCBIND=
cleanup() {
  [ -n "${SPID:-}" ] && kill "$SPID" 2>/dev/null && wait "$SPID" 2>/dev/null || true
  [ -f "$WORK/ganesha.pid" ] && kill "$(cat "$WORK/ganesha.pid")" 2>/dev/null || true
  sleep 1
  [ -n "$STARTED_RPCBIND" ] && pkill -x rpcbind || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# ganesha registers with rpcbind.
if ! pgrep -x rpcbind >/dev/null; then rpcbind -w; STARTED_RPCBIND=1; fi
mkdir -p "$WORK/export"
cat > "$WORK/ganesha.conf" <<EOF
NFS_CORE_PARAM {
    Protocols = 3; Bind_addr = 127.0.0.1;
    NFS_Port = 20591; MNT_Port = 20592; NLM_Port = 20593; Rquota_Port = 20594;
    Enable_NLM = false; Enable_RQUOTA = false;
}
NFSV4 { Graceless = true; }
EXPORT {
    Export_Id = 1; Path = $WORK/export; Pseudo = /bench;
    Access_Type = RW; Squash = No_Root_Squash; Protocols = 3; Transports = TCP; SecType = sys;
    FSAL { Name = VFS; }
}
LOG { Default_Log_Level = WARN; }
EOF
# Each round starts ganesha on an empty export, as storfs starts on an empty
# data dir: files removed behind ganesha's back leave stale entries in its
# cache (CREATE then fails with NFS3ERR_STALE).
start_ganesha() {
  rm -rf "$WORK/export"
  mkdir -p "$WORK/export"
  ganesha.nfsd -L "$WORK/ganesha.log" -f "$WORK/ganesha.conf" -p "$WORK/ganesha.pid"
  sleep 3
}

stop_ganesha() {
  local pid
  pid=$(cat "$WORK/ganesha.pid")
  kill "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  rm -f "$WORK/ganesha.pid"
}

start_storfs() {
  rm -rf "$WORK/storfs"
  mkdir -p "$WORK/storfs"
  cat > "$WORK/storfs/storfs.toml" <<EOF
data_dir = "$WORK/storfs/data"
[control]
socket = "$WORK/storfs/storfs.sock"
[nfs]
listen = "127.0.0.1:20590"
EOF
  "$BIN" --config "$WORK/storfs/storfs.toml" serve 2>"$WORK/storfs/daemon.log" &
  SPID=$!
  for _ in $(seq 100); do "$BIN" --socket "$WORK/storfs/storfs.sock" status >/dev/null 2>&1 && return; sleep 0.1; done
  echo "storfs did not start" >&2; exit 1
}

stop_storfs() { kill "$SPID"; wait "$SPID" || true; SPID=; }

declare -A R
run_side() { # SIDE
  local side=$1 args
  if [ "$side" = ganesha ]; then
    start_ganesha
    args=(127.0.0.1 20591 20592 "$WORK/export")
  else
    start_storfs
    args=(127.0.0.1 20590 20590 /default)
  fi
  get() { sed -n "s/^$1=//p"; }
  R[$side.seqw]+="$("$LOAD" "${args[@]}" seqwrite 1024 | get seqwrite_mib_s) "
  [ "$side" = storfs ] && "$BIN" --socket "$WORK/storfs/storfs.sock" flush
  sync; echo 3 > /proc/sys/vm/drop_caches
  R[$side.seqr]+="$("$LOAD" "${args[@]}" seqread | get seqread_mib_s) "
  R[$side.small]+="$("$LOAD" "${args[@]}" smallfiles 0 5000 | get smallfiles_per_s) "
  local par
  par=$("$LOAD" "${args[@]}" parallel 1024 5000 4)
  R[$side.parw]+="$(echo "$par" | get parallel_write_mib_s) "
  R[$side.pars]+="$(echo "$par" | get parallel_smallfiles_per_s) "
  if [ "$side" = storfs ]; then stop_storfs; else stop_ganesha; fi
}

for round in $(seq "$ROUNDS"); do
  for side in ganesha storfs; do
    echo "== round $round: $side" >&2
    run_side $side
  done
done

OTHER=ganesha
. scripts/bench/table.sh
printf '\nmedians of %s rounds\n' "$ROUNDS"
header ganesha
row "seq write 1 GiB (MiB/s)" seqw
row "seq read 1 GiB (MiB/s)" seqr
row "create 5,000 x 4 KiB, 1 client (files/s)" small
row "4 clients, write 1 GiB (MiB/s)" parw
row "4 clients, create 5,000 x 4 KiB (files/s)" pars
