"""Helpers for the module's end-to-end tests: a real controld with sample
services, a real nginx with the built module in front of them, and ways to
fire many requests at once and read both sides' counters."""
import http.client
import json
import os
import signal
import socket
import threading
import time

from harness import OndemandTestCase, PYTHON, free_port, http_request, wait_until

STATUS_PATH = "/_ondemand"


class Result:
    """One HTTP exchange as a client saw it."""

    def __init__(self, status=None, headers=None, body="", started=0.0, ended=0.0, error=None):
        self.status = status
        self.headers = headers or {}
        self.body = body
        self.started = started
        self.ended = ended
        self.error = error

    def __repr__(self):
        return "Result(%s, %r, %.2fs%s)" % (self.status, self.body[:120], self.ended - self.started,
                                           ", error=%r" % self.error if self.error else "")


class ModuleTestCase(OndemandTestCase):
    """A test with controld, sample services and nginx on 127.0.0.1."""

    def setUp(self):
        super().setUp()
        self._samples = []

    def tearDown(self):
        for name in self._samples:
            self.stop_sample(name)
        super().tearDown()

    # --- controld -----------------------------------------------------------

    def sample_yaml(self, name, port=None, idle="1h", ready_after=0.0, start_timeout="20s", extra="",
                    start=None, stop=None):
        """A controld service that runs demo/sample_service.py on `port`."""
        port = port or free_port()
        sample_start, sample_stop = self.sample_commands(name, port, ready_after=ready_after)
        self._samples.append(name)
        return """  {name}:
    health_url: http://127.0.0.1:{port}/healthz
    idle_timeout: {idle}
    start_timeout: {start_timeout}
    start_command: {start}
    stop_command: {stop}
{extra}""".format(name=name, port=port, idle=idle, start_timeout=start_timeout,
                  start=json.dumps(start or sample_start), stop=json.dumps(stop or sample_stop), extra=extra)

    def start_controld_with(self, services, extra=""):
        return self.start_controld("socket: {dir}/controld.sock\nstate_dir: {dir}/state\n{extra}services:\n{services}"
                                   .format(dir=self.dir, extra=extra, services="".join(services)))

    def messages_received(self):
        return self.status()["daemon"].get("messages_received", {})

    def history(self, service):
        return self.status(service)["services"][0].get("history", [])

    # --- nginx --------------------------------------------------------------

    def start_front(self, locations, workers=1, http_extra="", server_extra="", wait_connected=True):
        """nginx on a free port with the given location blocks, an
        ondemand_status location, and controld's socket."""
        self.port = free_port()
        body = """
            ondemand_control unix:{sock};
            {http_extra}
            server {{
                listen 127.0.0.1:{port};
                {server_extra}
                location = {status} {{ ondemand_status; }}
                {locations}
            }}
            """.format(sock=self.controld_socket, port=self.port, status=STATUS_PATH, http_extra=http_extra,
                       server_extra=server_extra, locations=locations)
        proc = self.start_nginx(body, workers=workers)
        wait_until(lambda: self._listening(self.port), 10, message="nginx listening")
        if wait_connected:
            wait_until(lambda: self.front_status().get("controld", {}).get("status") == "connected", 10,
                       message="nginx workers connected to controld")
        return proc

    def _listening(self, port):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    def front_status(self):
        """What the (single) worker answering holds: ondemand_status as JSON."""
        try:
            status, _, body = http_request(self.port, STATUS_PATH, timeout=5)
        except OSError:
            return {}
        if status != 200:
            return {}
        return json.loads(body)

    def front_service(self, name):
        for service in self.front_status().get("services", []):
            if service["name"] == name:
                return service
        return {}

    def wait_waiting(self, name, count, timeout=15):
        wait_until(lambda: self.front_service(name).get("waiting") == count, timeout,
                   message="%d requests waiting for %s in nginx" % (count, name))

    def get(self, path, headers=None, method="GET", body=None, timeout=30):
        started = time.time()
        try:
            status, hdrs, text = http_request(self.port, path, method=method, headers=headers, body=body,
                                              timeout=timeout)
            return Result(status, hdrs, text, started, time.time())
        except (OSError, http.client.HTTPException) as e:
            return Result(None, {}, "", started, time.time(), error=e)

    def concurrent(self, count, path="/", headers=None, method="GET", body=None, timeout=60):
        """Starts `count` requests at once; returns (threads, results) so a
        test can act while they wait. results fills in as they finish."""
        results = [None] * count
        barrier = threading.Barrier(count)

        def one(i):
            barrier.wait()
            results[i] = self.get(path, headers=headers, method=method, body=body, timeout=timeout)

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(count)]
        for t in threads:
            t.start()
        return threads, results

    @staticmethod
    def join(threads, timeout=60):
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = sum(1 for t in threads if t.is_alive())
        if alive:
            raise AssertionError("%d requests still unanswered after %.0fs" % (alive, timeout))

    def error_log_lines(self, needle):
        return [line for line in self.nginx_error_log().splitlines() if needle in line]
