"""The Semaphore double behaves like the real Semaphore API, traps included.

controld's Semaphore tests are only worth something if the double refuses what
the real server refuses; these tests pin that down with plain http.client.
"""
import http.client
import json
import os
import subprocess
import sys
import threading
import time
import unittest

from harness import OndemandTestCase, free_port, wait_until
from semaphore_double import DEFAULT_TOKEN, SemaphoreDouble

DOUBLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support", "semaphore_double.py")
AUTH = {"Authorization": "Bearer " + DEFAULT_TOKEN}


def call(port, method, path, body=None, headers=None, auth=True):
    """Returns (status, lower-cased headers, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    h = dict(AUTH) if auth else {}
    h.update(headers or {})
    if body is not None and not isinstance(body, (str, bytes)):
        body = json.dumps(body)
        h.setdefault("Content-Type", "application/json")
    try:
        conn.request(method, path, body=body, headers=h)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


class DoubleTestCase(unittest.TestCase):
    templates = [
        {"id": 22, "name": "start comfyui", "run": "succeed", "after_ms": 150},
        {"id": 23, "name": "stop comfyui", "run": "fail", "after_ms": 50},
        {"id": 24, "name": "stuck", "run": "hang"},
        {"id": 31, "project_id": 2, "name": "other project"},
    ]

    def setUp(self):
        self.double = SemaphoreDouble(templates=self.templates, queue_delay_ms=50,
                                      users={"alice": {"password": "wonderland"},
                                             "gail": {"password": "guest-pass", "role": "guest"}}).start()
        self.double.add_token(DEFAULT_TOKEN)
        self.port = self.double.port

    def tearDown(self):
        self.double.stop()

    def call(self, method, path, body=None, headers=None, auth=True):
        return call(self.port, method, path, body, headers, auth)

    def run_task(self, template_id, **fields):
        body = dict(template_id=template_id, **fields)
        status, _, data = self.call("POST", "/api/project/1/tasks", body)
        self.assertEqual(status, 201, data)
        return json.loads(data)

    def status_of(self, task_id):
        status, _, data = self.call("GET", "/api/project/1/tasks/%d" % task_id)
        self.assertEqual(status, 200)
        return json.loads(data)["status"]


class AuthenticationTest(DoubleTestCase):
    def test_ping_answers_pong_in_plain_text_without_auth(self):
        status, headers, body = self.call("GET", "/api/ping", auth=False)
        self.assertEqual((status, body), (200, b"pong"))
        self.assertTrue(headers["content-type"].startswith("text/plain"))

    def test_missing_or_wrong_token_is_401_with_an_empty_body(self):
        for headers in ({}, {"Authorization": "Bearer not-the-token"}, {"Authorization": DEFAULT_TOKEN}):
            status, _, body = self.call("GET", "/api/info", headers=headers, auth=False)
            self.assertEqual((status, body), (401, b""), headers)

    def test_the_bearer_scheme_is_case_insensitive(self):
        status, _, body = self.call("GET", "/api/info", headers={"Authorization": "bearer " + DEFAULT_TOKEN},
                                    auth=False)
        self.assertEqual(status, 200)
        self.assertTrue(json.loads(body)["version"].startswith("v2.10"))

    def test_login_sets_a_session_cookie_that_authenticates_later_calls(self):
        status, headers, body = self.call("POST", "/api/auth/login", {"auth": "alice", "password": "wonderland"},
                                          auth=False)
        self.assertEqual((status, body), (204, b""))
        cookie = headers["set-cookie"].split(";")[0]
        self.assertTrue(cookie.startswith("semaphore="))
        status, _, _ = self.call("GET", "/api/info", headers={"Cookie": cookie}, auth=False)
        self.assertEqual(status, 200)
        # by e-mail address too
        status, _, _ = self.call("POST", "/api/auth/login", {"auth": "alice@example.com", "password": "wonderland"},
                                 auth=False)
        self.assertEqual(status, 204)

        self.double.expire_sessions()
        status, _, body = self.call("GET", "/api/info", headers={"Cookie": cookie}, auth=False)
        self.assertEqual((status, body), (401, b""))

    def test_bad_credentials_are_401_with_an_empty_body(self):
        status, headers, body = self.call("POST", "/api/auth/login", {"auth": "alice", "password": "nope"},
                                          auth=False)
        self.assertEqual((status, body), (401, b""))
        self.assertNotIn("set-cookie", headers)

    def test_a_guest_may_read_but_not_run_or_stop_tasks(self):
        _, headers, _ = self.call("POST", "/api/auth/login", {"auth": "gail", "password": "guest-pass"}, auth=False)
        cookie = {"Cookie": headers["set-cookie"].split(";")[0]}
        self.assertEqual(self.call("GET", "/api/project/1/templates", headers=cookie, auth=False)[0], 200)
        status, _, body = self.call("POST", "/api/project/1/tasks", {"template_id": 22}, headers=cookie, auth=False)
        self.assertEqual((status, body), (403, b""))
        task = self.run_task(22)
        status, _, body = self.call("POST", "/api/project/1/tasks/%d/stop" % task["id"], {"force": False},
                                    headers=cookie, auth=False)
        self.assertEqual((status, body), (403, b""))


class RunTaskTest(DoubleTestCase):
    def test_a_task_is_created_waiting_with_the_fields_sent(self):
        env = json.dumps({"service_id": "comfyui", "machine_id": "gpu-01", "action": "start"})
        task = self.run_task(22, environment=env, limit="gpu-01", message="ondemand: start comfyui")
        self.assertEqual(task["status"], "waiting")
        self.assertEqual((task["template_id"], task["project_id"]), (22, 1))
        self.assertEqual(task["environment"], env)
        self.assertEqual(task["limit"], "gpu-01")
        self.assertEqual(task["message"], "ondemand: start comfyui")
        self.assertIsNone(task["start"])
        self.assertIsNone(task["end"])
        self.assertRegex(task["created"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z$")

    def test_an_environment_object_instead_of_a_string_is_400_with_an_empty_body(self):
        status, _, body = self.call("POST", "/api/project/1/tasks", {"template_id": 22,
                                                                     "environment": {"service_id": "x"}})
        self.assertEqual((status, body), (400, b""))
        self.assertEqual(self.double.all_tasks(), [])

    def test_fields_of_the_wrong_type_are_400_with_an_empty_body(self):
        for body in ({"template_id": "22"}, {"template_id": 22.5}, {"template_id": 22, "limit": ["a"]},
                     {"template_id": 22, "debug": "yes"}, {"template_id": 22, "message": 5}, [22], "not json",
                     ""):
            status, _, data = self.call("POST", "/api/project/1/tasks", body)
            self.assertEqual((status, data), (400, b""), body)

    def test_unknown_fields_are_ignored(self):
        self.assertEqual(self.run_task(22, colour="blue")["status"], "waiting")

    def test_invalid_json_inside_the_environment_is_500_after_creating_an_errored_task(self):
        status, _, body = self.call("POST", "/api/project/1/tasks", {"template_id": 22, "environment": "{oops"})
        self.assertEqual((status, body), (500, b""))
        tasks = self.double.all_tasks()
        self.assertEqual(len(tasks), 1)
        self.assertEqual(tasks[0]["status"], "error")
        status, _, body = self.call("GET", "/api/project/1/tasks/%d/output" % tasks[0]["id"])
        self.assertEqual((status, body), (200, b"null"))

    def test_unknown_missing_or_foreign_templates_are_500_with_an_empty_body(self):
        for body in ({"template_id": 99}, {}, {"template_id": 31}, {"template_id": None}):
            status, _, data = self.call("POST", "/api/project/1/tasks", body)
            self.assertEqual((status, data), (500, b""), body)

    def test_an_unknown_project_is_404_with_an_empty_body(self):
        status, _, body = self.call("POST", "/api/project/7/tasks", {"template_id": 22})
        self.assertEqual((status, body), (404, b""))

    def test_a_template_without_an_environment_refuses_environment_values(self):
        self.double.add_template({"id": 40, "environment_id": None})
        status, _, body = self.call("POST", "/api/project/1/tasks", {"template_id": 40, "environment": "{}"})
        self.assertEqual((status, body), (500, b""))
        self.assertEqual(self.run_task(40, environment="")["status"], "waiting")

    def test_an_error500_template_answers_500_and_creates_nothing(self):
        self.double.add_template({"id": 41, "run": "error500"})
        status, _, body = self.call("POST", "/api/project/1/tasks", {"template_id": 41})
        self.assertEqual((status, body), (500, b""))
        self.assertEqual(self.double.all_tasks(), [])


class FollowTaskTest(DoubleTestCase):
    def test_a_task_goes_waiting_starting_running_success(self):
        task = self.run_task(22)
        seen = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status = self.status_of(task["id"])
            if not seen or seen[-1] != status:
                seen.append(status)
            if status == "success":
                break
            time.sleep(0.005)
        self.assertEqual(seen[0], "waiting")
        self.assertEqual(seen[-1], "success")
        self.assertIn("running", seen)
        self.assertTrue(set(seen) <= {"waiting", "starting", "running", "success"}, seen)
        final = json.loads(self.call("GET", "/api/project/1/tasks/%d" % task["id"])[2])
        self.assertIsNotNone(final["start"])
        self.assertIsNotNone(final["end"])

    def test_a_failed_task_has_coloured_output_lines_ending_with_the_exit_status(self):
        task = self.run_task(23, limit="gpu-01")
        self.double.wait_task(task["id"])
        self.assertEqual(self.status_of(task["id"]), "error")
        status, headers, body = self.call("GET", "/api/project/1/tasks/%d/output" % task["id"])
        self.assertEqual(status, 200)
        lines = json.loads(body)
        self.assertEqual(set(lines[0]), {"task_id", "task", "time", "output"})
        self.assertEqual(lines[0]["task_id"], task["id"])
        text = [line["output"] for line in lines]
        self.assertEqual(text[-1], "Running app failed: exit status 2")
        self.assertTrue(any("\x1b[0;31mfatal: [gpu-01]" in t for t in text), text)

    def test_scripted_output_and_exit_status(self):
        self.double.add_template({"id": 42, "run": "fail", "after_ms": 0, "exit_status": 4,
                                  "output": ["\x1b[31mdisk full\x1b[0m"]})
        task = self.double.wait_task(self.run_task(42)["id"])
        self.assertEqual(task["output"][-2:], ["\x1b[31mdisk full\x1b[0m", "Running app failed: exit status 4"])

    def test_intermediate_statuses_can_be_scripted(self):
        self.double.add_template({"id": 43, "statuses": ["waiting_confirmation", "confirmed"], "status_ms": 300})
        task = self.run_task(43)
        self.double.wait_task(task["id"], ("waiting_confirmation",), timeout=5)
        self.assertEqual(self.double.wait_task(task["id"])["status"], "success")

    def test_an_unknown_task_id_is_400_with_an_empty_body(self):
        for path in ("/api/project/1/tasks/999", "/api/project/1/tasks/999/output", "/api/project/1/tasks/abc"):
            status, _, body = self.call("GET", path)
            self.assertEqual((status, body), (400, b""), path)

    def test_a_template_never_runs_two_tasks_at_once(self):
        first, second = self.run_task(22), self.run_task(22)
        self.double.wait_task(first["id"], ("running",))
        self.assertEqual(self.status_of(second["id"]), "waiting")
        first = self.double.wait_task(first["id"])
        second = self.double.wait_task(second["id"])
        self.assertGreaterEqual(second["start"], first["end"])


class TaskListTest(DoubleTestCase):
    def test_the_last_tasks_are_listed_newest_first_with_environment_message_and_template_fields(self):
        env = json.dumps({"service_id": "comfyui", "ondemand_operation": "comfyui-1-0badf00d"})
        first = self.run_task(22, environment=env, message="ondemand: start comfyui")
        second = self.run_task(23)
        status, _, body = self.call("GET", "/api/project/1/tasks/last")
        self.assertEqual(status, 200)
        tasks = json.loads(body)
        self.assertEqual([t["id"] for t in tasks], [second["id"], first["id"]])
        listed = tasks[1]
        self.assertEqual((listed["environment"], listed["message"], listed["template_id"]),
                         (env, "ondemand: start comfyui", 22))
        self.assertEqual((listed["tpl_alias"], listed["tpl_app"], listed["user_name"]), ("start comfyui", "ansible",
                                                                                        "admin"))
        for key in first:  # every field of the task object, and the status as it is now
            self.assertIn(key, listed)
        self.assertEqual(self.call("GET", "/api/project/2/tasks/last")[::2], (200, b"[]"))
        self.assertEqual(self.call("GET", "/api/project/1/tasks/last", auth=False)[::2], (401, b""))

    def test_the_last_tasks_are_at_most_200_all_tasks_at_most_1000(self):
        ids = self.double.add_history(22, count=1001, created="2024-10-25T08:00:00.000Z")
        status, _, body = self.call("GET", "/api/project/1/tasks/last")
        self.assertEqual([t["id"] for t in json.loads(body)], ids[::-1][:200])
        status, _, body = self.call("GET", "/api/project/1/tasks")
        self.assertEqual([t["id"] for t in json.loads(body)], ids[::-1][:1000])
        self.assertEqual(json.loads(body)[0]["created"], "2024-10-25T08:00:00.000Z")
        self.assertEqual(json.loads(body)[0]["status"], "success")


class LostAnswerTest(DoubleTestCase):
    def test_an_answer_delay_holds_the_answer_after_the_task_was_created(self):
        self.double.configure(answer_delay_ms=600)
        started = time.monotonic()
        result = {}
        thread = threading.Thread(target=lambda: result.update(task=self.run_task(22)))
        thread.start()
        wait_until(lambda: self.double.all_tasks(), 2, message="the task created")
        self.assertLess(time.monotonic() - started, 0.5)
        self.assertIsNone(self.double.requests("/api/project/1/tasks")[0]["status"])  # not answered yet
        thread.join(5)
        self.assertGreaterEqual(time.monotonic() - started, 0.6)
        self.assertEqual(result["task"]["id"], 1)

    def test_a_dropped_task_post_creates_nothing_and_gets_no_answer(self):
        self.double.configure(drop_task_posts=True)
        with self.assertRaises(http.client.RemoteDisconnected):
            self.call("POST", "/api/project/1/tasks", {"template_id": 22})
        self.assertEqual(self.double.all_tasks(), [])
        self.assertIsNone(self.double.requests()[0]["status"])
        self.assertEqual(self.call("GET", "/api/project/1/tasks/last")[::2], (200, b"[]"))  # only POSTs are dropped
        self.double.configure(drop_task_posts=False)
        self.assertEqual(self.run_task(22)["id"], 1)


class StopTaskTest(DoubleTestCase):
    def stop(self, task_id, body):
        return self.call("POST", "/api/project/1/tasks/%d/stop" % task_id, body)

    def test_stop_needs_a_force_body(self):
        task = self.run_task(24)
        for body in ("", "{oops", {"force": "no"}):
            status, _, data = self.stop(task["id"], body)
            self.assertEqual((status, data), (400, b""), body)
        self.assertEqual(self.status_of(task["id"]), "waiting")

    def test_a_running_task_stopped_without_force_ends_as_error(self):
        task = self.run_task(24)
        self.double.wait_task(task["id"], ("running",))
        status, _, body = self.stop(task["id"], {"force": False})
        self.assertEqual((status, body), (204, b""))
        self.assertEqual(self.double.wait_task(task["id"])["status"], "error")

    def test_a_running_task_stopped_with_force_ends_as_stopped(self):
        task = self.run_task(24)
        self.double.wait_task(task["id"], ("running",))
        self.assertEqual(self.stop(task["id"], {"force": True})[0], 204)
        self.assertEqual(self.double.wait_task(task["id"])["status"], "stopped")

    def test_stopping_a_finished_task_overwrites_its_status(self):
        task = self.double.wait_task(self.run_task(22)["id"])
        self.assertEqual(task["status"], "success")
        self.assertEqual(self.stop(task["id"], {"force": False})[0], 204)
        self.assertEqual(self.status_of(task["id"]), "stopped")

    def test_stopping_an_unknown_task_is_400(self):
        self.assertEqual(self.stop(999, {"force": False})[::2], (400, b""))


class TemplatesAndPathsTest(DoubleTestCase):
    def test_templates_of_a_project(self):
        status, _, body = self.call("GET", "/api/project/1/templates")
        self.assertEqual(status, 200)
        self.assertEqual([t["id"] for t in json.loads(body)], [22, 23, 24])
        status, _, body = self.call("GET", "/api/project/1/templates/22")
        self.assertEqual(json.loads(body)["name"], "start comfyui")
        for path in ("/api/project/1/templates/99", "/api/project/1/templates/31"):
            self.assertEqual(self.call("GET", path)[::2], (404, b""), path)

    def test_an_unknown_api_path_is_404_not_found(self):
        status, headers, body = self.call("GET", "/api/nothing/here")
        self.assertEqual((status, body), (404, b"Not Found"))
        self.assertTrue(headers["content-type"].startswith("text/plain"))

    def test_every_api_request_is_recorded_with_its_exact_body(self):
        raw = '{"template_id": 22, "environment": "{\\"a\\": 1}"}'
        self.call("POST", "/api/project/1/tasks", raw, headers={"Content-Type": "application/json"})
        self.call("GET", "/api/ping", auth=False)
        log = self.double.requests()
        self.assertEqual([(r["method"], r["path"], r["status"]) for r in log],
                         [("POST", "/api/project/1/tasks", 201), ("GET", "/api/ping", 200)])
        self.assertEqual(log[0]["body"], raw)
        self.assertEqual(log[0]["headers"]["authorization"], "Bearer " + DEFAULT_TOKEN)
        self.assertEqual(log[0]["headers"]["content-type"], "application/json")


class CommandTemplateTest(DoubleTestCase):
    def test_a_command_template_sees_the_environment_and_maps_its_exit_status(self):
        script = "import os,sys; print('env', os.environ['SEMAPHORE_TASK_ENVIRONMENT']); sys.exit(int(sys.argv[1]))"
        self.double.add_template({"id": 50, "run": "command", "argv": [sys.executable, "-c", script, "0"]})
        self.double.add_template({"id": 51, "run": "command", "argv": [sys.executable, "-c", script, "3"]})
        ok = self.double.wait_task(self.run_task(50, environment='{"k":"v"}')["id"])
        self.assertEqual(ok["status"], "success")
        self.assertIn('env {"k":"v"}', ok["output"])
        bad = self.double.wait_task(self.run_task(51)["id"])
        self.assertEqual(bad["status"], "error")
        self.assertEqual(bad["output"][-1], "Running app failed: exit status 3")

    def test_stopping_a_command_template_ends_its_process(self):
        self.double.add_template({"id": 52, "run": "command", "argv": ["sleep", "60"]})
        task = self.run_task(52)
        self.double.wait_task(task["id"], ("running",))
        wait_until(lambda: self.double.tasks[task["id"]].process is not None, 5, message="process started")
        self.call("POST", "/api/project/1/tasks/%d/stop" % task["id"], {"force": False})
        self.assertEqual(self.double.wait_task(task["id"], timeout=5)["status"], "error")


class SeparateProcessTest(OndemandTestCase):
    """The way controld's end-to-end tests use it: a process, scripted over HTTP."""

    def test_command_line_and_admin_endpoints(self):
        port_file = self.path("port")
        proc = self.spawn([sys.executable, DOUBLE, "--port", "0", "--port-file", port_file, "--token", "tok",
                           "--user", "bob:secret", "--queue-delay-ms", "0",
                           "--template", json.dumps({"id": 5, "run": "succeed", "after_ms": 10})], "double.log")
        wait_until(lambda: os.path.exists(port_file) or not proc.alive(), 10, message="port file")
        with open(port_file) as f:
            port = int(f.read())
        auth = {"Authorization": "Bearer tok"}
        status, _, body = call(port, "POST", "/api/project/1/tasks", {"template_id": 5}, headers=auth, auth=False)
        self.assertEqual(status, 201)
        task_id = json.loads(body)["id"]
        status, _, _ = call(port, "POST", "/api/auth/login", {"auth": "bob", "password": "secret"}, auth=False)
        self.assertEqual(status, 204)

        status, _, _ = call(port, "PUT", "/__double/templates/6", {"run": "hang", "name": "stuck"}, auth=False)
        self.assertEqual(status, 200)
        status, _, body = call(port, "GET", "/api/project/1/templates/6", headers=auth, auth=False)
        self.assertEqual(json.loads(body)["name"], "stuck")
        status, _, body = call(port, "PUT", "/__double/templates/7", {"run": "fly"}, auth=False)
        self.assertEqual(status, 400)
        self.assertIn("run must be one of", json.loads(body)["error"])

        log = json.loads(call(port, "GET", "/__double/requests", auth=False)[2])
        self.assertEqual([r["path"] for r in log], ["/api/project/1/tasks", "/api/auth/login",
                                                     "/api/project/1/templates/6"])
        self.assertEqual(json.loads(log[0]["body"]), {"template_id": 5})
        self.assertEqual(call(port, "DELETE", "/__double/requests", auth=False)[0], 204)
        self.assertEqual(json.loads(call(port, "GET", "/__double/requests", auth=False)[2]), [])

        wait_until(lambda: json.loads(call(port, "GET", "/__double/tasks", auth=False)[2])[0]["status"] == "success",
                   10, message="task success")
        status, _, body = call(port, "POST", "/__double/tasks", {"template_id": 5, "count": 2, "status": "error"},
                               auth=False)
        self.assertEqual((status, json.loads(body)), (200, [task_id + 1, task_id + 2]))
        self.assertEqual(call(port, "POST", "/__double/tasks", {"template_id": 99}, auth=False)[0], 400)
        self.assertEqual(call(port, "POST", "/__double/config", {"answer_delay_ms": 0, "drop_task_posts": False},
                              auth=False)[0], 204)
        self.assertEqual(call(port, "POST", "/__double/config", {"tokens": []}, auth=False)[0], 204)
        self.assertEqual(call(port, "GET", "/api/info", headers=auth, auth=False)[0], 401)
        self.assertEqual(proc.stop(), 0)
        self.assertIn("semaphore double listening on http://127.0.0.1:%d" % port, proc.output())


class AnsibleTemplateTest(OndemandTestCase):
    """A template backed by a real ansible-playbook run (about 3 s each)."""

    def test_start_and_stop_templates_run_the_sample_playbooks(self):
        if subprocess.run(["which", "ansible-playbook"], capture_output=True).returncode != 0:
            self.skipTest("ansible-playbook is not installed")
        double = SemaphoreDouble(queue_delay_ms=0, templates=[
            {"id": 1, "name": "start sample", "run": "playbook", "playbook": "start_sample.yml"},
            {"id": 2, "name": "stop sample", "run": "playbook", "playbook": "stop_sample.yml"},
        ]).start()
        self.addCleanup(double.stop)
        self.addCleanup(self.stop_sample, "sample")
        port = free_port()
        pidfile = self.path("sample.pid")

        def run(template_id, action):
            env = {"service_id": "sample", "machine_id": "localhost", "action": action, "sample_port": port,
                   "sample_pidfile": pidfile}
            status, _, body = call(double.port, "POST", "/api/project/1/tasks",
                                   {"template_id": template_id, "environment": json.dumps(env), "limit": "localhost",
                                    "message": "test"})
            self.assertEqual(status, 201)
            return double.wait_task(json.loads(body)["id"], timeout=60)

        started = run(1, "start")
        self.assertEqual(started["status"], "success", "\n".join(started["output"]))
        self.assertTrue(self.sample_running("sample"))
        status, _, body = call(port, "GET", "/", auth=False)
        self.assertEqual(status, 200)
        self.assertIn(b"hello from sample", body)
        self.assertTrue(any("\x1b[" in line for line in started["output"]), "Ansible's colours are kept")
        self.assertTrue(any("TASK [start the sample service]" in line for line in started["output"]))

        stopped = run(2, "stop")
        self.assertEqual(stopped["status"], "success", "\n".join(stopped["output"]))
        self.assertFalse(self.sample_running("sample"))
        with self.assertRaises(OSError):
            call(port, "GET", "/", auth=False)

        # A failing playbook (the assertion on `action`) is a task with status error.
        failed = run(1, "stop")
        self.assertEqual(failed["status"], "error")
        self.assertTrue(failed["output"][-1].startswith("Running app failed: exit status"), failed["output"][-3:])
        self.assertFalse(self.sample_running("sample"))


if __name__ == "__main__":
    unittest.main()
