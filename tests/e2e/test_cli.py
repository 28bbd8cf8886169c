"""The controld CLI as a person uses it: options before or after the
subcommand, --version, exit 3 with the reason and the next step when the
daemon cannot be reached (no socket, nothing listening, permission denied,
no answer), start --wait's progress, events' first picture and columns."""
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
import unittest

from harness import CONTROLD, SOURCE_DIR, OndemandTestCase, free_port, wait_until


class ControldTest(OndemandTestCase):
    """controld with sample services in the test's directory."""

    def config(self, services, extra=""):
        return "socket: {dir}/controld.sock\nstate_dir: {dir}/state\n{extra}services:\n{services}".format(
            dir=self.dir, extra=extra, services=services)

    def sample_service_yaml(self, name, port, ready_after=0.0):
        start, stop = self.sample_commands(name, port, ready_after=ready_after)
        return """  {name}:
    health_url: http://127.0.0.1:{port}/healthz
    idle_timeout: 1h
    start_timeout: 60s
    start_command: {start}
    stop_command: {stop}
""".format(name=name, port=port, start=json.dumps(start), stop=json.dumps(stop))

    def tearDown(self):
        if getattr(self, "controld", None):
            self.controld.stop()
        for name in ("notes", "a-much-longer-name"):
            self.stop_sample(name)
        super().tearDown()


def run(*argv, timeout=30, user=None):
    argv = [CONTROLD] + list(argv)
    if user:
        argv = ["setpriv", "--reuid=" + user, "--regid=nogroup", "--clear-groups"] + argv
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


class CliTest(ControldTest):
    def test_client_options_stand_before_or_after_the_subcommand(self):
        self.start_controld(self.config(self.sample_service_yaml("notes", free_port())))
        sock = self.controld_socket
        tables = [run("--socket", sock, "status"), run("status", "--socket", sock), run("-s", sock, "status"),
                  run("--config", self.controld_config, "status"), run("status", "-c", self.controld_config)]
        for out in tables:
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertRegex(out.stdout, r"^SERVICE +STATE +SINCE")
            self.assertIn("notes", out.stdout)
        for out in (run("--json", "--socket", sock, "status"), run("status", "notes", "--json", "--socket", sock),
                    run("--socket", sock, "--json", "status", "notes")):
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertEqual(out.stdout[:1], "{")
        self.assertEqual(run("--socket", sock, "start", "notes", "--wait").returncode, 0)
        self.assertEqual(run("stop", "--socket", sock, "notes", "--wait", "--json").stdout,
                         '{"service":"notes","state":"cold"}\n')
        self.assertEqual(run("check-config", self.controld_config).returncode, 0)
        self.assertEqual(run("--config", self.controld_config, "check-config").returncode, 0)
        missing = run("check-config")
        self.assertEqual(missing.returncode, 2)
        self.assertIn("--config FILE", missing.stderr)

    def test_version_as_option_and_subcommand(self):
        option, command = run("--version"), run("version")
        self.assertEqual((option.returncode, command.returncode), (0, 0), option.stderr)
        self.assertRegex(option.stdout, r"^controld \d+\.\d+\.\d+ \(protocol \d+\)\n$")
        self.assertEqual(option.stdout, command.stdout)
        bare = run()
        self.assertEqual(bare.returncode, 2)

    def test_no_socket_says_not_running_and_how_to_start_it(self):
        out = run("status", "--socket", self.path("none.sock"))
        self.assertEqual(out.returncode, 3)
        self.assertIn("controld is not running: there is no socket at " + self.path("none.sock"), out.stderr)
        self.assertIn("start it: systemctl start controld (or controld serve --config FILE)", out.stderr)
        default = subprocess.run([CONTROLD, "status"], capture_output=True, text=True, timeout=30,
                                 env=dict(os.environ, CONTROLD_SOCKET=""))
        if not os.path.exists("/run/controld/controld.sock"):
            self.assertEqual(default.returncode, 3)
            self.assertIn("/run/controld/controld.sock", default.stderr)
            self.assertIn("--socket PATH, or --config FILE", default.stderr)

    def test_a_socket_nobody_listens_on_is_told_apart(self):
        path = self.path("stale.sock")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        s.close()  # the file stays, nothing listens
        out = run("status", "--socket", path)
        self.assertEqual(out.returncode, 3)
        self.assertIn("controld is not running: %s exists but nothing listens on it" % path, out.stderr)

    @unittest.skipUnless(os.geteuid() == 0 and shutil.which("setpriv"), "needs root to act as another user")
    def test_permission_denied_names_the_socket_owner_and_the_next_step(self):
        os.chmod(self.dir, 0o755)
        self.start_controld(self.config(self.sample_service_yaml("notes", free_port()), extra='socket_mode: "0600"\n'))
        out = run("status", "--socket", self.controld_socket, user="nobody")
        self.assertEqual(out.returncode, 3, out.stdout + out.stderr)
        self.assertIn("Permission denied", out.stderr)
        self.assertIn("srw------- root root; you are nobody", out.stderr)
        self.assertIn("run the command as root (sudo controld ...)", out.stderr)
        self.assertNotIn("start it", out.stderr)

    def test_a_stopped_daemon_makes_the_client_exit_3_within_5_s(self):
        proc = self.start_controld(self.config(self.sample_service_yaml("notes", free_port())))
        proc.signal(signal.SIGSTOP)
        try:
            for argv in (["status"], ["start", "notes", "--wait"], ["events"], ["metrics"]):
                started = time.monotonic()
                out = run(*argv, "--socket", self.controld_socket, timeout=20)
                elapsed = time.monotonic() - started
                self.assertEqual(out.returncode, 3, (argv, out.stdout, out.stderr))
                self.assertLess(elapsed, 5.0, argv)
                self.assertIn("controld did not answer (pid %d)" % proc.pid, out.stderr)
                self.assertIn("it is stopped (SIGSTOP or SIGTSTP): resume it with kill -CONT %d" % proc.pid,
                              out.stderr)
        finally:
            proc.signal(signal.SIGCONT)
        self.assertEqual(run("status", "--socket", self.controld_socket).returncode, 0)

    def test_a_daemon_stopped_while_the_client_waits_ends_the_wait(self):
        port = free_port()
        proc = self.start_controld(self.config(self.sample_service_yaml("notes", port, ready_after=30)))
        waiting = subprocess.Popen([CONTROLD, "start", "notes", "--wait", "--socket", self.controld_socket],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_until(lambda: self.service_state("notes") == "starting", 10, message="starting")
            proc.signal(signal.SIGSTOP)
            stopped = time.monotonic()
            out, err = waiting.communicate(timeout=20)
            self.assertLess(time.monotonic() - stopped, 8.0)
            self.assertEqual(waiting.returncode, 3, out + err)
            self.assertIn("controld did not answer", err)
        finally:
            proc.signal(signal.SIGCONT)
            if waiting.poll() is None:
                waiting.kill()
                waiting.communicate()

    def test_start_wait_shows_progress_and_prints_the_outcome_once(self):
        port = free_port()
        self.start_controld(self.config(self.sample_service_yaml("notes", port, ready_after=2.5)))
        out = run("start", "notes", "--wait", "--socket", self.controld_socket)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout, "notes: warm\n")
        progress = out.stderr.splitlines()
        self.assertTrue(progress, "no progress shown")
        for line in progress:
            self.assertRegex(line, r"^notes: starting since \d\d:\d\d:\d\d \(\d")
        self.assertIn("waiting for health: http://127.0.0.1:%d/healthz" % port, progress[-1])
        self.assertNotIn("warm", out.stderr)

    def test_a_failed_start_is_printed_once_with_its_reason(self):
        self.start_controld(self.config("""  broken:
    health_url: http://127.0.0.1:{port}/healthz
    start_command: ["sh", "-c", "sleep 0.5; echo 'cannot open /dev/nvidia0' >&2; exit 1"]
""".format(port=free_port())))
        out = run("start", "broken", "--wait", "--socket", self.controld_socket)
        self.assertEqual(out.returncode, 1)
        self.assertEqual(out.stdout.count("broken: failed"), 1, out.stdout)
        self.assertIn("cannot open /dev/nvidia0", out.stdout)
        self.assertIn("broken: starting since", out.stderr)
        self.assertIn("start command running", out.stderr)
        self.assertNotIn("failed", out.stderr)

    def test_events_prints_every_state_first_then_follows_in_columns(self):
        port = free_port()
        self.start_controld(self.config(self.sample_service_yaml("notes", port) +
                                        self.sample_service_yaml("a-much-longer-name", free_port())))
        events = subprocess.Popen([CONTROLD, "events", "--socket", self.controld_socket], stdout=subprocess.PIPE,
                                  text=True)
        try:
            first = [events.stdout.readline(), events.stdout.readline()]
            self.assertRegex(first[0], r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d  a-much-longer-name +now cold +\(")
            self.assertRegex(first[1], r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d  notes +now cold +\(")
            self.assertEqual(run("start", "notes", "--wait", "--socket", self.controld_socket).returncode, 0)
            self.assertEqual(run("stop", "notes", "--wait", "--socket", self.controld_socket).returncode, 0)
            lines = [events.stdout.readline() for _ in range(4)]
        finally:
            events.kill()
            events.wait()
            events.stdout.close()
        self.assertIn("cold -> starting", lines[0])
        self.assertIn("starting -> warm", lines[1])
        self.assertIn("stopping -> cold", lines[3])
        # Aligned: every column starts where it does on the first line.
        column = first[1].index("now cold")
        for line in lines:
            self.assertEqual(re.search(r"[a-z]+ -> ", line).start(), column, lines)
            self.assertEqual(line.index("("), first[1].index("("), lines)


class ShippedExamplesTest(ControldTest):
    """Every configuration the repository ships, through `controld check-config` as a user runs it."""

    def test_every_shipped_configuration_passes_check_config(self):
        conf = os.path.join(SOURCE_DIR, "conf")
        examples = sorted(f for f in os.listdir(conf) if f.endswith((".yaml", ".yml")))
        self.assertIn("controld.yaml", examples)
        for name in examples + ["../packaging/controld.yaml"]:
            path = os.path.normpath(os.path.join(conf, name))
            with open(path) as f:
                text = f.read()
            token = re.search(r"^ *api_token_file: (\S+)", text, re.M)
            if token and not os.path.exists(token.group(1)):
                # The one thing this test provides: the Semaphore token file the
                # example names (/etc/controld/semaphore.token), which a build
                # machine does not have. As shipped, that is the only problem.
                out = run("check-config", path)
                self.assertEqual(out.returncode, 2, out.stdout + out.stderr)
                self.assertEqual(out.stderr.count("\n"), 1, out.stderr)
                self.assertIn("semaphore.api_token_file: cannot read the token file \"%s\"" % token.group(1),
                              out.stderr)
                token_file = self.write("semaphore.token", "token-for-the-test\n")
                path = self.write(os.path.basename(path), text.replace(token.group(1), token_file))
            out = run("check-config", path)
            self.assertEqual(out.returncode, 0, name + ": " + out.stdout + out.stderr)
            self.assertRegex(out.stdout, r": ok \(\d+ services\)\n$")

    def test_the_semaphore_double_runs_as_documented(self):
        # docs/SEMAPHORE.md runs it directly: it needs its run bit.
        out = subprocess.run([os.path.join(SOURCE_DIR, "tests", "support", "semaphore_double.py"), "--help"],
                             capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("--port", out.stdout)

    def test_a_tab_in_the_indentation_is_named(self):
        path = self.write("tabbed.yaml", "services:\n  a:\n    health_url: http://127.0.0.1:1/h\n\tidle_timeout: 5m\n")
        out = run("check-config", path)
        self.assertEqual(out.returncode, 2)
        self.assertEqual(out.stderr, "%s:4: invalid YAML: a tab in the indentation (column 1); YAML does not allow "
                                     "tabs there: indent with spaces\n" % path)


class StateDirTest(ControldTest):
    @unittest.skipUnless(os.geteuid() == 0 and shutil.which("setpriv"), "needs root to act as another user")
    def test_a_state_dir_controld_cannot_write_is_warned_about_at_start_up(self):
        os.chmod(self.dir, 0o755)
        state = self.path("state")
        os.makedirs(os.path.join(state, "services"))  # root's, 0755: what `controld serve` as root leaves
        run_dir = self.path("run")
        os.makedirs(run_dir)
        os.chown(run_dir, pwd.getpwnam("nobody").pw_uid, -1)
        config = self.write("controld.yaml", """\
            socket: {run}/controld.sock
            state_dir: {state}
            services:
              notes:
                health_url: http://127.0.0.1:{port}/healthz
                start_command: ["true"]
            """.format(run=run_dir, state=state, port=free_port()))
        proc = self.spawn(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", CONTROLD, "serve",
                           "--config", config], "controld.log")
        wait_until(lambda: "event=ready" in proc.output() or not proc.alive(), 10, message="controld ready")
        log = proc.output()
        self.assertIn("event=state_dir_not_writable path=%s owner=root:root mode=0755 user=nobody" % state, log)
        self.assertIn("event=state_dir_not_writable path=%s/services owner=root:root" % state, log)
        self.assertIn("chown -R nobody: " + state, log)
        # Before anything else fails: it is said at start-up, before "ready".
        self.assertLess(log.index("state_dir_not_writable"), log.index("event=ready"))
        self.assertNotIn("state_not_saved", log)


if __name__ == "__main__":
    unittest.main()
