#!/usr/bin/env python3
"""Cold start of an ingest function against a Python 3 + boto3 function doing the same work,
measured side by side in one run: a stand-in of the Lambda Runtime API on 127.0.0.1 starts
each function as a fresh process (a cold start), hands it one Function URL event and records
exec -> first `GET next` (init) and exec -> `POST response` (first answer). Both send to the
same moto SQS FIFO queue and read their secrets from the same moto SSM, with the environment
template.yaml gives the ingest functions. Prints medians and the Rust/Python ratios.

    scripts/coldstart.py                          20 cold starts of each (about 20 s)
    scripts/coldstart.py --runs 2 --binary .aws-sam/build/IngestDealFunction/bootstrap
    scripts/coldstart.py --runs 30 --binary before/ingest-deal --binary target/lambda-release/ingest-deal
                                                  a change against the build before it, same run

Needs .venv-moto (scripts/test.sh installs it: moto, and boto3 with it). Uses the moto that
scripts/test.sh started (RELAY_TEST_MOTO_URL) or starts its own. A measurement, not a test:
it fails only when a function does not answer 202 or its message is not in the queue.
"""

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv-moto" / "bin" / "python"
PYTHON_FUNCTION = ROOT / "scripts" / "coldstart_python_function.py"
EVENT = ROOT / "events" / "ingest-deal" / "bitrix24-form.json"
APP_TOKEN = "local-dev-app-token"  # the placeholder of events/README.md
SALESMAN_SECRET = "local-dev-salesman-secret"
# How long one cold start may take before the run fails. Generous on purpose: a run measures
# medians, not this bound, and on a loaded 2-core machine a function (Rust or Python) was seen
# to take over 15 s to answer about once in four runs while builds ran beside it; a hang
# still fails the run, only later.
RUN_TIMEOUT_S = 60.0


class Invocation:
    """One cold start: the event the stand-in hands out and what the function did with it."""

    def __init__(self, event: bytes, request_id: str):
        self.event = event
        self.request_id = request_id
        self.first_next_ns = None
        self.response_ns = None
        self.response = None
        self.error = None
        self.finished = threading.Event()
        self.released = threading.Event()


class RuntimeApi(BaseHTTPRequestHandler):
    """The Runtime API endpoints of https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html:
    GET invocation/next, POST invocation/{id}/response, invocation/{id}/error, init/error."""

    protocol_version = "HTTP/1.1"  # the runtimes keep one connection open
    current: Invocation = None

    def log_message(self, *args):
        pass

    def answer(self, status, body=b"{}", headers=()):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        now = time.perf_counter_ns()
        invocation = RuntimeApi.current
        if self.path != "/2018-06-01/runtime/invocation/next":
            return self.answer(404)
        if invocation.first_next_ns is not None:
            # The function asks for a second event: it stays parked here, as a Lambda
            # environment is frozen, until the harness ends the process.
            invocation.released.wait(RUN_TIMEOUT_S)
            self.close_connection = True
            return
        invocation.first_next_ns = now
        deadline_ms = int(time.time() * 1000) + 10_000
        self.answer(
            200,
            invocation.event,
            [
                ("Lambda-Runtime-Aws-Request-Id", invocation.request_id),
                ("Lambda-Runtime-Deadline-Ms", str(deadline_ms)),
                ("Lambda-Runtime-Invoked-Function-Arn",
                 "arn:aws:lambda:us-east-1:123456789012:function:coldstart"),
                ("Lambda-Runtime-Trace-Id", "Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700;Sampled=0"),
            ],
        )

    def do_POST(self):
        now = time.perf_counter_ns()
        invocation = RuntimeApi.current
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        base = f"/2018-06-01/runtime/invocation/{invocation.request_id}"
        if self.path == f"{base}/response":
            invocation.response_ns, invocation.response = now, body
        elif self.path in (f"{base}/error", "/2018-06-01/runtime/init/error"):
            invocation.error = body.decode(errors="replace")
        else:
            return self.answer(404)
        self.answer(202, b'{"status":"OK"}')
        invocation.finished.set()


class StandIn(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A function killed at the end of its run resets its connection: expected, not news.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto():
    """The moto of scripts/test.sh if it runs, otherwise one of our own (stopped at exit)."""
    if os.environ.get("RELAY_TEST_MOTO_URL"):
        return os.environ["RELAY_TEST_MOTO_URL"], None
    port = free_port()
    server = subprocess.Popen(
        [str(ROOT / ".venv-moto" / "bin" / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    for _ in range(200):  # 10 s
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.05).close()
            return f"http://127.0.0.1:{port}", server
        except OSError:
            time.sleep(0.05)
    server.kill()
    sys.exit("coldstart: moto_server did not start within 10 s")


def prepare_aws(moto_url):
    """The queue and the two SecureString parameters the template gives an ingest function."""
    import boto3

    session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                            region_name="us-east-1")
    sqs = session.client("sqs", endpoint_url=moto_url)
    queue_url = sqs.create_queue(
        QueueName=f"coldstart-{os.getpid()}-{int(time.time())}.fifo",
        Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "false"},
    )["QueueUrl"]
    ssm = session.client("ssm", endpoint_url=moto_url)
    params = {"RELAY_B24_APP_TOKENS_PARAM": "/crm-relay/coldstart/b24-app-tokens",
              "RELAY_SALESMAN_SECRET_PARAM": "/crm-relay/coldstart/salesman-secret"}
    for name, value in [(params["RELAY_B24_APP_TOKENS_PARAM"], APP_TOKEN),
                        (params["RELAY_SALESMAN_SECRET_PARAM"], SALESMAN_SECRET)]:
        ssm.put_parameter(Name=name, Value=value, Type="SecureString", Overwrite=True)
    return sqs, queue_url, params


def function_env(moto_url, queue_url, params):
    """What Lambda and template.yaml put in an ingest function's environment (the Runtime API
    address is added per run)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "TZ": ":UTC",
        "AWS_LAMBDA_FUNCTION_NAME": "coldstart-ingest-deal",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_LOG_GROUP_NAME": "/crm-relay/coldstart/ingest-deal",
        "AWS_LAMBDA_LOG_STREAM_NAME": "2026/01/01/[$LATEST]coldstart",
        "AWS_LAMBDA_LOG_FORMAT": "JSON",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ENDPOINT_URL": moto_url,
        "_HANDLER": "bootstrap",
        "RUST_LOG": "info",
        "RELAY_QUEUE_URL": queue_url,
        "RELAY_TABLE": "coldstart-relay-table",
    }
    env.update(params)
    return env


def event_for_run(template, run):
    """The sample event with its own `ts`, so every run's envelope is a new message."""
    event = json.loads(template)
    event["body"] = event["body"].replace("ts=1766047124", f"ts={1766047124 + run}")
    return json.dumps(event).encode()


def cold_start(command, env, event, run):
    """One fresh process on a fresh stand-in (its own port, so nothing a killed process still
    had in flight can reach the next run)."""
    invocation = Invocation(event, f"coldstart-{run:04d}")
    RuntimeApi.current = invocation
    server = StandIn(("127.0.0.1", 0), RuntimeApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {**env, "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{server.server_address[1]}"}
    started = time.perf_counter_ns()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    finished = invocation.finished.wait(RUN_TIMEOUT_S)
    peak_rss_kib = peak_rss_of(process.pid)
    process.kill()
    _, stderr = process.communicate()
    invocation.released.set()
    server.shutdown()
    server.server_close()
    if not finished or invocation.error is not None or invocation.response is None:
        stage = "no GET next" if invocation.first_next_ns is None else "no response"
        sys.exit(f"coldstart: {command[-1]}: {stage} within {RUN_TIMEOUT_S:.0f} s, exit "
                 f"{process.returncode} (error: {invocation.error})\n"
                 f"{stderr.decode(errors='replace')[-2000:]}")
    answer = json.loads(invocation.response)
    if answer.get("statusCode") != 202:
        sys.exit(f"coldstart: {command[-1]} answered {answer}")
    envelope_id = json.loads(answer["body"])["id"]
    return ((invocation.first_next_ns - started) / 1e6,
            (invocation.response_ns - started) / 1e6, envelope_id, peak_rss_kib)


def peak_rss_of(pid):
    """The process's peak resident memory so far (VmHWM, KiB), read after its first answer:
    what a Lambda's memory size must hold (the runtime's `Max Memory Used` adds the sandbox's
    own few MB). None where /proc is not Linux's."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def queued_ids(sqs, queue_url, expected):
    """Envelope ids in the queue (FIFO: each group is received and deleted in order)."""
    ids, deadline = set(), time.monotonic() + 20
    while len(ids) < expected and time.monotonic() < deadline:
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10,
                                       WaitTimeSeconds=0).get("Messages", [])
        for message in messages:
            ids.add(json.loads(message["Body"])["id"])
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    return ids


def machine():
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="cold starts of each function")
    parser.add_argument("--binary", action="append",
                        help="a Rust ingest-deal function (a release build or a bootstrap); "
                             "repeat it to measure several builds in the same run "
                             "(default: target/release/ingest-deal)")
    args = parser.parse_args()
    binaries = [Path(b).resolve()
                for b in (args.binary or [str(ROOT / "target" / "release" / "ingest-deal")])]
    for binary in binaries:
        if not binary.is_file():
            sys.exit(f"coldstart: {binary} does not exist (cargo build --release -p ingest-deal)")
    if not VENV_PYTHON.exists():
        sys.exit("coldstart: .venv-moto is missing (scripts/test.sh installs it)")
    if Path(sys.prefix).resolve() != VENV_PYTHON.parent.parent.resolve():
        # boto3 (to set up moto and to name its version) is the one in the venv.
        os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), __file__, *sys.argv[1:]])

    moto_url, moto = start_moto()
    try:
        sqs, queue_url, params = prepare_aws(moto_url)
        env = function_env(moto_url, queue_url, params)
        template = EVENT.read_text()
        rust_names = (["rust"] if len(binaries) == 1
                      else [f"rust{i + 1}" for i in range(len(binaries))])
        functions = {name: [str(binary)] for name, binary in zip(rust_names, binaries)}
        functions["python"] = [str(VENV_PYTHON), str(PYTHON_FUNCTION)]
        results = {name: [] for name in functions}
        sent = set()
        # Interleaved, so a busy moment of the machine weighs on both alike.
        for run in range(args.runs):
            for offset, (name, command) in enumerate(functions.items()):
                init_ms, first_ms, envelope_id, rss_kib = cold_start(
                    command, env, event_for_run(template, len(functions) * run + offset), run)
                results[name].append((init_ms, first_ms, rss_kib))
                sent.add(envelope_id)
        missing = sent - queued_ids(sqs, queue_url, len(sent))
        if missing:
            sys.exit(f"coldstart: {len(missing)} answered envelopes are not in the queue")
    finally:
        if moto is not None:
            moto.kill()
            moto.wait()

    import boto3

    median = {name: (statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows))
              for name, rows in results.items()}
    python = median["python"]
    print(f"cold start, {args.runs} runs of each, interleaved; {machine()}; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end")
    for name, binary in zip(rust_names, binaries):
        shown = binary.relative_to(ROOT) if binary.is_relative_to(ROOT) else binary
        print(f"{name + ':':<8}{shown} ({binary.stat().st_size // 1024} KiB)")
    print(f"{'python:':<8}Python {platform.python_version()} + boto3 {boto3.__version__}, "
          f"{PYTHON_FUNCTION.relative_to(ROOT)}")
    print(f"{'median':<10}{'init (exec -> next)':>22}{'first response':>18}"
          f"{'init ratio':>14}{'response ratio':>16}{'peak RSS (max)':>16}")
    for name in [*rust_names, "python"]:
        init_ms, first_ms = median[name]
        ratios = (" " * 30 if name == "python" else
                  f"{'1/' + format(python[0] / init_ms, '.0f'):>14}"
                  f"{'1/' + format(python[1] / first_ms, '.0f'):>16}")
        rss = [r[2] for r in results[name] if r[2] is not None]
        rss_shown = f"{max(rss) / 1024:.1f} MiB" if rss else "n/a"
        print(f"{name:<10}{init_ms:>19.1f} ms{first_ms:>15.1f} ms{ratios}{rss_shown:>16}")
    print("ratios: rust/python, medians of the same run")
    print(f"every answer 202, all {len(sent)} envelopes in the queue")


if __name__ == "__main__":
    main()
