"""Requests through nginx with the ondemand module: a cold service is started
once and every held request gets the service's own answer; warm traffic costs
controld nothing; failures, timeouts and limits get clear answers."""
import json
import re
import socket
import sys
import time
import unittest

from module_case import ModuleTestCase
from harness import free_port, wait_until
from h2client import H2Connection

PROXY = "proxy_pass http://127.0.0.1:{port};"


def location(path, service, port, extra=""):
    return "location %s { ondemand_service %s; %s %s }\n" % (path, service, extra, PROXY.format(port=port))


class HeldRequestsTest(ModuleTestCase):

    def test_hundred_requests_to_a_cold_service_start_it_once_and_all_get_its_answer(self):
        port = free_port()
        self.start_controld_with([self.sample_yaml("notes", port, ready_after=2.0)])
        self.start_front(location("/", "notes", port), workers=2)

        sent = time.time()
        threads, results = self.concurrent(100, "/hello")
        self.join(threads, 60)

        self.assertEqual([r.status for r in results], [200] * 100, results[:3])
        pids = {re.search(r"hello from notes \(pid (\d+)\)", r.body).group(1) for r in results}
        self.assertEqual(len(pids), 1, "all answers come from one instance of the service")
        # The sample only listens 2 s after it was started: an answer before
        # that cannot be the service's.
        self.assertGreaterEqual(min(r.ended for r in results) - sent, 1.9)
        starts = [h for h in self.history("notes") if h["to"] == "starting"]
        self.assertEqual(len(starts), 1, starts)
        self.assertLessEqual(self.messages_received().get("wake", 0), 2, "a wake per worker, not per request")
        # Everything held has been let go and has finished.
        self.assertEqual(self.front_service("notes")["waiting"], 0)
        wait_until(lambda: self.front_service("notes")["in_flight"] == 0, 5, message="in flight back to 0")

    def test_warm_traffic_sends_no_message_per_request(self):
        # An externally managed service (health only), served by nginx itself,
        # so that a thousand requests are quick.
        backend = free_port()
        self.start_controld_with(["""  static:
    health_url: http://127.0.0.1:%d/healthz
    idle_timeout: 1h
""" % backend])
        self.start_front(location("/", "static", backend),
                         http_extra="server { listen 127.0.0.1:%d; location / { return 200 'static\\n'; } }" % backend)
        self.assertEqual(self.get("/first").status, 200)
        self.wait_state("static", "warm")
        time.sleep(0.6)  # let the first request's activity report go out
        before = self.messages_received()

        threads, results = self.concurrent(10, "/")
        self.join(threads)
        count = 10
        for _ in range(99):
            threads, results = self.concurrent(10, "/")
            self.join(threads)
            self.assertEqual({r.status for r in results}, {200})
            count += 10
        time.sleep(0.6)
        after = self.messages_received()

        self.assertEqual(count, 1000)
        self.assertEqual(after.get("wake", 0), before.get("wake", 0), "no wake for a warm service")
        activity = after.get("activity", 0) - before.get("activity", 0)
        sys.stderr.write("\n1000 warm requests: %d activity messages, %d wakes\n"
                         % (activity, after.get("wake", 0) - before.get("wake", 0)))
        self.assertLess(activity, 60, "activity is coalesced, not per request (%d messages)" % activity)
        service = self.status("static")["services"][0]
        self.assertGreaterEqual(service["started_total"], 1001)
        self.assertEqual(service["in_flight"], 0)

    def test_a_parked_post_reaches_the_service_with_its_body(self):
        port = free_port()
        self.start_controld_with([self.sample_yaml("echo", port, ready_after=1.0)])
        self.start_front(location("/", "echo", port))
        body = "".join("line %06d of the parked request body\n" % i for i in range(3000))  # ~110 KB
        result = self.get("/echo", method="POST", body=body.encode(), headers={"Content-Type": "text/plain"})
        self.assertEqual(result.status, 200, result)
        self.assertEqual(result.body, body)

    def test_a_failed_start_answers_every_waiting_request_502_with_the_reason(self):
        self.start_controld_with(["""  broken:
    health_url: http://127.0.0.1:%d/healthz
    start_command: ["/bin/sh", "-c", "sleep 1; echo 'disk /dev/sdz is full' >&2; exit 3"]
    start_timeout: 20s
""" % free_port()])
        self.start_front(location("/", "broken", free_port()))
        threads, results = self.concurrent(10, "/")
        self.join(threads, 30)

        failed = [h for h in self.history("broken") if h["to"] == "failed"]
        self.assertEqual(len(failed), 1, failed)
        failed_at = failed[0]["at"] / 1000.0
        for r in results:
            self.assertEqual(r.status, 502, r)
            self.assertEqual(r.headers.get("x-ondemand-state"), "failed")
            answer = json.loads(r.body)
            self.assertEqual(answer["error"], "start_failed")
            self.assertIn("disk /dev/sdz is full", answer["reason"])
            self.assertLess(r.ended - failed_at, 1.0, "answered within a second of the failure")
        # Within failure_backoff a new request gets the failure at once.
        again = self.get("/", headers={"Accept": "text/html"})
        self.assertEqual(again.status, 502)
        self.assertIn("disk /dev/sdz is full", again.body)
        self.assertLess(again.ended - again.started, 0.5)

    def test_ondemand_wait_answers_504_and_the_start_carries_on(self):
        port = free_port()
        self.start_controld_with([self.sample_yaml("slow", port, ready_after=4.0)])
        self.start_front(location("/", "slow", port, "ondemand_wait 2s;"))
        result = self.get("/")
        self.assertEqual(result.status, 504)
        self.assertGreaterEqual(result.ended - result.started, 1.9)
        self.assertEqual(result.headers.get("x-ondemand-state"), "starting")
        answer = json.loads(result.body)
        self.assertEqual((answer["error"], answer["service"], answer["state"]), ("timeout", "slow", "starting"))
        self.assertGreaterEqual(answer["starting_for_ms"], 1900)
        self.assertIn("has been starting for", answer["message"])
        # The start was not given up: a later request is served.
        self.wait_state("slow", "warm", 15)
        later = self.get("/")
        self.assertEqual(later.status, 200)
        self.assertIn("hello from slow", later.body)

    def test_the_eleventh_waiting_request_gets_503_with_ondemand_max_waiting_10(self):
        port = free_port()
        self.start_controld_with([self.sample_yaml("busy", port, ready_after=2.5)])
        self.start_front(location("/", "busy", port, "ondemand_max_waiting 10;"))
        threads, results = self.concurrent(10, "/")
        self.wait_waiting("busy", 10)
        eleventh = self.get("/")
        self.assertEqual(eleventh.status, 503)
        self.assertEqual(eleventh.headers.get("retry-after"), "5")
        self.assertEqual(json.loads(eleventh.body)["error"], "too_many_waiting")
        self.join(threads, 30)
        self.assertEqual([r.status for r in results], [200] * 10)

    def test_auto_mode_shows_browsers_a_page_and_holds_api_clients(self):
        port = free_port()
        self.start_controld_with([self.sample_yaml("ui", port, ready_after=1.5)])
        self.start_front(location("/", "ui", port))
        page = self.get("/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
        self.assertEqual(page.status, 503)
        self.assertEqual(page.headers.get("retry-after"), "3")
        self.assertIn("text/html", page.headers.get("content-type"))
        self.assertIn('http-equiv="refresh"', page.body)
        self.assertIn("ui", page.body)
        self.assertLess(page.ended - page.started, 0.5, "the page is answered at once")
        api = self.get("/", headers={"Accept": "*/*"})
        self.assertEqual(api.status, 200)
        self.assertIn("hello from ui", api.body)
        self.assertNotIn("the last start took", page.body)
        # The next cold start's page says what to expect: how long the last one took.
        self.assertEqual(self.cli("stop", "ui", "--wait").returncode, 0)
        page = self.get("/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
        self.assertEqual(page.status, 503)
        self.assertRegex(page.body, r"the last start took [12]\.\d s")

    def test_a_custom_waiting_page_and_reject_mode(self):
        port = free_port()
        page = self.write("wait.html", "<html><head><meta http-equiv=\"refresh\" content=\"{{ refresh }}\"></head>"
                                       "<body>{{service}} is {{state}} since {{elapsed_seconds}}s: {{message}}</body></html>")
        self.start_controld_with([self.sample_yaml("gpu", port, ready_after=1.0)])
        self.start_front(location("/page", "gpu", port, "ondemand_mode page; ondemand_page %s;" % page) +
                         location("/reject", "gpu", port, "ondemand_mode reject;"))
        result = self.get("/page", headers={"Accept": "*/*"})
        self.assertEqual(result.status, 503)
        self.assertEqual(result.headers.get("retry-after"), "3")
        self.assertRegex(result.body, r"<body>gpu is (cold|starting) since \d+s: Service &quot;gpu&quot; is not ready")
        self.assertIn('content="3"', result.body)
        rejected = self.get("/reject")
        self.assertEqual(rejected.status, 503)
        self.assertEqual(rejected.headers.get("retry-after"), "5")
        self.assertEqual(json.loads(rejected.body)["error"], "not_ready")
        self.wait_state("gpu", "warm")
        self.assertEqual(self.get("/page").status, 200)

    def test_variables_tell_the_access_log_what_happened(self):
        port = free_port()
        self.start_controld_with([self.sample_yaml("logged", port, ready_after=1.0)])
        self.start_front(location("/", "logged", port, "access_log %s/ondemand.log ondemand;" % self.dir),
                         http_extra="log_format ondemand '$uri $status $ondemand_service $ondemand_state "
                                    "$ondemand_wait_ms';")
        self.assertEqual(self.get("/first").status, 200)
        self.assertEqual(self.get("/second").status, 200)

        def logged():
            with open(self.path("ondemand.log")) as f:
                lines = [line.split() for line in f.read().splitlines()]
            return lines if len(lines) == 2 else None

        # nginx writes the line once the response has gone out.
        lines = wait_until(logged, 5, message="two access log lines")
        self.assertEqual([l[:4] for l in lines], [["/first", "200", "logged", "cold"],
                                                  ["/second", "200", "logged", "warm"]])
        self.assertGreaterEqual(int(lines[0][4]), 900)
        self.assertEqual(lines[1][4], "0")

    def test_passive_requests_neither_wake_a_service_nor_keep_it_warm(self):
        port = free_port()
        self.start_controld_with([self.sample_yaml("quiet", port, idle="2s")])
        self.start_front(location("/", "quiet", port) +
                         location("/always/", "quiet", port, "ondemand_passive off;"),
                         server_extra="ondemand_passive $quiet_bot;",
                         http_extra="map $http_user_agent $quiet_bot { default 0; ~*uptime-checker 1; }")
        bot = {"User-Agent": "uptime-checker/1.0", "Accept": "*/*"}

        # Cold: the checker is told so at once and wakes nothing.
        result = self.get("/", headers=bot)
        self.assertEqual(result.status, 503, result)
        self.assertEqual(json.loads(result.body)["error"], "not_woken")
        self.assertEqual(result.headers.get("retry-after"), "5")
        time.sleep(0.3)
        self.assertEqual(self.service_state("quiet"), "cold")
        self.assertEqual(self.messages_received().get("wake", 0), 0)
        # `ondemand_passive off` in a location overrides the server's: this one wakes it.
        self.assertEqual(self.get("/always/", headers=bot).status, 200)

        # Warm: the checker is served, but its requests are not activity.
        started = self.status("quiet")["services"][0]["started_total"]
        # The checker keeps asking, far more often than idle_timeout (2 s), until nginx's
        # worker sees the service leave warm (nginx's status page: no controld CLI in the loop).
        deadline = time.monotonic() + 10
        asked = []
        while time.monotonic() < deadline and self.front_service("quiet").get("state") == "warm":
            self.assertIn(self.get("/", headers=bot).status, (200, 503))
            asked.append(time.monotonic())
            time.sleep(0.1)
        self.assertGreater(len(asked), 3)
        self.assertLess(max(b - a for a, b in zip(asked, asked[1:])), 1.0, "the checker never paused for long")
        self.wait_state("quiet", "cold", timeout=10)  # stopped after idle_timeout in spite of the checker
        self.assertEqual(self.status("quiet")["services"][0]["started_total"], started)
        self.assertEqual(len([h for h in self.history("quiet") if h["to"] == "starting"]), 1)

    def test_an_unknown_service_answers_502_naming_it_and_logs_once(self):
        port = free_port()
        self.start_controld_with([self.sample_yaml("known", port)])
        # Set for the whole server: the status page (which inherits it) still answers.
        self.start_front("location / { proxy_pass http://127.0.0.1:%d; }" % port,
                         server_extra="ondemand_service nosuch;")
        for _ in range(3):
            result = self.get("/")
            self.assertEqual(result.status, 502)
            self.assertEqual(result.headers.get("x-ondemand-state"), "unknown")
            self.assertIn('"nosuch"', json.loads(result.body)["message"])
        self.assertEqual(len(self.error_log_lines('no service "nosuch"')), 1, self.nginx_error_log())

    def test_a_client_that_leaves_while_parked_leaves_nothing_behind(self):
        port = free_port()
        self.start_controld_with([self.sample_yaml("lazy", port, ready_after=1.5)])
        self.start_front(location("/", "lazy", port))
        clients = []
        for _ in range(5):
            s = socket.create_connection(("127.0.0.1", self.port))
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            clients.append(s)
        self.wait_waiting("lazy", 5)
        for s in clients:
            s.close()
        self.wait_waiting("lazy", 0, 5)
        self.wait_state("lazy", "warm", 15)
        self.assertEqual(self.get("/").status, 200)
        wait_until(lambda: self.front_service("lazy")["in_flight"] == 0, 5, message="nginx in flight 0")
        wait_until(lambda: self.status("lazy")["services"][0]["in_flight"] == 0, 5, message="controld in flight 0")

    def test_internal_redirects_and_subrequests_count_a_request_once(self):
        port = free_port()
        self.start_controld_with([self.sample_yaml("app", port, ready_after=1.0)])
        self.start_front("""
            location /redirected { ondemand_service app; try_files /nonexistent @app; }
            location @app { ondemand_service app; %s }
            location /guarded { auth_request /auth; ondemand_service app; %s }
            location = /auth { internal; ondemand_service app; proxy_pass http://127.0.0.1:%d/healthz;
                               proxy_pass_request_body off; proxy_set_header Content-Length ""; }
            """ % (PROXY.format(port=port), PROXY.format(port=port), port))
        # The auth subrequest finds the service cold: it waits, then both pass.
        first = self.get("/guarded")
        self.assertEqual(first.status, 200, first)
        self.assertEqual(self.get("/redirected").status, 200)
        for _ in range(3):
            self.assertEqual(self.get("/guarded").status, 200)
            self.assertEqual(self.get("/redirected").status, 200)
        wait_until(lambda: self.status("app")["services"][0]["started_total"] == 8, 5,
                   message="8 requests counted once each (got %d)" % self.status("app")["services"][0]["started_total"])

    def h2_front(self, service, port):
        """The location on a second, HTTP/2-only (prior knowledge, cleartext) server; returns its port."""
        h2 = free_port()
        self.start_front(location("/", service, port), http_extra="server { listen 127.0.0.1:%d http2; %s }" % (
            h2, location("/", service, port)))
        return h2

    def test_http2_streams_held_on_one_connection_are_all_released(self):
        port = free_port()
        self.start_controld_with([self.sample_yaml("notes", port, ready_after=1.5)])
        h2 = self.h2_front("notes", port)

        conn = H2Connection(h2)
        self.addCleanup(conn.close)
        conn.get_many("/hello", 20)
        self.wait_waiting("notes", 20)
        streams = conn.wait_all()
        self.assertEqual([(s.status, s.reset) for s in streams], [(200, None)] * 20)
        for s in streams:
            self.assertIn(b"hello from notes", s.body)
        self.assertEqual(len([h for h in self.history("notes") if h["to"] == "starting"]), 1)
        wait_until(lambda: self.front_service("notes").get("in_flight") == 0, 5, message="in flight back to 0")

    def test_an_http2_connection_closed_while_its_streams_wait_leaves_nothing_behind(self):
        port = free_port()
        self.start_controld_with([self.sample_yaml("notes", port, ready_after=30.0, start_timeout="60s")])
        h2 = self.h2_front("notes", port)

        conn = H2Connection(h2)
        conn.get_many("/hello", 10)
        self.wait_waiting("notes", 10)
        conn.close()
        self.wait_waiting("notes", 0)
        wait_until(lambda: self.front_service("notes").get("in_flight") == 0, 5, message="in flight back to 0")
        wait_until(lambda: self.status("notes")["services"][0]["in_flight"] == 0, 5,
                   message="controld sees in flight back to 0")

if __name__ == "__main__":
    unittest.main()
