"""The README, done the way a newcomer does it: `demo/run --check` (as root,
and as an unprivileged user who owns a clone of their own), then `demo/run`
and every command of the README's five-minute tour and of the demo's banner,
as printed, each checked for its exit code and for what a person would look
at. (`tests/run`, the README's other command, is what runs this.)

Taken literally, with two substitutions: the README's `controld` is
`build/controld/controld` (as the README says), and the ports 8080 and 9001
are free ports chosen by the test (demo/run's DEMO_PORT and DEMO_SAMPLE_PORT),
so that the test can run beside others. The demo runs in the source tree
(its `.demo/` directory), as the README has it."""
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

from harness import SOURCE_DIR, free_port, http_request, wait_until

README = os.path.join(SOURCE_DIR, "README.md")
DEMO = os.path.join(SOURCE_DIR, "demo", "run")
BUILD = os.path.join(SOURCE_DIR, "build")
UNPRIVILEGED_USER = "ondemand-newcomer"

# The demo runs the plain build in build/: under a sanitizer build (other
# directory, preloaded runtime) there is nothing more to learn from it.
SANITIZED = bool(os.environ.get("ONDEMAND_NGINX_PRELOAD"))
SKIP_REASON = "the demo uses the plain build; this runs in the plain test run"


def readme_tour():
    """The commands of the README's "A five-minute tour" block: (command, comment)."""
    with open(README) as f:
        text = f.read()
    section = text[text.index("## A five-minute tour"):]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    out = []
    for line in block.splitlines():
        command, _, comment = line.partition("#")
        if command.strip():
            out.append((command.strip(), comment.strip()))
    return out


def banner_commands(output):
    """The lines under "Try:" in demo/run's banner: (command, comment)."""
    lines = output[output.index("Try:"):].splitlines()[1:]
    out = []
    for line in lines:
        if not line.strip():
            break
        command, _, comment = line.partition("#")
        out.append((command.strip(), comment.strip()))
    return out


class Demo:
    """demo/run (without --check) in the background."""

    def __init__(self, log_path, env):
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen([DEMO], cwd=SOURCE_DIR, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True, stdin=subprocess.DEVNULL)

    def output(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def interrupt(self):
        """Ctrl-C, as the banner says; returns its exit status."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


@unittest.skipIf(SANITIZED, SKIP_REASON)
class ReadmeTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="od-readme-")
        self.port = free_port()
        self.sample_port = free_port()
        self.env = dict(os.environ, DEMO_PORT=str(self.port), DEMO_SAMPLE_PORT=str(self.sample_port))

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def literal(self, command):
        """A README or banner command as a shell would run it, from the clone."""
        command = command.replace("8080", str(self.port))
        if command.startswith("controld "):
            command = "build/controld/controld " + command[len("controld "):]
        return command

    def sh(self, command, timeout=60):
        started = time.monotonic()
        out = subprocess.run(["bash", "-c", self.literal(command)], cwd=SOURCE_DIR, capture_output=True, text=True,
                             timeout=timeout, env=self.env)
        return out, time.monotonic() - started

    def assert_check_output(self, out):
        self.assertEqual(out.returncode, 0, out.stdout[-3000:] + out.stderr[-3000:])
        self.assertRegex(out.stdout, r"first request \(cold\) answered 200 in \d+\.\d{3} s: hello from sample")
        # The banner's `controld ... status` ran at the end: the sample is warm.
        self.assertRegex(out.stdout, r"\nsample +warm ")

    def test_demo_check(self):
        out = subprocess.run([DEMO, "--check"], cwd=SOURCE_DIR, capture_output=True, text=True, timeout=600,
                             env=self.env, stdin=subprocess.DEVNULL)
        self.assert_check_output(out)
        self.assertIn("ondemand demo is running.", out.stdout)
        # Nothing is left running: no sample, nothing on the demo's port.
        with self.assertRaises(OSError):
            http_request(self.port, "/ondemand/status", timeout=2)
        with self.assertRaises(OSError):
            http_request(self.sample_port, "/healthz", timeout=2)

    @unittest.skipUnless(os.geteuid() == 0 and shutil.which("runuser") and shutil.which("git"),
                         "needs root (to make an unprivileged user), runuser and git")
    def test_demo_check_as_an_unprivileged_user_in_their_own_clone(self):
        if subprocess.run(["git", "-C", SOURCE_DIR, "rev-parse"], capture_output=True).returncode != 0:
            self.skipTest("the source tree is not a git clone")
        if subprocess.run(["id", UNPRIVILEGED_USER], capture_output=True).returncode != 0:
            subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", UNPRIVILEGED_USER], check=True)
        user = pwd.getpwnam(UNPRIVILEGED_USER)
        clone = os.path.join(user.pw_dir, "ondemand-readme-%d" % os.getpid())
        shutil.rmtree(clone, ignore_errors=True)
        try:
            # The tree as it is (committed or not), without builds: a clone of it.
            files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                   cwd=SOURCE_DIR, capture_output=True, check=True).stdout.split(b"\0")
            for name in files:
                src = os.path.join(SOURCE_DIR.encode(), name)
                if not name or not os.path.lexists(src):
                    continue
                dst = os.path.join(clone.encode(), name)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.copy2(src, dst, follow_symlinks=False)
            subprocess.run(["chown", "-R", "%s:%s" % (user.pw_uid, user.pw_gid), clone], check=True)
            env = dict(self.env, HOME=user.pw_dir, USER=UNPRIVILEGED_USER, LOGNAME=UNPRIVILEGED_USER)
            out = subprocess.run(["runuser", "-u", UNPRIVILEGED_USER, "--", os.path.join(clone, "demo", "run"),
                                  "--check"], cwd=clone, capture_output=True, text=True, timeout=1500, env=env,
                                 stdin=subprocess.DEVNULL)
            self.assert_check_output(out)
            # Everything it made is the user's.
            for base, dirs, names in os.walk(clone):
                for name in dirs + names:
                    self.assertEqual(os.lstat(os.path.join(base, name)).st_uid, user.pw_uid,
                                     os.path.join(base, name))
        finally:
            shutil.rmtree(clone, ignore_errors=True)

    def test_the_five_minute_tour_and_the_banner_as_printed(self):
        tour = readme_tour()
        self.assertEqual(len(tour), 5, tour)
        demo = Demo(os.path.join(self.dir, "demo.log"), self.env)
        events = []
        try:
            wait_until(lambda: "Ctrl-C to stop." in demo.output() or demo.proc.poll() is not None, 600, 0.2,
                       message="demo/run to be ready")
            self.assertIsNone(demo.proc.poll(), demo.output())
            banner = banner_commands(demo.output())
            self.run_tour(tour, events)
            self.run_banner(banner, events)
        finally:
            for proc in events:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
            status = demo.interrupt()
        self.assertIn(status, (0, 130), demo.output())
        with open(os.path.join(SOURCE_DIR, ".demo", "nginx", "logs", "error.log")) as f:
            log = f.read()
        self.assertNotRegex(log, r"\[(alert|emerg)\]")
        self.assertNotIn("Permission denied", log)
        self.assertFalse(os.path.exists(os.path.join(SOURCE_DIR, ".demo", "controld.sock")),
                         "controld still running after Ctrl-C")
        with self.assertRaises(OSError):
            http_request(self.sample_port, "/healthz", timeout=2)

    def start_events(self, command, events):
        path = os.path.join(self.dir, "events-%d.out" % len(events))
        out = open(path, "w")
        proc = subprocess.Popen(["bash", "-c", "exec " + self.literal(command)], cwd=SOURCE_DIR, stdout=out,
                                stderr=subprocess.STDOUT, text=True, env=self.env)
        out.close()
        events.append(proc)

        def text():
            with open(path) as f:
                return f.read()
        # It shows the current state first.
        wait_until(lambda: "now " in text() or proc.poll() is not None, 10, message="events' first lines")
        self.assertIsNone(proc.poll(), text())
        return text

    def assert_cold_then_served(self, command, comment):
        out, elapsed = self.sh(command)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("HTTP/1.1 200", out.stdout.splitlines()[0])
        self.assertIn("hello from sample", out.stdout)
        # "held ~2 s while the sample boots"
        self.assertIn("~2 s", comment)
        self.assertGreaterEqual(elapsed, 1.5, out.stdout)
        self.assertLess(elapsed, 20)

    def assert_warm(self, command):
        out, elapsed = self.sh(command)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("HTTP/1.1 200", out.stdout.splitlines()[0])
        self.assertIn("hello from sample", out.stdout)
        self.assertLess(elapsed, 1.5)

    def assert_status_table(self, command, comment):
        out, _ = self.sh(command)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        header = out.stdout.splitlines()[0].split()
        if comment:  # the README names the columns
            self.assertEqual(" ".join(header), comment)
        self.assertRegex(out.stdout, r"\nsample +warm ")

    def assert_status_json(self, command):
        out, _ = self.sh(command)
        self.assertEqual(out.returncode, 0, out.stderr)
        status = json.loads(out.stdout)
        self.assertEqual(status["controld"]["status"], "connected")
        self.assertEqual([(s["name"], s["state"]) for s in status["services"]], [("sample", "warm")])

    def assert_idle_stop(self, events_text):
        """30 s after the last request: warm -> stopping -> cold."""
        started = time.monotonic()
        wait_until(lambda: re.search(r"sample +stopping -> cold", events_text()), 90, 0.2,
                   message="the idle stop in the events")
        text = events_text()
        self.assertRegex(text, r"sample +warm -> stopping +\(idle")
        self.assertGreater(time.monotonic() - started, 5)

    def run_tour(self, tour, events):
        (cold, cold_comment), (warm, _), (status, status_comment), (follow, follow_comment), (json_status, _) = tour
        self.assert_cold_then_served(cold, cold_comment)
        self.assert_warm(warm)
        self.assert_status_table(status, status_comment)
        self.assertIn("warm -> stopping -> cold", follow_comment)
        events_text = self.start_events(follow, events)
        self.assertRegex(events_text(), r"sample +now warm ")
        self.assert_status_json(json_status)
        self.assert_idle_stop(events_text)

    def run_banner(self, banner, events):
        commands = [c for c, _ in banner]
        self.assertEqual(len(commands), 6, banner)
        browser = [c for c in commands if c.startswith("open ")]
        self.assertEqual(len(browser), 1, banner)
        events_text = None
        for command, comment in banner:
            if command.startswith("open "):
                continue
            if command.startswith("curl -i") and comment.startswith("cold"):
                self.assert_cold_then_served(command, comment)
            elif command.startswith("curl -i") and comment.startswith("warm"):
                self.assert_warm(command)
            elif command.startswith("curl -s") and "/ondemand/status" in command:
                self.assert_status_json(command)
            elif command.endswith(" status"):
                self.assertTrue(command.startswith(BUILD + "/controld/controld --socket "), command)
                self.assert_status_table(command, comment)
            elif command.endswith(" events"):
                self.assertIn("each state now, then watch it stop after 30 s idle", comment)
                events_text = self.start_events(command, events)
            else:
                self.fail("a banner command the test does not know: " + command)
        self.assertIsNotNone(events_text)
        self.assert_idle_stop(events_text)
        # Cold again, as the banner's last line wants it:
        # "open http://127.0.0.1:8080/ in a browser while it is cold to see the waiting page"
        url = re.search(r"http://127\.0\.0\.1:(\d+)(/\S*)", browser[0])
        self.assertEqual(int(url.group(1)), self.port)
        code, headers, page = http_request(self.port, url.group(2), headers={
            "Accept": "text/html,application/xhtml+xml", "Sec-Fetch-Mode": "navigate"})
        self.assertEqual(code, 503)
        self.assertIn("text/html", headers["content-type"])
        self.assertIn('http-equiv="refresh"', page)
        self.assertIn("sample", page)
        self.assertIn(headers["x-ondemand-state"], ("cold", "starting"))


if __name__ == "__main__":
    unittest.main()
