#!/usr/bin/env python3
"""Proxy benchmark (issue 4): wrk POSTing a small chat completion with
keep-alive, 50 connections and 2 threads for 20 s, in one run against the
mock directly, modelgated in front of it, and HAProxy 2.6 in front of it;
then 1-connection latency runs of each, interleaved in rounds; then the per-chunk delay modelgated
adds to a stream.

Both proxies also run with the other's polling choice, in the same run:
modelgated with `--busy-poll-us 0` (its HTTP threads sleep at once, as
HAProxy's do by default) and HAProxy with `busy-polling` (it never sleeps).
Every run reports the proxy's own CPU per request (utime+stime from /proc),
so what polling costs is on the table beside what it saves.

Run by hand, as root (installs Debian's wrk and haproxy if missing):
    python3 tools/bench/proxy.py [--seconds 20]
Only 127.0.0.1 is used.
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from benchlib import cpu_seconds, free_port, kill_started, spawn, wait_line

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "build", "bin")

BODY = '{"model":"mock-model","messages":[{"role":"user","content":"Say hello"}],"max_tokens":16}'














def wrk(url, connections, threads, seconds, script, pid=None):
    cpu0 = cpu_seconds(pid) if pid else 0
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s",
                          "--latency", "-s", script, url], capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def pct(p):
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        v, unit = float(m.group(1)), m.group(2)
        return v * {"us": 1e-3, "ms": 1, "s": 1e3}[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    cpu = (cpu_seconds(pid) - cpu0) if pid else 0
    return {"rps": rps, "p50_ms": pct(50), "p99_ms": pct(99),
            "non2xx": int(errors.group(1)) if errors else 0,
            "cpu_us_per_req": cpu * 1e6 / max(1.0, rps * seconds)}


def stream_delays(port, path_prefix=""):
    """Per-chunk delay: arrival (steady clock here) minus mock_sent_at_us."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    body = json.dumps({"model": "mock-model", "stream": True, "messages": []})
    s.sendall((f"POST {path_prefix}/v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
               f"Connection: close\r\n\r\n{body}").encode())
    delays, buf = [], b""
    while True:
        data = s.recv(65536)
        now_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) / 1000
        if not data:
            break
        buf += data
        for m in re.finditer(rb'"mock_sent_at_us":\s*(\d+)', data):
            delays.append((now_us - int(m.group(1))) / 1000.0)
    s.close()
    return delays


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--latency-rounds", type=int, default=5,
                    help="1-connection runs are split into this many interleaved rounds")
    ap.add_argument("--compare", metavar="MODELGATED",
                    help="another modelgated binary (e.g. a build without metrics) measured in "
                         "the same run, in front of the same mock")
    args = ap.parse_args()
    for tool in ("wrk", "haproxy"):
        if shutil.which(tool) is None:
            subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", tool], check=True,
                           stdout=subprocess.DEVNULL)
    subprocess.run(["systemctl", "stop", "haproxy"], stderr=subprocess.DEVNULL)
    work = tempfile.mkdtemp(prefix="proxy-bench-")
    script = os.path.join(work, "post.lua")
    with open(script, "w") as f:
        f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                f"wrk.body = '{BODY}'\n")
    mock = spawn([os.path.join(BIN, "mock-model-server"), "--listen", "127.0.0.1:0",
                  "--control", "127.0.0.1:0", "--chunks", "50", "--chunk-delay-ms", "20"],
                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    mport = int(wait_line(mock, "mock-model-server listening on").rsplit(":", 1)[1])
    def start_modelgated(db, extra=()):
        proc = spawn([os.path.join(BIN, "modelgated"), "--listen", "127.0.0.1:0", "--db",
                      os.path.join(work, db), "--health-interval", "1", "--log-level", "warning",
                      *extra], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return proc, int(wait_line(proc, "modelgate listening on").rsplit(":", 1)[1])
    daemon, gport = start_modelgated("m.db")
    sleeper, sport = start_modelgated("s.db", ["--busy-poll-us", "0"])

    def register(port):
        subprocess.run(["curl", "-s", "-o", "/dev/null", "-X", "POST", f"http://127.0.0.1:{port}/v1/servers",
                        "-d", json.dumps({"url": f"http://127.0.0.1:{mport}", "models": ["mock-model"]})],
                       check=True)
        for _ in range(100):  # until probed healthy
            out = subprocess.run(["curl", "-s", f"http://127.0.0.1:{port}/v1/servers?status=healthy"],
                                 capture_output=True, text=True).stdout
            if '"healthy"' in out:
                break
            time.sleep(0.05)
    register(gport)
    register(sport)
    cport = None
    if args.compare:
        other = spawn([args.compare, "--listen", "127.0.0.1:0", "--db", os.path.join(work, "c.db"),
                       "--health-interval", "1", "--log-level", "warning"],
                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        cport = int(wait_line(other, "modelgate listening on").rsplit(":", 1)[1])
        register(cport)
    def start_haproxy(name, extra_global=""):
        port = free_port()
        cfg = os.path.join(work, name + ".cfg")
        with open(cfg, "w") as f:
            f.write(f"global\n  maxconn 4000\n  nbthread 2\n{extra_global}defaults\n  mode http\n"
                    "  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n"
                    "  option http-keep-alive\n"
                    f"frontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n"
                    f"backend be\n  server mock 127.0.0.1:{mport}\n")
        proc = spawn(["haproxy", "-f", cfg, "-db"], stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
        return proc, port
    haproxy, hport = start_haproxy("haproxy")
    time.sleep(1)
    path = "/v1/chat/completions"
    # HAProxy with busy-polling spins a core even when idle: it runs only
    # during its own measurements (port None: started for each), or it
    # would take a core from everything else.
    targets = [("direct (mock)", mport, mock.pid), ("modelgated", gport, daemon.pid),
               ("haproxy", hport, haproxy.pid),
               ("modelgated --busy-poll-us 0", sport, sleeper.pid),
               ("haproxy busy-polling", None, None)]
    if cport:
        targets.append(("compare", cport, other.pid))

    def measure(port, pid, connections, threads, seconds):
        if port is not None:
            return wrk(f"http://127.0.0.1:{port}{path}", connections, threads, seconds, script, pid)
        proc, port = start_haproxy("haproxy-busy", "  busy-polling\n")
        time.sleep(0.5)
        try:
            return wrk(f"http://127.0.0.1:{port}{path}", connections, threads, seconds, script,
                       proc.pid)
        finally:
            proc.kill()
            proc.wait()
    results = {}
    print(f"nproc: {os.cpu_count()}", flush=True)
    for name, port, pid in targets:
        results[(name, 50)] = measure(port, pid, 50, 2, args.seconds)
        print(name, "50 conns", results[(name, 50)], flush=True)
    # Latency at 1 connection: a few microseconds matter and the machine's
    # noise drifts over seconds, so the targets take turns in short rounds
    # and each round's figures are compared with the direct run of the same
    # round; the median round is reported.
    rounds = max(1, args.latency_rounds)
    per_round = max(1, args.seconds // rounds)
    runs = {name: [] for name, _, _ in targets}
    for r in range(rounds):
        for name, port, pid in targets:
            runs[name].append(measure(port, pid, 1, 1, per_round))
        print(f"1 conn round {r + 1}:", {n: runs[n][-1]["p50_ms"] for n in runs}, flush=True)
    for name, _, _ in targets:
        rs = runs[name]
        results[(name, 1)] = {k: sorted(x[k] for x in rs)[len(rs) // 2] for k in rs[0]}
        results[(name, 1, "added")] = sorted(
            x["p50_ms"] - d["p50_ms"] for x, d in zip(rs, runs["direct (mock)"]))[len(rs) // 2]
        print(name, "1 conn (median of rounds)", results[(name, 1)], flush=True)
    direct = stream_delays(mport)
    via = stream_delays(gport)

    def p(vals, q):
        vals = sorted(vals)
        return vals[min(len(vals) - 1, int(q * len(vals)))]
    print()
    print("| target | req/s at 50 conns | p50 ms | p99 ms | CPU µs/req | req/s at 1 conn | p50 ms "
          "| p99 ms | added p50 µs | CPU µs/req |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, _, _ in targets:
        a, b = results[(name, 50)], results[(name, 1)]
        print(f"| {name} | {a['rps']:.0f} | {a['p50_ms']:.3f} | {a['p99_ms']:.3f} "
              f"| {a['cpu_us_per_req']:.1f} | {b['rps']:.0f} "
              f"| {b['p50_ms']:.3f} | {b['p99_ms']:.3f} | {1000 * results[(name, 1, 'added')]:.0f} "
              f"| {b['cpu_us_per_req']:.1f} |")
    mg50, ha50 = results[("modelgated", 50)]["rps"], results[("haproxy", 50)]["rps"]
    print(f"\nmodelgated / haproxy req/s at 50 conns: {mg50 / ha50:.2f}")
    if cport:
        print(f"modelgated / compare ({args.compare}) req/s at 50 conns: "
              f"{mg50 / results[('compare', 50)]['rps']:.3f}")
    print(f"added p50 at 1 conn (median over {rounds} rounds of the same-round difference): "
          f"modelgated {1000 * results[('modelgated', 1, 'added')]:.0f} us, "
          f"haproxy {1000 * results[('haproxy', 1, 'added')]:.0f} us; "
          f"modelgated --busy-poll-us 0 "
          f"{1000 * results[('modelgated --busy-poll-us 0', 1, 'added')]:.0f} us, "
          f"haproxy busy-polling {1000 * results[('haproxy busy-polling', 1, 'added')]:.0f} us")
    print(f"stream chunk delay p50/p99 ms: direct {p(direct, .5):.3f}/{p(direct, .99):.3f}, "
          f"via modelgated {p(via, .5):.3f}/{p(via, .99):.3f} "
          f"(added p99 {p(via, .99) - p(direct, .99):.3f} ms)")
    daemon.send_signal(signal.SIGTERM)


if __name__ == "__main__":
    import atexit
    atexit.register(kill_started)
    sys.exit(main())
