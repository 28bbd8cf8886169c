"""The module over a service's life: long responses and WebSockets keep it
warm, requests during a stop wait for the restart, controld going away and
coming back, nginx reloading and stopping with requests held."""
import base64
import json
import os
import re
import signal
import socket
import threading
import time
import unittest

from module_case import ModuleTestCase
from harness import free_port, wait_until
from test_controld import WorkerClient


def location(path, service, port, extra=""):
    return "location %s { ondemand_service %s; %s proxy_pass http://127.0.0.1:%d; }\n" % (path, service, extra, port)


class WebSocketClient:
    """Just enough of RFC 6455 to talk to the sample service's /ws echo."""

    def __init__(self, port, path="/ws"):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (path, key)).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise AssertionError("connection closed during the upgrade: %r" % head)
            head += chunk
        self.status_line = head.split(b"\r\n", 1)[0].decode()

    def echo(self, text):
        payload = text.encode()
        mask = os.urandom(4)
        self.sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask +
                          bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        header = self._read(2)
        return self._read(header[1] & 0x7F).decode()

    def _read(self, n):
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise AssertionError("WebSocket closed")
            data += chunk
        return data

    def close(self):
        mask = os.urandom(4)
        try:
            self.sock.sendall(bytes([0x88, 0x80]) + mask)
        finally:
            self.sock.close()


class LifecycleTest(ModuleTestCase):

    def transition_times(self, service, to):
        return [h["at"] / 1000.0 for h in self.history(service) if h["to"] == to]

    def test_a_streamed_response_is_not_cut_and_the_service_stops_after_it(self):
        port = free_port()
        self.start_controld_with([self.sample_yaml("stream", port, idle="1s")])
        self.start_front(location("/", "stream", port, "proxy_buffering off;"))
        self.assertEqual(self.get("/").status, 200)  # wakes it
        done = {}

        def stream():
            done["result"] = self.get("/stream?seconds=5")

        t = threading.Thread(target=stream, daemon=True)
        t.start()
        for _ in range(4):  # 1 s idle_timeout, 5 s of streaming
            time.sleep(1.0)
            self.assertEqual(self.service_state("stream"), "warm")
        t.join(15)
        result = done["result"]
        self.assertEqual(result.status, 200)
        self.assertEqual(result.body.count("tick"), len(result.body.splitlines()))
        self.assertGreaterEqual(result.body.count("tick"), 45, "the whole stream arrived")
        self.wait_state("stream", "cold", 10)
        stopping = self.transition_times("stream", "stopping")
        self.assertEqual(len(stopping), 1)
        self.assertGreaterEqual(stopping[0], result.ended - 0.05, "stopped only after the stream ended")

    def test_an_open_websocket_keeps_the_service_warm(self):
        port = free_port()
        self.start_controld_with([self.sample_yaml("ws", port, idle="1s", ready_after=0.5)])
        self.start_front(location("/ws", "ws", port, "proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade;"
                                                     " proxy_set_header Connection upgrade; proxy_read_timeout 30s;"))
        ws = WebSocketClient(self.port)  # held while the service starts, then upgraded
        self.assertIn("101", ws.status_line)
        for i in range(4):
            self.assertEqual(ws.echo("ping %d" % i), "ping %d" % i)
            time.sleep(1.0)
            self.assertEqual(self.service_state("ws"), "warm")
        closed_at = time.time()
        ws.close()
        self.wait_state("ws", "cold", 10)
        self.assertGreaterEqual(self.transition_times("ws", "stopping")[0], closed_at - 0.05)

    def test_a_request_during_a_stop_waits_and_is_served_after_the_restart(self):
        port = free_port()
        start, stop = self.sample_commands("cycle", port)
        slow_stop = ["/bin/sh", "-c", 'sleep 1.5; exec "$0" "$@"'] + stop
        self.start_controld_with([self.sample_yaml("cycle", port, idle="1s", stop=slow_stop)])
        self.start_front(location("/", "cycle", port))
        self.assertEqual(self.get("/").status, 200)
        wait_until(lambda: self.service_state("cycle") == "stopping", 10, interval=0.01, message="stopping")
        result = self.get("/after-stop")
        self.assertEqual(result.status, 200, result)
        self.assertIn("hello from cycle", result.body)
        states = [h["to"] for h in self.history("cycle")]
        self.assertEqual(states[-4:], ["stopping", "cold", "starting", "warm"], states)

    def test_a_request_arriving_while_the_stop_is_announced_calls_the_stop_off(self):
        """The drain window: controld has told the workers `stopping` and waits for every one to
        acknowledge. A protocol client that never acknowledges holds the window open (up to
        2 s) so that a request can reliably arrive in it; nginx must hold it, and its wake must
        call the stop off rather than let the stop command run."""
        port = free_port()
        self.start_controld_with([self.sample_yaml("drain", port, idle="1s")])
        self.start_front(location("/", "drain", port))
        first = self.get("/")
        self.assertEqual(first.status, 200, first)
        silent = WorkerClient(self.controld_socket)
        self.addCleanup(silent.close)
        silent.send({"type": "subscribe"})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            msg = silent.read()
            if msg and msg.get("type") == "state" and msg["service"] == "drain" and msg["state"] == "stopping":
                break
        else:
            self.fail("no stopping announcement")
        sent = time.monotonic()
        result = self.get("/in-the-window")
        self.assertEqual(result.status, 200, result)
        self.assertLess(time.monotonic() - sent, 1.5, "answered when the stop was called off, not after the window")
        self.assertEqual(re.search(r"pid (\d+)", result.body).group(1), re.search(r"pid (\d+)", first.body).group(1),
                         "the same instance answered: it was never stopped")
        states = [h["to"] for h in self.history("drain")]
        self.assertEqual(states[-2:], ["stopping", "warm"], states)
        self.assertTrue(self.sample_running("drain"))

    def test_controld_going_away_and_coming_back(self):
        warm_port, cold_port = free_port(), free_port()
        self.start_controld_with([self.sample_yaml("steady", warm_port),
                                  self.sample_yaml("sleepy", cold_port, ready_after=0.5)])
        self.start_front(location("/steady", "steady", warm_port) +
                         location("/closed", "steady", warm_port, "ondemand_daemon_down closed;") +
                         location("/sleepy", "sleepy", cold_port))
        self.assertEqual(self.get("/steady").status, 200)
        self.controld.kill9()
        wait_until(lambda: self.front_status()["controld"]["status"] == "unreachable", 5, message="outage seen")

        # last_known: the service was warm, traffic keeps flowing.
        for _ in range(5):
            self.assertEqual(self.get("/steady").status, 200)
        # closed: 503 with Retry-After, and a body that says why.
        closed = self.get("/closed")
        self.assertEqual(closed.status, 503)
        self.assertEqual(closed.headers.get("retry-after"), "5")
        self.assertEqual(json.loads(closed.body)["error"], "controld_unreachable")
        # A cold service's requests wait for controld.
        threads, results = self.concurrent(3, "/sleepy")
        self.wait_waiting("sleepy", 3)

        self.restart_controld()
        back = time.time()
        wait_until(lambda: self.front_status()["controld"]["status"] == "connected", 5, interval=0.01,
                   message="worker reconnected")
        self.assertLess(time.time() - back, 1.0, "reconnected within a second")
        self.join(threads, 20)
        self.assertEqual([r.status for r in results], [200] * 3, results)
        self.assertEqual(len(self.error_log_lines("lost the connection to controld")), 1, "one line per outage")

    def test_reload_with_fifty_requests_parked_answers_all_of_them(self):
        port = free_port()
        self.start_controld_with([self.sample_yaml("reload", port, ready_after=3.0)])
        self.start_front(location("/", "reload", port))
        threads, results = self.concurrent(50, "/")
        self.wait_waiting("reload", 50)
        self.reload_nginx()
        self.join(threads, 30)
        self.assertEqual([r.status for r in results], [200] * 50, [r for r in results if r.status != 200][:3])
        self.assertEqual(self.get("/").status, 200)
        # The old worker exits once it holds nothing (no [alert] on the way:
        # the harness checks the log).
        wait_until(lambda: re.search(r"\[notice\] \d+#\d+: exit$", self.nginx_error_log(), re.M), 10,
                   message="the old worker exited")

    def test_nginx_stopping_answers_the_requests_it_holds(self):
        port = free_port()
        self.start_controld_with([self.sample_yaml("never", port, ready_after=30.0, start_timeout="60s")])
        self.start_front(location("/", "never", port))
        threads, results = self.concurrent(5, "/")
        self.wait_waiting("never", 5)
        self.nginx.signal(signal.SIGTERM)
        self.join(threads, 10)
        for r in results:
            self.assertEqual(r.status, 503, r)
            self.assertEqual(json.loads(r.body)["error"], "shutting_down")


if __name__ == "__main__":
    unittest.main()
