"""Does lock operations on an NFS mount as a test on the host asks.

The host writes a command (JSON) to OUT/step-N, this answers in
OUT/done-N. A command runs in a thread of its own, so a blocking lock does
not hold up the next command; POSIX locks belong to the process, so every
thread's locks are this machine's one owner per file descriptor set.
"""
import fcntl
import json
import os
import struct
import subprocess
import sys
import threading
import time

MNT, OUT = sys.argv[1], sys.argv[2]
files = {}  # name -> descriptor
lock = threading.Lock()


def fd_of(name, path):
    with lock:
        if name not in files:
            files[name] = os.open(os.path.join(MNT, path), os.O_RDWR | os.O_CREAT, 0o666)
        return files[name]


def getlk(fd, start, length, exclusive):
    kind = fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK
    got = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack("hhqqi", kind, 0, start, length, 0))
    return struct.unpack("hhqqi", got)[0] != fcntl.F_UNLCK


def counter(path, procs, secs):
    """procs processes each add 1 to the number in path under an exclusive
    lock of the whole file, for secs seconds; returns the increments made."""
    code = (
        "import fcntl,os,sys,time\n"
        "fd=os.open(sys.argv[1],os.O_RDWR);end=time.time()+float(sys.argv[2]);n=0\n"
        "while time.time()<end:\n"
        " fcntl.lockf(fd,fcntl.LOCK_EX)\n"
        " os.lseek(fd,0,0);v=int(os.read(fd,64) or b'0')\n"
        " os.lseek(fd,0,0);os.write(fd,str(v+1).encode().ljust(20));os.fsync(fd)\n"
        " fcntl.lockf(fd,fcntl.LOCK_UN);n+=1\n"
        "print(n)\n"
    )
    ps = [subprocess.Popen([sys.executable, "-c", code, os.path.join(MNT, path), str(secs)], stdout=subprocess.PIPE)
          for _ in range(procs)]
    return sum(int(p.communicate()[0]) for p in ps)


def run(cmd):
    op = cmd["op"]
    t = time.time()
    try:
        if op == "lock":
            fd = fd_of(cmd["name"], cmd["path"])
            flags = (fcntl.LOCK_EX if cmd.get("exclusive", True) else fcntl.LOCK_SH)
            if not cmd.get("wait", False):
                flags |= fcntl.LOCK_NB
            fcntl.lockf(fd, flags, cmd.get("len", 0), cmd.get("start", 0), 0)
        elif op == "unlock":
            fd = fd_of(cmd["name"], cmd["path"])
            fcntl.lockf(fd, fcntl.LOCK_UN, cmd.get("len", 0), cmd.get("start", 0), 0)
            if cmd.get("watch"):
                # How long until someone else holds what this released.
                t = time.time()
                while not getlk(fd, cmd.get("start", 0), cmd.get("len", 0), True):
                    if time.time() - t > 60:
                        return {"ok": False, "why": "nobody took the lock within 60 s"}
                    time.sleep(0.005)
        elif op == "getlk":
            fd = fd_of(cmd["name"], cmd["path"])
            return {"ok": True, "held": getlk(fd, cmd.get("start", 0), cmd.get("len", 0), cmd.get("exclusive", True))}
        elif op == "close":
            with lock:
                os.close(files.pop(cmd["name"]))
        elif op == "flock":
            r = subprocess.run(["flock"] + cmd["args"] + [os.path.join(MNT, cmd["path"])] + cmd.get("run", ["true"]))
            return {"ok": r.returncode == 0, "code": r.returncode, "secs": time.time() - t}
        elif op == "counter":
            return {"ok": True, "increments": counter(cmd["path"], cmd["procs"], cmd["secs"])}
        elif op == "save_nsm":
            subprocess.run(["cp", "-a", "/var/lib/nfs/.", os.path.join(OUT, "nfs-state")], check=True)
        elif op == "shell":
            r = subprocess.run(cmd["cmd"], shell=True, capture_output=True, text=True)
            return {"ok": r.returncode == 0, "out": r.stdout + r.stderr}
        else:
            return {"ok": False, "why": "unknown op " + op}
        return {"ok": True, "secs": time.time() - t}
    except OSError as e:
        return {"ok": False, "errno": e.errno, "secs": time.time() - t}


def answer(n, cmd):
    res = run(cmd)
    tmp = os.path.join(OUT, ".done-%d" % n)
    with open(tmp, "w") as f:
        json.dump(res, f)
    os.rename(tmp, os.path.join(OUT, "done-%d" % n))


open(os.path.join(OUT, "ready"), "w").close()
n = 0
while True:
    step = os.path.join(OUT, "step-%d" % n)
    if not os.path.exists(step):
        time.sleep(0.02)
        continue
    with open(step) as f:
        cmd = json.load(f)
    if cmd["op"] == "exit":
        open(os.path.join(OUT, "done-%d" % n), "w").write("{}")
        break
    threading.Thread(target=answer, args=(n, cmd), daemon=True).start()
    n += 1
