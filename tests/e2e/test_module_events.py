"""ondemand_events: a browser or dashboard follows every service's state as
Server-Sent Events, from the state controld pushes to the worker; the number
of streams per worker is bounded, and streams end cleanly when nginx reloads
or stops."""
import json
import os
import queue
import signal
import socket
import subprocess
import threading
import time
import unittest

from module_case import ModuleTestCase
from harness import PYTHON, free_port, wait_until

EVENTS = "/_ondemand/events"


class EventStream:
    """One SSE connection read on a thread: events land in a queue as
    (name, data) pairs; ("<closed>", None) when the server ends it."""

    def __init__(self, port, path=EVENTS, timeout=30):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.sendall(("GET %s HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n" % path)
                          .encode())
        self.file = self.sock.makefile("rb")
        status_line = self.file.readline().decode()
        self.status = int(status_line.split()[1])
        self.headers = {}
        while True:
            line = self.file.readline().decode().rstrip("\r\n")
            if not line:
                break
            key, _, value = line.partition(":")
            self.headers[key.strip().lower()] = value.strip()
        self.events = queue.Queue()
        self.body = b""
        self.retry = None
        if self.status == 200:
            threading.Thread(target=self._read, daemon=True).start()
        else:
            length = int(self.headers.get("content-length", "0"))
            self.body = self.file.read(length)

    def _chunks(self):
        chunked = self.headers.get("transfer-encoding") == "chunked"
        while True:
            if not chunked:
                data = self.file.read1(65536)
                if not data:
                    return
                yield data
                continue
            size = int(self.file.readline().strip() or b"0", 16)
            if size == 0:
                return
            data = self.file.read(size)
            self.file.readline()
            yield data

    def _read(self):
        buf = b""
        try:
            for data in self._chunks():
                buf += data
                while b"\n\n" in buf:
                    block, buf = buf.split(b"\n\n", 1)
                    name, payload = "message", []
                    for line in block.decode().split("\n"):
                        if line.startswith(":"):
                            continue
                        field, _, value = line.partition(": ")
                        if field == "event":
                            name = value
                        elif field == "data":
                            payload.append(value)
                        elif field == "retry":
                            self.retry = int(value)
                    if payload:
                        self.events.put((name, json.loads("\n".join(payload))))
        except (OSError, ValueError):
            pass
        self.events.put(("<closed>", None))

    def next(self, timeout=15):
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no event within %.0f s" % timeout)

    def until(self, predicate, timeout=20, what="event"):
        """Events up to and including the first that matches."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no %s within %.0f s; saw %r" % (what, timeout, seen))
            name, data = self.next(left)
            seen.append((name, data))
            if predicate(name, data):
                return seen
            if name == "<closed>":
                raise AssertionError("stream closed before %s; saw %r" % (what, seen))

    def close(self):
        # (with a makefile() open, close() alone would keep the socket open)
        for step in (lambda: self.sock.shutdown(socket.SHUT_RDWR), self.file.close, self.sock.close):
            try:
                step()
            except OSError:
                pass


def state_is(service, state):
    return lambda name, data: name == "state" and data["service"] == service and data["state"] == state


class EventsTest(ModuleTestCase):

    def front(self, service_port, events="ondemand_events;", workers=1, extra=""):
        self.start_front("location = %s { %s }\n"
                         "location / { ondemand_service notes; proxy_pass http://127.0.0.1:%d; }\n%s"
                         % (EVENTS, events, service_port, extra), workers=workers)

    def stream(self, path=EVENTS):
        s = EventStream(self.port, path)
        self.addCleanup(s.close)
        return s

    def test_a_cold_start_streams_starting_then_warm_with_the_times_a_page_needs(self):
        port = free_port()
        self.start_controld_with([self.sample_yaml("notes", port, ready_after=1.0)])
        self.front(port)
        s = self.stream()
        self.assertEqual(s.status, 200)
        self.assertTrue(s.headers["content-type"].startswith("text/event-stream"), s.headers)
        self.assertEqual(s.headers.get("cache-control"), "no-store")
        self.assertEqual(s.headers.get("x-accel-buffering"), "no")

        # First what there is now: controld's link, then every service.
        name, link = s.next()
        self.assertEqual(name, "controld")
        self.assertEqual(link["status"], "connected")
        self.assertTrue(link["daemon"].startswith("controld"), link)
        name, cold = s.next()
        self.assertEqual((name, cold["service"], cold["state"]), ("state", "notes", "cold"))
        self.assertEqual(s.retry, 2000)

        threads, results = self.concurrent(1, "/hello")
        events = s.until(state_is("notes", "warm"), what="warm")
        states = [d for n, d in events if n == "state"]
        self.assertEqual([d["state"] for d in states], ["starting", "warm"])
        starting, warm = states
        self.assertEqual(starting["cause"], "request")
        self.assertGreater(starting["starting_since"], 0)
        self.assertGreater(warm["epoch"], starting["epoch"])
        self.assertGreater(warm["last_start_ms"], 900, "the sample answers 1 s after its start")
        for d in states:
            self.assertLessEqual(abs(d["now"] - time.time() * 1000), 5000)
        self.join(threads)
        self.assertEqual(results[0].status, 200)

    def test_a_failed_start_streams_its_reason_and_when_a_request_may_retry(self):
        self.start_controld_with([self.sample_yaml("notes", start=["sh", "-c", "echo disk full >&2; exit 3"])])
        self.front(free_port())
        s = self.stream()
        s.until(state_is("notes", "cold"), what="the first state")
        self.get("/hello")
        events = s.until(state_is("notes", "failed"), what="failed")
        failed = events[-1][1]
        self.assertIn("disk full", failed["reason"])
        self.assertGreater(failed["retry_at"], failed["since"])

    def test_a_stream_for_one_service_gets_only_its_events(self):
        port = free_port()
        self.start_controld_with([self.sample_yaml("notes", port), self.sample_yaml("wiki")])
        self.front(port)
        s = self.stream(EVENTS + "?service=notes")
        _, link = s.next()
        self.assertEqual(link["status"], "connected")
        self.assertEqual(s.next()[1]["service"], "notes")
        self.cli_ok("start", "wiki", "--wait")
        self.get("/hello")
        events = s.until(state_is("notes", "warm"), what="notes warm")
        self.assertEqual({d["service"] for n, d in events if n == "state"}, {"notes"})

    def test_more_streams_than_the_limit_get_a_clear_503_and_a_closed_one_frees_its_place(self):
        self.start_controld_with([self.sample_yaml("notes")])
        self.front(free_port(), events="ondemand_events max=2;")
        first, second = self.stream(), self.stream()
        for s in (first, second):
            self.assertEqual(s.status, 200)
            s.until(state_is("notes", "cold"), what="the first state")
        third = self.stream()
        self.assertEqual(third.status, 503)
        self.assertEqual(third.headers.get("retry-after"), "5")
        answer = json.loads(third.body)
        self.assertEqual(answer["error"], "too_many_viewers")
        self.assertEqual(answer["max_viewers"], 2)
        self.assertIn("ondemand_events max=2", answer["message"])
        first.close()

        def another_fits():
            s = EventStream(self.port)
            s.close()
            return s.status == 200

        wait_until(another_fits, 10, interval=0.2, message="a place freed when a viewer left")

    def test_controld_going_away_and_coming_back_is_streamed(self):
        self.start_controld_with([self.sample_yaml("notes")])
        self.front(free_port())
        s = self.stream()
        s.until(state_is("notes", "cold"), what="the first state")
        self.controld.stop()
        down = s.until(lambda n, d: n == "controld" and d["status"] == "unreachable", what="unreachable")[-1][1]
        self.assertGreater(down["unreachable_since"], 0)
        self.restart_controld()
        events = s.until(lambda n, d: n == "controld" and d["status"] == "connected", what="connected again")
        # The table is complete again by then: every service was pushed.
        self.assertIn("notes", [d["service"] for n, d in events if n == "state"])

    def test_a_reload_ends_the_streams_of_the_old_worker_at_once(self):
        self.start_controld_with([self.sample_yaml("notes")])
        self.front(free_port())
        s = self.stream()
        s.until(state_is("notes", "cold"), what="the first state")
        old_workers = self.worker_pids()
        started = time.monotonic()
        self.reload_nginx()
        s.until(lambda n, d: n == "<closed>", timeout=10, what="the end of the stream")
        wait_until(lambda: not (old_workers & self.worker_pids()), 10, message="the old worker exited")
        self.assertLess(time.monotonic() - started, 8)
        # A new stream is served by the new worker.
        wait_until(lambda: self.front_status().get("controld", {}).get("status") == "connected", 10)
        again = self.stream()
        self.assertEqual(again.status, 200)
        again.until(state_is("notes", "cold"), what="the first state from the new worker")

    def test_nginx_stopping_ends_the_streams(self):
        self.start_controld_with([self.sample_yaml("notes")])
        self.front(free_port())
        s = self.stream()
        s.until(state_is("notes", "cold"), what="the first state")
        self.nginx.stop()
        s.until(lambda n, d: n == "<closed>", timeout=10, what="the end of the stream")

    def test_a_viewer_costs_the_warm_path_nothing_and_head_gets_only_headers(self):
        port = free_port()
        self.start_controld_with([self.sample_yaml("notes", port)])
        self.front(port)
        streams = [self.stream() for _ in range(5)]
        for s in streams:
            s.until(state_is("notes", "cold"), what="the first state")
        self.get("/hello")
        for s in streams:
            s.until(state_is("notes", "warm"), what="warm")
        # Warm requests change no state: no events, none of the streams is dropped.
        for _ in range(50):
            self.assertEqual(self.get("/hello").status, 200)
        head = self.get(EVENTS, method="HEAD")
        self.assertEqual(head.status, 200)
        self.assertTrue(head.headers["content-type"].startswith("text/event-stream"))
        post = self.get(EVENTS, method="POST", body="x")
        self.assertEqual(post.status, 405)
        for s in streams:
            self.assertTrue(s.events.empty(), "no event without a state change")

    def test_the_status_page_shows_controlds_totals_and_does_without_them_when_it_does_not_answer(self):
        port = free_port()
        self.start_controld_with([self.sample_yaml("notes", port, ready_after=4.0)])
        self.front(port, workers=2, extra="location /held/ { ondemand_service notes; ondemand_mode block; "
                                          "proxy_pass http://127.0.0.1:%d; }" % port)
        threads, results = self.concurrent(4, "/held/x")
        wait_until(lambda: self.status("notes")["services"][0]["requests_waiting"] == 4, 15,
                   message="controld counting 4 held requests")
        html = {"Accept": "text/html"}
        page = self.get("/_ondemand", headers=html)
        self.assertEqual(page.status, 200)
        # The totals of all workers, as controld has them, not one worker's.
        self.assertIn("<dt>Requests</dt><dd>0 in flight, 4 waiting</dd>", page.body)
        self.assertNotIn("in this nginx worker", page.body)
        self.join(threads)
        self.assertEqual([r.status for r in results], [200] * 4)
        # A controld that does not answer costs the page at most 2 s.
        self.controld.signal(signal.SIGSTOP)
        self.addCleanup(self.controld.signal, signal.SIGCONT)
        started = time.monotonic()
        page = self.get("/_ondemand", headers=html, timeout=10)
        self.assertEqual(page.status, 200)
        self.assertLess(time.monotonic() - started, 4)
        self.assertIn("did not send its status in time", page.body)
        self.assertIn("waiting in this nginx worker", page.body)
        self.controld.signal(signal.SIGCONT)

    def test_an_http2_stream_gets_the_events_and_ends_within_a_heartbeat_of_a_reload(self):
        port = free_port()
        h2 = free_port()
        self.start_controld_with([self.sample_yaml("notes", port, ready_after=0.5)])
        self.front(port, extra="}\nserver { listen 127.0.0.1:%d http2; location = %s { ondemand_events; }" % (h2, EVENTS))
        curl = subprocess.Popen(["curl", "-sN", "--http2-prior-knowledge", "http://127.0.0.1:%d%s" % (h2, EVENTS)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.addCleanup(curl.stdout.close)
        self.addCleanup(curl.wait)
        self.addCleanup(curl.kill)
        lines = queue.Queue()

        def read():
            for line in curl.stdout:
                lines.put(line.decode().rstrip("\n"))
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()

        def until(pred, timeout):
            deadline = time.monotonic() + timeout
            while True:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
                if pred(line):
                    return
                if line is None:
                    raise AssertionError("the stream ended early")

        until(lambda l: l is not None and '"state":"cold"' in l, 10)
        self.get("/hello")
        until(lambda l: l is not None and '"state":"warm"' in l, 20)
        started = time.monotonic()
        self.reload_nginx()
        until(lambda l: l is None, 25)
        self.assertLess(time.monotonic() - started, 20, "ended by the old worker's next heartbeat")

    def test_an_events_location_in_a_server_of_a_service_neither_waits_for_it_nor_wakes_it(self):
        port = free_port()
        self.start_controld_with([self.sample_yaml("notes", port)])
        self.start_front("location = %s { ondemand_events; }\n"
                         "location / { proxy_pass http://127.0.0.1:%d; }" % (EVENTS, port),
                         server_extra="ondemand_service notes;")
        s = self.stream()
        self.assertEqual(s.status, 200)
        s.until(state_is("notes", "cold"), timeout=5, what="the first state, at once")
        time.sleep(0.5)
        self.assertEqual(self.service_state("notes"), "cold")
        self.assertEqual(self.messages_received().get("wake", 0), 0)

    def worker_pids(self):
        out = set()
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open("/proc/%s/cmdline" % pid, "rb") as f:
                    cmd = f.read()
                with open("/proc/%s/stat" % pid) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            if b"nginx: worker process" in cmd and ppid == self.nginx.pid:
                out.add(int(pid))
        return out


if __name__ == "__main__":
    unittest.main()
