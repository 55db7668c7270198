# Sourced by the benchmark scripts that run fio: one fio job in DIR, its
# bandwidth or IOPS printed. Needs $WORK (a scratch directory).

fio_run() { # DIR FIELD ARGS... → MiB/s (FIELD=bw) or IOPS (FIELD=iops)
  local dir=$1 field=$2; shift 2
  fio --directory="$dir" --ioengine=psync --output-format=json "$@" > "$WORK/fio.json"
  python3 - "$WORK/fio.json" "$field" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
side = j["read"] if j["read"]["io_bytes"] > 0 else j["write"]
print(f'{side["bw_bytes"] / 2**20:.0f}' if sys.argv[2] == "bw" else f'{side["iops"]:.0f}')
PY
}
