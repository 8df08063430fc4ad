#!/usr/bin/env python3
"""Load check for `relay serve` (not a test: it prints numbers, it asserts nothing).

Sends a burst of Bitrix24 deal events (default 10,000, 32 concurrent keep-alive clients) to
POST /deal, then waits until a capturing destination started here has received every
accepted event, and prints: accepted/s, p50/p99 ingress latency, time until all forwarded,
lost and duplicated counts. The same burst against GET /healthz in the same run is the
baseline (what this client and the HTTP stack do alone), and the ratio is printed.

  scripts/load.py --binary target/release/relay      # starts its own relay on a temp dir
  scripts/load.py --relay http://127.0.0.1:3000       # a running relay that was started with
      RELAY_DESTINATION_URL=http://127.0.0.1:3901/hook RELAY_B24_APP_TOKENS=load-token

Python standard library only; loopback only; every wait is bounded.
"""

import argparse
import http.client
import http.server
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

APP_TOKEN = "load-token"
MEMBER_ID = "load-member"


class Capture:
    """webhook-id -> how many times the destination received it."""

    def __init__(self):
        self.lock = threading.Lock()
        self.seen = {}
        self.first_at = None
        self.last_at = None

    def record(self, webhook_id):
        now = time.monotonic()
        with self.lock:
            self.seen[webhook_id] = self.seen.get(webhook_id, 0) + 1
            self.first_at = self.first_at or now
            self.last_at = now

    def snapshot(self):
        with self.lock:
            return dict(self.seen), self.last_at


def start_destination(port, capture):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            length = int(self.headers.get("content-length") or 0)
            self.rfile.read(length)
            capture.record(self.headers.get("webhook-id") or "")
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def bitrix24_form(i, ts):
    """One ONCRMDEALUPDATE as Bitrix24 sends it: PHP http_build_query, brackets encoded."""
    pairs = [
        ("event", "ONCRMDEALUPDATE"),
        ("event_handler_id", "17"),
        ("data[FIELDS][ID]", str(100000 + i)),
        ("ts", str(ts)),
        ("auth[domain]", "load.bitrix24.ru"),
        ("auth[client_endpoint]", "https://load.bitrix24.ru/rest/"),
        ("auth[server_endpoint]", "https://oauth.bitrix.info/rest/"),
        ("auth[member_id]", MEMBER_ID),
        ("auth[application_token]", APP_TOKEN),
    ]
    return urllib.parse.urlencode(pairs).encode()


def burst(host, port, method, path, bodies, clients):
    """Sends every body (or `count` bodiless requests) over `clients` keep-alive connections.
    Returns (wall seconds, latencies in seconds, statuses, 202 ids)."""
    n = len(bodies)
    next_index = [0]
    lock = threading.Lock()
    latencies = [0.0] * n
    statuses = [0] * n
    ids = [None] * n

    def worker():
        conn = http.client.HTTPConnection(host, port, timeout=60)
        while True:
            with lock:
                i = next_index[0]
                if i >= n:
                    break
                next_index[0] = i + 1
            body = bodies[i]
            headers = {"content-type": "application/x-www-form-urlencoded"} if body else {}
            for attempt in range(3):  # a dropped keep-alive connection is re-opened
                try:
                    started = time.perf_counter()
                    conn.request(method, path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    latencies[i] = time.perf_counter() - started
                    statuses[i] = resp.status
                    if resp.status == 202:
                        ids[i] = json.loads(data).get("id")
                    break
                except (ConnectionError, http.client.HTTPException, OSError):
                    conn.close()
                    conn = http.client.HTTPConnection(host, port, timeout=60)
                    statuses[i] = -1
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started, latencies, statuses, ids


def percentile(values, p):
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def start_relay(binary, dest_url, data_dir, consumers):
    env = dict(os.environ)
    env.update({
        "RELAY_B24_APP_TOKENS": APP_TOKEN,
        "RELAY_DESTINATION_URL": dest_url,
        "RELAY_DATA_DIR": data_dir,
        "RELAY_ADDR": "127.0.0.1:0",
        "RUST_LOG": env.get("RUST_LOG", "warn"),
    })
    proc = subprocess.Popen([binary, "serve", "--consumers", str(consumers)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("relay: listening on "):
            url = line.split("listening on ", 1)[1].strip()
            # keep draining stdout (outbox lines) so the relay never blocks on a full pipe
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, url
    proc.kill()
    sys.exit("relay did not print its listen address within 60 s")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--relay", help="URL of a running relay serve (default: start --binary)")
    ap.add_argument("--binary", help="relay binary to start on a temporary data dir")
    ap.add_argument("--consumers", type=int, default=4,
                    help="consumer tasks of the relay started with --binary (relay serve --consumers)")
    ap.add_argument("--events", type=int, default=10_000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--dest-port", type=int, default=None,
                    help="destination port (default 3901 with --relay, any free port with --binary)")
    ap.add_argument("--forward-deadline", type=float, default=900.0,
                    help="seconds to wait for every accepted event to be forwarded")
    args = ap.parse_args()
    if not args.relay and not args.binary:
        ap.error("give --relay URL or --binary PATH")

    capture = Capture()
    dest_port = args.dest_port if args.dest_port is not None else (3901 if args.relay else 0)
    dest = start_destination(dest_port, capture)
    dest_url = "http://127.0.0.1:%d/hook" % dest.server_address[1]

    proc = None
    tmp = None
    if args.relay:
        relay_url = args.relay
    else:
        tmp = tempfile.TemporaryDirectory(prefix="relay-load-")
        proc, relay_url = start_relay(args.binary, dest_url, tmp.name, args.consumers)
    parsed = urllib.parse.urlparse(relay_url)
    host, port = parsed.hostname, parsed.port
    if host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("load.py talks to loopback only")

    try:
        print("relay %s, destination %s, %d events, %d clients"
              % (relay_url, dest_url, args.events, args.clients))

        # Baseline: the same number of requests, same clients, against /healthz.
        base_wall, base_lat, base_status, _ = burst(host, port, "GET", "/healthz",
                                                    [None] * args.events, args.clients)
        base_ok = sum(1 for s in base_status if s == 200)

        ts0 = int(time.time())
        bodies = [bitrix24_form(i, ts0) for i in range(args.events)]
        started = time.monotonic()
        wall, lat, statuses, ids = burst(host, port, "POST", "/deal", bodies, args.clients)
        accepted = [i for i in ids if i]
        other = {}
        for s in statuses:
            if s != 202:
                other[s] = other.get(s, 0) + 1

        expected = set(accepted)
        deadline = time.monotonic() + args.forward_deadline
        while time.monotonic() < deadline:
            seen, _ = capture.snapshot()
            if expected.issubset(seen.keys()):
                break
            time.sleep(0.05)
        seen, last_at = capture.snapshot()
        forwarded_after = (last_at - started) if last_at else float("nan")
        lost = len(expected - set(seen.keys()))
        duplicated = sum(c - 1 for c in seen.values() if c > 1)
        unexpected = len(set(seen.keys()) - expected)

        rate = len(accepted) / wall if wall else float("nan")
        base_rate = base_ok / base_wall if base_wall else float("nan")
        print()
        print("baseline GET /healthz : %6d ok  %8.0f req/s  p50 %6.2f ms  p99 %6.2f ms"
              % (base_ok, base_rate, percentile(base_lat, 50) * 1e3, percentile(base_lat, 99) * 1e3))
        print("ingest  POST /deal    : %6d accepted (202)  %8.0f accepted/s  p50 %6.2f ms  p99 %6.2f ms"
              % (len(accepted), rate, percentile(lat, 50) * 1e3, percentile(lat, 99) * 1e3))
        if other:
            print("  other statuses      :", ", ".join("%s x%d" % kv for kv in sorted(other.items())))
        print("ingest / baseline     : %.2f of the baseline rate" % (rate / base_rate))
        print("all forwarded after   : %.1f s from the first request (burst took %.1f s)"
              % (forwarded_after, wall))
        print("lost                  : %d" % lost)
        print("duplicated            : %d" % duplicated)
        if unexpected:
            print("unexpected ids        : %d" % unexpected)
    finally:
        if proc:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        dest.shutdown()
        if tmp:
            tmp.cleanup()


if __name__ == "__main__":
    main()
