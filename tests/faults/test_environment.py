"""The machine misbehaving under controld: its state_dir on a full disk, and
the wall clock stepped (NTP, suspend/resume) while starts and idle stops are
under way. Real controld, real nginx with the module, real sample services."""
import os
import subprocess
import time
import unittest

from faults_case import FaultsCase, count, figures
from harness import free_port, wait_until

FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


@unittest.skipUnless(os.geteuid() == 0, "FullStateDir needs root: it mounts a tmpfs as the state_dir "
                                        "(run tests/run or ctest as root to include it)")
class FullStateDir(FaultsCase):
    def setUp(self):
        super().setUp()
        self.state = self.path("state")
        os.makedirs(self.state)
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", self.state],
                             capture_output=True, text=True)
        if out.returncode != 0:
            self.skipTest("cannot mount a tmpfs here: " + out.stderr.strip())
        self.addCleanup(lambda: subprocess.run(["umount", "-l", self.state]))

    def fill(self):
        filler = os.path.join(self.state, "filler")
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        return filler

    def counted_sample(self, name, port, **kw):
        """A sample service whose start command appends a line to NAME.starts each time it runs."""
        starts = self.path("%s.starts" % name)
        start, _ = self.sample_commands(name, port)
        counted = ["/bin/sh", "-c", 'echo start >> "$0"; exec "$@"', starts] + start
        return self.sample_yaml(name, port, start=counted, **kw), starts

    @staticmethod
    def lines(path):
        try:
            with open(path) as f:
                return len(f.read().splitlines())
        except FileNotFoundError:
            return 0

    def test_starts_fail_with_the_reason_while_full_and_nothing_is_lost_after(self):
        rounds = count(5, 2)
        port = free_port()
        # failure_backoff 0: each request while full is a start attempt of its own, and the first
        # one after space returns starts the service (with the default 30 s it would get the failure).
        yaml, starts = self.counted_sample("disk", port, idle="1h", extra="    failure_backoff: 0s\n")
        self.start_controld_with([yaml])
        self.start_front(self.location("/", "disk", port))
        refused = 0
        last_epoch = 0
        for i in range(rounds):
            filler = self.fill()
            for _ in range(2):  # a second wake while still full fails the same way
                result = self.get("/")
                self.assertEqual(result.status, 502, result)
                self.assertIn("state_dir", result.body, result)
                refused += 1
            self.assertFalse(self.sample_running("disk"), "the start command ran without a durable record")
            self.assertEqual(self.lines(starts), i, "a start command ran while the state_dir was full")
            os.remove(filler)
            self.assertEqual(self.get("/").status, 200)
            self.assertEqual(self.lines(starts), i + 1, "one start command per cold start once space is back")
            epoch = self.status("disk")["services"][0]["epoch"]
            self.assertGreaterEqual(epoch, last_epoch)
            self.controld.kill9()
            self.restart_controld()
            after = self.status("disk")["services"][0]
            self.assertEqual(after["state"], "warm", after)
            self.assertGreaterEqual(after["epoch"], epoch, "the epoch went back after a SIGKILL")
            self.assertEqual(self.get("/").status, 200)
            self.assertEqual(self.lines(starts), i + 1, "the restart started the warm service again")
            last_epoch = after["epoch"]
            self.assertEqual(self.cli("stop", "disk", "--wait").returncode, 0)
        figures("full-state-dir", rounds=rounds, refused_starts=refused, start_commands=self.lines(starts),
                duplicate_starts=self.lines(starts) - rounds, lost_after=0, failures=0)


class ClockSteps(FaultsCase):
    def setUp(self):
        super().setUp()
        if not os.path.exists(FAKETIME_LIB):
            self.skipTest("libfaketime is not installed (scripts/install-deps installs faketime)")
        self.offset_file = self.path("faketime")
        self.step("+0")

    def step(self, offset):
        with open(self.offset_file + ".tmp", "w") as f:
            f.write(offset + "\n")
        os.replace(self.offset_file + ".tmp", self.offset_file)

    def controld_env(self, extra=None):
        env = super().controld_env(extra)
        # Only the wall clock jumps, as with NTP or a suspend: CLOCK_MONOTONIC goes on.
        env.update({"LD_PRELOAD": FAKETIME_LIB, "FAKETIME_TIMESTAMP_FILE": self.offset_file,
                    "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1",
                    "ASAN_OPTIONS": ":".join(o for o in [os.environ.get("ASAN_OPTIONS", ""),
                                                         "verify_asan_link_order=0"] if o)})
        return env

    def test_a_forward_step_during_a_start_does_not_time_it_out(self):
        rounds = count(5, 2)
        port = free_port()
        self.start_controld_with([self.sample_yaml("step", port, ready_after=2.0, start_timeout="30s")])
        self.start_front(self.location("/", "step", port))
        for i in range(rounds):
            self.step("+0")
            threads, results = self.concurrent(3, "/")
            self.wait_state("step", "starting")
            self.step("+1h")
            self.join(threads, 60)
            self.assertEqual([r.status for r in results], [200] * 3, results)
            self.assertEqual(self.cli("stop", "step", "--wait").returncode, 0)
        figures("clock-step-forward-start", starts=rounds, requests=3 * rounds, failures=0)

    def test_a_backward_step_does_not_delay_an_idle_stop(self):
        rounds = count(5, 2)
        port = free_port()
        self.start_controld_with([self.sample_yaml("idle", port, idle="3s")])
        self.start_front(self.location("/", "idle", port))
        took = []
        for i in range(rounds):
            self.step("+0")
            self.assertEqual(self.get("/").status, 200)
            self.step("-1h")
            started = time.monotonic()
            wait_until(lambda: self.service_state("idle") == "cold", 30,
                       message="idle stop 3 s after the last request, clock stepped back an hour")
            took.append(time.monotonic() - started)
            # A start with the clock still an hour back succeeds, and its idle stop comes too.
            self.assertEqual(self.get("/").status, 200)
            started = time.monotonic()
            wait_until(lambda: self.service_state("idle") == "cold", 30,
                       message="idle stop of a service started after the clock stepped back")
            took.append(time.monotonic() - started)
        figures("clock-step-back-idle", starts=2 * rounds, stops=2 * rounds, failures=0,
                stopped_after_s="%.1f" % max(took))


if __name__ == "__main__":
    unittest.main()
