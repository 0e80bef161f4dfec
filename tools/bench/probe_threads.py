#!/usr/bin/env python3
"""Per-thread CPU per probe of modelgated (issue 3's breakdown): N servers on
mock-model-server --ports, interval 1 s, timeout 0.5 s, as in probe_scale.py;
after a 5 s warm-up, `perf stat --per-thread -e task-clock` samples the daemon
for a window and the script prints each thread's CPU microseconds per probe
(threads of one name summed: caf.multiplexer is CAF's workers, caf.clock its
clock, caf.actor the detached actors (the registry), modelgated the probe I/O
thread and the HTTP threads).

Run by hand, as root (perf is Debian's linux-perf):
    python3 tools/bench/probe_threads.py [--servers 10000] [--seconds 20]
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--servers", type=int, default=10000)
    ap.add_argument("--seconds", type=int, default=20)
    args = ap.parse_args()
    ps.raise_fd_limit()
    work = tempfile.mkdtemp(prefix="probe-threads-")
    mocks = ps.start_mocks(args.servers)
    daemon = ps.Daemon(work)
    daemon.register_all(mocks)
    time.sleep(5)  # every prober past its first, randomly placed tick
    out = os.path.join(work, "perf.txt")
    subprocess.run(["perf", "stat", "--per-thread", "-e", "task-clock", "-p",
                    str(daemon.proc.pid), "-o", out, "--", "sleep", str(args.seconds)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    per_name = collections.Counter()
    with open(out) as f:
        for line in f:
            m = re.match(r"\s*(\S+)-\d+\s+([\d,.]+)\s+msec\s+task-clock", line)
            if m:
                per_name[m.group(1)] += float(m.group(2).replace(",", ""))
    probes = args.servers * args.seconds
    print(f"nproc: {os.cpu_count()}  servers: {args.servers}  window: {args.seconds} s")
    for name, ms in per_name.most_common():
        if ms > 0:
            print(f"{name:16} {ms * 1000 / probes:6.2f} us/probe")
    print(f"{'total':16} {sum(per_name.values()) * 1000 / probes:6.2f} us/probe")
    daemon.stop()
    for m in mocks:
        m.stop()


if __name__ == "__main__":
    import atexit
    atexit.register(kill_started)
    sys.exit(main())
