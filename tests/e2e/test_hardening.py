"""Defects found by a review and an attack (issue 11), each with the test
that showed it: real controld, real commands, the real CLI."""
import json
import os
import signal
import socket
import subprocess
import threading
import time
import unittest

import test_controld
from harness import CONTROLD, OndemandTestCase, free_port, wait_until
from module_case import ModuleTestCase

LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


class Client(test_controld.WorkerClient):
    """A control-socket client of either role."""

    def __init__(self, path, role="worker"):
        self.role = role
        super().__init__(path)

    def send(self, message):
        if message.get("type") == "hello":
            message = dict(message, role=self.role)
        super().send(message)

    def next(self, predicate, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.read()
            if msg is None:
                raise AssertionError("controld closed the connection")
            if predicate(msg):
                return msg
        raise AssertionError("no such message within %ss" % timeout)


class HardeningTest(OndemandTestCase):
    def config(self, services, extra=""):
        return "socket: {dir}/controld.sock\nstate_dir: {dir}/state\n{extra}services:\n{services}".format(
            dir=self.dir, extra=extra, services=services)

    def state_file(self, name):
        try:
            with open(self.path("state", "services", name + ".json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def test_a_start_is_refused_while_its_record_cannot_be_saved_and_nothing_is_lost_once_it_can(self):
        marker = self.path("launched")
        # A directory where the temp file goes: every write of this service
        # fails (EISDIR), as with a full or read-only state_dir, even for root.
        blocker = self.path("state", "services", "notes.json.tmp")
        os.makedirs(blocker)
        self.start_controld(self.config("""  notes:
    start_command: ["touch", "{marker}"]
    stop_command: ["true"]
""".format(marker=marker)))
        out = self.cli("start", "notes", "--wait")
        self.assertEqual(out.returncode, 1, out.stdout + out.stderr)
        self.assertIn("not started: the record of the operation could not be saved in state_dir", out.stdout)
        self.assertFalse(os.path.exists(marker), "the start command ran without its record on disk")
        service = self.status("notes")["services"][0]
        self.assertEqual(service["state"], "failed")
        epoch = service["epoch"]
        self.assertIsNone(self.state_file("notes"))

        # Space returns: the failed state reaches the disk without anything
        # else happening, and survives a crash with its epoch.
        os.rmdir(blocker)
        wait_until(lambda: (self.state_file("notes") or {}).get("state") == "failed", 10,
                   message="the state written once state_dir is writable again")
        self.controld.kill9()
        self.restart_controld()
        service = self.status("notes")["services"][0]
        self.assertEqual(service["state"], "failed")
        self.assertGreaterEqual(service["epoch"], epoch)
        out = self.cli("start", "notes", "--wait")
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertTrue(os.path.exists(marker))
        self.assertIn("state_not_saved", self.controld_log())

    def test_a_reload_that_changes_failure_backoff_pushes_the_new_retry_at(self):
        self.start_controld(self.config("""  broken:
    start_command: ["false"]
    failure_backoff: 1h
"""))
        worker = Client(self.controld_socket)
        worker.send({"type": "subscribe"})
        self.assertEqual(self.cli("start", "broken", "--wait").returncode, 1)
        failed = worker.next(lambda m: m.get("type") == "state" and m["state"] == "failed")
        self.assertEqual(failed["retry_at"] - failed["since"], 3600 * 1000)
        with open(self.controld_config) as f:
            text = f.read().replace("failure_backoff: 1h", "failure_backoff: 1s")
        with open(self.controld_config, "w") as f:
            f.write(text)
        self.controld.signal(signal.SIGHUP)
        pushed = worker.next(lambda m: m.get("type") == "state" and m["service"] == "broken")
        self.assertEqual(pushed["state"], "failed")
        self.assertEqual(pushed["epoch"], failed["epoch"])
        self.assertEqual(pushed["retry_at"] - pushed["since"], 1000)
        worker.close()

    def test_every_transition_of_one_input_is_logged_and_sent_to_events(self):
        # A start asked for while the stop command runs: when the stop ends,
        # one input makes stopping -> cold -> starting.
        self.start_controld(self.config("""  notes:
    start_command: ["true"]
    stop_command: ["sleep", "1"]
"""))
        self.assertEqual(self.cli("start", "notes", "--wait").returncode, 0)
        events = Client(self.controld_socket, role="cli")
        events.send({"type": "command", "id": 1, "verb": "events"})
        events.next(lambda m: m.get("type") == "reply")
        self.assertEqual(self.cli("stop", "notes").returncode, 0)
        self.assertEqual(self.cli("start", "notes").returncode, 0)
        seen = []
        while not seen or seen[-1][1] != "warm":
            msg = events.next(lambda m: m.get("type") == "event")
            seen.append((msg["from"], msg["to"], msg["epoch"]))
        self.assertEqual([(f, t) for f, t, _ in seen],
                         [("warm", "stopping"), ("stopping", "cold"), ("cold", "starting"), ("starting", "warm")])
        epochs = [e for _, _, e in seen]
        self.assertEqual(epochs, list(range(epochs[0], epochs[0] + 4)))
        log = self.controld_log()
        self.assertIn("service=notes from=stopping to=cold", log)
        events.close()

    def test_in_flight_counts_of_several_workers_add_up_without_wrapping(self):
        self.start_controld(self.config("""  notes:
    start_command: ["true"]
    stop_command: ["true"]
    idle_timeout: 1s
"""))
        self.assertEqual(self.cli("start", "notes", "--wait").returncode, 0)
        one, two = Client(self.controld_socket), Client(self.controld_socket)
        for worker in (one, two):
            worker.send({"type": "subscribe"})
        one.send({"type": "activity", "services": {"notes": {"started": 1, "in_flight": 2 ** 64 - 1}}})
        two.send({"type": "activity", "services": {"notes": {"started": 1, "in_flight": 1}}})
        wait_until(lambda: self.status("notes")["services"][0]["in_flight"] == 2 ** 64 - 1, 5,
                   message="the sum held at its limit")
        time.sleep(1.5)  # past idle_timeout: requests in flight keep it warm
        self.assertEqual(self.service_state("notes"), "warm")
        one.close()
        two.close()

    def test_a_wall_clock_step_during_a_start_neither_fails_it_nor_moves_its_deadlines(self):
        if not os.path.exists(LIBFAKETIME):
            self.fail("libfaketime is missing: scripts/install-deps installs it")
        port = free_port()
        started = self.path("start-running")
        start, stop = self.sample_commands("notes", port)
        slow_start = ["sh", "-c", ': > "$0"; sleep 2; exec "$@"', started] + start
        clock = self.path("faketime")
        with open(clock, "w") as f:
            f.write("+0\n")
        env = {"LD_PRELOAD": LIBFAKETIME, "FAKETIME_TIMESTAMP_FILE": clock, "FAKETIME_NO_CACHE": "1",
               "FAKETIME_DONT_FAKE_MONOTONIC": "1",
               "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"}
        self.start_controld(self.config("""  notes:
    health_url: http://127.0.0.1:{port}/healthz
    start_timeout: 20s
    idle_timeout: 1h
    start_command: {start}
    stop_command: {stop}
""".format(port=port, start=json.dumps(slow_start), stop=json.dumps(stop))), env=env)
        self.assertEqual(self.cli("start", "notes").returncode, 0)
        wait_until(lambda: os.path.exists(started), 10, message="the start command running")
        with open(clock, "w") as f:
            f.write("+10800\n")  # NTP steps the clock 3 hours ahead
        out = self.cli("start", "notes", "--wait")
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertIn("notes: warm", out.stdout)
        status = self.status("notes")
        service = status["services"][0]
        # Shown in the wall clock of now: 3 hours ahead, the idle stop one
        # idle_timeout after the start, the start a few seconds ago.
        self.assertGreater(status["now"], time.time() * 1000 + 10700 * 1000)
        self.assertLess(abs(service["idle_stop_at"] - status["now"] - 3600 * 1000), 60 * 1000)
        self.assertLess(status["now"] - service["since"], 60 * 1000)
        self.assertLess(status["now"] - service["history"][0]["at"], 60 * 1000)
        self.stop_sample("notes")

    def test_a_wake_reason_with_invalid_utf8_leaves_status_and_state_files_valid_json(self):
        self.start_controld(self.config("""  notes:
    start_command: ["false"]
"""))
        worker = Client(self.controld_socket)
        worker.send_raw(b'{"type":"wake","service":"notes","reason":"GET /x/\xff\xfe\xc0"}\n')
        wait_until(lambda: self.service_state("notes") == "failed", 10, message="the start tried")
        out = subprocess.run([CONTROLD, "status", "--json", "--socket", self.controld_socket],
                             capture_output=True, timeout=30)
        service = json.loads(out.stdout.decode("utf-8"))["services"][0]  # strict: raises on invalid UTF-8
        self.assertEqual(service["history"][0]["detail"], "GET /x/\ufffd\ufffd\ufffd")
        with open(self.path("state", "services", "notes.json"), "rb") as f:
            json.loads(f.read().decode("utf-8"))
        worker.close()

    def test_status_of_a_thousand_services_reaches_the_cli_whole(self):
        services = "".join('  s%04d:\n    start_command: ["true"]\n' % i for i in range(1000))
        self.start_controld(self.config(services))
        status = self.status()
        self.assertEqual(len(status["services"]), 1000)
        out = self.cli("status")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("s0999", out.stdout)

    def test_silent_connections_are_closed_and_never_lock_the_cli_out(self):
        self.controld_config = self.write("controld.yaml", self.config('  notes:\n    start_command: ["true"]\n'))
        self.controld_socket = self.path("controld.sock")
        # As few descriptors as a small nofile limit leaves.
        self.controld = self.spawn(["prlimit", "--nofile=200:200", CONTROLD, "serve", "--config",
                                    self.controld_config], "controld.log")
        wait_until(lambda: self.cli_ok("status"), 10, message="controld answering")
        idle = []
        for _ in range(400):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(self.controld_socket)
            idle.append(sock)
        out = self.cli("status", timeout=20)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        for sock in idle:
            sock.close()
        # A silent one is closed once its time for hello is up, saying why.
        silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        silent.connect(self.controld_socket)
        silent.settimeout(20)
        data = b""
        while True:
            chunk = silent.recv(4096)
            if not chunk:
                break
            data += chunk
        silent.close()
        self.assertIn(b"no hello within", data)
        self.assertTrue(self.controld.alive())

    def test_wakes_for_unknown_names_are_logged_and_kept_only_up_to_a_bound(self):
        self.start_controld(self.config('  notes:\n    start_command: ["true"]\n'))
        worker = Client(self.controld_socket)
        worker.send_raw(b"".join(b'{"type":"wake","service":"ghost-%d"}\n' % i for i in range(3000)))
        worker.send({"type": "subscribe"})
        worker.next(lambda m: m.get("type") == "synced")
        lines = [l for l in self.controld_log().splitlines() if "event=unknown_service" in l]
        self.assertLessEqual(len(lines), 1001)
        self.assertIn("further names are only counted", lines[-1])
        worker.close()

    def test_the_cli_reports_a_controld_that_hangs_up_instead_of_dying_of_sigpipe(self):
        path = self.path("fake.sock")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        server.listen(1)

        def serve():
            conn, _ = server.accept()
            conn.recv(4096)  # the hello
            conn.shutdown(socket.SHUT_RD)  # whatever the CLI writes next meets EPIPE
            conn.sendall(b'{"type":"welcome","version":1,"daemon":"fake"}\n')
            time.sleep(1)
            conn.close()

        thread = threading.Thread(target=serve)
        thread.start()
        out = subprocess.run([CONTROLD, "status", "--socket", path], capture_output=True, text=True, timeout=30)
        thread.join()
        server.close()
        self.assertEqual(out.returncode, 3, (out.returncode, out.stderr))
        self.assertIn("controld", out.stderr)

    def cli_as_nobody(self, *args):
        return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", CONTROLD] + list(args) +
                              ["--socket", self.controld_socket], capture_output=True, text=True, timeout=30)

    def test_only_admins_may_start_and_stop_others_may_watch_and_wake(self):
        if os.geteuid() != 0:
            self.fail("this test switches to user nobody: run it as root (as CI does)")
        marker = self.path("started")
        os.chmod(self.dir, 0o755)
        config = self.config("""  notes:
    start_command: ["touch", "{marker}"]
    stop_command: ["true"]
""".format(marker=marker), extra='socket_mode: "0666"\n')
        self.start_controld(config)
        out = self.cli_as_nobody("start", "notes")
        self.assertEqual(out.returncode, 1, out.stdout + out.stderr)
        self.assertIn("permission denied: controld start is for root", out.stderr)
        self.assertIn("uid 65534", out.stderr)
        self.assertEqual(self.cli_as_nobody("stop", "notes").returncode, 1)
        self.assertFalse(os.path.exists(marker))
        self.assertIn("event=command_refused verb=start service=notes uid=65534", self.controld_log())
        # Watching is for everyone who can connect.
        self.assertEqual(self.cli_as_nobody("status", "notes").returncode, 0)

        # Named in admin_users, nobody may.
        with open(self.controld_config, "a") as f:
            f.write("admin_users: [nobody]\n")
        self.controld.signal(signal.SIGHUP)
        wait_until(lambda: "event=reloaded" in self.controld_log(), 10, message="reloaded")
        out = self.cli_as_nobody("start", "notes", "--wait")
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertTrue(os.path.exists(marker))

    def test_commands_get_a_clean_environment_plus_what_the_config_names(self):
        dump = self.path("environment")
        self.start_controld(self.config("""  notes:
    start_command: ["sh", "-c", "env > {dump}"]
    environment: {{ MODEL: sdxl, CUDA_VISIBLE_DEVICES: "0" }}
""".format(dump=dump)), env={"SEMAPHORE_API_TOKEN": "secret-token-123", "SOME_PASSWORD": "hunter2"})
        self.assertEqual(self.cli("start", "notes", "--wait").returncode, 0)
        with open(dump) as f:
            env = dict(line.split("=", 1) for line in f.read().splitlines() if "=" in line)
        self.assertNotIn("SEMAPHORE_API_TOKEN", env)
        self.assertNotIn("SOME_PASSWORD", env)
        self.assertEqual(env["MODEL"], "sdxl")
        self.assertEqual(env["CUDA_VISIBLE_DEVICES"], "0")
        self.assertEqual(env["ONDEMAND_SERVICE"], "notes")
        self.assertIn("PATH", env)

    def test_credentials_in_urls_are_refused_for_semaphore_and_hidden_in_status(self):
        config = self.config("""  notes:
    health_url: http://probe:s3cret@127.0.0.1:{port}/healthz
    base_url: http://admin:hunter2@127.0.0.1:{port}/
""".format(port=free_port()))
        self.start_controld(config)
        service = self.status("notes")["services"][0]
        self.assertTrue(service["health_url"].startswith("http://***@127.0.0.1:"), service["health_url"])
        self.assertTrue(service["base_url"].startswith("http://***@127.0.0.1:"), service["base_url"])
        self.assertNotIn("s3cret", json.dumps(self.status()))
        self.assertNotIn("hunter2", self.cli("status", "notes").stdout)
        bad = self.write("bad.yaml", """semaphore:
  base_url: http://alice:wonderland@semaphore.internal:3000
  api_token: abc
services:
  vm:
    health_url: http://vm/health
    semaphore: {start_template_id: 3}
""")
        out = self.cli("check-config", "--config", bad)
        self.assertEqual(out.returncode, 2, out.stdout + out.stderr)
        self.assertIn("bad.yaml:2: semaphore.base_url: a URL with credentials", out.stderr)
        self.assertNotIn("wonderland", out.stderr)

    def controld_log(self):
        with open(self.path("controld.log")) as f:
            return f.read()


class PublicAnswersTest(ModuleTestCase):
    def test_ondemand_reasons_off_keeps_a_failure_reason_off_public_answers_but_not_off_the_cli(self):
        self.start_controld_with(["""  broken:
    health_url: http://127.0.0.1:%d/healthz
    start_command: ["/bin/sh", "-c", "echo 'PLAY [template 24] host gpu-07.internal' >&2; exit 3"]
""" % free_port()])
        proxy = "proxy_pass http://127.0.0.1:%d;" % free_port()
        self.start_front("location / { ondemand_service broken; %s }\n"
                         "location /open/ { ondemand_service broken; ondemand_reasons on; %s }\n" % (proxy, proxy),
                         server_extra="ondemand_reasons off;")
        hidden = self.get("/x")
        self.assertEqual(hidden.status, 502, hidden)
        self.assertEqual(json.loads(hidden.body)["error"], "start_failed")
        self.assertNotIn("PLAY", hidden.body)
        page = self.get("/x", headers={"Accept": "text/html"})
        self.assertEqual(page.status, 502)
        self.assertNotIn("gpu-07", page.body)
        self.assertNotIn("gpu-07", json.dumps(self.front_status()))
        shown = self.get("/open/x")
        self.assertIn("PLAY [template 24]", json.loads(shown.body)["reason"])
        self.assertIn("PLAY [template 24]", self.status("broken")["services"][0]["reason"])

if __name__ == "__main__":
    unittest.main()
