"""controld on its own: real daemon, real start/stop commands, real sample
services, the real CLI."""
import json
import os
import signal
import socket
import subprocess
import time
import unittest

from harness import OndemandTestCase, free_port, http_request, wait_until, PYTHON


def command_yaml(argv):
    return json.dumps(argv)


class WorkerClient:
    """Speaks the control protocol the way an nginx worker does."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.buffer = b""
        self.send({"type": "hello", "version": 1, "role": "worker", "pid": os.getpid()})
        assert self.read()["type"] == "welcome"

    def send(self, message):
        self.sock.sendall((json.dumps(message) + "\n").encode())

    def send_raw(self, data):
        self.sock.sendall(data)

    def read(self):
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def close(self):
        self.sock.close()


class ControldTest(OndemandTestCase):
    def config(self, services, extra=""):
        return "socket: {dir}/controld.sock\nstate_dir: {dir}/state\n{extra}services:\n{services}".format(
            dir=self.dir, extra=extra, services=services)

    def sample_service_yaml(self, name, port, idle="1h", ready_after=0.0, start_timeout="20s", extra=""):
        start, stop = self.sample_commands(name, port, ready_after=ready_after)
        return """  {name}:
    health_url: http://127.0.0.1:{port}/healthz
    idle_timeout: {idle}
    start_timeout: {start_timeout}
    start_command: {start}
    stop_command: {stop}
{extra}""".format(name=name, port=port, idle=idle, start=command_yaml(start), stop=command_yaml(stop),
                  start_timeout=start_timeout, extra=extra)

    def tearDown(self):
        # controld first, so no start command launches a sample after its stop.
        if getattr(self, "controld", None):
            self.controld.stop()
        for name in ("notes", "slow", "a", "b"):
            self.stop_sample(name)
        super().tearDown()

    def test_start_command_then_warm_only_after_health_answers(self):
        port = free_port()
        self.start_controld(self.config(self.sample_service_yaml("notes", port, ready_after=1.5)))
        self.assertEqual(self.service_state("notes"), "cold")
        started = time.monotonic()
        out = self.cli("start", "notes", "--wait")
        elapsed = time.monotonic() - started
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertIn("notes: warm", out.stdout)
        # The sample only listens after 1.5 s: warm before that would be a lie.
        self.assertGreaterEqual(elapsed, 1.4)
        status, _, body = http_request(port, "/")
        self.assertEqual(status, 200)
        history = self.status("notes")["services"][0]["history"]
        self.assertEqual([(h["from"], h["to"]) for h in history], [("cold", "starting"), ("starting", "warm")])
        self.assertEqual(history[0]["cause"], "cli")
        # The cold-start figure: one good start, timed from the wake to warm.
        service = self.status("notes")["services"][0]
        self.assertEqual((service["starts_ok"], service["starts_failed"]), (1, 0))
        self.assertTrue(1400 <= service["last_start_ms"] <= elapsed * 1000 + 50, service["last_start_ms"])
        self.assertIn("starts:         1 ok, 0 failed; the last took", self.cli("status", "notes").stdout)
        metrics = self.cli("metrics").stdout.splitlines()
        self.assertIn('ondemand_service_state{service="notes",state="warm"} 1', metrics)
        self.assertIn('ondemand_starts_total{service="notes",result="ok"} 1', metrics)

    def test_idle_stop_runs_stop_command_but_not_with_a_request_in_flight(self):
        port = free_port()
        self.start_controld(self.config(self.sample_service_yaml("notes", port, idle="1s")))
        self.assertEqual(self.cli("start", "notes", "--wait").returncode, 0)

        worker = WorkerClient(self.controld_socket)
        worker.send({"type": "subscribe"})
        worker.send({"type": "activity", "services": {"notes": {"started": 1, "in_flight": 1}}})
        time.sleep(2.5)  # well past idle_timeout: a request in flight keeps it warm
        self.assertEqual(self.service_state("notes"), "warm")
        self.assertTrue(self.sample_running("notes"))

        # The request ends: stopped one idle_timeout later, after the worker
        # acknowledged `stopping` with nothing in flight.
        worker.send({"type": "activity", "services": {"notes": {"started": 0, "in_flight": 0}}})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            msg = worker.read()
            if msg and msg.get("type") == "state" and msg["service"] == "notes" and msg["state"] == "stopping":
                worker.send({"type": "stopping_ack", "service": "notes", "epoch": msg["epoch"], "in_flight": 0})
                break
        else:
            self.fail("no stopping announcement")
        self.wait_state("notes", "cold", timeout=10)
        wait_until(lambda: not self.sample_running("notes"), 5, message="sample process gone")
        worker.close()

    def test_a_request_slipping_in_during_the_stop_announcement_cancels_the_stop(self):
        port = free_port()
        self.start_controld(self.config(self.sample_service_yaml("notes", port, idle="1s")))
        self.assertEqual(self.cli("start", "notes", "--wait").returncode, 0)
        worker = WorkerClient(self.controld_socket)
        worker.send({"type": "subscribe"})
        while True:
            msg = worker.read()
            if msg.get("type") == "state" and msg["state"] == "stopping":
                break
        worker.send({"type": "stopping_ack", "service": "notes", "epoch": msg["epoch"], "in_flight": 1})
        while True:
            msg = worker.read()
            if msg.get("type") == "state" and msg["service"] == "notes":
                break
        self.assertEqual(msg["state"], "warm")
        self.assertTrue(self.sample_running("notes"))
        worker.close()

    def test_failing_start_command_reports_stderr_and_cli_exits_1(self):
        self.start_controld(self.config("""  broken:
    health_url: http://127.0.0.1:{port}/healthz
    start_command: ["sh", "-c", "echo 'cannot open /dev/nvidia0' >&2; exit 1"]
""".format(port=free_port())))
        out = self.cli("start", "broken", "--wait")
        self.assertEqual(out.returncode, 1, out.stdout + out.stderr)
        self.assertIn("cannot open /dev/nvidia0", out.stdout)
        self.assertIn("status 1", out.stdout)
        svc = self.status("broken")["services"][0]
        self.assertEqual(svc["state"], "failed")
        self.assertIn("cannot open /dev/nvidia0", svc["reason"])
        table = self.cli("status")
        self.assertIn("failed", table.stdout)
        self.assertIn("cannot open /dev/nvidia0", table.stdout)

    def test_command_output_goes_to_its_file_in_state_dir(self):
        self.start_controld(self.config("""  broken:
    health_url: http://127.0.0.1:{port}/healthz
    start_command: ["sh", "-c", "echo checking the GPU; echo 'cannot open /dev/nvidia0' >&2; exit 1"]
""".format(port=free_port())))
        self.assertEqual(self.cli("start", "broken", "--wait").returncode, 1)
        with open(self.path("state", "broken.command.log")) as f:
            self.assertEqual(f.read(), "checking the GPU\ncannot open /dev/nvidia0\n")
        self.assertEqual(self.status("broken")["services"][0]["reason"],
                         "start command exited with status 1: checking the GPU\ncannot open /dev/nvidia0")

    def test_sigkill_while_warm_then_restart_stays_warm_without_second_start(self):
        port = free_port()
        counter = self.path("starts")
        start, stop = self.sample_commands("notes", port)
        start_counted = ["sh", "-c", 'echo x >> "$0"; exec "$@"', counter] + start
        self.start_controld(self.config("""  notes:
    health_url: http://127.0.0.1:{port}/healthz
    start_command: {start}
    stop_command: {stop}
""".format(port=port, start=command_yaml(start_counted), stop=command_yaml(stop))))
        self.assertEqual(self.cli("start", "notes", "--wait").returncode, 0)
        self.controld.kill9()
        self.restart_controld()
        time.sleep(0.5)
        self.assertEqual(self.service_state("notes"), "warm")
        self.assertEqual(self.cli("start", "notes", "--wait").returncode, 0)
        with open(counter) as f:
            self.assertEqual(len(f.readlines()), 1)
        history = self.status("notes")["services"][0]["history"]
        self.assertEqual(history[-1]["to"], "warm")

    def start_slow_service(self, port, before_launch, *args):
        """controld with service "slow", whose start command counts its runs
        in the file "starts", runs the shell code `before_launch` (with
        `args` as $1...), then launches the sample service. Starts it, and
        returns once its start command runs."""
        counter = self.path("starts")
        start, stop = self.sample_commands("slow", port)
        slow_start = (["sh", "-c", 'echo x >> "$0"; %s; shift %d; exec "$@"' % (before_launch, len(args)), counter]
                      + list(args) + start)
        self.start_controld(self.config("""  slow:
    health_url: http://127.0.0.1:{port}/healthz
    start_timeout: 30s
    start_command: {start}
    stop_command: {stop}
""".format(port=port, start=command_yaml(slow_start), stop=command_yaml(stop))))
        self.assertEqual(self.cli("start", "slow").returncode, 0)
        wait_until(lambda: os.path.exists(counter), 5, message="start command running")

    def assert_slow_service_warm_after_one_start(self, port):
        out = self.cli("start", "slow", "--wait")
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        with open(self.path("starts")) as f:
            self.assertEqual(len(f.readlines()), 1, "the start command ran twice")
        self.assertEqual(http_request(port, "/")[0], 200)
        self.assertIn("operation_resumed", self.controld.output())

    def test_sigkill_during_start_resumes_instead_of_repeating(self):
        port = free_port()
        # A start command that takes 2 s before it launches the service.
        self.start_slow_service(port, "sleep 2")
        self.controld.kill9()
        self.restart_controld()
        self.assert_slow_service_warm_after_one_start(port)

    def test_start_command_writing_after_sigterm_runs_on_and_the_next_controld_sees_it_warm(self):
        port = free_port()
        marker = self.path("wrote-everything")
        # Writes well over a pipe's worth to stdout and stderr once controld
        # has gone, then launches the service.
        self.start_slow_service(port, 'sleep 1; i=0; while [ $i -lt 5000 ]; do echo "progress $i"; '
                                'echo "warning $i" >&2; i=$((i+1)); done; : > "$1"', marker)
        self.assertEqual(self.controld.stop(signal.SIGTERM), 0)
        # No controld runs now: the command's writes must not kill it.
        wait_until(lambda: os.path.exists(marker), 15, message="the start command wrote everything")
        self.restart_controld()
        self.assert_slow_service_warm_after_one_start(port)
        with open(self.path("state", "slow.command.log")) as f:
            self.assertIn("progress 4999\nwarning 4999\n", f.read())

    def test_check_config_names_every_mistake_with_file_and_line(self):
        path = self.write("bad.yaml", """\
            socket: /tmp/x.sock
            services:
              notes:
                health_url: http://127.0.0.1:9/healthz
                idle_timout: 5m
                start_timeout: [1, 2]
                failure_backoff: 5 minutes
            """)
        out = self.cli("check-config", "--config", path)
        self.assertEqual(out.returncode, 2, out.stdout + out.stderr)
        lines = [l for l in out.stderr.splitlines() if l.strip()]
        self.assertTrue(any(l.startswith(path + ":5:") and "services.notes.idle_timout" in l for l in lines), lines)
        self.assertTrue(any(l.startswith(path + ":6:") and "services.notes.start_timeout" in l for l in lines), lines)
        self.assertTrue(any(l.startswith(path + ":7:") and "services.notes.failure_backoff" in l for l in lines), lines)

    def test_hestia_config_with_env_overrides_loads_with_the_same_meaning(self):
        port = free_port()
        hestia = self.write("hestia_config.yml", """\
            services:
              notes:
                base_url: http://127.0.0.1:{port}
                health_url: http://127.0.0.1:1/healthz
                idle_timeout_ms: 600000
                request_timeout_seconds: 30
            """.format(port=port))
        native = self.write("native.yaml", """\
            services:
              notes:
                base_url: http://127.0.0.1:{port}
                health_url: http://127.0.0.1:{port}/healthz
                idle_timeout: 1.5s
            """.format(port=port))
        env = dict(os.environ, NOTES_HEALTH_URL="http://127.0.0.1:%d/healthz" % port, NOTES_IDLE_TIMEOUT_MS="1500")
        check = subprocess.run([os.environ["CONTROLD_BIN"], "check-config", "--config", hestia],
                               capture_output=True, text=True, env=env)
        self.assertEqual(check.returncode, 0, check.stderr)

        def served(config, tag):
            sock = self.path(tag + ".sock")
            proc = self.spawn([os.environ["CONTROLD_BIN"], "serve", "--config", config, "--socket", sock,
                               "--state-dir", self.path(tag + "-state")], tag + ".log", env=env)
            wait_until(lambda: os.path.exists(sock) or not proc.alive(), 10, message=tag + " socket")
            self.assertTrue(proc.alive(), proc.output())
            out = self.cli("status", "--json", "notes", socket_path=sock)
            self.assertEqual(out.returncode, 0, out.stderr)
            svc = json.loads(out.stdout)["services"][0]
            return {k: svc[k] for k in ("name", "health_url", "base_url", "idle_timeout_ms", "driver", "state")}

        from_hestia = served(hestia, "hestia")
        self.assertEqual(from_hestia["health_url"], "http://127.0.0.1:%d/healthz" % port)
        self.assertEqual(from_hestia["idle_timeout_ms"], 1500)
        self.assertEqual(from_hestia, served(native, "native"))

    def test_malformed_and_oversized_messages_close_only_that_connection(self):
        port = free_port()
        self.start_controld(self.config(self.sample_service_yaml("notes", port)))
        good = WorkerClient(self.controld_socket)
        good.send({"type": "subscribe"})
        self.assertEqual(good.read()["type"], "state")
        self.assertEqual(good.read()["type"], "synced")

        bad = WorkerClient(self.controld_socket)
        bad.send_raw(b"{this is not json\n")
        reply = bad.read()
        self.assertEqual(reply["type"], "error")
        self.assertIsNone(bad.read())  # closed
        bad.close()

        huge = WorkerClient(self.controld_socket)
        try:
            huge.send_raw(b'{"type":"wake","service":"' + b"x" * (70 * 1024))
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.assertEqual(huge.read()["type"], "error")
        huge.close()

        # The good client still gets pushes.
        self.assertEqual(self.cli("start", "notes").returncode, 0)
        msg = good.read()
        self.assertEqual((msg["type"], msg["service"], msg["state"]), ("state", "notes", "starting"))
        log = self.controld.output()
        self.assertIn("malformed message", log)
        self.assertIn("message larger than", log)
        good.close()

    def test_cli_follows_events_shows_details_and_stops_with_wait(self):
        port = free_port()
        self.start_controld(self.config(self.sample_service_yaml("notes", port)))
        events = subprocess.Popen([os.environ["CONTROLD_BIN"], "events", "--json", "--socket", self.controld_socket],
                                  stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(0.3)  # subscribed before anything happens
            self.assertEqual(self.cli("start", "notes", "--wait").returncode, 0)
            stop = self.cli("stop", "notes", "--wait")
            self.assertEqual(stop.returncode, 0, stop.stdout + stop.stderr)
            self.assertIn("notes: cold", stop.stdout)
            self.assertFalse(self.sample_running("notes"))
            seen = []
            current = json.loads(events.stdout.readline())
            self.assertEqual((current["type"], current["service"], current["state"]), ("current", "notes", "cold"))
            while len(seen) < 4:
                event = json.loads(events.stdout.readline())
                seen.append((event["service"], event["from"], event["to"], event["cause"]))
            self.assertEqual(seen, [("notes", "cold", "starting", "cli"), ("notes", "starting", "warm", "health"),
                                    ("notes", "warm", "stopping", "cli"), ("notes", "stopping", "cold", "cli")])
        finally:
            events.kill()
            events.wait()
            events.stdout.close()
        detail = self.cli("status", "notes")
        self.assertEqual(detail.returncode, 0)
        self.assertIn("state:          cold", detail.stdout)
        self.assertIn("stop ok", detail.stdout)
        self.assertIn("cold -> starting", detail.stdout)
        unknown = self.cli("start", "nope")
        self.assertEqual(unknown.returncode, 2)
        self.assertIn('unknown service "nope"', unknown.stderr)
        version = self.cli("version")
        self.assertEqual(version.returncode, 0)
        self.assertRegex(version.stdout, r"^controld \d+\.\d+\.\d+")

    def test_cli_says_clearly_when_the_daemon_is_not_running(self):
        out = self.cli("status", socket_path=self.path("nobody.sock"))
        self.assertEqual(out.returncode, 3)
        self.assertIn("not running", out.stderr)

    def test_sighup_reload_keeps_old_config_on_error_and_applies_a_good_one(self):
        port = free_port()
        self.start_controld(self.config(self.sample_service_yaml("a", port)))
        with open(self.controld_config, "a") as f:
            f.write("  b:\n    health_url: http://127.0.0.1:%d/healthz\n    idle_timeout: nonsense\n" % port)
        self.controld.signal(signal.SIGHUP)
        wait_until(lambda: "reload_rejected" in self.controld.output(), 5, message="reload rejected")
        self.assertEqual([s["name"] for s in self.status()["services"]], ["a"])
        with open(self.controld_config) as f:
            text = f.read().replace("idle_timeout: nonsense", "idle_timeout: 5m")
        with open(self.controld_config, "w") as f:
            f.write(text)
        self.controld.signal(signal.SIGHUP)
        wait_until(lambda: [s["name"] for s in self.status()["services"]] == ["a", "b"], 5, message="b added")

    def test_serve_overrides_survive_a_reload(self):
        """`serve --socket` wins over the file at every reload: no warning about a change nobody
        made, and the daemon stays on the overriding socket."""
        port = free_port()
        self.controld_config = self.write("controld.yaml", self.config(self.sample_service_yaml("a", port)))
        self.controld_socket = self.path("override.sock")
        self.controld = self.spawn([os.environ["CONTROLD_BIN"], "serve", "--config", self.controld_config,
                                    "--socket", self.controld_socket], "controld.log")
        wait_until(lambda: self.cli_ok("status"), 10, message="controld answering on the overriding socket")
        with open(self.controld_config, "a") as f:
            f.write(self.sample_service_yaml("b", free_port()))
        self.controld.signal(signal.SIGHUP)
        wait_until(lambda: [s["name"] for s in self.status()["services"]] == ["a", "b"], 5, message="b added")
        self.assertNotIn("reload_partial", self.controld.output())
        self.assertFalse(os.path.exists(self.path("controld.sock")))
        # A change the file makes itself is still reported, and not applied.
        with open(self.controld_config) as f:
            text = f.read().replace("state_dir: %s/state" % self.dir, "state_dir: %s/elsewhere" % self.dir)
        with open(self.controld_config, "w") as f:
            f.write(text)
        self.controld.signal(signal.SIGHUP)
        wait_until(lambda: "reload_partial" in self.controld.output(), 5, message="reload_partial")
        self.assertTrue(self.cli_ok("status"))

    def test_sigterm_shuts_down_cleanly_and_removes_the_socket(self):
        self.start_controld(self.config(self.sample_service_yaml("a", free_port())))
        self.assertEqual(self.controld.stop(signal.SIGTERM), 0)
        self.assertFalse(os.path.exists(self.controld_socket))


if __name__ == "__main__":
    unittest.main()
