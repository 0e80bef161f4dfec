#!/usr/bin/env python3
"""Per-thread CPU per probe of modelgated (issue 3's breakdown): N servers on
mock-model-server --ports, interval 1 s, timeout 0.5 s, as in probe_scale.py;
after a warm-up (5 s by default: the registrations' aftermath included),
`perf stat --per-thread -e task-clock,context-switches` samples the daemon
for a window and the script prints each thread's CPU microseconds per probe
and context switches per second (threads of one name summed:
caf.multiplexer is CAF's workers, caf.clock its clock, caf.actor the
detached actors (the registry, the admin API), modelgated the probe I/O
thread and the HTTP threads). With --wakeups it instead records
`sched:sched_waking` system-wide and prints how often each thread of the
daemon was woken, a second, and by whom.

Run by hand, as root (perf is Debian's linux-perf):
    python3 tools/bench/probe_threads.py [--servers 10000] [--seconds 20]
        [--warm 5] [--wakeups] [--binary OTHER/modelgated]
Only 127.0.0.1 is used.
"""
import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time

import probe_scale as ps
from benchlib import kill_started


def per_thread_stat(pid, seconds, probes, out):
    subprocess.run(["perf", "stat", "--per-thread", "-e", "task-clock,context-switches", "-p",
                    str(pid), "-o", out, "--", "sleep", str(seconds)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cpu_ms = collections.Counter()
    switches = collections.Counter()
    with open(out) as f:
        for line in f:
            m = re.match(r"\s*(\S+)-\d+\s+([\d,.]+)\s+(msec task-clock|context-switches)", line)
            if m:
                value = float(m.group(2).replace(",", ""))
                (cpu_ms if m.group(3).startswith("msec") else switches)[m.group(1)] += value
    for name, ms in cpu_ms.most_common():
        if ms > 0:
            print(f"{name:16} {ms * 1000 / probes:6.2f} us/probe  "
                  f"{switches[name] / seconds:7.1f} context switches/s")
    print(f"{'total':16} {sum(cpu_ms.values()) * 1000 / probes:6.2f} us/probe  "
          f"{sum(switches.values()) / seconds:7.1f} context switches/s")


def wakeups(pid, seconds, out):
    """Wake-ups of the daemon's threads, a second, by waking thread's name."""
    names = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            names[tid] = f.read().strip()
    subprocess.run(["perf", "record", "-a", "-e", "sched:sched_waking", "-o", out, "--",
                    "sleep", str(seconds)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    script = subprocess.run(["perf", "script", "-i", out, "-F", "comm,tid,trace"],
                            check=True, capture_output=True, text=True).stdout
    pairs = collections.Counter()
    for line in script.splitlines():
        m = re.match(r"\s*(.+?)\s+(\d+)\s+comm=.+? pid=(\d+)", line)
        if m and m.group(3) in names:
            waker = names.get(m.group(2), m.group(1))
            pairs[(names[m.group(3)], waker)] += 1
    per_wakee = collections.Counter()
    for (wakee, waker), n in pairs.most_common():
        per_wakee[wakee] += n
        print(f"{wakee:16} woken {n / seconds:7.1f}/s by {waker}")
    for wakee, n in per_wakee.most_common():
        print(f"{wakee:16} {n / seconds:7.1f} wake-ups/s")
    print(f"{'total':16} {sum(per_wakee.values()) / seconds:7.1f} wake-ups/s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--servers", type=int, default=10000)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--warm", type=float, default=5,
                    help="seconds after the registrations before the window")
    ap.add_argument("--wakeups", action="store_true")
    ap.add_argument("--binary", help="the modelgated to run (build/bin/modelgated)")
    args = ap.parse_args()
    ps.raise_fd_limit()
    work = tempfile.mkdtemp(prefix="probe-threads-")
    mocks = ps.start_mocks(args.servers)
    daemon = ps.Daemon(work, args.binary)
    daemon.register_all(mocks)
    time.sleep(args.warm)  # every prober past its first, randomly placed tick
    print(f"nproc: {os.cpu_count()}  servers: {args.servers}  window: {args.seconds} s  "
          f"warm-up: {args.warm} s")
    if args.wakeups:
        wakeups(daemon.proc.pid, args.seconds, os.path.join(work, "perf.data"))
    else:
        per_thread_stat(daemon.proc.pid, args.seconds, args.servers * args.seconds,
                        os.path.join(work, "perf.txt"))
    daemon.stop()
    for m in mocks:
        m.stop()


if __name__ == "__main__":
    import atexit
    atexit.register(kill_started)
    sys.exit(main())
