"""controld under systemd, with this test playing systemd: socket activation
(LISTEN_FDS/LISTEN_PID) across a restart, the watchdog (WATCHDOG_USEC and
the notify socket) with a wedged controld, and journal fields (JOURNAL_STREAM
and the journal's native protocol)."""
import os
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
import unittest

from harness import CONTROLD, SOURCE_DIR, DatagramSink, OndemandTestCase, free_port, http_request, wait_until


def unit_settings(text):
    """'Key=value' lines of a unit file -> {key: [values]} (comments and sections skipped)."""
    settings = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def journal_fields(datagram):
    """FIELD=value lines of journald's native protocol (no binary values here)."""
    fields = {}
    for line in datagram.decode().split("\n"):
        if "=" in line:
            k, v = line.split("=", 1)
            fields[k] = v
    return fields


class SystemdTest(OndemandTestCase):

    def service_config(self, port, extra=""):
        start, stop = self.sample_commands("web", port)
        import json
        return ("socket: {dir}/controld.sock\nstate_dir: {dir}/state\n{extra}services:\n"
                "  web:\n    health_url: http://127.0.0.1:{port}/healthz\n    idle_timeout: 1h\n"
                "    start_command: {start}\n    stop_command: {stop}\n").format(
                    dir=self.dir, port=port, extra=extra, start=json.dumps(start), stop=json.dumps(stop))

    def activated(self, listener, log_name, env=None):
        """controld serve with the listening socket as fd 3, as systemd passes it."""
        fd = listener.fileno()
        script = 'exec 3<&%d %d<&-; export LISTEN_FDS=1 LISTEN_PID=$$; exec "$@"' % (fd, fd)
        return self.spawn(["/bin/sh", "-c", script, "sh", CONTROLD, "serve", "--config", self.controld_config],
                          log_name, env=self.controld_env(env), pass_fds=(fd,))

    def test_socket_activation_a_restart_refuses_no_worker_and_loses_no_wake(self):
        port = free_port()
        self.controld_config = self.write("controld.yaml", self.service_config(port))
        self.controld_socket = self.path("controld.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.controld_socket)
        listener.listen(128)
        self.addCleanup(listener.close)
        first = self.activated(listener, "controld1.log")
        wait_until(lambda: self.cli_ok("status"), 15, message="controld answering on the inherited socket")
        self.assertIn("socket_from=systemd", first.output())

        # A worker keeps connecting, every 20 ms, through the restart.
        refused, connected = [], []
        stop = threading.Event()

        def keep_connecting():
            while not stop.is_set():
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    s.connect(self.controld_socket)
                    connected.append(1)
                except OSError as e:
                    refused.append(e)
                finally:
                    s.close()
                time.sleep(0.02)
        t = threading.Thread(target=keep_connecting, daemon=True)
        t.start()
        self.addCleanup(stop.set)

        self.assertEqual(first.stop(), 0)
        self.assertTrue(os.path.exists(self.controld_socket), "the socket (systemd's) outlives controld")
        # Nobody runs controld now: a worker connects and sends its wake.
        worker = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        worker.settimeout(30)
        worker.connect(self.controld_socket)
        worker.sendall(b'{"type":"hello","version":1,"role":"worker","pid":1}\n'
                       b'{"type":"wake","service":"web","reason":"GET / (during the restart)"}\n')
        time.sleep(0.3)
        second = self.activated(listener, "controld2.log")
        self.controld = second
        self.assertIn(b'"type":"welcome"', worker.recv(4096))
        self.wait_state("web", "warm", 20)
        history = self.status("web")["services"][0]["history"]
        self.assertIn("GET / (during the restart)", [h["detail"] for h in history])
        stop.set()
        t.join(5)
        worker.close()
        self.assertEqual(refused, [])
        self.assertGreater(len(connected), 5)

    def test_a_socket_unit_for_another_path_is_an_error_naming_both(self):
        self.controld_config = self.write("controld.yaml", self.service_config(free_port()))
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.path("other.sock"))
        listener.listen(8)
        self.addCleanup(listener.close)
        proc = self.activated(listener, "controld.log")
        proc.proc.wait(15)
        self.assertEqual(proc.proc.returncode, 1)
        self.assertIn("ListenStream=", proc.output())
        self.assertIn(self.path("controld.sock"), proc.output())

    def test_the_watchdog_pings_from_the_loop_and_stop_when_it_is_wedged(self):
        notify = DatagramSink(self.path("notify.sock"))
        self.addCleanup(notify.close)
        proc = self.start_controld(self.service_config(free_port()),
                                   env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "400000"})
        wait_until(lambda: notify.count(b"READY=1"), 10, message="READY=1")
        wait_until(lambda: notify.count(b"WATCHDOG=1") >= 3, 10, message="three WATCHDOG=1")
        proc.signal(signal.SIGSTOP)
        self.addCleanup(lambda: proc.signal(signal.SIGCONT))
        time.sleep(0.5)  # anything already sent has arrived by now
        wedged_at = time.monotonic()
        time.sleep(1.5)  # > 3 intervals of 200 ms
        self.assertEqual(notify.count(b"WATCHDOG=1", since=wedged_at), 0, "a stopped controld sent WATCHDOG=1")
        proc.signal(signal.SIGCONT)
        resumed = time.monotonic()
        wait_until(lambda: notify.count(b"WATCHDOG=1", since=resumed) >= 2, 10, message="pings after SIGCONT")

    def test_without_watchdog_usec_nothing_but_the_state_is_sent(self):
        notify = DatagramSink(self.path("notify.sock"))
        self.addCleanup(notify.close)
        self.start_controld(self.service_config(free_port()), env={"NOTIFY_SOCKET": notify.path})
        wait_until(lambda: notify.count(b"READY=1"), 10, message="READY=1")
        time.sleep(0.5)
        self.assertEqual(notify.count(b"WATCHDOG=1"), 0)

    def test_under_journald_lines_carry_service_event_and_state_fields(self):
        journal = DatagramSink(self.path("journal.sock"))
        self.addCleanup(journal.close)
        self.start_controld(self.service_config(free_port()),
                            env={"JOURNAL_STREAM": "8:12345", "CONTROLD_JOURNAL_SOCKET": journal.path})
        self.assertEqual(self.cli("start", "web", "--wait").returncode, 0)

        def transitions():
            entries = [journal_fields(d) for _, d in list(journal.messages)]
            return [e for e in entries if e.get("EVENT") == "transition" and e.get("SERVICE") == "web"]
        wait_until(lambda: len(transitions()) >= 2, 10, message="two transitions in the journal")
        entries = transitions()
        self.assertEqual([e["STATE"] for e in entries[:2]], ["starting", "warm"])
        for e in entries:
            self.assertEqual(e["PRIORITY"], "6")
            self.assertEqual(e["SYSLOG_IDENTIFIER"], "controld")
            self.assertIn("event=transition service=web", e["MESSAGE"])
            self.assertNotIn("ts=", e["MESSAGE"])  # journald has its own timestamps
        ready = [journal_fields(d) for _, d in journal.messages if b"EVENT=ready" in d]
        self.assertEqual(len(ready), 1)
        self.assertNotIn("SERVICE", ready[0])
        # Not on stderr as well.
        self.assertNotIn("event=transition", self.controld.output())


if __name__ == "__main__":
    unittest.main()

class InstallUnitsTest(OndemandTestCase):
    """`controld install-units` for installs from source: the units it writes
    pass systemd-analyze verify, and run controld on that configuration the
    way systemd would (the socket unit's path is the one controld accepts)."""

    service_config = SystemdTest.service_config

    def install_units(self, *args):
        return subprocess.run([CONTROLD, "install-units"] + list(args), capture_output=True, text=True, timeout=30)

    def test_the_units_written_for_a_configuration_verify_and_run_it(self):
        port = free_port()
        config = self.write("controld.yaml", self.service_config(port))
        out = self.install_units("--config", config, "--dir", self.path("units"), "--user", "nobody")
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertIn("wrote " + self.path("units", "controld.service"), out.stdout)
        self.assertIn("systemctl daemon-reload", out.stdout)
        with open(self.path("units", "controld.service")) as f:
            service = unit_settings(f.read())
        with open(self.path("units", "controld.socket")) as f:
            socket_unit = unit_settings(f.read())
        self.assertEqual(service["ExecStart"], ["%s serve --config %s" % (os.path.realpath(CONTROLD), config)])
        self.assertEqual(service["User"], ["nobody"])
        self.assertEqual(service["Group"], ["nogroup"])
        self.assertEqual(service["Type"], ["notify"])
        self.assertEqual(service["WatchdogSec"], ["30s"])
        self.assertEqual(service["Requires"], ["controld.socket"])
        self.assertEqual(service["EnvironmentFile"], ["-/etc/default/controld"])
        # Neither the socket nor state_dir is under /run or /var/lib: both
        # stay writable through ProtectSystem=strict.
        self.assertEqual(sorted(service["ReadWritePaths"]), sorted([self.dir, self.path("state")]))
        self.assertEqual(socket_unit["ListenStream"], [self.path("controld.sock")])
        self.assertEqual(socket_unit["SocketUser"], ["nobody"])

        if shutil.which("systemd-analyze"):
            man = self.path("man", "man8")
            os.makedirs(man)
            shutil.copy(os.path.join(SOURCE_DIR, "packaging", "man", "controld.8"), man)
            verify = subprocess.run(["systemd-analyze", "verify", self.path("units", "controld.service"),
                                     self.path("units", "controld.socket")], capture_output=True, text=True,
                                    timeout=60, env=dict(os.environ, MANPATH=self.path("man")))
            self.assertEqual(verify.returncode, 0, verify.stdout + verify.stderr)

        # What systemd does with them: bind ListenStream=, then run ExecStart=
        # with the socket as fd 3. controld refuses a socket of another path,
        # so serving here proves the two units agree with the configuration.
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(socket_unit["ListenStream"][0])
        listener.listen(64)
        self.addCleanup(listener.close)
        fd = listener.fileno()
        script = 'exec 3<&%d %d<&-; export LISTEN_FDS=1 LISTEN_PID=$$; exec "$@"' % (fd, fd)
        self.controld_config = config
        self.controld_socket = self.path("controld.sock")
        self.spawn(["/bin/sh", "-c", script, "sh"] + shlex.split(service["ExecStart"][0]), "controld.log",
                   pass_fds=(fd,))
        wait_until(lambda: self.cli_ok("status"), 10, message="controld serving on the unit's socket")
        self.assertEqual(self.cli("start", "--wait", "web").returncode, 0)
        self.assertEqual(http_request(port, "/healthz")[0], 200)

    def test_a_configuration_error_or_an_unknown_user_writes_nothing(self):
        bad = self.write("bad.yaml", "socket: %s\nservices:\n  web:\n    idle_timeout: soon\n" % self.path("c.sock"))
        out = self.install_units("--config", bad, "--dir", self.path("units"))
        self.assertEqual(out.returncode, 2, out.stdout + out.stderr)
        self.assertIn(bad + ":4", out.stderr)
        self.assertIn("idle_timeout", out.stderr)
        self.assertFalse(os.path.exists(self.path("units")))

        good = self.write("controld.yaml", self.service_config(free_port()))
        out = self.install_units("--config", good, "--dir", self.path("units"), "--user", "no-such-user-here")
        self.assertEqual(out.returncode, 2)
        self.assertIn("there is no user no-such-user-here", out.stderr)
        self.assertFalse(os.path.exists(self.path("units")))

        out = self.install_units("--dir", self.path("units"))
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("--config FILE", out.stderr)
