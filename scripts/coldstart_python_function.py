"""The baseline of scripts/coldstart.py: a Python 3 + boto3 ingest function doing what the Rust
ingest function does for a Bitrix24 deal event (read the secrets from SSM at init, parse the
Function URL event, check application_token, SendMessage to the FIFO queue, answer 202), run
by a minimal custom-runtime loop on the same Lambda Runtime API
(https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html).

Written as a Python Lambda is usually written: SDK clients and secrets at module level, so the
init does what the AWS docs recommend doing outside the handler.
"""

import base64
import hashlib
import hmac
import http.client
import json
import os
import sys
import urllib.parse

# ---- init: what a Python function does before its first event ------------------------------
import boto3

SSM_NAMES = {
    setting: os.environ[f"{setting}_PARAM"]
    for setting in ("RELAY_B24_APP_TOKENS", "RELAY_SALESMAN_SECRET")
    if os.environ.get(f"{setting}_PARAM")
}
SECRETS = {}
if SSM_NAMES:
    answer = boto3.client("ssm").get_parameters(
        Names=sorted(set(SSM_NAMES.values())), WithDecryption=True
    )
    values = {p["Name"]: p["Value"] for p in answer["Parameters"]}
    SECRETS = {s: values[name] for s, name in SSM_NAMES.items() if name in values}
APP_TOKENS = [t.strip() for t in SECRETS.get("RELAY_B24_APP_TOKENS", "").split(",") if t.strip()]
QUEUE_URL = os.environ["RELAY_QUEUE_URL"]
SQS = boto3.client("sqs")


def reply(status, body):
    return {
        "statusCode": status,
        "headers": {"content-type": "application/json"},
        "body": json.dumps(body),
    }


def handler(event):
    """One Function URL event: a Bitrix24 form or JSON delivery."""
    if event.get("requestContext", {}).get("http", {}).get("method") != "POST":
        return reply(405, {"error": "only POST is accepted"})
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    content_type = (event.get("headers") or {}).get("content-type", "")
    if content_type.startswith("application/x-www-form-urlencoded"):
        form = dict(urllib.parse.parse_qsl(body))
    elif content_type.startswith("application/json"):
        document = json.loads(body)
        form = {
            "event": document.get("event"),
            "ts": str(document.get("ts", "")),
            "data[FIELDS][ID]": str(document.get("data", {}).get("FIELDS", {}).get("ID", "")),
            **{f"auth[{k}]": v for k, v in (document.get("auth") or {}).items()},
        }
    else:
        return reply(415, {"error": "unsupported content type"})
    event_name = form.get("event")
    if not event_name:
        return reply(400, {"error": "no event"})
    presented = form.get("auth[application_token]", "")
    if not any(hmac.compare_digest(presented, token) for token in APP_TOKENS):
        return reply(401, {"error": "unauthorized"})
    portal = form.get("auth[member_id]", "")
    entity_id = form.get("data[FIELDS][ID]")
    ts = form.get("ts", "")
    envelope_id = hashlib.sha256(f"{portal}|{event_name}|{entity_id}|{ts}".encode()).hexdigest()
    envelope = {
        "id": envelope_id,
        "source": "bitrix24",
        "portal": portal,
        "event": event_name,
        "entity_id": entity_id,
        "ts": ts,
        "data": {k: v for k, v in form.items() if not k.startswith("auth[")},
    }
    SQS.send_message(
        QueueUrl=QUEUE_URL,
        MessageBody=json.dumps(envelope),
        MessageGroupId=f"{portal}:{entity_id}",
        MessageDeduplicationId=envelope_id,
    )
    return reply(202, {"id": envelope_id})


# ---- the runtime loop -----------------------------------------------------------------------
def main():
    host, _, port = os.environ["AWS_LAMBDA_RUNTIME_API"].partition(":")
    api = http.client.HTTPConnection(host, int(port or 80))
    base = "/2018-06-01/runtime/invocation"
    while True:
        api.request("GET", f"{base}/next")
        answer = api.getresponse()
        request_id = answer.getheader("Lambda-Runtime-Aws-Request-Id")
        event = json.loads(answer.read())
        try:
            path, result = f"{base}/{request_id}/response", handler(event)
        except Exception as error:  # the runtime reports any handler failure, as Lambda's does
            path = f"{base}/{request_id}/error"
            result = {"errorMessage": str(error), "errorType": type(error).__name__}
        api.request("POST", path, body=json.dumps(result).encode())
        answer = api.getresponse()
        answer.read()


if __name__ == "__main__":
    sys.exit(main())
