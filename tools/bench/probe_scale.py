#!/usr/bin/env python3
"""Probe-scale benchmark (issue 3): N servers on mock-model-server --ports,
interval 1 s, timeout 0.5 s, probed by modelgated for a fixed time; the same N
checked by HAProxy 2.6 (`check inter 1s`) in the same run for comparison.

Run by hand, as root (it installs haproxy if missing):
    python3 tools/bench/probe_scale.py [--sizes 1000,5000,10000] [--seconds 30] [--deaths 3]
        [--sequential] [--no-haproxy | --only-haproxy]

The CPU comparison with HAProxy (since session 8) alternates windows of the
two on the same servers, 3 each, --seconds in all per side
(compare_interleaved): measured minutes apart, as before, the two figures
compared the machine's drift as much as the programs. --sequential also runs
HAProxy alone after all modelgated scenarios, the old way. --only-haproxy
skips modelgated's scenarios (the comparison still runs both).

Reports per scenario: probes/s achieved vs expected, CPU microseconds per
probe (utime+stime from /proc/PID/stat), p99 lateness of probes against their
schedule (from /v1/health-checker), RSS, and the time from a server's death
(refuse, SIGKILL, hang) to `unhealthy`. Before and after, the machine's cost
of touching memory idle for a second (build/bin/cold_touch): the host's
share in CPU per probe, which varies hour to hour (docs/benchmarks.md).

File descriptors: each process here is limited to the hard RLIMIT_NOFILE of
this machine (20,000 on the CI/dev machines, and it cannot be raised without
CAP_SYS_RESOURCE). The script raises the soft limit to the hard limit for the
processes it starts, and splits the mock servers over processes of at most
5,000 ports each (a port costs a listener and an accepted connection).
Only 127.0.0.1 is used.
"""
import argparse
import datetime
import random
import http.client
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from benchlib import cpu_seconds, free_port, kill_started, spawn, wait_line

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "build", "bin")
PORTS_PER_MOCK = 5000











def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0





class Mock:
    """One mock-model-server process serving `count` consecutive ports."""

    def __init__(self, count, mode="healthy"):
        self.proc = spawn(
            [os.path.join(BIN, "mock-model-server"), "--listen", "127.0.0.1:0",
             "--ports", str(count), "--mode", mode, "--control", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        control = wait_line(self.proc, "mock-model-server control on http://")
        self.control_port = int(control.rsplit(":", 1)[1])
        first = wait_line(self.proc, "mock-model-server listening on http://")
        self.first_port = int(first.rsplit(":", 1)[1])
        self.count = count

    def ports(self):
        return range(self.first_port, self.first_port + self.count)

    def control(self, body=None):
        c = http.client.HTTPConnection("127.0.0.1", self.control_port, timeout=5)
        if body is None:
            c.request("GET", "/control")
        else:
            c.request("POST", "/control", json.dumps(body), {"Content-Type": "application/json"})
        r = json.loads(c.getresponse().read())
        c.close()
        return r

    def health_requests(self):
        return self.control().get("requests", {}).get("/health", 0)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_mocks(n, mode="healthy"):
    mocks = []
    left = n
    while left > 0:
        count = min(PORTS_PER_MOCK, left)
        mocks.append(Mock(count, mode))
        left -= count
    return mocks


class Daemon:
    def __init__(self, workdir, binary=None):
        for suffix in ("", "-wal", "-shm"):  # every scenario starts empty
            try:
                os.remove(os.path.join(workdir, "bench.db" + suffix))
            except FileNotFoundError:
                pass
        self.proc = spawn(
            [binary or os.path.join(BIN, "modelgated"), "--listen", "127.0.0.1:0",
             "--db", os.path.join(workdir, "bench.db"), "--health-interval", "1",
             "--health-timeout", "0.5", "--max-failures", "1000000",
             "--log-level", "error"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = wait_line(self.proc, "modelgate listening on http://")
        self.port = int(line.rsplit(":", 1)[1])
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def call(self, method, path, body=None):
        self.conn.request(method, path, None if body is None else json.dumps(body),
                          {"Content-Type": "application/json"})
        r = self.conn.getresponse()
        return r.status, json.loads(r.read() or b"null")

    def register(self, port):
        status, rec = self.call("POST", "/v1/servers",
                                {"url": f"http://127.0.0.1:{port}", "models": ["m"]})
        assert status in (200, 201), (status, rec)
        return rec["id"]

    def register_all(self, mocks):
        """Registers every port of `mocks`; their ids."""
        return [self.register(port) for m in mocks for port in m.ports()]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)


def time_to_unhealthy(daemon, mode):
    """A single-port mock switched to `mode` right after a probe found it
    healthy, or for "kill" killed (SIGKILL, the clock started before the
    signal). `refuse` stops listening and closes the mock's connections, as a
    process that dies does. Returns (seconds until a GET of its record, every
    millisecond, saw `unhealthy`; seconds until the failure's `last_check_at`,
    the instant modelgated found it, to the record's millisecond), or None."""
    mock = Mock(1)
    sid = daemon.register(mock.first_port)
    deadline = time.time() + 10
    while time.time() < deadline:  # wait until it was probed healthy once
        if daemon.call("GET", f"/v1/servers/{sid}")[1]["status"] == "healthy":
            break
        time.sleep(0.01)
    if mode == "kill":
        t0 = time.time()
        mock.proc.kill()
    else:
        mock.control({"mode": mode})
        t0 = time.time()
    result = None
    while time.time() < t0 + 10:
        rec = daemon.call("GET", f"/v1/servers/{sid}")[1]
        if rec["status"] == "unhealthy":
            seen = time.time() - t0
            found = datetime.datetime.fromisoformat(rec["last_check_at"].replace("Z", "+00:00"))
            result = (seen, found.timestamp() - t0)
            break
        time.sleep(0.001)
    daemon.call("DELETE", f"/v1/servers/{sid}")
    if mode == "kill":
        mock.proc.wait(5)
    else:
        mock.stop()
    return result


def admin_latencies(port, ids, until):
    """GET /v1/servers/{id} of random registered servers, one every 10 ms
    on a kept-alive connection, until `until`: the sorted latencies in ms."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    rng = random.Random(7)
    out = []
    while time.time() < until:
        t = time.perf_counter()
        conn.request("GET", f"/v1/servers/{rng.choice(ids)}")
        r = conn.getresponse()
        r.read()
        assert r.status == 200, r.status
        out.append((time.perf_counter() - t) * 1000)
        time.sleep(0.01)
    conn.close()
    return sorted(out)


def run_modelgate(n, seconds, hang_share, workdir, deaths=3):
    hang = int(n * hang_share)
    mocks = start_mocks(n - hang) + (start_mocks(hang, "hang") if hang else [])
    daemon = Daemon(workdir)
    t = time.time()
    ids = daemon.register_all(mocks)
    reg_seconds = time.time() - t
    time.sleep(2.5)  # every prober past its random first tick
    _, before = daemon.call("GET", "/v1/health-checker")
    # Probes counted by the mocks: ground truth, what the servers saw.
    cpu, probes, elapsed = measure_window(daemon.proc.pid, mocks, seconds)
    _, after = daemon.call("GET", "/v1/health-checker")
    # Admin latency while probing goes on, after the CPU window so that its
    # requests do not count as probe CPU.
    admin_ms = admin_latencies(daemon.port, ids, time.time() + 10)
    applied = after["checks_total"] - before["checks_total"]
    result = {
        "servers": n, "hanging": hang,
        "expected_per_s": n, "probes_per_s": probes / elapsed,
        "results_applied_per_s": applied / elapsed,
        "cpu_us_per_probe": cpu * 1e6 / max(probes, 1),
        "lateness_p99_ms": after.get("probe_lateness_p99_ms"),
        "lateness_max_ms": after.get("probe_lateness_max_ms"),
        "rss_mib": rss_kib(daemon.proc.pid) / 1024,
        "admin_get_p50_ms": admin_ms[len(admin_ms) // 2],
        "admin_get_p99_ms": admin_ms[int(len(admin_ms) * 0.99)],
        "admin_gets": len(admin_ms),
        "register_s": reg_seconds,
    }
    if hang == 0:
        for mode, key in (("refuse", "refused"), ("kill", "killed"), ("hang", "hang")):
            runs = [time_to_unhealthy(daemon, mode) for _ in range(deaths)]
            ok = [r for r in runs if r is not None]
            # The worst of the runs; one never found counts as None.
            result[f"{key}_to_unhealthy_s"] = max(r[0] for r in ok) if len(ok) == len(runs) else None
            result[f"{key}_found_s"] = max(r[1] for r in ok) if len(ok) == len(runs) else None
            result[f"{key}_runs"] = runs
    daemon.stop()
    for m in mocks:
        m.stop()
    return result


def write_haproxy_cfg(mocks, workdir):
    cfg = os.path.join(workdir, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write("global\n  maxconn 4000\n"
                "defaults\n  mode http\n  timeout connect 500ms\n  timeout check 500ms\n"
                "  timeout client 5s\n  timeout server 5s\n"
                "backend models\n  option httpchk GET /health\n")
        i = 0
        for m in mocks:
            for port in m.ports():
                f.write(f"  server s{i} 127.0.0.1:{port} check inter 1s\n")
                i += 1
        f.write(f"frontend fe\n  bind 127.0.0.1:{free_port()}\n  default_backend models\n")
    return cfg


def measure_window(pid, mocks, seconds):
    """(CPU seconds of `pid`, health requests the mocks saw, seconds) over a window."""
    h0 = sum(m.health_requests() for m in mocks)
    cpu0, t0 = cpu_seconds(pid), time.time()
    time.sleep(seconds)
    cpu1, t1 = cpu_seconds(pid), time.time()
    h1 = sum(m.health_requests() for m in mocks)
    return cpu1 - cpu0, h1 - h0, t1 - t0


def start_haproxy(cfg):
    proc = spawn(["haproxy", "-f", cfg, "-db"], stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)
    time.sleep(3)  # HAProxy spreads the first checks over the interval
    return proc


def run_haproxy(n, seconds, workdir):
    mocks = start_mocks(n)
    cfg = write_haproxy_cfg(mocks, workdir)
    proc = start_haproxy(cfg)
    cpu, checks, elapsed = measure_window(proc.pid, mocks, seconds)
    rss = rss_kib(proc.pid) / 1024
    proc.terminate()
    proc.wait(10)
    for m in mocks:
        m.stop()
    return {"servers": n, "checks_per_s": checks / elapsed,
            "cpu_us_per_check": cpu * 1e6 / max(checks, 1), "rss_mib": rss}


def compare_interleaved(n, seconds, workdir, rounds=3):
    """CPU per probe of modelgated and per check of HAProxy on the same N mock
    servers, measured in alternating windows (`rounds` each, `seconds` in all
    per side, the order swapped every round), one prober at a time: the
    machine's cost of the same work drifts by 20 % and more within minutes
    (cold_touch), so two measurements minutes apart compare the machine as
    much as the programs. modelgated stays up and registered; it probes only
    in its windows (POST /v1/health-checker/start, then stop). HAProxy starts
    afresh for each of its windows. Each side warms up 3 s before its window."""
    window = seconds / rounds
    mocks = start_mocks(n)
    daemon = Daemon(workdir)
    daemon.register_all(mocks)
    assert daemon.call("POST", "/v1/health-checker/stop")[0] == 200
    cfg = write_haproxy_cfg(mocks, workdir)
    totals = {"modelgated": [0.0, 0], "haproxy": [0.0, 0]}
    windows = []
    for r in range(rounds):
        for side in (("modelgated", "haproxy") if r % 2 == 0 else ("haproxy", "modelgated")):
            if side == "modelgated":
                assert daemon.call("POST", "/v1/health-checker/start")[0] == 200
                time.sleep(3)  # probers past their random first ticks
                cpu, probes, elapsed = measure_window(daemon.proc.pid, mocks, window)
                assert daemon.call("POST", "/v1/health-checker/stop")[0] == 200
            else:
                proc = start_haproxy(cfg)
                cpu, probes, elapsed = measure_window(proc.pid, mocks, window)
                proc.terminate()
                proc.wait(10)
            totals[side][0] += cpu
            totals[side][1] += probes
            windows.append({"side": side, "cpu_us_per_probe": cpu * 1e6 / max(probes, 1),
                            "probes_per_s": probes / elapsed})
    daemon.stop()
    for m in mocks:
        m.stop()
    ours = totals["modelgated"][0] * 1e6 / max(totals["modelgated"][1], 1)
    theirs = totals["haproxy"][0] * 1e6 / max(totals["haproxy"][1], 1)
    return {"servers": n, "cpu_us_per_probe": ours, "haproxy_cpu_us_per_check": theirs,
            "ratio": ours / theirs if theirs else None, "windows": windows}


def cold_touch():
    """build/bin/cold_touch's line (1,000 pages touched once a second, 6 s)."""
    tool = os.path.join(BIN, "cold_touch")
    if not os.path.exists(tool):
        return "cold_touch not built"
    return subprocess.run([tool, "1000", "1000", "6"], capture_output=True, text=True).stdout.strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,5000,10000")
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--no-haproxy", action="store_true")
    ap.add_argument("--only-haproxy", action="store_true")
    ap.add_argument("--sequential", action="store_true",
                    help="also run HAProxy alone for --seconds per size after every "
                         "modelgated scenario, as before session 8")
    ap.add_argument("--deaths", type=int, default=3,
                    help="deaths measured per mode and size; the table shows the worst")
    args = ap.parse_args()
    if shutil.which("haproxy") is None and not args.no_haproxy:
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "haproxy"],
                       check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["systemctl", "stop", "haproxy"], stderr=subprocess.DEVNULL)
    hard = raise_fd_limit()
    print(f"nproc: {os.cpu_count()}  RLIMIT_NOFILE raised to {hard} for the processes started here")
    touch_before = cold_touch()
    print(f"cold touch before: {touch_before}", flush=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="probe-scale-") as workdir:
        rows = []
        for n in ([] if args.only_haproxy else sizes):
            rows.append(run_modelgate(n, args.seconds, 0.0, workdir, args.deaths))
            print(json.dumps(rows[-1]), flush=True)
        if not args.only_haproxy:
            rows.append(run_modelgate(max(sizes), args.seconds, 0.2, workdir))
            print(json.dumps(rows[-1]), flush=True)
        compared, ha = [], []
        if not args.no_haproxy:
            for n in sizes:
                compared.append(compare_interleaved(n, args.seconds, workdir))
                print(json.dumps(compared[-1]), flush=True)
            if args.sequential:
                for n in sizes:
                    ha.append(run_haproxy(n, args.seconds, workdir))
                    print(json.dumps(ha[-1]), flush=True)
    print()
    print(f"cold touch before: {touch_before}")
    print(f"cold touch after:  {cold_touch()}")
    print(f"Death -> unhealthy, the worst of {args.deaths}: seen by a GET every ms "
          "(found by modelgated, from last_check_at).")
    print("CPU alone: modelgated's scenario window. Interleaved: modelgated and HAProxy on "
          "the same servers in alternating windows (compare_interleaved); the ratio is theirs.")
    print("| servers | hanging | probes/s (expected) | CPU µs/probe alone | CPU µs/probe interleaved "
          "| HAProxy CPU µs/check interleaved | ratio | p99 lateness ms | RSS MiB "
          "| refused->unhealthy s | killed->unhealthy s | hang->unhealthy s | GET p99 ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        c = next((x for x in compared if x["servers"] == r["servers"]), None) if r["hanging"] == 0 else None
        ours = f"{c['cpu_us_per_probe']:.1f}" if c else "-"
        theirs = f"{c['haproxy_cpu_us_per_check']:.1f}" if c else "-"
        ratio = f"{c['ratio']:.2f}" if c and c["ratio"] else "-"
        print(f"| {r['servers']} | {r['hanging']} | {r['probes_per_s']:.0f} ({r['expected_per_s']}) "
              f"| {r['cpu_us_per_probe']:.1f} | {ours} | {theirs} | {ratio} | {r['lateness_p99_ms']} "
              f"| {r['rss_mib']:.1f} | {fmt_death(r, 'refused')} | {fmt_death(r, 'killed')} "
              f"| {fmt_death(r, 'hang')} | {r['admin_get_p99_ms']:.1f} |")
    for c in compared:
        print(f"{c['servers']} servers, interleaved: modelgated {c['cpu_us_per_probe']:.1f} µs/probe, "
              f"HAProxy {c['haproxy_cpu_us_per_check']:.1f} µs/check, ratio "
              + (f"{c['ratio']:.2f}" if c["ratio"] else "-"))
        print(f"{c['servers']} servers, windows: " + ", ".join(
            f"{w['side']} {w['cpu_us_per_probe']:.1f} ({w['probes_per_s']:.0f}/s)" for w in c["windows"]))
    if ha:
        print("HAProxy alone, after all modelgated scenarios (the old sequential comparison):")
        for h in ha:
            print(f"  {h['servers']} servers: {h['cpu_us_per_check']:.1f} µs/check "
                  f"({h['checks_per_s']:.0f}/s), RSS {h['rss_mib']:.1f} MiB")


def fmt_death(row, key):
    seen, found = row.get(f"{key}_to_unhealthy_s"), row.get(f"{key}_found_s")
    return "-" if seen is None else f"{seen:.4f} ({found:.3f})"


if __name__ == "__main__":
    import atexit
    atexit.register(kill_started)
    sys.exit(main())
