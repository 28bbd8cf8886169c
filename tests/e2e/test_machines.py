"""Shared machines: one GPU box gpu-01 with vram_gb 24, services a (16), b (12)
and e (2, not evictable), each a real sample process started and stopped by
commands, behind a real nginx. controld stops a warm idle service to make room,
never one with a request in flight, keeps a waiting wake across a SIGKILL, and
reports a failed eviction instead of retrying it."""
import json
import os
import threading
import time
import unittest

from module_case import ModuleTestCase
from harness import free_port, wait_until

# The thrash guard of these tests (machines.gpu-01.min_warm): short, so a
# swap is not slow to test; the alternating test counts swaps against it.
MIN_WARM_S = 2.0


class MachinesTest(ModuleTestCase):

    def setUp(self):
        super().setUp()
        self.records = self.path("processes.log")
        self.ports = {name: free_port() for name in ("a", "b", "e")}

    # --- set-up -------------------------------------------------------------

    def recorded(self, name, stop=None, start_delay=0.0):
        """start/stop commands that log to processes.log when a start begins
        and when a stop has finished (the sample's stop returns once its
        process is gone)."""
        start, sample_stop = self.sample_commands(name, self.ports[name])
        start_cmd = ["/bin/sh", "-c", 'echo "start %s $(date +%%s.%%N)" >> %s; sleep %s; exec "$@"'
                     % (name, self.records, start_delay), "sh"] + start
        stop_cmd = ["/bin/sh", "-c", 'echo "stopping %s $(date +%%s.%%N)" >> %s; "$@"; rc=$?; '
                    'echo "stopped %s $(date +%%s.%%N) $rc" >> %s; exit $rc'
                    % (name, self.records, name, self.records), "sh"] + (stop or sample_stop)
        return start_cmd, stop_cmd

    def service(self, name, needs, evictable=True, stop=None, idle="1h", start_delay=0.0):
        start, stop = self.recorded(name, stop=stop, start_delay=start_delay)
        return self.sample_yaml(name, self.ports[name], idle=idle, start=start, stop=stop, start_timeout="60s",
                                extra="    machine: gpu-01\n    needs: { vram_gb: %s }\n%s"
                                % (needs, "" if evictable else "    evictable: false\n"))

    def start_box(self, a_stop=None, min_warm=MIN_WARM_S):
        machines = "machines:\n  gpu-01:\n    resources: { vram_gb: 24 }\n    min_warm: %ss\n" % min_warm
        self.start_controld_with([self.service("a", 16, stop=a_stop), self.service("b", 12),
                                  self.service("e", 2, evictable=False)], extra=machines)
        locations = "".join(
            "location /%s/ { ondemand_service %s; ondemand_wait 60s; proxy_buffering off; "
            "proxy_pass http://127.0.0.1:%d/; }\n" % (n, n, p) for n, p in self.ports.items())
        locations += ("location /bshort/ { ondemand_service b; ondemand_wait 1s; proxy_pass http://127.0.0.1:%d/; }\n"
                      % self.ports["b"])
        self.start_front(locations)

    def events(self):
        """(kind, name, unix time) from processes.log, in order."""
        if not os.path.exists(self.records):
            return []
        out = []
        with open(self.records) as f:
            for line in f:
                parts = line.split()
                out.append((parts[0], parts[1], float(parts[2])))
        return out

    def count(self, kind, name):
        return sum(1 for k, n, _ in self.events() if k == kind and n == name)

    def controld_log(self):
        with open(self.path("controld.log")) as f:
            return f.read()

    def machine(self):
        return self.status()["machines"][0]

    def warm_up(self, *names):
        for name in names:
            r = self.get("/%s/" % name)
            self.assertEqual(r.status, 200, r)
            self.assertIn("hello from %s" % name, r.body)

    def assert_never_both_running(self, x="a", y="b"):
        """From the records: x's and y's processes never overlap (a start
        begins only after the other's stop has finished)."""
        running = set()
        for kind, name, _ in self.events():
            if name not in (x, y):
                continue
            if kind == "start":
                self.assertFalse(running - {name}, "%s started while %s ran: %s" % (name, running, self.events()))
                running.add(name)
            elif kind == "stopped":
                running.discard(name)

    # --- tests --------------------------------------------------------------

    def test_an_idle_service_is_stopped_first_then_the_wanted_one_starts(self):
        self.start_box()
        self.warm_up("e", "a")
        time.sleep(MIN_WARM_S)  # past the thrash guard
        e_warm_since = self.status("e")["services"][0]["since"]
        r = self.get("/b/")
        self.assertEqual(r.status, 200, r)
        self.assertIn("hello from b", r.body)
        self.assertEqual(self.service_state("a"), "cold")
        self.assertFalse(self.sample_running("a"))
        # a's process was gone before b's start began.
        kinds = [(k, n) for k, n, _ in self.events()]
        self.assertLess(kinds.index(("stopped", "a")), kinds.index(("start", "b")), kinds)
        self.assert_never_both_running()
        # e stayed warm throughout.
        e = self.status("e")["services"][0]
        self.assertEqual(e["state"], "warm")
        self.assertEqual(e["since"], e_warm_since)
        self.assertEqual(self.count("stopping", "e"), 0)
        # The eviction is told as such.
        stop = [h for h in self.history("a") if h["to"] == "stopping"][-1]
        self.assertEqual(stop["cause"], "evicted")
        self.assertEqual(stop["detail"], "to make room for b")
        m = self.machine()
        self.assertEqual(m["resources"]["vram_gb"], {"total": 24, "used": 14, "free": 10})
        self.assertEqual(sorted(h["service"] for h in m["holders"]), ["b", "e"])
        self.assertEqual(m["queue"], [])
        log = self.controld_log()
        self.assertIn("evicting", log)

    def test_a_streaming_service_is_not_evicted_the_wake_waits_and_says_why(self):
        self.start_box()
        self.warm_up("a")
        time.sleep(MIN_WARM_S)
        results = {}

        def run(key, path):
            results[key] = self.get(path, timeout=60)

        stream = threading.Thread(target=run, args=("stream", "/a/stream?seconds=5"), daemon=True)
        stream.start()
        wait_until(lambda: self.status("a")["services"][0]["in_flight"] == 1, 10, message="a's stream in flight")
        want_b = threading.Thread(target=run, args=("b", "/b/"), daemon=True)
        want_b.start()
        reason = "waiting for room on gpu-01: a has 1 request in flight"
        wait_until(lambda: self.status("b")["services"][0].get("waiting_for") == reason, 10,
                   message="b waiting for room")
        # Everywhere: status (text and JSON), the workers' copy, events.
        text = self.cli("status").stdout
        self.assertIn("gpu-01", text)
        self.assertIn("b — " + reason, text)
        self.assertIn("a (warm, vram_gb 16)", text)
        self.assertEqual(self.machine()["queue"][0]["service"], "b")
        self.assertEqual(self.machine()["queue"][0]["reason"], reason)
        self.assertEqual(self.service_state("b"), "starting")
        self.assertEqual(self.front_service("b").get("waiting_for"), reason)
        self.assertEqual(self.service_state("a"), "warm")
        stream.join(20)
        want_b.join(30)
        s, b = results["stream"], results["b"]
        self.assertEqual(s.status, 200, s)
        self.assertGreaterEqual(s.body.count("tick"), 45, "the whole stream arrived")
        self.assertEqual(b.status, 200, b)
        self.assertIn("hello from b", b.body)
        self.assertGreaterEqual(b.ended, s.ended)
        self.assert_never_both_running()
        self.assertIn("waiting_for_room", self.controld_log())

    def test_a_504_names_what_the_wake_waits_for(self):
        self.start_box()
        self.warm_up("a")
        time.sleep(MIN_WARM_S)
        threading.Thread(target=lambda: self.get("/a/stream?seconds=4"), daemon=True).start()
        wait_until(lambda: self.status("a")["services"][0]["in_flight"] == 1, 10, message="a's stream in flight")
        r = self.get("/bshort/")  # ondemand_wait 1s: the answer says what it waited for
        self.assertEqual(r.status, 504, r)
        self.assertIn("waiting for room on gpu-01: a has 1 request in flight", r.body)
        self.assertEqual(json.loads(r.body)["waiting"], "waiting for room on gpu-01: a has 1 request in flight")

    def test_alternating_load_is_answered_by_the_right_service_without_thrashing(self):
        guard = 5.0
        self.start_box(min_warm=guard)
        duration = 30.0
        answers = []
        lock = threading.Lock()
        stop_at = time.monotonic() + duration
        started = time.monotonic()

        def client(name):
            while time.monotonic() < stop_at:
                r = self.get("/%s/" % name, timeout=60)
                with lock:
                    answers.append((name, r))
                time.sleep(0.2)

        threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(duration + 90)
        elapsed = time.monotonic() - started
        self.assertTrue(answers)
        for name, r in answers:
            self.assertEqual(r.status, 200, (name, r))
            self.assertIn("hello from %s" % name, r.body)
        self.assertGreater(sum(1 for n, _ in answers if n == "a"), 3)
        self.assertGreater(sum(1 for n, _ in answers if n == "b"), 3)
        starts = self.count("start", "a") + self.count("start", "b")
        # The guard: a service stays warm at least min_warm before it may be
        # evicted, so at most one swap per min_warm, plus the first start.
        allowed = int(elapsed / guard) + 1
        self.assertLessEqual(starts, allowed, self.events())
        self.assertGreaterEqual(starts, 3, "it did swap")
        self.assert_never_both_running()

    def test_check_config_names_needs_beyond_the_machine(self):
        start, stop = self.recorded("b")
        config = self.write("controld.yaml", """\
            machines:
              gpu-01:
                resources: { vram_gb: 24 }
            services:
              b:
                machine: gpu-01
                needs: { vram_gb: 40 }
                health_url: http://127.0.0.1:9/healthz
                start_command: %s
                stop_command: %s
            """ % (json.dumps(start), json.dumps(stop)))
        out = self.cli("check-config", "--config", config)
        self.assertEqual(out.returncode, 2, out)
        self.assertIn("%s:7: services.b.needs.vram_gb: needs 40, more than machine \"gpu-01\" has (vram_gb: 24)"
                      % config, out.stderr)

    def operation_pid(self, service):
        """The pid of the service's command under way, as its state file on disk has it."""
        try:
            with open(self.path("state", "services", "%s.json" % service)) as f:
                op = json.load(f).get("operation") or {}
        except (OSError, ValueError):
            return 0
        return op.get("pid", 0)

    def test_sigkill_between_the_evictions_stop_and_the_new_start(self):
        start, sample_stop = self.sample_commands("a", self.ports["a"])
        slow_stop = ["/bin/sh", "-c", 'sleep 2; exec "$@"', "sh"] + sample_stop
        self.start_box(a_stop=slow_stop)
        self.warm_up("a")
        time.sleep(MIN_WARM_S)
        results = {}
        want_b = threading.Thread(target=lambda: results.setdefault("b", self.get("/b/", timeout=60)), daemon=True)
        want_b.start()
        # a's stop command runs (its pid is on disk): the eviction is half done.
        wait_until(lambda: self.operation_pid("a") > 0, 10, interval=0.01, message="a's stop running")
        self.assertEqual(self.count("start", "b"), 0)
        self.controld.kill9()
        self.restart_controld()
        self.wait_state("b", "warm", 30)
        want_b.join(30)
        time.sleep(1.0)  # anything wrongly left to do would show now
        self.assertEqual(self.count("start", "b"), 1, self.events())
        self.assertEqual(self.count("start", "a"), 1, self.events())
        self.assertFalse(self.sample_running("a"))
        self.assert_never_both_running()
        self.assertEqual(self.service_state("a"), "cold")
        self.assertEqual(results["b"].status, 200, results["b"])

    def test_sigkill_while_the_new_start_runs_starts_it_once(self):
        self.start_controld_with([self.service("a", 16), self.service("b", 12, start_delay=2.0),
                                  self.service("e", 2, evictable=False)],
                                 extra="machines:\n  gpu-01:\n    resources: { vram_gb: 24 }\n    min_warm: 0s\n")
        self.start_front("".join(
            "location /%s/ { ondemand_service %s; ondemand_wait 60s; proxy_pass http://127.0.0.1:%d/; }\n"
            % (n, n, p) for n, p in self.ports.items()))
        self.warm_up("a")
        threading.Thread(target=lambda: self.get("/b/", timeout=60), daemon=True).start()
        wait_until(lambda: self.count("start", "b") == 1 and self.operation_pid("b") > 0, 15, interval=0.01,
                   message="b's start running")
        self.controld.kill9()
        self.restart_controld()
        self.wait_state("b", "warm", 30)
        time.sleep(1.0)
        self.assertEqual(self.count("start", "b"), 1, self.events())
        self.assertEqual(self.count("stopping", "a"), 1, self.events())
        self.assertFalse(self.sample_running("a"))
        self.assert_never_both_running()

    def test_a_restart_keeps_the_wake_waiting_for_room(self):
        self.start_box()
        self.warm_up("a")
        threading.Thread(target=lambda: self.get("/a/stream?seconds=6"), daemon=True).start()
        wait_until(lambda: self.status("a")["services"][0]["in_flight"] == 1, 10, message="a's stream in flight")
        threading.Thread(target=lambda: self.get("/b/", timeout=60), daemon=True).start()
        wait_until(lambda: self.machine()["queue"], 10, message="b queued")
        self.controld.kill9()
        self.restart_controld()
        self.assertEqual(self.machine()["queue"][0]["service"], "b")
        self.assertEqual(self.service_state("b"), "starting")
        self.wait_state("b", "warm", 30)  # once the stream ended and a is evicted
        self.assertEqual(self.count("start", "b"), 1)
        self.assert_never_both_running()

    def test_a_failing_stop_fails_the_wake_naming_it_and_nothing_retries(self):
        failing = ["/bin/sh", "-c", "echo cannot unload the model >&2; exit 1"]
        self.start_box(a_stop=failing)
        self.warm_up("a")
        time.sleep(MIN_WARM_S)
        r = self.get("/b/")
        self.assertEqual(r.status, 502, r)
        self.assertIn("could not make room on gpu-01: the stop of a failed: stop command exited with status 1", r.body)
        self.assertIn("cannot unload the model", r.body)
        self.assertEqual(self.service_state("a"), "warm")
        self.assertEqual(self.service_state("b"), "failed")
        m = self.machine()
        self.assertEqual([h["service"] for h in m["holders"]], ["a"])
        self.assertEqual(m["resources"]["vram_gb"]["used"], 16)
        time.sleep(3.0)  # nothing retries by itself
        self.assertEqual(self.count("stopping", "a"), 1, self.events())
        self.assertEqual(self.count("start", "b"), 0, self.events())
        self.assertEqual(self.service_state("b"), "failed")
        self.assertIn("eviction_failed", self.controld_log())


if __name__ == "__main__":
    unittest.main()
