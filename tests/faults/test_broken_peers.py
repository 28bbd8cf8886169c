"""Peers that misbehave: the Semaphore double answering garbage, 500s, a
100 MB body or a body that never ends; health URLs that stall or never
close. Through all of it controld keeps answering, keeps its memory and
descriptors bounded, starts at most one task per start, and every request
held in nginx gets an answer. Real nginx with the module, real controld;
Semaphore is the double."""
import json
import os
import socket
import threading
import time
import unittest

from faults_case import FaultsCase, count, fd_count, figures, rss_kib
from harness import free_port, wait_until
from semaphore_double import DEFAULT_TOKEN, SemaphoreDouble

TASKS = "/api/project/1/tasks"
TASK = r"/api/project/1/tasks/\d+"
# What controld may use while it reads a broken answer: far below the 100 MB
# sent, and several times that in a sanitizer build (ASan's shadow memory and
# quarantine of freed blocks; ONDEMAND_NGINX_PRELOAD is set only there).
SANITIZED = bool(os.environ.get("ONDEMAND_NGINX_PRELOAD"))
RSS_LIMIT_KIB = (1536 if SANITIZED else 400) * 1024


class Watch:
    """Samples controld while a fault lasts: its RSS, and how long a status
    call takes (the event loop must never be blocked by a peer)."""

    def __init__(self, case):
        self.case = case
        self.peak_rss = 0
        self.slowest_status = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            pid = self.case.controld.pid
            try:
                self.peak_rss = max(self.peak_rss, rss_kib(pid))
            except OSError:
                pass
            started = time.monotonic()
            self.case.cli_ok("status")
            self.slowest_status = max(self.slowest_status, time.monotonic() - started)
            self._stop.wait(0.1)

    def stop(self):
        self._stop.set()
        self._thread.join(10)
        return self


class SemaphoreAnswersBadly(FaultsCase):
    def setUp(self):
        super().setUp()
        self.double = SemaphoreDouble(templates=[{"id": 22, "run": "succeed", "after_ms": 300},
                                                 {"id": 23, "run": "succeed", "after_ms": 100},
                                                 {"id": 24, "run": "fail", "after_ms": 100}],
                                      queue_delay_ms=20).start()
        self.addCleanup(self.double.stop)
        self.upstream = free_port()
        self.serve_sample("gpu", self.upstream)
        services = ""
        for name, template in (("gpu", 22), ("broken", 24)):
            services += "\n".join([
                "  %s:" % name, "    health_url: http://127.0.0.1:%d/healthz" % self.upstream,
                "    idle_timeout: 1h", "    start_timeout: 60s", "    failure_backoff: 0s", "    semaphore:",
                "      start_template_id: %d" % template, "      stop_template_id: 23", "      task_timeout: 60s",
                "      poll_interval: 200ms", ""])
        self.start_controld("\n".join([
            "socket: %s/controld.sock" % self.dir, "state_dir: %s/state" % self.dir,
            "semaphore:", "  base_url: %s" % self.double.url, "  project_id: 1", "  api_token: %s" % DEFAULT_TOKEN,
            "  http_timeout: 2s", "services:", services]))
        self.start_front(self.location("/gpu", "gpu", self.upstream) +
                         self.location("/broken", "broken", self.upstream))

    def start_tasks(self, template=22):
        return [r for r in self.double.requests(TASKS) if r["method"] == "POST" and r["path"] == TASKS
                and r.get("status") == 201 and json.loads(r["body"]).get("template_id") == template]

    def check_watch(self, watch, mode):
        self.assertTrue(self.controld.alive(), "controld died on %s:\n%s" % (mode, self.controld.output()[-2000:]))
        self.assertLess(watch.peak_rss, RSS_LIMIT_KIB, "controld's memory on %s" % mode)
        self.assertLess(watch.slowest_status, 5.0, "a status call waited on the loop during %s" % mode)

    def test_broken_task_polls_are_outlasted_and_the_start_goes_on(self):
        rounds = count(3, 1)
        summary = {}
        for mode in ("500", "endless", "huge"):
            peak, slowest = 0, 0.0
            for _ in range(rounds):
                before = len(self.start_tasks())
                fault = self.double.inject_fault("GET", TASK, mode)
                watch = Watch(self)
                threads, results = self.concurrent(3, "/gpu", timeout=90)
                wait_until(lambda: self.double.fault_hits(fault) >= 2, 60, message="two broken polls (%s)" % mode)
                self.double.clear_faults()
                self.join(threads, 90)
                watch.stop()
                self.check_watch(watch, mode)
                self.assertEqual([r.status for r in results], [200] * 3, results)
                self.assertEqual(len(self.start_tasks()), before + 1, "one task per start (%s)" % mode)
                peak, slowest = max(peak, watch.peak_rss), max(slowest, watch.slowest_status)
                self.assertEqual(self.cli("stop", "gpu", "--wait", timeout=60).returncode, 0)
            summary[mode] = (peak, slowest)
            figures("semaphore-poll-" + mode, starts=rounds, requests=3 * rounds, failures=0,
                    peak_rss_mib=peak // 1024, slowest_status_s="%.2f" % slowest)

    def test_garbage_task_polls_fail_the_start_with_the_reason_and_the_next_start_works(self):
        rounds = count(3, 1)
        for _ in range(rounds):
            fault = self.double.inject_fault("GET", TASK, "garbage")
            threads, results = self.concurrent(3, "/gpu", timeout=90)
            self.join(threads, 90)
            self.assertGreaterEqual(self.double.fault_hits(fault), 1)
            self.assertEqual([r.status for r in results], [502] * 3, results)
            self.assertIn("no task status", results[0].body)
            self.assertEqual(self.service_state("gpu"), "failed")
            self.double.clear_faults()
            self.assertEqual(self.get("/gpu").status, 200)
            self.assertEqual(self.cli("stop", "gpu", "--wait", timeout=60).returncode, 0)
        figures("semaphore-poll-garbage", starts=rounds, requests=4 * rounds, failures=0)

    def test_a_500_to_the_task_post_fails_the_start_without_a_task(self):
        rounds = count(3, 1)
        for _ in range(rounds):
            before = len(self.start_tasks())
            self.double.inject_fault("POST", TASKS, "500", times=1)
            result = self.get("/gpu", timeout=90)
            self.assertEqual(result.status, 502, result)
            self.assertIn("500", result.body)
            self.assertEqual(len(self.start_tasks()), before)
            self.double.clear_faults()
            self.assertEqual(self.get("/gpu").status, 200)
            self.assertEqual(len(self.start_tasks()), before + 1)
            self.assertEqual(self.cli("stop", "gpu", "--wait", timeout=60).returncode, 0)
        figures("semaphore-post-500", starts=2 * rounds, requests=2 * rounds, failures=0)

    def test_a_huge_or_endless_task_output_still_fails_the_start_with_a_reason(self):
        rounds = count(3, 1)
        for mode in ("huge", "endless"):
            peak = 0
            for _ in range(rounds):
                fault = self.double.inject_fault("GET", TASK + "/output", mode)
                watch = Watch(self)
                result = self.get("/broken", timeout=90)
                watch.stop()
                self.double.clear_faults()
                self.check_watch(watch, "output " + mode)
                self.assertEqual(self.double.fault_hits(fault), 1)
                self.assertEqual(result.status, 502, result)
                self.assertIn("ended with status error", result.body)
                peak = max(peak, watch.peak_rss)
            figures("semaphore-output-" + mode, starts=rounds, requests=rounds, failures=0,
                    peak_rss_mib=peak // 1024)


class BadHealthServer:
    """A health URL that misbehaves on purpose:
    stall        accepts, reads the request, never answers
    endless      503 headers, then a chunk every 10 ms, never a last one
    short        200 with Content-Length 100, 5 bytes, then held open"""

    def __init__(self, mode):
        self.mode = mode
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.connections = 0
        self._stop = threading.Event()
        self._conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self):
        return "http://127.0.0.1:%d/healthz" % self.sock.getsockname()[1]

    def _accept(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            conn.recv(65536)
            if self.mode == "endless":
                conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n")
                while not self._stop.wait(0.01):
                    conn.sendall(b"5\r\ndown\n\r\n")
            elif self.mode == "short":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nok\nok")
            self._stop.wait(600)
        except OSError:
            pass

    def stop(self):
        self._stop.set()
        self.sock.close()
        for c in self._conns:
            try:
                c.close()
            except OSError:
                pass


class HealthUrlMisbehaves(FaultsCase):
    def test_stalling_endless_and_unfinished_health_answers_fail_at_start_timeout_without_leaks(self):
        rounds = count(3, 1)
        for mode in ("stall", "endless", "short"):
            server = BadHealthServer(mode)
            self.addCleanup(server.stop)
            port = free_port()
            self.start_controld_with(["""  slow:
    health_url: %s
    health_timeout: 1s
    start_timeout: 4s
    failure_backoff: 0s
    start_command: ["true"]
""" % server.url], extra="")
            self.start_front(self.location("/", "slow", port), http_extra="ondemand_wait 60s;")
            fds = fd_count(self.controld.pid)
            took = []
            watch = None
            for _ in range(rounds):
                watch = Watch(self)
                started = time.monotonic()
                result = self.get("/", timeout=60)
                took.append(time.monotonic() - started)
                watch.stop()
                self.assertTrue(self.controld.alive())
                self.assertLess(watch.slowest_status, 5.0, "a status call waited on the loop (%s)" % mode)
                self.assertLess(watch.peak_rss, RSS_LIMIT_KIB)
                self.assertEqual(result.status, 502, result)
                self.assertEqual(self.service_state("slow"), "failed")
                self.assertGreater(took[-1], 3.5, "failed before start_timeout (%s)" % mode)
                self.assertLess(took[-1], 20.0, "failed long after start_timeout (%s)" % mode)
            self.assertGreater(server.connections, 0)
            wait_until(lambda: fd_count(self.controld.pid) <= fds, 10,
                       message="controld's descriptors back to %d after %s (now %d)" % (
                           fds, mode, fd_count(self.controld.pid)))
            figures("health-" + mode, starts=rounds, probes=server.connections, failures=0,
                    failed_after_s="%.1f-%.1f" % (min(took), max(took)), peak_rss_mib=watch.peak_rss // 1024)
            self.nginx.stop()
            self.controld.stop()
            server.stop()


if __name__ == "__main__":
    unittest.main()
