#!/usr/bin/env python3
"""A/B of two modelgated binaries' CPU per probe (issue 3's tuning): both
probe the same N mock servers (as probe_scale.py: interval 1 s, timeout
0.5 s), one after the other, in alternating order, so that the machine's
drift between runs hits both alike. Each run waits until the request
timeouts of its registrations have passed, then measures for a window and
prints the CPU microseconds per probe of the whole daemon and of each thread
(from /proc/PID/task/*/stat, threads of one name summed), then the mean of
each binary.

Run by hand, never while building:
    python3 tools/bench/probe_ab.py OLD/modelgated NEW/modelgated \\
        [--servers 10000] [--seconds 20] [--pairs 2]
Only 127.0.0.1 is used.
"""
import argparse
import os
import tempfile
import time

import probe_scale as ps
from benchlib import kill_started, thread_cpu_seconds


def measure(binary, mocks, seconds, workdir):
    daemon = ps.Daemon(workdir, binary)
    daemon.register_all(mocks)
    time.sleep(14)  # past the 10 s request timeouts of the registrations
    h0 = sum(m.health_requests() for m in mocks)
    t0 = thread_cpu_seconds(daemon.proc.pid)
    time.sleep(seconds)
    t1 = thread_cpu_seconds(daemon.proc.pid)
    probes = max(1, sum(m.health_requests() for m in mocks) - h0)
    daemon.stop()
    per_name = {}
    for tid, (name, cpu) in t1.items():
        if tid in t0:
            per_name[name] = per_name.get(name, 0) + cpu - t0[tid][1]
    us = {name: cpu * 1e6 / probes for name, cpu in per_name.items() if cpu}
    return sum(us.values()), us


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--servers", type=int, default=10000)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--pairs", type=int, default=2)
    args = ap.parse_args()
    ps.raise_fd_limit()
    print(f"nproc: {os.cpu_count()}  servers: {args.servers}  window: {args.seconds} s")
    mocks = ps.start_mocks(args.servers)
    totals = {"A": [], "B": []}
    with tempfile.TemporaryDirectory(prefix="probe-ab-") as workdir:
        for _ in range(args.pairs):
            for label, binary in (("A", args.a), ("B", args.b)):
                total, us = measure(os.path.abspath(binary), mocks, args.seconds, workdir)
                totals[label].append(total)
                threads = "  ".join(f"{n} {v:.2f}" for n, v in sorted(us.items()))
                print(f"{label}: {total:.2f} us/probe  ({threads})", flush=True)
    for m in mocks:
        m.stop()
    for label, xs in totals.items():
        print(f"{label} mean {sum(xs) / len(xs):.2f} us/probe over {len(xs)} runs")


if __name__ == "__main__":
    import atexit
    atexit.register(kill_started)
    main()
