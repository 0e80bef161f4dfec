"""Process helpers shared by the benchmark scripts in this folder: start
programs, wait for their announcement line, read their CPU time, and kill
whatever is left at exit."""
import os
import socket
import subprocess
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")

STARTED = []  # every process started here, killed at exit whatever happens


def spawn(args, **kw):
    proc = subprocess.Popen(args, **kw)
    STARTED.append(proc)
    return proc


def kill_started():
    for p in STARTED:
        if p.poll() is None:
            p.kill()


def _stat_cpu(path):
    """(command name, CPU seconds user + system) from a /proc .../stat file."""
    with open(path) as f:
        head, tail = f.read().rsplit(")", 1)
    fields = tail.split()
    return head.split("(", 1)[1], (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def cpu_seconds(pid):
    """CPU seconds (user + system) process `pid` has used so far."""
    return _stat_cpu(f"/proc/{pid}/stat")[1]


def thread_cpu_seconds(pid):
    """{thread id: (thread name, CPU seconds so far)} of process `pid`."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out[tid] = _stat_cpu(f"/proc/{pid}/task/{tid}/stat")
        except FileNotFoundError:
            pass  # the thread ended meanwhile
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_line(proc, prefix, timeout=20):
    """The first stdout line of `proc` starting with `prefix`."""
    deadline = time.time() + timeout
    lines = []
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                raise RuntimeError(f"process exited before {prefix!r}: {lines}")
            continue
        lines.append(line.strip())
        if line.startswith(prefix):
            return line.strip()
    raise RuntimeError(f"no line {prefix!r} within {timeout}s: {lines}")
