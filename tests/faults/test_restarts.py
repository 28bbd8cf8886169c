"""Processes dying and reloading under load: controld SIGKILLed at random
points of cold starts, nginx reloaded while it holds requests, an nginx
worker SIGKILLed while it has requests in flight. Real nginx with the
module, real controld, real sample services; Semaphore is the double."""
import json
import os
import re
import signal
import time
import unittest

from faults_case import FaultsCase, count, figures, rng
from harness import free_port, wait_until
from semaphore_double import DEFAULT_TOKEN, SemaphoreDouble

TASKS = "/api/project/1/tasks"


class ControldKilledDuringColdStarts(FaultsCase):
    def test_sigkill_at_random_points_of_cold_starts_loses_no_request_and_repeats_no_task(self):
        starts = count(30, 8)
        per_start = 5
        random_ = rng(self)
        double = SemaphoreDouble(templates=[{"id": 22, "run": "succeed", "after_ms": 700},
                                            {"id": 23, "run": "succeed", "after_ms": 100}],
                                 queue_delay_ms=50).start()
        self.addCleanup(double.stop)
        port = free_port()
        self.serve_sample("gpu", port)
        config = "\n".join([
            "socket: %s/controld.sock" % self.dir, "state_dir: %s/state" % self.dir,
            "semaphore:", "  base_url: %s" % double.url, "  project_id: 1", "  api_token: %s" % DEFAULT_TOKEN,
            "  http_timeout: 2s",
            "services:", "  gpu:", "    health_url: http://127.0.0.1:%d/healthz" % port, "    idle_timeout: 1h",
            "    start_timeout: 60s", "    semaphore:", "      start_template_id: 22", "      stop_template_id: 23",
            "      task_timeout: 60s", "      poll_interval: 200ms", ""])
        self.start_controld(config)
        self.start_front(self.location("/", "gpu", port))

        kills = 0
        answered = 0
        unanswered = []
        not_ok = []
        for cycle in range(starts):
            threads, results = self.concurrent(per_start, "/cycle%d" % cycle, timeout=90)
            for _ in range(random_.choice((1, 1, 2))):
                time.sleep(random_.uniform(0.0, 1.0))
                self.controld.kill9()
                kills += 1
                self.restart_controld()
            self.join(threads, 90)
            for r in results:
                if r is None or r.status is None:
                    unanswered.append((cycle, r))
                else:
                    answered += 1
                    if r.status != 200:
                        not_ok.append((cycle, r))
            self.wait_state("gpu", "warm", 60)
            created = [r for r in double.requests(TASKS) if r["method"] == "POST" and r["path"] == TASKS
                       and json.loads(r["body"]).get("template_id") == 22 and r["status"] == 201]
            self.assertEqual(len(created), cycle + 1, "start tasks after %d cold starts: %s" % (
                cycle + 1, [(round(r["time"], 3), json.loads(json.loads(r["body"])["environment"])
                             .get("ondemand_operation")) for r in created]))
            out = self.cli("stop", "gpu", "--wait", timeout=60)
            self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
            self.wait_state("gpu", "cold", 30)
        figures("sigkill-cold-starts", cold_starts=starts, sigkills=kills, requests=starts * per_start,
                answered=answered, unanswered=len(unanswered), non_200=len(not_ok),
                start_tasks=starts, duplicate_tasks=0)
        self.assertEqual(unanswered, [])
        self.assertEqual(not_ok, [])


class NginxReloadsWhileHolding(FaultsCase):
    def test_reloads_with_held_requests_answer_every_request_without_alerts(self):
        reloads = count(20, 10)
        held = 200
        port = free_port()
        go = self.path("go")
        start, stop = self.sample_commands("held", port)
        # The start waits for the test's word: the requests stay held for
        # exactly as long as the reloads take.
        gated = ["sh", "-c", 'while [ ! -e "$0" ]; do sleep 0.05; done; exec "$@"', go] + start
        self.start_controld_with([self.sample_yaml("held", port, start_timeout="120s", start=gated, stop=stop)])
        self.start_front(self.location("/", "held", port), http_extra="ondemand_wait 120s;")
        threads, results = self.concurrent(held, "/", timeout=150)
        self.wait_waiting("held", held, 60)
        for i in range(reloads):
            self.reload_nginx()
            wait_until(lambda: len(re.findall(r"reconfiguring", self.nginx_error_log())) >= i + 1, 30,
                       message="reload %d taken" % (i + 1))
        # The newest workers take new requests while the first generation holds.
        extra_threads, extra = self.concurrent(10, "/late", timeout=150)
        open(go, "w").close()
        self.join(threads + extra_threads, 120)
        statuses = [r.status for r in results + extra]
        alerts = [line for line in self.nginx_error_log().splitlines() if "[alert]" in line or "[emerg]" in line]
        figures("nginx-reloads", reloads=reloads, held=held, late=len(extra),
                answered=sum(1 for s in statuses if s is not None), non_200=sum(1 for s in statuses if s != 200),
                alerts=len(alerts))
        self.assertEqual(statuses, [200] * (held + len(extra)), [r for r in results + extra if r.status != 200][:3])
        self.assertEqual(alerts, [])


class WorkerKilledWithRequestsInFlight(FaultsCase):
    def test_a_sigkilled_worker_does_not_pin_its_service_warm(self):
        runs = count(3, 1)
        stopped_after = []
        port = free_port()
        self.start_controld_with([self.sample_yaml("pinned", port, idle="2s")])
        self.start_front(self.location("/", "pinned", port), workers=1)
        # The master logs the killed worker as an [alert]; that line, and only
        # it, is what this test causes on purpose.
        error_log = self.path("nginx", "logs", "error.log")
        self._checked_logs.remove(error_log)
        for run in range(runs):
            self.assertEqual(self.get("/").status, 200)
            self.wait_state("pinned", "warm", 30)
            threads, results = self.concurrent(5, "/stream?seconds=60", timeout=90)
            wait_until(lambda: self.svc_in_flight("pinned") == 5, 15, message="5 requests in flight")
            # In flight, the idle timeout does not stop it.
            time.sleep(3)
            self.assertEqual(self.service_state("pinned"), "warm")
            worker = self.front_status()["pid"]
            os.kill(worker, signal.SIGKILL)
            killed = time.monotonic()
            self.join(threads, 30)
            wait_until(lambda: self.service_state("pinned") == "cold", 30,
                       message="the service stopped after its worker died with requests in flight")
            stopped_after.append(time.monotonic() - killed)
            wait_until(lambda: self.front_status().get("controld", {}).get("status") == "connected", 15,
                       message="the new worker connected")
            self.assertNotEqual(self.front_status()["pid"], worker)
        bad = [line for line in self.nginx_error_log().splitlines()
               if re.search(r"\[alert\]|\[emerg\]|AddressSanitizer|runtime error:", line)
               and not re.search(r"worker process \d+ exited on signal 9", line)]
        figures("worker-sigkill", runs=runs, requests_in_flight=5 * runs,
                stopped_within_s="%.1f" % max(stopped_after), failures=0)
        self.assertEqual(bad, [])

    def svc_in_flight(self, name):
        return self.status(name)["services"][0].get("in_flight")


if __name__ == "__main__":
    unittest.main()
