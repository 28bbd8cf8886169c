"""What monitoring sees: GET /metrics on metrics_listen (checked by
Prometheus' own promtool), `controld metrics`, and StatsD lines over UDP,
after a cold start, a failed start, requests held and an idle stop."""
import json
import os
import re
import shutil
import subprocess
import unittest

from module_case import ModuleTestCase
from harness import SOURCE_DIR, DatagramSink, free_port, http_request, wait_until

PROMTOOL = shutil.which("promtool")


def location(path, service, port):
    return "location %s { ondemand_service %s; proxy_pass http://127.0.0.1:%d; }\n" % (path, service, port)


class StatsdListener(DatagramSink):
    """A UDP socket on loopback that keeps every StatsD line it receives."""

    @property
    def lines(self):
        return [line for _, data in list(self.messages) for line in data.decode().splitlines()]

    def matching(self, pattern):
        return [line for line in self.lines if re.fullmatch(pattern, line)]


def sample_value(text, name, labels):
    """The value of one sample (`labels` as written, e.g. 'service="web"'), or None."""
    m = re.search(r"^%s\{%s\} (\S+)$" % (re.escape(name), re.escape(labels)), text, re.M)
    return float(m.group(1)) if m else None


class TelemetryTest(ModuleTestCase):

    def setUp(self):
        super().setUp()
        self.statsd = StatsdListener()

    def tearDown(self):
        self.statsd.close()
        super().tearDown()

    def scrape(self, path="/metrics", method="GET"):
        return http_request(self.metrics_port, path, method=method, timeout=10)

    def promtool_check(self, text):
        if not PROMTOOL:
            self.fail("promtool is missing (Debian package prometheus; scripts/install-deps installs it)")
        out = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, "promtool check metrics:\n%s%s\n--- page:\n%s" %
                         (out.stdout, out.stderr, text))

    def test_prometheus_and_statsd_see_a_cold_start_a_failed_start_held_requests_and_an_idle_stop(self):
        self.metrics_port = free_port()
        web_port = free_port()
        self.start_controld_with(
            [self.sample_yaml("web", web_port, idle="1s", ready_after=1.0),
             """  broken:
    health_url: http://127.0.0.1:%d/healthz
    start_command: ["/bin/sh", "-c", "exit 3"]
""" % free_port()],
            extra="metrics_listen: 127.0.0.1:%d\nstatsd: {host: 127.0.0.1, port: %d, namespace: odtest}\n" %
                  (self.metrics_port, self.statsd.port))
        self.start_front(location("/", "web", web_port) + location("/broken", "broken", free_port()))

        # Before anything happened: a valid page, with empty histograms.
        status, headers, text = self.scrape()
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("text/plain; version=0.0.4"), headers)
        self.promtool_check(text)
        self.assertEqual(sample_value(text, "ondemand_cold_start_duration_seconds_count", 'service="web"'), 0)

        # Two requests held while web starts (it takes 1 s to answer health).
        threads, results = self.concurrent(2, "/")
        wait_until(lambda: sample_value(self.scrape()[2], "ondemand_requests_waiting", 'service="web"') == 2, 15,
                   message="ondemand_requests_waiting 2 while web starts")
        self.join(threads, 30)
        self.assertEqual([r.status for r in results], [200, 200], results)
        self.assertEqual(self.get("/broken").status, 502)
        self.wait_state("web", "cold", 20)  # idle stop after 1 s

        def settled():
            text = self.scrape()[2]
            done = (sample_value(text, "ondemand_stops_total", 'service="web",reason="idle"') == 1 and
                    sample_value(text, "ondemand_wait_duration_seconds_count", 'service="web"') == 2 and
                    sample_value(text, "ondemand_requests_waiting", 'service="web"') == 0)
            return text if done else None
        text = wait_until(settled, 15, message="the idle stop and both waits on /metrics")
        self.promtool_check(text)
        self.assertEqual(sample_value(text, "ondemand_service_state", 'service="web",state="cold"'), 1)
        self.assertEqual(sample_value(text, "ondemand_service_state", 'service="broken",state="failed"'), 1)
        self.assertEqual(sample_value(text, "ondemand_starts_total", 'service="web",result="ok"'), 1)
        self.assertEqual(sample_value(text, "ondemand_starts_total", 'service="broken",result="failed"'), 1)
        self.assertEqual(sample_value(text, "ondemand_stops_total", 'service="web",reason="cli"'), 0)
        self.assertEqual(sample_value(text, "ondemand_stops_total", 'service="web",reason="evicted"'), 0)
        # The cold start took at least the second web needs: not in the 1 s bucket, in the 2.5 s one... or later.
        self.assertEqual(sample_value(text, "ondemand_cold_start_duration_seconds_count", 'service="web"'), 1)
        self.assertEqual(sample_value(text, "ondemand_cold_start_duration_seconds_bucket", 'service="web",le="1"'), 0)
        self.assertEqual(sample_value(text, "ondemand_cold_start_duration_seconds_bucket", 'service="web",le="+Inf"'),
                         1)
        self.assertGreaterEqual(sample_value(text, "ondemand_cold_start_duration_seconds_sum", 'service="web"'), 1.0)
        # Both requests were held about as long as the start took.
        self.assertEqual(sample_value(text, "ondemand_wait_duration_seconds_bucket", 'service="web",le="0.5"'), 0)
        self.assertGreaterEqual(sample_value(text, "ondemand_wait_duration_seconds_sum", 'service="web"'), 1.8)
        self.assertEqual(sample_value(text, "ondemand_cold_start_duration_seconds_count", 'service="broken"'), 0)
        # Exact timestamps: whole or decimal seconds, never an exponent.
        start_time = re.search(r"^ondemand_controld_start_time_seconds (\S+)$", text, re.M).group(1)
        self.assertRegex(start_time, r"^\d{10}(\.\d{1,3})?$")

        # `controld metrics` prints the same families and values (the
        # connection counters move with the CLI's own connection).
        def stable(page):
            return [line for line in page.splitlines() if not re.match(r"ondemand_controld_(connections|messages)", line)]
        cli = self.cli("metrics")
        self.assertEqual(cli.returncode, 0, cli.stderr)
        self.assertEqual(stable(cli.stdout), stable(self.scrape()[2]))

        # Other paths and methods.
        self.assertEqual(self.scrape("/")[0], 404)
        self.assertEqual(self.scrape("/metrics", method="POST")[0], 405)
        status, _, body = self.scrape("/metrics", method="HEAD")
        self.assertEqual((status, body), (200, ""))

        # StatsD saw the same events, with the namespace.
        wait_until(lambda: self.statsd.matching(r"odtest\.web\.stop\.idle:1\|c"), 10, message="the stop on StatsD")
        self.assertEqual(len(self.statsd.matching(r"odtest\.web\.start\.ok:1\|c")), 1, self.statsd.lines)
        self.assertEqual(len(self.statsd.matching(r"odtest\.broken\.start\.failed:1\|c")), 1, self.statsd.lines)
        cold = self.statsd.matching(r"odtest\.web\.cold_start:(\d+)\|ms")
        self.assertEqual(len(cold), 1, self.statsd.lines)
        self.assertGreaterEqual(int(cold[0].split(":")[1].split("|")[0]), 1000)
        self.assertTrue(self.statsd.matching(r"odtest\.web\.stop_duration:\d+\|ms"), self.statsd.lines)
        waits = self.statsd.matching(r"odtest\.web\.wait:(\d+)\|ms(\|@[0-9.]+)?")
        self.assertTrue(waits, self.statsd.lines)
        counted = sum(1 / float(w.split("@")[1]) if "@" in w else 1 for w in waits)
        self.assertAlmostEqual(counted, 2, places=3)
        for w in waits:
            self.assertGreaterEqual(int(w.split(":")[1].split("|")[0]), 900, waits)

    def test_an_eviction_is_counted_and_the_machine_shows_what_its_services_hold(self):
        self.metrics_port = free_port()
        ports = {"a": free_port(), "b": free_port()}
        on_gpu = "    machine: gpu-01\n    needs: { vram_gb: %d }\n"
        self.start_controld_with(
            [self.sample_yaml("a", ports["a"], extra=on_gpu % 16), self.sample_yaml("b", ports["b"], extra=on_gpu % 12)],
            extra="metrics_listen: 127.0.0.1:%d\nstatsd: {host: 127.0.0.1, port: %d, namespace: odtest}\n"
                  "machines:\n  gpu-01:\n    resources: { vram_gb: 24 }\n    min_warm: 0s\n" %
                  (self.metrics_port, self.statsd.port))
        self.start_front(location("/a/", "a", ports["a"]) + location("/b/", "b", ports["b"]))
        machine = 'machine="gpu-01",resource="vram_gb"'

        text = self.scrape()[2]
        self.promtool_check(text)
        self.assertEqual(sample_value(text, "ondemand_machine_resource_capacity", machine), 24)
        self.assertEqual(sample_value(text, "ondemand_machine_resource_used", machine), 0)

        self.assertEqual(self.get("/a/").status, 200)
        self.assertEqual(sample_value(self.scrape()[2], "ondemand_machine_resource_used", machine), 16)
        # b does not fit beside a: a (idle) is evicted, then b starts.
        self.assertEqual(self.get("/b/").status, 200)

        def evicted():
            text = self.scrape()[2]
            return text if sample_value(text, "ondemand_stops_total", 'service="a",reason="evicted"') == 1 else None
        text = wait_until(evicted, 15, message="a's eviction on /metrics")
        self.promtool_check(text)
        self.assertEqual(sample_value(text, "ondemand_stops_total", 'service="a",reason="idle"'), 0)
        self.assertEqual(sample_value(text, "ondemand_machine_resource_used", machine), 12)
        self.assertEqual(sample_value(text, "ondemand_service_state", 'service="a",state="cold"'), 1)
        self.assertEqual(sample_value(text, "ondemand_service_state", 'service="b",state="warm"'), 1)
        self.assertEqual(sample_value(text, "ondemand_starts_total", 'service="b",result="ok"'), 1)
        self.assertEqual(sample_value(text, "ondemand_cold_start_duration_seconds_count", 'service="b"'), 1)
        wait_until(lambda: self.statsd.matching(r"odtest\.a\.stop\.evicted:1\|c"), 10,
                   message="the eviction on StatsD")

    def test_the_serve_flags_set_statsd_and_nothing_is_sent_without_them(self):
        quiet = StatsdListener()
        self.addCleanup(quiet.close)
        port = free_port()
        config = "socket: {dir}/controld.sock\nstate_dir: {dir}/state\nservices:\n{svc}".format(
            dir=self.dir, svc=self.sample_yaml("api", port, idle="1h"))
        self.start_controld(config)
        self.cli_ok("start", "api", "--wait")
        self.assertEqual(self.cli("stop", "api", "--wait").returncode, 0)
        self.controld.stop()
        self.assertNotIn("statsd", self.controld.output())
        # With the flags: the same events, under the flag's namespace.
        proc = self.spawn([self.controld.argv[0], "serve", "--config", self.controld_config,
                           "--statsd-host", "127.0.0.1", "--statsd-port", str(self.statsd.port),
                           "--statsd-namespace", "flags.ns"], "controld2.log")
        self.controld = proc
        wait_until(lambda: self.cli_ok("status"), 10, message="controld answering")
        self.assertEqual(self.cli("start", "api", "--wait").returncode, 0)
        self.assertEqual(self.cli("stop", "api", "--wait").returncode, 0)
        wait_until(lambda: self.statsd.matching(r"flags\.ns\.api\.stop\.cli:1\|c"), 10, message="stop.cli on StatsD")
        self.assertTrue(self.statsd.matching(r"flags\.ns\.api\.start\.ok:1\|c"), self.statsd.lines)
        self.assertEqual(quiet.lines, [])
        # A flag that needs the host is refused without one.
        bad = subprocess.run([self.controld.argv[0], "serve", "--config", self.controld_config, "--statsd-port", "9"],
                             capture_output=True, text=True, timeout=30)
        self.assertEqual(bad.returncode, 2, bad.stderr)
        self.assertIn("--statsd-host", bad.stderr)

    def test_the_grafana_dashboard_queries_are_valid_promql_on_metrics_controld_serves(self):
        with open(os.path.join(SOURCE_DIR, "conf", "grafana-dashboard.json")) as f:
            dashboard = json.load(f)
        exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
        self.assertGreaterEqual(len(exprs), 8)
        # Every name the dashboard uses is a family controld serves.
        self.metrics_port = free_port()
        self.start_controld_with([self.sample_yaml("web", free_port())],
                                 extra="metrics_listen: 127.0.0.1:%d\n" % self.metrics_port)
        page = self.scrape()[2]
        served = set(re.findall(r"^# TYPE (\S+) ", page, re.M))
        served.update({"ondemand_machine_resource_used", "ondemand_machine_resource_capacity"})  # with machines: only
        used = set()
        for expr in exprs:
            for name in re.findall(r"\bondemand_[a-z_]+", expr):
                used.add(re.sub(r"_(bucket|sum|count)$", "", name) if not name.endswith("_total") else name)
        self.assertTrue(used)
        self.assertEqual(used - served, set())
        # promtool parses each query (Grafana's variables filled in as Grafana would).
        if not PROMTOOL:
            self.fail("promtool is missing (Debian package prometheus)")
        rules = {"groups": [{"name": "dashboard", "rules": [
            {"record": "dashboard:query%d" % i,
             "expr": e.replace("$__rate_interval", "5m").replace("$__range", "1h").replace("$service", ".*")}
            for i, e in enumerate(exprs)]}]}
        path = self.write("rules.yml", json.dumps(rules))  # JSON is YAML
        out = subprocess.run([PROMTOOL, "check", "rules", path], capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)

    def test_a_bad_metrics_listen_is_a_config_error_with_its_line(self):
        path = self.write("bad.yaml", "socket: %s/c.sock\nmetrics_listen: localhost\nservices:\n  a:\n"
                          "    health_url: http://127.0.0.1:1/\n    start_command: [\"true\"]\n" % self.dir)
        out = self.cli("check-config", "--config", path)
        self.assertEqual(out.returncode, 2)
        self.assertIn("bad.yaml:2: metrics_listen: expected HOST:PORT", out.stdout + out.stderr)


if __name__ == "__main__":
    unittest.main()
