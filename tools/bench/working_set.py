#!/usr/bin/env python3
"""The memory modelgated touches each second while it probes N servers
(interval 1 s, timeout 0.5 s, as in probe_scale.py): after a warm-up, the
script clears the daemon's page-referenced bits (/proc/PID/clear_refs),
waits one second, and sums the `Referenced:` pages of /proc/PID/smaps,
three times; for each binary given, alternating, twice.

Why it matters: on the virtual machines here the host takes a share of a
process's pages away every second and the next touch of each stalls for
100-350 µs (build/bin/cold_touch measures the rate of the day). The more
pages a probe's memory is spread over, the more such stalls per probe; unlike
CPU per probe, this figure does not drift with the machine, so two builds
compare exactly. It covers user-space memory only, not the kernel's sockets.

Run by hand, as root, never while building:
    python3 tools/bench/working_set.py [--servers 1000] BINARY [BINARY...]
Only 127.0.0.1 is used.
"""
import argparse
import tempfile
import time

import probe_scale as ps
from benchlib import kill_started


def referenced_kib(pid):
    """KiB referenced since the last clear: (all mappings, anonymous ones)."""
    total = anon = 0
    name = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and len(parts) >= 5:  # a mapping's header line
                name = parts[5] if len(parts) > 5 else "[anon]"
            elif parts[0] == "Referenced:":
                kib = int(parts[1])
                total += kib
                if name in ("[anon]", "[heap]"):
                    anon += kib
    return total, anon


def measure(binary, mocks, servers, workdir):
    daemon = ps.Daemon(workdir, binary)
    daemon.register_all(mocks)
    time.sleep(14)  # past the registrations' aftermath (their 10 s request timeouts)
    rows = []
    for _ in range(3):
        with open(f"/proc/{daemon.proc.pid}/clear_refs", "w") as f:
            f.write("1")
        time.sleep(1.0)
        rows.append(referenced_kib(daemon.proc.pid))
    rss = ps.rss_kib(daemon.proc.pid)
    daemon.stop()
    total = sum(r[0] for r in rows) / len(rows)
    anon = sum(r[1] for r in rows) / len(rows)
    print(f"{binary}: referenced a second {total / 1024:.2f} MiB, of it anonymous "
          f"{anon / 1024:.2f} MiB = {anon / 4 / servers:.2f} pages per probe; RSS {rss / 1024:.1f} MiB",
          flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--servers", type=int, default=1000)
    ap.add_argument("binaries", nargs="+")
    args = ap.parse_args()
    ps.raise_fd_limit()
    mocks = ps.start_mocks(args.servers)
    try:
        with tempfile.TemporaryDirectory(prefix="working-set-") as workdir:
            for binary in args.binaries * 2:
                measure(binary, mocks, args.servers, workdir)
    finally:
        for m in mocks:
            m.stop()


if __name__ == "__main__":
    import atexit
    atexit.register(kill_started)
    main()
