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

# Waiting for issue 11 fixes (by `harden`); each skip goes with its fix.
WAITS_DEFECT_7_16 = "waits for issue 11 defects 7/16 (a failed state write must not launch the driver)"
WAITS_DEFECT_3 = "waits for issue 11 defect 3 (deadlines on the monotonic clock)"


def fixed(name):
    """ONDEMAND_FAULTS_RUN_WAITING=1 runs the tests that wait for a fix (to check one)."""
    return os.environ.get("ONDEMAND_FAULTS_RUN_WAITING") == "1"


@unittest.skipUnless(os.geteuid() == 0, "needs root to mount a tmpfs for the full state_dir (run as root)")
class FullStateDir(FaultsCase):
    def setUp(self):
        super().setUp()
        if not fixed("7/16"):
            self.skipTest(WAITS_DEFECT_7_16)
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

    def test_starts_fail_with_the_reason_while_full_and_nothing_is_lost_after(self):
        rounds = count(5, 2)
        port = free_port()
        self.start_controld_with([self.sample_yaml("disk", port, idle="1h")])
        self.start_front(self.location("/", "disk", port))
        refused = 0
        for _ in range(rounds):
            filler = self.fill()
            result = self.get("/")
            self.assertEqual(result.status, 502, result)
            self.assertIn("state", result.body)
            self.assertFalse(self.sample_running("disk"), "the start command ran without a durable record")
            refused += 1
            os.remove(filler)
            self.assertEqual(self.get("/").status, 200)
            epoch = self.status("disk")["services"][0]["epoch"]
            self.controld.kill9()
            self.restart_controld()
            after = self.status("disk")["services"][0]
            self.assertEqual(after["state"], "warm")
            self.assertGreaterEqual(after["epoch"], epoch)
            self.assertEqual(self.cli("stop", "disk", "--wait").returncode, 0)
        figures("full-state-dir", rounds=rounds, refused_starts=refused, lost_after=0, failures=0)


class ClockSteps(FaultsCase):
    def setUp(self):
        super().setUp()
        if not fixed("3"):
            self.skipTest(WAITS_DEFECT_3)
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
        figures("clock-step-back-idle", stops=rounds, failures=0, stopped_after_s="%.1f" % max(took))


if __name__ == "__main__":
    unittest.main()
