#!/usr/bin/env python3
"""A small HTTP service to put behind ondemand: the demo's sample and the
end-to-end tests' upstream.

  sample_service.py serve --port 9001 [--ready-after 2] [--name notes]
  sample_service.py start --pidfile F --port 9001 ...   # daemonize, return at once
  sample_service.py stop  --pidfile F                   # stop a started one

Endpoints: /healthz, /stream?seconds=N (chunked, one line every 100 ms),
/ws (WebSocket upgrade, echoes text frames), anything else: a greeting
naming the service. A POST is answered with its body (X-Body-Sha256 and
X-Body-Length say what arrived); a POST to a /v1/ or /api/ path (a model
server's API) with JSON instead: {"service", "sha256", "length"}.
"""
import argparse
import base64
import hashlib
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "sample-service"

    def log_message(self, fmt, *args):
        if self.server.request_log:
            with open(self.server.request_log, "a") as log:
                log.write("%s %s\n" % (self.command, self.path))

    def _reply(self, status, body, content_type="text/plain"):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Sample-Service", self.server.name)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.log_message("")
        url = urlparse(self.path)
        if url.path == "/healthz":
            return self._reply(200, "ok\n")
        if url.path == "/stream":
            return self._stream(float(parse_qs(url.query).get("seconds", ["5"])[0]))
        if url.path == "/ws" and self.headers.get("Upgrade", "").lower() == "websocket":
            return self._websocket()
        self._reply(200, "hello from %s (pid %d)\n" % (self.server.name, os.getpid()))

    def do_POST(self):
        self.log_message("")
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length) if length else b""
        digest = hashlib.sha256(body).hexdigest()
        path = urlparse(self.path).path
        answer = body
        content_type = "application/octet-stream"
        if "/v1/" in path or path.startswith("/api/"):
            answer = ('{"service": "%s", "sha256": "%s", "length": %d}\n' % (self.server.name, digest, len(body))).encode()
            content_type = "application/json"
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(answer)))
        self.send_header("X-Sample-Service", self.server.name)
        self.send_header("X-Body-Sha256", digest)
        self.send_header("X-Body-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(answer)

    def _stream(self, seconds):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        deadline = time.monotonic() + seconds
        n = 0
        while time.monotonic() < deadline:
            line = ("tick %d\n" % n).encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.flush()
            n += 1
            time.sleep(0.1)
        self.wfile.write(b"0\r\n\r\n")

    def _websocket(self):
        key = self.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        # Echo frames until the client closes; good enough for text frames < 126 bytes.
        while True:
            header = self.rfile.read(2)
            if len(header) < 2:
                return
            opcode, length = header[0] & 0x0F, header[1] & 0x7F
            mask = self.rfile.read(4) if header[1] & 0x80 else b"\0\0\0\0"
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
            if opcode == 8:
                return
            self.wfile.write(bytes([0x80 | opcode, len(payload)]) + payload)
            self.wfile.flush()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024


def serve(args):
    if args.ready_after > 0:
        time.sleep(args.ready_after)  # a slow boot: nothing listens until then
    server = Server((args.host, args.port), Handler)
    server.name = args.name
    server.request_log = args.request_log
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()


def start(args):
    """Daemonizes `serve` and returns at once, like `systemctl start`."""
    if os.fork() > 0:
        return 0
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    with open(args.pidfile, "w") as f:
        f.write(str(os.getpid()))
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    serve(args)
    os._exit(0)


def stop(args):
    try:
        with open(args.pidfile) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return 0  # nothing running
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    os.unlink(args.pidfile)
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["serve", "start", "stop"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--name", default="sample")
    parser.add_argument("--ready-after", type=float, default=0.0, help="seconds before it listens")
    parser.add_argument("--pidfile")
    parser.add_argument("--request-log", help="append one line per request here")
    args = parser.parse_args()
    if args.action in ("start", "stop") and not args.pidfile:
        parser.error("--pidfile is needed with start and stop")
    return {"serve": serve, "start": start, "stop": stop}[args.action](args) or 0


if __name__ == "__main__":
    sys.exit(main())
