#!/usr/bin/env python3
"""What one million events cost on AWS, from the calls the relay really makes.

Runs the cost-model test (tests/tests/cost_model.rs: ingest, consumer and one offline-poller
run against moto, every DynamoDB and SQS call recorded on the wire), turns the recorded calls
and item sizes into request and capacity units, adds Lambda and CloudWatch Logs from the
template's memory and architecture, and prices it all at the list prices below. Prints a
Markdown table (the README's) and writes it to target/cost.md.

    scripts/cost.py                 starts moto from .venv-moto (scripts/test.sh installs it)
    scripts/cost.py --calls FILE    prices an earlier run's calls (RELAY_COST_OUT of the test)

Under scripts/test.sh (RELAY_TEST_MOTO_URL set) it uses that moto server.
"""

import argparse
import json
import math
import os
import re
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---- List prices: us-east-1, on-demand, no free tier. ----------------------------------------
# As published on aws.amazon.com/{lambda,sqs,dynamodb,cloudwatch}/pricing; DynamoDB's
# on-demand prices are those after the 50% cut of 2024-11-01. Last checked 2026-11-29.
PRICES_DATE = "2026-11-29"
LAMBDA_REQUEST = 0.20 / 1e6  # per invocation
LAMBDA_GB_SECOND = {"arm64": 0.0000133334, "x86_64": 0.0000166667}
SQS_FIFO_REQUEST = 0.50 / 1e6  # per request (each 64 KB of payload is one request)
DYNAMODB_WRU = 0.625 / 1e6  # on-demand write request unit (1 KB)
DYNAMODB_RRU = 0.125 / 1e6  # on-demand read request unit (4 KB strongly consistent, 8 KB eventual)
DYNAMODB_STORAGE_GB_MONTH = 0.25
DYNAMODB_PITR_GB_MONTH = 0.20
LOGS_INGEST_GB = 0.50
LOGS_EVENT_OVERHEAD_BYTES = 26  # CloudWatch bills 26 bytes of metadata per log event
ALARM_METRIC_MONTH = 0.10  # standard-resolution alarm, per metric
DASHBOARD_MONTH = 3.00  # beyond the first three per account
CUSTOM_METRIC_MONTH = 0.30

# ---- What a test against moto cannot measure: stated assumptions. ----------------------------
INGEST_BASE_S = 0.024  # parse, verify and one SendMessage, in-region; plus its table calls
# The ingest functions trust a portal's stored application_token for this long after it
# matched (relay-lambda's STORED_TOKEN_CACHE): one read per container, portal and period.
INGEST_TOKEN_CACHE_S = 60
CRM_CALL_S = 0.200  # one Bitrix24 REST answer
FORWARD_S = 0.100  # the destination's answer
TABLE_CALL_S = 0.006  # one in-region DynamoDB call
POLLER_RUN_BASE_S = 0.100  # a poller invocation, plus a REST call per portal (CRM_CALL_S)
# The consumer works on a batch's message groups side by side (GROUPS_IN_FLIGHT at most, read
# from consume.rs), each group's messages in order. Assumed: a batch holds distinct entities, so
# it is billed for one event's time per GROUPS_IN_FLIGHT events, shared by the batch's events. A
# batch of one entity's events runs one after another: the serial figure, printed beside it.
MONTH_S = 30 * 24 * 3600


def groups_in_flight():
    """How many message groups of a batch the consumer runs side by side (consume.rs)."""
    path = os.path.join(ROOT, "crates", "relay-core", "src", "consume.rs")
    with open(path, encoding="utf-8") as f:
        m = re.search(r"^pub const GROUPS_IN_FLIGHT: usize = (\d+);$", f.read(), re.M)
    if not m:
        sys.exit("cost.py: consume.rs has no GROUPS_IN_FLIGHT")
    return int(m.group(1))


def template_defaults():
    """Memory, architecture, batch size and schedule as template.yaml sets them."""
    with open(os.path.join(ROOT, "template.yaml"), encoding="utf-8") as f:
        text = f.read()

    def param_default(name):
        m = re.search(rf"^  {name}:\n(?:    .*\n)*?    Default: (.+)$", text, re.M)
        if not m:
            sys.exit(f"cost.py: template.yaml has no Default for parameter {name}")
        return m.group(1).strip().strip('"')

    memory = re.search(r"^    MemorySize: (\d+)$", text, re.M)
    global_mb = int(memory.group(1)) if memory else 128
    # Each resource block: two-space name, four-space Type. A metric-math alarm is billed per
    # metric it reads (each MetricStat), a plain alarm as one.
    blocks = re.split(r"^  (?=\w+:\n    Type: )", text, flags=re.M)

    def function_gb(name):
        """A function's memory: its own MemorySize (a number or a !Ref to a parameter), else
        the Globals one."""
        block = next((b for b in blocks if b.startswith(f"{name}:\n")), None)
        if block is None:
            sys.exit(f"cost.py: template.yaml has no {name}")
        own = re.search(r"^      MemorySize: (.+)$", block, re.M)
        if not own:
            return global_mb / 1024
        value = own.group(1).strip()
        ref = re.fullmatch(r"!Ref (\w+)", value)
        return int(param_default(ref.group(1)) if ref else value) / 1024

    alarm_blocks = [b for b in blocks if re.search(r"^    Type: AWS::CloudWatch::Alarm\b", b, re.M)]
    alarms = len(alarm_blocks)
    alarm_metrics = sum(max(1, b.count("MetricStat:")) for b in alarm_blocks)
    filters = len(re.findall(r"Type: AWS::Logs::MetricFilter\b", text))
    dashboards = len(re.findall(r"Type: AWS::CloudWatch::Dashboard\b", text))
    schedule = param_default("OfflinePollSchedule")
    minutes = re.match(r"rate\((\d+) minutes?\)", schedule)
    return {
        "ingest_gb": function_gb("IngestDealFunction"),
        "consumer_gb": function_gb("ConsumerFunction"),
        "poller_gb": function_gb("OfflinePollerFunction"),
        "architecture": param_default("Architecture"),
        "batch_size": int(param_default("ConsumerBatchSize")),
        "poll_minutes": int(minutes.group(1)) if minutes else 5,
        "alarms": alarms,
        "alarm_metrics": alarm_metrics,
        "metric_filters": filters,
        "dashboards": dashboards,
    }


# ---- DynamoDB item sizes and capacity units, as DynamoDB defines them. ------------------------
def value_bytes(v):
    (kind, inner), = v.items()
    if kind == "S":
        return len(inner.encode("utf-8"))
    if kind == "B":
        return len(inner) * 3 // 4  # base64 on the wire, billed by the raw bytes
    if kind == "N":
        return (len(inner.lstrip("-").replace(".", "")) + 1) // 2 + 1
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "L":
        return 3 + sum(1 + value_bytes(e) for e in inner)
    if kind == "M":
        return 3 + sum(1 + len(k) + value_bytes(e) for k, e in inner.items())
    return len(json.dumps(inner))


def item_bytes(item):
    return sum(len(name.encode("utf-8")) + value_bytes(v) for name, v in (item or {}).items())


def write_units(call):
    """A write is billed on the larger of the old and new item; steady state, they match."""
    request = call["request"]
    if call["operation"] == "PutItem":
        return max(1, math.ceil(item_bytes(request.get("Item")) / 1024))
    return 1  # UpdateItem (a lease), DeleteItem: small items


def read_units(call):
    response = call.get("response") or {}
    request = call["request"]
    factor = 1.0 if request.get("ConsistentRead") else 0.5
    if call["operation"] == "GetItem":
        size = item_bytes(response.get("Item"))
    else:  # Query: the items it returned, summed
        size = sum(item_bytes(i) for i in response.get("Items", []))
    return max(1, math.ceil(size / 4096)) * factor


def pk_of(call):
    request = call["request"]
    for key in ("Key", "Item"):
        if key in request:
            return request[key]["pk"]["S"]
    return request.get("ExpressionAttributeValues", {}).get(":pk", {}).get("S", "")


def table_units(calls, skip_snapshots=False):
    wru = rru = 0.0
    writes = reads = 0
    for call in calls:
        if call["service"] != "dynamodb":
            continue
        if skip_snapshots and pk_of(call).startswith("SNAP#"):
            # With no snapshot the claim is completed instead (a small PutItem): the snapshot
            # write is also the record that the event was delivered.
            if call["operation"] == "PutItem":
                writes += 1
                wru += 1
            continue
        if call["operation"] in ("PutItem", "UpdateItem", "DeleteItem"):
            writes += 1
            wru += write_units(call)
        elif call["operation"] in ("GetItem", "Query"):
            reads += 1
            rru += read_units(call)
        else:
            sys.exit(f"cost.py: unpriced DynamoDB operation {call['operation']}")
    return writes, reads, wru, rru


# ---- Running the measurement. ------------------------------------------------------------------
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_measurement(out_path):
    env = dict(os.environ)
    moto = None
    if not env.get("RELAY_TEST_MOTO_URL"):
        binary = os.path.join(ROOT, ".venv-moto", "bin", "moto_server")
        if not os.access(binary, os.X_OK):
            sys.exit("cost.py: no moto server; run scripts/test.sh once (it installs .venv-moto)")
        port = free_port()
        moto = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            moto.kill()
            sys.exit("cost.py: moto did not start within 10 s")
        url = f"http://127.0.0.1:{port}"
        env.update({
            "RELAY_TEST_MOTO_URL": url, "AWS_ENDPOINT_URL": url,
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        })
        env.pop("AWS_SESSION_TOKEN", None)
        env.pop("AWS_PROFILE", None)
    env["RELAY_COST_OUT"] = out_path
    try:
        subprocess.run(["cargo", "test", "--quiet", "-p", "integration-tests", "--test", "cost_model"],
                       cwd=ROOT, env=env, check=True)
    finally:
        if moto:
            moto.kill()
            moto.wait()


def money(x):
    return f"${x:,.2f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", help="a cost_model run's RELAY_COST_OUT file (skips the run)")
    args = parser.parse_args()
    calls_path = args.calls or os.path.join(ROOT, "target", "cost-calls.json")
    if not args.calls:
        os.makedirs(os.path.dirname(calls_path), exist_ok=True)
        run_measurement(calls_path)
    with open(calls_path, encoding="utf-8") as f:
        run = json.load(f)
    t = template_defaults()
    events = run["entities"]
    calls = run["calls"]
    phase = lambda name: [c for c in calls if c["phase"] == name]
    per_event = lambda n: n / events
    gb_s = LAMBDA_GB_SECOND[t["architecture"]]
    ingest_gb, mem = t["ingest_gb"], t["consumer_gb"]

    def bill(kind, changes_on):
        """Dollars per million events of one kind (`first` sight or `update`)."""
        ingest, consumer = phase(f"ingest_{kind}"), phase(f"consumer_{kind}")
        sends = per_event(sum(1 for c in ingest if c["operation"] == "SendMessage"))
        iw, ir, iwru, irru = table_units(ingest)
        cw, cr, cwru, crru = table_units(consumer, skip_snapshots=not changes_on)
        ingest_s = INGEST_BASE_S + per_event(iw + ir) * TABLE_CALL_S
        event_s = CRM_CALL_S + FORWARD_S + per_event(cw + cr) * TABLE_CALL_S
        side_by_side = min(t["batch_size"], groups_in_flight())
        batch_s = event_s * math.ceil(t["batch_size"] / side_by_side)
        consumer_s = batch_s / t["batch_size"]
        logs = run["log_lines_and_bytes"]
        log_bytes = sum(logs[p][1] + logs[p][0] * LOGS_EVENT_OVERHEAD_BYTES
                        for p in (f"ingest_{kind}", f"consumer_{kind}")) / events
        lines = [
            ("ingest requests", "1 invocation", 1e6 * LAMBDA_REQUEST),
            ("ingest duration",
             f"{ingest_gb:g} GB x {ingest_s * 1000:.0f} ms (assumed: parse, verify and SendMessage "
             f"{INGEST_BASE_S * 1000:.0f} ms + {TABLE_CALL_S * 1000:.0f} a table call; {t['architecture']})",
             1e6 * ingest_gb * ingest_s * gb_s),
            ("consumer requests", f"1 invocation per batch of {t['batch_size']}",
             1e6 * LAMBDA_REQUEST / t["batch_size"]),
            ("consumer duration",
             f"{mem:g} GB x {consumer_s * 1000:.0f} ms (assumed: a batch of {t['batch_size']} "
             f"distinct entities, {side_by_side} groups side by side, takes one event's "
             f"{event_s * 1000:.0f} ms: CRM {CRM_CALL_S * 1000:.0f} + forward {FORWARD_S * 1000:.0f} + "
             f"{TABLE_CALL_S * 1000:.0f} a table call; one entity's batch runs serially: "
             f"{money(1e6 * mem * event_s * gb_s)})",
             1e6 * mem * consumer_s * gb_s),
            ("SQS SendMessage", f"{sends:g} measured", 1e6 * sends * SQS_FIFO_REQUEST),
            ("SQS receive + delete", f"event source mapping: 2 requests per batch of {t['batch_size']}",
             1e6 * 2 / t["batch_size"] * SQS_FIFO_REQUEST),
            ("DynamoDB writes",
             f"{per_event(cw + iw):g} writes = {per_event(cwru + iwru):g} WRU measured",
             1e6 * per_event(cwru + iwru) * DYNAMODB_WRU),
            ("DynamoDB reads",
             f"{per_event(cr + ir):g} reads = {per_event(crru + irru):g} RRU measured",
             1e6 * per_event(crru + irru) * DYNAMODB_RRU),
            ("CloudWatch Logs", f"{log_bytes:.0f} B measured (+{LOGS_EVENT_OVERHEAD_BYTES} B a line)",
             1e6 * log_bytes / 1e9 * LOGS_INGEST_GB),
        ]
        return lines

    out = []
    out.append(f"Measured by `scripts/cost.py` (tests/tests/cost_model.rs against moto: {events} deals "
               f"of {run['entity_bytes']:,} B JSON, app mode), priced at us-east-1 list prices of "
               f"{PRICES_DATE}, {t['architecture']}, ingest {int(ingest_gb * 1024)} MB, consumer "
               f"{int(mem * 1024)} MB.\n")
    for kind, title in (("update", "an update of a known entity (the typical event)"),
                        ("first", "the first event of an entity")):
        on, off = bill(kind, True), bill(kind, False)
        out.append(f"Per million events, {title}:\n")
        out.append("| item | per event | `changes` on | `changes` off |")
        out.append("|---|---|---|---|")
        for (name, what, dollars), (_, what_off, dollars_off) in zip(on, off):
            shown = what if what == what_off else f"{what}; off: {what_off.split(' (')[0].split(' measured')[0]}"
            out.append(f"| {name} | {shown} | {money(dollars)} | {money(dollars_off)} |")
        out.append(f"| **total** | | **{money(sum(d for *_, d in on))}** | "
                   f"**{money(sum(d for *_, d in off))}** |\n")

    # The poller: per run, one Query for the portals, then each portal's REST calls.
    poller = phase("poller")
    portals = run["portals_polled"]
    runs = MONTH_S / 60 / t["poll_minutes"]
    _, _, pwru, prru = table_units(poller)
    query_rru = sum(read_units(c) for c in poller if c["operation"] == "Query")
    rest_per_portal = sum(1 for c in poller if c["operation"] == "GetItem") / portals
    per_portal = (runs * ((prru - query_rru) / portals * DYNAMODB_RRU
                          + t["poller_gb"] * rest_per_portal * CRM_CALL_S * gb_s))
    fixed_poller = runs * (LAMBDA_REQUEST + query_rru * DYNAMODB_RRU
                           + t["poller_gb"] * POLLER_RUN_BASE_S * gb_s)
    alarms = t["alarm_metrics"]
    out.append("Fixed monthly costs, whatever the traffic:\n")
    out.append("| item | per month |")
    out.append("|---|---|")
    out.append(f"| offline poller, every {t['poll_minutes']} min ({runs:,.0f} runs): one Query of the "
               f"portals, {rest_per_portal:g} REST calls and token reads per portal | "
               f"{money(fixed_poller)} + {money(per_portal)} per portal |")
    token_reads = MONTH_S / INGEST_TOKEN_CACHE_S
    out.append(f"| ingest token reads: one per warm ingest container and portal every "
               f"{INGEST_TOKEN_CACHE_S} s at most ({token_reads:,.0f} a month), not per event | "
               f"up to {money(token_reads * DYNAMODB_RRU)} per container and portal |")
    out.append(f"| {t['alarms']} alarms ({alarms} alarm metrics) | {money(alarms * ALARM_METRIC_MONTH)} |")
    out.append(f"| {t['metric_filters']} log metric filters (custom metrics) | "
               f"{money(t['metric_filters'] * CUSTOM_METRIC_MONTH)} |")
    out.append(f"| {t['dashboards']} dashboard (free within the first three of the account) | "
               f"up to {money(t['dashboards'] * DASHBOARD_MONTH)} |")
    out.append(f"| DynamoDB storage + PITR | {money(DYNAMODB_STORAGE_GB_MONTH + DYNAMODB_PITR_GB_MONTH)} per GB |")
    text = "\n".join(out) + "\n"
    print(text)
    with open(os.path.join(ROOT, "target", "cost.md"), "w", encoding="utf-8") as f:
        f.write(text)


if __name__ == "__main__":
    main()
