#!/usr/bin/env python3
"""Counting destination for scripts/load.py, in its own process: answers every POST with 200
at once and counts deliveries by `webhook-id` (Standard Webhooks); GET /stats returns
{"distinct": n, "total": m, "last_at": monotonic seconds} as JSON. Loopback only.

  scripts/load/counting_sink.py --port 0     # prints "listening <port>" when ready
"""

import argparse
import asyncio
import json
import time

seen = {}
totals = {"total": 0, "last_at": 0.0}


class Connection(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buffer = b""

    def data_received(self, data):
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = self.buffer[:end].decode("latin-1").split("\r\n")
            length, webhook_id = 0, None
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value.strip())
                elif name == "webhook-id":
                    webhook_id = value.strip()
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length:]
            if lines[0].startswith("GET /stats"):
                body = json.dumps({"distinct": len(seen), **totals}).encode()
                self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                     b"content-length: %d\r\n\r\n%s" % (len(body), body))
                continue
            seen[webhook_id] = seen.get(webhook_id, 0) + 1
            totals["total"] += 1
            totals["last_at"] = time.monotonic()
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")


async def main(port):
    server = await asyncio.get_running_loop().create_server(Connection, "127.0.0.1", port)
    print("listening %d" % server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=0)
    asyncio.run(main(ap.parse_args().port))
