#!/usr/bin/env python3
"""Load benchmark for `relay serve` (not a test: it prints numbers, it asserts nothing).

Starts a counting destination in its own process (scripts/load/counting_sink.py) and a
release `relay serve` on a temporary data directory, then drives the relay with `wrk`
(2 threads, 32 connections by default):

  1. baseline: GET /healthz for 5 s (what wrk and the HTTP stack do with no work behind);
  2. burst: N events (default 100,000), every request a distinct Bitrix24 deal
     (scripts/load/deals.lua), while the relay forwards to the sink;
  3. waits until the sink has every accepted event, sampling the backlog (rows in the
     relay's queue table, read-only) and the sink's count every 0.5 s.

Prints: healthz baseline, accepted/s with p50/p99 and as a ratio to the healthz baseline of
the same run, delivered/s overall and by backlog band (>= 50,000 and <= 5,000 queued, counted
only after the burst so intake does not share the CPU), lost (accepted, never delivered),
duplicated (delivered more than once), and the relay's CPU (user + system) per accepted
event, from the burst's start to the last delivery.

  --drain-only: fill the queue with `relay serve --consumers 0` first, restart the relay
  with consumers and time the drain alone (the cleanest flat-drain figure).

  cargo build --release -p relay
  scripts/load.py --binary target/release/relay [--events 100000] [--drain-only]

wrk is a Debian package: `apt-get install -y wrk` (the script stops and says so if missing).
Python standard library only; loopback only; every wait is bounded.
"""

import argparse
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
APP_TOKEN = "load-token"
HIGH_BAND = 50_000
LOW_BAND = 5_000


def start_sink():
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "load", "counting_sink.py"), "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("listening "):
        proc.kill()
        sys.exit("the counting sink did not start")
    return proc, int(line.split()[1])


def sink_stats(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/stats" % port, timeout=10) as resp:
        return json.loads(resp.read())


def start_relay(binary, data_dir, sink_port, consumers):
    env = dict(os.environ)
    env.update({
        "RELAY_B24_APP_TOKENS": APP_TOKEN,
        "RELAY_DESTINATION_URL": "http://127.0.0.1:%d/hook" % sink_port,
        "RELAY_DATA_DIR": data_dir,
        "RELAY_ADDR": "127.0.0.1:0",
        "RUST_LOG": env.get("RUST_LOG", "warn"),
    })
    for name in ("RELAY_B24_WEBHOOK_URL", "RELAY_SIGNING_SECRET", "RELAY_SALESMAN_SECRET"):
        env.pop(name, None)
    flags = [] if consumers is None else ["--consumers", str(consumers)]
    proc = subprocess.Popen([binary, "serve", *flags], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("relay: listening on "):
            url = line.split("listening on ", 1)[1].strip()
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, url
    proc.kill()
    sys.exit("relay did not print its listen address within 60 s")


def cpu_seconds(proc):
    """User + system CPU the process has used so far (Linux /proc), or NaN elsewhere. On a
    shared 2-core machine a run's rates move by 15% with whatever else runs; the relay's CPU
    per event moves far less, and when the cores are saturated it is what the rates follow."""
    try:
        with open("/proc/%d/stat" % proc.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def backlog(db_path):
    """Rows in the relay's queue (waiting or in flight), read through a read-only connection."""
    try:
        conn = sqlite3.connect("file:%s?mode=ro" % db_path, uri=True, timeout=5)
        try:
            return conn.execute("SELECT COUNT(*) FROM queue").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return None


def wrk_healthz(url, threads, connections):
    out = subprocess.run(["wrk", "-t%d" % threads, "-c%d" % connections, "-d5s", "--latency", url + "/healthz"],
                         capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    def pct(p):
        m = re.search(r"^\s+%s%%\s+([\d.]+)(us|ms|s)" % p, out, re.M)
        scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
        return float(m.group(1)) * scale
    return rate, pct(50), pct(99)


def accepted_so_far(db_path):
    """Envelopes the relay has committed: the queue's AUTOINCREMENT counter (sqlite_sequence),
    which every send raises in the transaction that commits it and nothing lowers; the burst
    is the only writer of the queue here. Polled every 50 ms, so it reads one row: a COUNT(*)
    would scan a table each time (2.5 ms at 100,000 rows, a share of a core taken from the
    relay on a 2-core machine)."""
    try:
        conn = sqlite3.connect("file:%s?mode=ro" % db_path, uri=True, timeout=5)
        try:
            row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'queue'").fetchone()
            return row[0] if row else 0
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def wrk_burst(url, events, threads, connections, db_path):
    """Sends `events` distinct deals. wrk always runs for its -d duration, so this stops it
    (SIGINT: wrk then prints its statistics) once the relay has committed every event, or
    when the count has not moved for 10 s (some were refused)."""
    env = dict(os.environ)
    env.update({
        "LOAD_EVENTS_PER_THREAD": str(events // threads),
        "LOAD_TS": str(int(time.time())),
        "LOAD_APP_TOKEN": APP_TOKEN,
    })
    wrk = subprocess.Popen(["wrk", "-t%d" % threads, "-c%d" % connections, "-d900s", "--timeout", "30s",
                            "-s", os.path.join(HERE, "load", "deals.lua"), url],
                           stdout=subprocess.PIPE, text=True, env=env)
    last, last_change = -1, time.monotonic()
    wrk_cpu = float("nan")
    while wrk.poll() is None:
        n = accepted_so_far(db_path)
        if n != last:
            last, last_change = n, time.monotonic()
        if n >= events or time.monotonic() - last_change > 10:
            wrk_cpu = cpu_seconds(wrk)
            wrk.send_signal(signal.SIGINT)
            break
        time.sleep(0.05)
    out, _ = wrk.communicate(timeout=60)
    line = next((l for l in out.splitlines() if l.startswith("LOAD_RESULT ")), None)
    if line is None:
        sys.exit("wrk printed no LOAD_RESULT line:\n" + out)
    result = {k: int(v) for k, v in (kv.split("=") for kv in line.split()[1:])}
    result["wrk_cpu_s"] = wrk_cpu
    return result


class Sampler:
    """(monotonic time, backlog, distinct delivered) every 0.5 s until stopped."""

    def __init__(self, db_path, sink_port):
        self.db_path, self.sink_port = db_path, sink_port
        self.samples = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stopping.is_set():
            queued = backlog(self.db_path)
            delivered = sink_stats(self.sink_port)["distinct"]
            if queued is not None:
                self.samples.append((time.monotonic(), queued, delivered))
            self.stopping.wait(0.5)

    def stop(self):
        self.stopping.set()
        self.thread.join()


def band_rates(samples, after):
    """Delivered/s while the backlog was >= HIGH_BAND and while it was 1..LOW_BAND, over
    sample intervals that start at or after `after`."""
    bands = {"high": [0, 0.0], "low": [0, 0.0]}
    for (t0, q0, d0), (t1, _, d1) in zip(samples, samples[1:]):
        if t0 < after:
            continue
        band = "high" if q0 >= HIGH_BAND else "low" if 0 < q0 <= LOW_BAND else None
        if band:
            bands[band][0] += d1 - d0
            bands[band][1] += t1 - t0
    return {k: (n / dt if dt else float("nan"), dt) for k, (n, dt) in bands.items()}


def wait_delivered(sink_port, expected, deadline_s):
    """Waits until the sink has `expected` distinct events, or nothing arrives for 60 s."""
    deadline = time.monotonic() + deadline_s
    last, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        stats = sink_stats(sink_port)
        if stats["distinct"] >= expected:
            return stats
        if stats["distinct"] != last:
            last, last_change = stats["distinct"], time.monotonic()
        elif time.monotonic() - last_change > 60:
            break
        time.sleep(0.2)
    return sink_stats(sink_port)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", required=True, help="relay binary (release build)")
    ap.add_argument("--consumers", type=int, default=None,
                    help="relay serve --consumers (default: the binary's own default)")
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--drain-only", action="store_true",
                    help="queue the burst with --consumers 0, then restart and time the drain alone")
    ap.add_argument("--deadline", type=float, default=1800.0, help="seconds to wait for delivery")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: install it with `apt-get install -y wrk` (Debian/Ubuntu package)")
    events = args.events - args.events % args.threads

    sink, sink_port = start_sink()
    tmp = tempfile.TemporaryDirectory(prefix="relay-load-")
    relay = None
    try:
        relay, url = start_relay(args.binary, tmp.name, sink_port, 0 if args.drain_only else args.consumers)
        # The queue's own file; a relay built before it had one keeps the queue in relay.db.
        db_path = os.path.join(tmp.name, "queue.db")
        if not os.path.exists(db_path):
            db_path = os.path.join(tmp.name, "relay.db")
        print("relay %s (%s), sink 127.0.0.1:%d, %d events, wrk %d threads x %d connections%s"
              % (url, args.binary, sink_port, events, args.threads, args.connections,
                 ", drain only" if args.drain_only else ""))
        base_rate, base_p50, base_p99 = wrk_healthz(url, args.threads, args.connections)
        sampler = Sampler(db_path, sink_port)
        started = time.monotonic()
        cpu_start = cpu_seconds(relay)
        sink_cpu_start = cpu_seconds(sink)
        result = wrk_burst(url, events, args.threads, args.connections, db_path)
        burst_s = result["duration_us"] / 1e6
        burst_end = started + burst_s
        cpu_used = 0.0
        if args.drain_only:
            cpu_used = cpu_seconds(relay) - cpu_start
            stop(relay)
            relay, url = start_relay(args.binary, tmp.name, sink_port, args.consumers)
            started = burst_end = time.monotonic()
            cpu_start = cpu_seconds(relay)
        stats = wait_delivered(sink_port, result["accepted"], args.deadline)
        cpu_used += cpu_seconds(relay) - cpu_start
        sink_cpu = cpu_seconds(sink) - sink_cpu_start
        time.sleep(1.0)  # a late duplicate would arrive now
        sampler.stop()
        stats = sink_stats(sink_port)
        bands = band_rates(sampler.samples, burst_end)
        peak = max((q for _, q, _ in sampler.samples), default=0)

        accepted = result["accepted"]
        delivered_s = (stats["last_at"] - started) if stats["last_at"] else float("nan")
        accept_rate = accepted / burst_s if burst_s else float("nan")
        delivery_rate = stats["distinct"] / delivered_s if delivered_s else float("nan")
        print()
        print("baseline GET /healthz  : %8.0f req/s  p50 %6.2f ms  p99 %6.2f ms" % (base_rate, base_p50, base_p99))
        print("POST /deal accepted    : %d of %d (%d refused, %d socket errors) in %.1f s: %.0f accepted/s  "
              "p50 %.2f ms  p99 %.2f ms  (%d /healthz fillers in the tail)"
              % (accepted, events, result["refused"], result["socket_errors"], burst_s, accept_rate,
                 result["p50_us"] / 1e3, result["p99_us"] / 1e3, result["fillers"]))
        # The same machine's speed moves by a third between runs minutes apart (healthz alone
        # 47,000-111,000 req/s here); the ratio to the baseline of the same run moves less.
        print("accepted / healthz     : %.3f" % (accept_rate / base_rate if base_rate else float("nan")))
        print("delivered              : %d in %.1f s from the %s: %.0f delivered/s (%.2f of the acceptance rate)"
              % (stats["distinct"], delivered_s, "drain start" if args.drain_only else "first request",
                 delivery_rate, delivery_rate / accept_rate if not args.drain_only else float("nan")))
        print("peak backlog           : %d" % peak)
        for name, label in (("high", ">= %d queued" % HIGH_BAND), ("low", "<= %d queued" % LOW_BAND)):
            rate, seconds = bands[name]
            print("drain rate %-12s: %8.0f delivered/s over %.1f s (after the burst)" % (label, rate, seconds))
        high, low = bands["high"][0], bands["low"][0]
        print("high band / low band   : %.2f" % (high / low if low == low and low else float("nan")))
        print("lost                   : %d" % max(0, accepted - stats["distinct"]))
        print("duplicated             : %d" % (stats["total"] - stats["distinct"]))
        print("relay CPU              : %.1f s for the burst and its delivery: %.3f ms per event"
              % (cpu_used, 1e3 * cpu_used / accepted if accepted else float("nan")))
        print("sink and wrk CPU       : sink %.1f s (%.3f ms per event), wrk %.1f s over the burst"
              % (sink_cpu, 1e3 * sink_cpu / accepted if accepted else float("nan"), result["wrk_cpu_s"]))
    finally:
        if relay:
            stop(relay)
        sink.kill()
        tmp.cleanup()



if __name__ == "__main__":
    main()
