# Sourced by the benchmark scripts that run file workloads: one fio job in
# DIR, its bandwidth or IOPS printed, and the small-files workload. Needs
# $WORK (a scratch directory).

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

small_files() { # DIR PROCS → files per second
  python3 - "$1" "$2" <<'PY'
import os, subprocess, sys, time
from multiprocessing import Process
base, procs, total = sys.argv[1], int(sys.argv[2]), 10000
def work(k):
    d = os.path.join(base, f"w{k}")
    os.mkdir(d)
    for i in range(total // procs):
        fd = os.open(os.path.join(d, f"f{i:05d}"), os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
        os.write(fd, os.urandom(4096))
        os.close(fd)
os.mkdir(base)
t = time.perf_counter()
ps = [Process(target=work, args=(k,)) for k in range(procs)]
for p in ps: p.start()
for p in ps: p.join()
subprocess.run(["sync", "-f", base], check=True)
fd = os.open(os.path.join(base, f"w{procs - 1}", f"f{total // procs - 1:05d}"), os.O_RDONLY)
os.fsync(fd)
os.close(fd)
print(f"{total / (time.perf_counter() - t):.0f}")
PY
}
