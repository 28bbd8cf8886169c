#!/usr/bin/env python3
"""A stand-in for the Ansible Semaphore UI HTTP API, for controld's tests.

No Semaphore server can run where the tests run, so this double answers the
part of the API controld uses the way the real server (v2.10 line) does,
including its traps: the task's `environment` must be a JSON *string* (an
object is a 400), an unknown template is a 500 with an empty body (not a 404),
an unknown task id is a 400, 401/403 carry no body, `stop` needs a
`{"force": ...}` body, stopping a finished task overwrites its status with
`stopped`, and one template never runs two tasks at once.

Task lists (GET /api/project/{pid}/tasks, at most 1000, and .../tasks/last, at
most 200) hold the task objects with the template's tpl_playbook, tpl_alias,
tpl_type, tpl_app and the user_name, newest first: Semaphore sorts them by id
descending, although its API description calls the order chronological.

Live updates: GET /api/ws (Bearer token or session cookie) upgrades to a
WebSocket on which every status change of every task is announced as
{"type": "update", "task_id", "status", "project_id", "template_id", "start",
"end" (may still be null), "version"}, and every output line as
{"type": "log", ...}, as Semaphore does. Nothing is replayed to a new
connection. Client frames must be masked; pings are answered. With websocket
switched off (see /__double/config) the endpoint answers 400 "Bad Request",
as Semaphore does behind a proxy that drops the Upgrade headers.

Command line (for tests that run it as a separate process):

  semaphore_double.py [--host 127.0.0.1] [--port 0] [--port-file FILE]
                      [--token TOKEN]... [--user NAME:PASSWORD[:ROLE]]...
                      [--project ID]... [--template JSON]...
                      [--queue-delay-ms 200] [--response-delay-ms 0]
                      [--answer-delay-ms 0]

  --port 0 picks a free port; the port is written to --port-file (atomically,
  so a reader never sees a partial file) and the line
  "semaphore double listening on http://HOST:PORT" goes to stdout.
  Without --token and --user, the token DEFAULT_TOKEN below is accepted.
  ROLE is owner (default), manager, task_runner or guest (read only).
  Templates are JSON objects, see "Templates" below. SIGTERM/SIGINT stop it.

  --response-delay-ms holds every /api request that long before it is
  handled (a slow Semaphore: a task is created only after the delay).
  --answer-delay-ms holds the answer to a task-creating POST that long after
  the task was created (an answer slow on its way back).

In-process (unittest):

  double = SemaphoreDouble(templates=[{"id": 22, "run": "succeed"}])
  double.start()                 # serves on a thread; double.url, double.port
  ...
  double.requests()              # every /api request: method, path, headers, body
  double.websockets()            # live-update connections; close_websockets()
  double.inject_fault("GET", r"/api/project/1/tasks/\d+", "endless")
                                 # broken answers: garbage, 500, huge (100 MB),
                                 # endless; clear_faults(), fault_hits(fault)
  double.stop()

Templates (JSON objects; unknown keys are rejected):

  id            template id (required)
  project_id    default 1
  name          default "template <id>"
  run           what a task of this template does:
                  "succeed"  status success after `after_ms`
                  "fail"     status error after `after_ms`; `output` lines, then
                             "Running app failed: exit status <exit_status>"
                  "hang"     runs until it is stopped (a stuck playbook, or a
                             Semaphore restarted under a running task)
                  "error500" POST .../tasks answers 500 with an empty body and
                             creates nothing
                  "command"  runs `argv` (a list); the task's environment is in
                             $SEMAPHORE_TASK_ENVIRONMENT, its id in
                             $SEMAPHORE_TASK_ID; exit status 0 = success;
                             stdout+stderr become the output lines
                  "playbook" runs the real ansible-playbook on `playbook` (a
                             path, relative ones are taken from the playbooks/
                             directory beside this file) with the task's
                             environment as --extra-vars and its limit as
                             --limit; the inventory holds one host (the limit,
                             or localhost) with a local connection; colours on,
                             as under Semaphore's pty
  after_ms      how long "succeed"/"fail" run, default 300
  output        output lines of "succeed"/"fail" (ANSI codes allowed; a
                realistic Ansible log is made up when omitted)
  exit_status   for "fail", default 2
  statuses      statuses the task passes through after "starting", before
                "running" (e.g. ["waiting_confirmation", "confirmed"]), each
                for `status_ms` (default 100)
  environment_id  the template's environment (default 1); null reproduces a
                template without one: then a non-empty task environment is a
                500, as in some Semaphore versions

Admin endpoints (JSON; not recorded in the request log, no auth):

  GET    /__double/requests          the request log (list, oldest first)
  DELETE /__double/requests          clears it
  GET    /__double/tasks             every task, with an extra "output" list
  POST   /__double/tasks             adds finished tasks to the history without
                                      running them: {"template_id", "count"
                                      (default 1), "status" (default
                                      "success"), "created" (default now),
                                      "environment", "message"}
  PUT    /__double/templates/ID      creates or replaces a template (body as above)
  DELETE /__double/templates/ID      removes it
  POST   /__double/config            {"queue_delay_ms", "response_delay_ms",
                                      "answer_delay_ms", "drop_task_posts":
                                      true/false, "tokens": [...], "users":
                                      {"name": {"password", "role"}},
                                      "websocket": true/false,
                                      "task_post_answer": "500" | "truncated"
                                      | ""} (any subset)
                                      drop_task_posts: a task-creating POST
                                      creates nothing and its connection is
                                      closed without an answer (after the
                                      response delay): a request lost on the
                                      way. task_post_answer: the task is
                                      created, its answer replaced by a 500 or
                                      cut in half. Delays and dropping apply
                                      to the requests that arrive afterwards.
  POST   /__double/sessions/expire   forgets every login session (the next
                                      call with a cookie gets 401)
  GET    /__double/websockets        {"connections", "pings", "pongs"}: live-
                                      update connections now, pings and
                                      pongs their clients sent
  POST   /__double/websockets/close  drops every live-update connection
                                      without a close frame (a restart)
  POST   /__double/websockets/ping   pings every live-update connection
  POST   /__double/websockets/send   {"text", "repeat"}: sends text repeated that
                                      many times as one text frame, JSON or not

A request log entry: {"method", "path" (with the query), "headers" (names
lower-cased), "body" (text), "status" (what the double answered; null while
it has not, or when it dropped the request), "time"}.
"""
import argparse
import base64
import datetime
import hashlib
import itertools
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# 44 characters, like the tokens Semaphore hands out.
DEFAULT_TOKEN = "kq3zk0hx0m2ccwhp4rvtsxosw8abwc5a3rwnfzc8vmgq"
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PLAYBOOK_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "playbooks")
FINISHED = ("success", "error", "stopped")
ROLES = ("owner", "manager", "task_runner", "guest")
TEMPLATE_KEYS = {"id", "project_id", "name", "run", "after_ms", "output", "exit_status", "statuses", "status_ms",
                 "environment_id", "argv", "playbook", "playbook_name"}
RUNS = ("succeed", "fail", "hang", "error500", "command", "playbook")

GREEN, YELLOW, RED, RESET = "\x1b[0;32m", "\x1b[0;33m", "\x1b[0;31m", "\x1b[0m"


def now_iso():
    t = datetime.datetime.now(datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (t.microsecond // 1000)


class BadTemplate(ValueError):
    pass


class Template:
    def __init__(self, spec):
        if not isinstance(spec, dict):
            raise BadTemplate("a template is a JSON object")
        unknown = set(spec) - TEMPLATE_KEYS
        if unknown:
            raise BadTemplate("unknown template keys: %s" % ", ".join(sorted(unknown)))
        if not isinstance(spec.get("id"), int) or spec["id"] <= 0:
            raise BadTemplate("a template needs a positive integer id")
        self.id = spec["id"]
        self.project_id = spec.get("project_id", 1)
        self.name = spec.get("name", "template %d" % self.id)
        self.run = spec.get("run", "succeed")
        if self.run not in RUNS:
            raise BadTemplate("run must be one of %s" % ", ".join(RUNS))
        self.after_ms = spec.get("after_ms", 300)
        self.output = spec.get("output")
        self.exit_status = spec.get("exit_status", 2)
        self.statuses = list(spec.get("statuses", []))
        self.status_ms = spec.get("status_ms", 100)
        self.environment_id = spec.get("environment_id", 1)
        self.argv = spec.get("argv")
        self.playbook = spec.get("playbook")
        if self.run == "command" and not (isinstance(self.argv, list) and self.argv):
            raise BadTemplate("run \"command\" needs argv, a non-empty list")
        if self.run == "playbook":
            if not isinstance(self.playbook, str):
                raise BadTemplate("run \"playbook\" needs playbook, a path")
            if not os.path.isabs(self.playbook):
                self.playbook = os.path.join(PLAYBOOK_DIR, self.playbook)

    def to_api(self):
        return {
            "id": self.id,
            "project_id": self.project_id,
            "inventory_id": 1,
            "repository_id": 1,
            "environment_id": self.environment_id,
            "view_id": None,
            "name": self.name,
            "playbook": os.path.basename(self.playbook) if self.playbook else "%s.yml" % self.run,
            "arguments": "[]",
            "description": "",
            "allow_override_args_in_task": False,
            "suppress_success_alerts": False,
            "app": "ansible",
            "git_branch": None,
            "survey_vars": [],
            "type": "",
            "start_version": None,
            "build_template_id": None,
            "autorun": False,
            "vaults": [],
        }


class Task:
    """One task row. Mutated only with SemaphoreDouble._cond held."""

    def __init__(self, task_id, template, fields, user_id, announce=None):
        self.id = task_id
        self.template = template
        self.project_id = template.project_id
        self.announce = announce  # called with a live-update message (a dict)
        self._status = "waiting"
        self.fields = fields
        self.user_id = user_id
        self.created = now_iso()
        self.created_mono = time.monotonic()
        self.start = None
        self.end = None
        self.output = []  # [(time, line)]
        self.stop_requested = False
        self.force = False
        self.process = None

    def to_api(self):
        f = self.fields
        return {
            "id": self.id,
            "template_id": self.template.id,
            "project_id": self.project_id,
            "status": self.status,
            "debug": f.get("debug") or False,
            "dry_run": f.get("dry_run") or False,
            "diff": f.get("diff") or False,
            "playbook": f.get("playbook") or "",
            "environment": f.get("environment") or "",
            "secret": "",
            "limit": f.get("limit") or "",
            "git_branch": f.get("git_branch"),
            "user_id": self.user_id,
            "integration_id": None,
            "schedule_id": None,
            "created": self.created,
            "start": self.start,
            "end": self.end,
            "message": f.get("message") or "",
            "commit_hash": None,
            "commit_message": "",
            "build_task_id": None,
            "version": None,
            "inventory_id": f.get("inventory_id"),
            "arguments": f.get("arguments"),
            "params": {},
        }

    @property
    def status(self):
        return self._status

    @status.setter
    def status(self, value):
        changed = value != self._status
        self._status = value
        if changed and self.announce:
            # What Semaphore's TaskRunner sends on /api/ws at every status change
            # (`end` is written slightly after the status, so it may be null).
            self.announce({"type": "update", "start": self.start, "end": self.end, "status": value,
                           "task_id": self.id, "template_id": self.template.id, "project_id": self.project_id,
                           "version": None})

    def log(self, line):
        when = now_iso()
        self.output.append((when, line))
        if self.announce:
            self.announce({"type": "log", "output": line, "time": when, "task_id": self.id,
                           "project_id": self.project_id})


# Fields of POST /api/project/{pid}/tasks and their JSON types, as Go's
# decoder checks them: a value of another type is a 400, null is allowed.
TASK_FIELDS = {
    "template_id": int, "environment": str, "limit": str, "message": str, "debug": bool, "dry_run": bool,
    "diff": bool, "playbook": str, "secret": str, "git_branch": str, "arguments": str, "inventory_id": int,
    "build_task_id": int, "version": str, "hosts_limit": str,
}


def reject_constant(name):
    raise ValueError("%s is not JSON" % name)


def go_type_ok(value, kind):
    if value is None:
        return True
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool) and -2**63 <= value < 2**63
    if kind is bool:
        return isinstance(value, bool)
    return isinstance(value, kind)


def decode_go_struct(body, fields):
    """Like json.Unmarshal into a Go struct: None when Go would refuse."""
    try:
        data = json.loads(body, parse_constant=reject_constant)
    except ValueError:
        return None
    if data is None:
        return {}
    if not isinstance(data, dict):
        return None
    out = {}
    for key, value in data.items():
        name = key.lower()  # Go matches field names case-insensitively
        if name in fields:
            if not go_type_ok(value, fields[name]):
                return None
            out[name] = value
    return out


class Reply:
    def __init__(self, status, body=b"", content_type=None, headers=()):
        self.status = status
        if isinstance(body, str):
            body = body.encode()
        elif not isinstance(body, bytes):
            body = json.dumps(body, separators=(",", ":")).encode()
            content_type = content_type or "application/json"
        self.body = body
        self.content_type = content_type
        self.headers = list(headers)


EMPTY_400, EMPTY_401, EMPTY_403, EMPTY_404, EMPTY_500 = (Reply(s) for s in (400, 401, 403, 404, 500))
DROP = Reply(0)  # no answer: the connection is closed

FAULT_MODES = ("garbage", "500", "huge", "endless")
HUGE_BYTES = 100 * 1024 * 1024


class FaultReply(Reply):
    """An answer a broken Semaphore (or whatever sits on its address) gives:
    garbage  200 with bytes that are no JSON
    500      500 with a text body
    huge     200 with a 100 MB JSON-looking body, sent as fast as it is read
    endless  200, chunked, a chunk every 10 ms until the client goes away"""

    def __init__(self, mode):
        super().__init__(500 if mode == "500" else 200, b"Internal Server Error" if mode == "500" else b"",
                         "text/plain" if mode == "500" else "application/json")
        self.mode = mode


class SemaphoreDouble:
    def __init__(self, host="127.0.0.1", port=0, tokens=None, users=None, projects=(1,), templates=(),
                 queue_delay_ms=200, response_delay_ms=0, answer_delay_ms=0):
        self.host = host
        self._requested_port = port
        self._cond = threading.Condition()
        if tokens is None:
            tokens = [] if users else [DEFAULT_TOKEN]
        self.tokens = {t: "admin" for t in tokens}
        self.users = {"admin": {"id": 1, "password": "admin-password", "role": "owner"}}
        for name, info in (users or {}).items():
            self.add_user(name, info.get("password", ""), info.get("role", "owner"))
        self.sessions = {}  # cookie value -> user name
        self.projects = set(projects)
        self.templates = {}
        for spec in templates:
            self.add_template(spec)
        self.tasks = {}
        self.queue_delay = queue_delay_ms / 1000.0
        self.response_delay = response_delay_ms / 1000.0
        self.answer_delay = answer_delay_ms / 1000.0
        self.drop_task_posts = False
        self._faults = []  # [method, compiled path pattern, mode, times left or None, hits]
        self.task_post_answer = None
        self._log = []
        self._task_ids = itertools.count(1)
        self._running_templates = set()
        self._threads = []
        self._server = None
        self._serve_thread = None
        self._stopping = False
        self.websocket_enabled = True
        self._websockets = set()
        self._ws_pings = 0
        self._ws_pongs = 0

    # --- control from tests ----------------------------------------------

    def start(self):
        self._server = _Server((self.host, self._requested_port), _Handler)
        self._server.double = self
        self._serve_thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                              name="semaphore-double", daemon=True)
        self._serve_thread.start()
        return self

    @property
    def port(self):
        return self._server.server_address[1]

    @property
    def url(self):
        return "http://%s:%d" % (self.host, self.port)

    def stop(self):
        self.close_websockets()
        with self._cond:
            self._stopping = True
            for task in self.tasks.values():
                task.stop_requested = True
                task.force = True
                self._signal_process(task, signal.SIGKILL)
            self._cond.notify_all()
        if self._server:
            if self._serve_thread:
                self._server.shutdown()
            self._server.server_close()
        for t in list(self._threads):
            t.join(10)

    def add_template(self, spec):
        template = Template(spec)
        with self._cond:
            self.templates[template.id] = template
            self.projects.add(template.project_id)
        return template

    def remove_template(self, template_id):
        with self._cond:
            self.templates.pop(template_id, None)

    def add_user(self, name, password, role="owner"):
        if role not in ROLES:
            raise ValueError("role must be one of %s" % ", ".join(ROLES))
        with self._cond:
            self.users[name] = {"id": len(self.users) + 1, "password": password, "role": role}

    def add_token(self, token, user="admin"):
        with self._cond:
            self.tokens[token] = user

    def expire_sessions(self):
        with self._cond:
            self.sessions.clear()

    def configure(self, queue_delay_ms=None, response_delay_ms=None, tokens=None, users=None, websocket=None,
                  answer_delay_ms=None, drop_task_posts=None, task_post_answer=None):
        with self._cond:
            if answer_delay_ms is not None:
                self.answer_delay = answer_delay_ms / 1000.0
            if drop_task_posts is not None:
                self.drop_task_posts = bool(drop_task_posts)
            if task_post_answer is not None:
                self.task_post_answer = task_post_answer or None
            if websocket is not None:
                self.websocket_enabled = bool(websocket)
            if queue_delay_ms is not None:
                self.queue_delay = queue_delay_ms / 1000.0
            if response_delay_ms is not None:
                self.response_delay = response_delay_ms / 1000.0
            if tokens is not None:
                self.tokens = {t: "admin" for t in tokens}
        for name, info in (users or {}).items():
            self.add_user(name, info.get("password", ""), info.get("role", "owner"))

    def inject_fault(self, method, path_pattern, mode, times=None):
        """From now on, `times` requests (None: all) whose method and path
        (without the query; re.fullmatch) match get the broken answer `mode`
        (FAULT_MODES, see FaultReply) instead of being handled: nothing is
        created or changed. Returns the fault, for fault_hits()."""
        if mode not in FAULT_MODES:
            raise ValueError("mode must be one of %s" % ", ".join(FAULT_MODES))
        fault = [method, re.compile(path_pattern), mode, times, 0]
        with self._cond:
            self._faults.append(fault)
        return fault

    def clear_faults(self):
        with self._cond:
            self._faults = []

    def fault_hits(self, fault):
        with self._cond:
            return fault[4]

    def _fault_for(self, method, path):
        with self._cond:
            for fault in self._faults:
                if fault[0] == method and fault[1].fullmatch(path) and (fault[3] is None or fault[3] > 0):
                    if fault[3] is not None:
                        fault[3] -= 1
                    fault[4] += 1
                    return FaultReply(fault[2])
        return None

    def websockets(self):
        """Live-update connections now, and the pings/pongs they sent."""
        with self._cond:
            return {"connections": len(self._websockets), "pings": self._ws_pings, "pongs": self._ws_pongs}

    def close_websockets(self):
        """Drops every live-update connection without a close frame (a restart)."""
        with self._cond:
            conns = list(self._websockets)
            self._websockets.clear()
        for ws in conns:
            ws.drop()

    def requests(self, path_prefix=""):
        with self._cond:
            return [dict(r) for r in self._log if r["path"].startswith(path_prefix)]

    def clear_requests(self):
        with self._cond:
            self._log.clear()

    def add_history(self, template_id, count=1, status="success", created=None, environment="", message=""):
        """Adds `count` finished tasks without running them; returns their ids."""
        if status not in FINISHED:
            raise ValueError("status must be one of %s" % ", ".join(FINISHED))
        with self._cond:
            template = self.templates.get(template_id)
            if not template:
                raise ValueError("no template %r" % template_id)
            ids = []
            for _ in range(count):
                task = Task(next(self._task_ids), template, {"environment": environment, "message": message}, 1)
                task._status = status
                task.created = task.start = task.end = created or now_iso()
                self.tasks[task.id] = task
                ids.append(task.id)
            self._cond.notify_all()
            return ids

    def task(self, task_id):
        with self._cond:
            t = self.tasks.get(task_id)
            return self._task_with_output(t) if t else None

    def all_tasks(self):
        with self._cond:
            return [self._task_with_output(t) for t in self.tasks.values()]

    def wait_task(self, task_id, statuses=FINISHED, timeout=30.0):
        """Blocks until the task has one of `statuses`; returns it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                t = self.tasks.get(task_id)
                if t and t.status in statuses:
                    return self._task_with_output(t)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("task %d still %s after %.1fs" % (task_id, t.status if t else "missing",
                                                                          timeout))
                self._cond.wait(left)

    @staticmethod
    def _task_with_output(t):
        d = t.to_api()
        d["output"] = [line for _, line in t.output]
        return d

    # --- HTTP -------------------------------------------------------------

    def handle(self, method, path, headers, body):
        """Answers one request; headers is a dict with lower-cased names."""
        if path.startswith("/__double/"):
            return self._admin(method, path, body)
        entry = {"method": method, "path": path, "headers": headers, "body": body.decode("utf-8", "replace"),
                 "time": time.time(), "status": None}
        creates_task = method == "POST" and re.fullmatch(r"/api/project/[^/]+/tasks/?", path.split("?", 1)[0])
        with self._cond:
            self._log.append(entry)
            # What holds when the request arrives holds for it, whatever a
            # test configures while it is being handled.
            delay = self.response_delay
            answer_delay = self.answer_delay if creates_task else 0
            drop = self.drop_task_posts and creates_task
            mangle = self.task_post_answer if creates_task else None
        if delay and path.startswith("/api/"):
            time.sleep(delay)
        if drop:
            return DROP
        fault = self._fault_for(method, path.split("?", 1)[0]) if path.startswith("/api/") else None
        if fault:
            with self._cond:
                entry["status"] = fault.status
                entry["fault"] = fault.mode
            return fault
        try:
            reply = self._api(method, path.split("?", 1)[0], headers, body)
        except Exception as e:  # a bug in the double must show, not hang the client
            sys.stderr.write("semaphore double: %s %s: %r\n" % (method, path, e))
            reply = Reply(500, "double failure: %r" % e, "text/plain")
        if answer_delay and reply.status == 201:
            time.sleep(answer_delay)
        if mangle and reply.status == 201:
            # The task exists; its answer is lost on the way.
            reply = Reply(500, "internal error", "text/plain") if mangle == "500" else \
                Reply(201, reply.body[:len(reply.body) // 2], "application/json")
        with self._cond:
            entry["status"] = reply.status
        return reply

    ROUTES = [
        ("GET", r"/api/ping", "_ping", False),
        ("POST", r"/api/auth/login", "_login", False),
        ("POST", r"/api/auth/logout", "_logout", True),
        ("GET", r"/api/info", "_info", True),
        ("GET", r"/api/user", "_user", True),
        ("GET", r"/api/projects", "_projects", True),
        ("GET", r"/api/project/([^/]+)", "_project", True),
        ("GET", r"/api/project/([^/]+)/templates", "_templates", True),
        ("GET", r"/api/project/([^/]+)/templates/([^/]+)", "_template", True),
        ("GET", r"/api/project/([^/]+)/tasks", "_all_tasks", True),
        ("GET", r"/api/project/([^/]+)/tasks/last", "_last_tasks", True),
        ("POST", r"/api/project/([^/]+)/tasks", "_create_task", True),
        ("GET", r"/api/project/([^/]+)/tasks/([^/]+)", "_get_task", True),
        ("GET", r"/api/project/([^/]+)/tasks/([^/]+)/output", "_task_output", True),
        ("POST", r"/api/project/([^/]+)/tasks/([^/]+)/stop", "_stop_task", True),
    ]

    def _api(self, method, path, headers, body):
        path_matched = False
        for route_method, pattern, handler, needs_auth in self.ROUTES:
            m = re.fullmatch(pattern, path.rstrip("/") if path != "/" else path)
            if not m:
                continue
            path_matched = True
            if route_method != method:
                continue
            user = None
            if needs_auth:
                user = self._authenticate(headers)
                if user is None:
                    return EMPTY_401
            args = m.groups()
            if args:
                try:
                    ids = [int(a) for a in args]
                except ValueError:
                    return EMPTY_400
                if ids[0] not in self.projects:
                    return EMPTY_404
                args = ids
            return getattr(self, handler)(user, body, *args)
        if path_matched:
            return Reply(405)
        if path.startswith("/api/") or path == "/api":
            return Reply(404, "Not Found", "text/plain; charset=utf-8")
        return Reply(200, "<!DOCTYPE html><html><body>Semaphore UI (double)</body></html>", "text/html")

    def _authenticate(self, headers):
        with self._cond:
            auth = headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                user = self.tokens.get(auth[7:].strip())
                return self.users.get(user) and user
            for part in headers.get("cookie", "").split(";"):
                name, _, value = part.strip().partition("=")
                if name == "semaphore" and value in self.sessions:
                    return self.sessions[value]
        return None

    def _role(self, user):
        with self._cond:
            return self.users[user]["role"]

    def _ping(self, user, body):
        return Reply(200, "pong", "text/plain; charset=utf-8")

    def _login(self, user, body):
        try:
            data = json.loads(body)
        except ValueError:
            return EMPTY_400
        if not isinstance(data, dict) or not isinstance(data.get("auth"), str) or \
                not isinstance(data.get("password"), str) or not data["auth"]:
            return EMPTY_400
        with self._cond:
            name = next((n for n in self.users if data["auth"] in (n, "%s@example.com" % n)), None)
            info = self.users.get(name)
            if not info or info["password"] != data["password"] or not data["password"]:
                return EMPTY_401
            cookie = secrets.token_urlsafe(32)
            self.sessions[cookie] = name
        return Reply(204, headers=[("Set-Cookie", "semaphore=%s; Path=/; Expires=%s; HttpOnly" % (
            cookie, (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=7)).strftime("%a, %d %b %Y %H:%M:%S GMT")))])

    def _logout(self, user, body):
        with self._cond:
            for k in [k for k, v in self.sessions.items() if v == user]:
                del self.sessions[k]
        return Reply(204)

    def _info(self, user, body):
        return Reply(200, {"version": "v2.10.22-double", "ansible": "ansible [core 2.14]", "update": None,
                           "config_error": False})

    def _user(self, user, body):
        with self._cond:
            info = self.users[user]
        return Reply(200, {"id": info["id"], "username": user, "name": user, "email": "%s@example.com" % user,
                           "admin": info["role"] == "owner", "alert": False, "external": False})

    def _projects(self, user, body):
        with self._cond:
            return Reply(200, [{"id": p, "name": "project %d" % p, "alert": False, "max_parallel_tasks": 0}
                               for p in sorted(self.projects)])

    def _project(self, user, body, pid):
        return Reply(200, {"id": pid, "name": "project %d" % pid, "alert": False, "max_parallel_tasks": 0})

    def _templates(self, user, body, pid):
        with self._cond:
            return Reply(200, [t.to_api() for t in sorted(self.templates.values(), key=lambda t: t.id)
                               if t.project_id == pid])

    def _template(self, user, body, pid, tid):
        with self._cond:
            t = self.templates.get(tid)
            if not t or t.project_id != pid:
                return EMPTY_404
            return Reply(200, t.to_api())

    def _task_list(self, pid, limit):
        with self._cond:
            tasks = sorted((t for t in self.tasks.values() if t.project_id == pid), key=lambda t: t.id, reverse=True)
            users = {info["id"]: name for name, info in self.users.items()}
            return Reply(200, [dict(t.to_api(), tpl_playbook=t.template.to_api()["playbook"], tpl_alias=t.template.name,
                                    tpl_type="", tpl_app="ansible", user_name=users.get(t.user_id))
                               for t in tasks[:limit]])

    def _all_tasks(self, user, body, pid):
        return self._task_list(pid, 1000)

    def _last_tasks(self, user, body, pid):
        return self._task_list(pid, 200)

    def _create_task(self, user, body, pid):
        if self._role(user) == "guest":
            return EMPTY_403
        fields = decode_go_struct(body, TASK_FIELDS)
        if fields is None:
            return EMPTY_400
        with self._cond:
            template = self.templates.get(fields.get("template_id") or 0)
            if not template or template.project_id != pid:
                return EMPTY_500
            if template.run == "error500":
                return EMPTY_500
            environment = fields.get("environment") or ""
            if environment and template.environment_id is None:
                return EMPTY_500
            task = Task(next(self._task_ids), template, fields, self.users[user]["id"], self._announce)
            self.tasks[task.id] = task
            if environment:
                try:
                    json.loads(environment)
                except ValueError:
                    task.status = "error"
                    task.end = now_iso()
                    self._cond.notify_all()
                    return EMPTY_500
            task.log("Task %d added to queue" % task.id)
            thread = threading.Thread(target=self._run_task, args=(task,), name="task-%d" % task.id, daemon=True)
            self._threads.append(thread)
            thread.start()
            return Reply(201, task.to_api())

    def _find_task(self, pid, task_id):
        t = self.tasks.get(task_id)
        return t if t and t.project_id == pid else None

    def _get_task(self, user, body, pid, task_id):
        with self._cond:
            t = self._find_task(pid, task_id)
            return Reply(200, t.to_api()) if t else EMPTY_400

    def _task_output(self, user, body, pid, task_id):
        with self._cond:
            t = self._find_task(pid, task_id)
            if not t:
                return EMPTY_400
            if not t.output:
                return Reply(200, b"null", "application/json")
            return Reply(200, [{"task_id": t.id, "task": "", "time": when, "output": line} for when, line in t.output])

    def _stop_task(self, user, body, pid, task_id):
        if self._role(user) == "guest":
            return EMPTY_403
        data = decode_go_struct(body, {"force": bool}) if body.strip() else None
        if data is None:
            return EMPTY_400
        force = bool(data.get("force"))
        with self._cond:
            t = self._find_task(pid, task_id)
            if not t:
                return EMPTY_400
            if t.status in FINISHED or t.status == "waiting":
                # Real Semaphore overwrites even a finished task's status.
                t.status = "stopped"
                t.end = t.end or now_iso()
            elif force:
                t.status = "stopped"
                t.end = now_iso()
            elif t.status != "stopped":
                t.status = "stopping"
            t.stop_requested = True
            t.force = t.force or force
            self._signal_process(t, signal.SIGKILL if force else signal.SIGTERM)
            self._cond.notify_all()
        return Reply(204)

    # --- running tasks ----------------------------------------------------

    def _run_task(self, task):
        template = task.template
        with self._cond:
            # The queue: a task waits at least queue_delay, and for the previous
            # task of its template to finish.
            while True:
                if task.stop_requested or self._stopping:
                    return self._finish(task, None)
                left = task.created_mono + self.queue_delay - time.monotonic()
                first = min((t.id for t in self.tasks.values()
                             if t.template.id == template.id and t.status == "waiting"), default=task.id)
                if left <= 0 and template.id not in self._running_templates and first == task.id:
                    break
                self._cond.wait(max(left, 0.01) if left > 0 else 0.05)
            self._running_templates.add(template.id)
            task.status = "starting"
            task.start = now_iso()
            task.log("Started: %d" % task.id)
            task.log("Run TaskRunner with template: %s" % template.name)
            self._cond.notify_all()
        try:
            for status in template.statuses:
                if not self._sleep(task, template.status_ms / 1000.0):
                    return self._finish(task, None)
                self._set_status(task, status)
            if not self._sleep(task, 0.02):
                return self._finish(task, None)
            self._set_status(task, "running")
            exit_status = self._execute(task)
            self._finish(task, exit_status)
        finally:
            with self._cond:
                self._running_templates.discard(template.id)
                self._cond.notify_all()

    def _set_status(self, task, status):
        with self._cond:
            if task.status not in FINISHED and task.status != "stopping":
                task.status = status
            self._cond.notify_all()

    def _sleep(self, task, seconds):
        """Waits (seconds None: for ever); False when the task was asked to stop meanwhile."""
        deadline = None if seconds is None else time.monotonic() + seconds
        with self._cond:
            while not task.stop_requested:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return True
                self._cond.wait(left)
            return False

    def _finish(self, task, exit_status):
        """exit_status None: stopped before or while running."""
        with self._cond:
            if task.status in FINISHED:
                pass  # a forced stop already set "stopped"
            elif exit_status is None and not task.stop_requested:
                task.status = "stopped"  # the double itself is shutting down
            elif exit_status == 0 and not task.stop_requested:
                task.status = "success"
            elif task.stop_requested and not task.force and task.status in ("stopping", "running"):
                task.log("Running app failed: signal: terminated")
                task.status = "error"
            elif task.stop_requested:
                task.status = "stopped"
            else:
                task.log("Running app failed: exit status %d" % exit_status)
                task.status = "error"
            task.end = task.end or now_iso()
            self._cond.notify_all()

    def _execute(self, task):
        """Runs the template's behaviour; returns its exit status (None if stopped)."""
        t = task.template
        host = task.fields.get("limit") or "localhost"
        if t.run in ("succeed", "fail"):
            failing = t.run == "fail"
            lines = t.output if t.output is not None else ansible_log(t.name, host, failing)
            with self._cond:
                for line in lines:
                    task.log(line)
            if not self._sleep(task, t.after_ms / 1000.0):
                return None
            return t.exit_status if failing else 0
        if t.run == "hang":
            with self._cond:
                task.log("TASK [%s] %s" % (t.name, "*" * 60))
            self._sleep(task, None)
            return None
        if t.run == "command":
            env = dict(os.environ, SEMAPHORE_TASK_ENVIRONMENT=task.fields.get("environment") or "",
                       SEMAPHORE_TASK_ID=str(task.id))
            return self._run_process(task, list(t.argv), env)
        return self._run_playbook(task, host)

    def _run_playbook(self, task, host):
        with tempfile.TemporaryDirectory(prefix="semaphore-double-") as tmp:
            inventory = os.path.join(tmp, "inventory")
            with open(inventory, "w") as f:
                f.write("%s ansible_connection=local ansible_python_interpreter=%s\n" % (host, sys.executable))
            argv = ["ansible-playbook", "-i", inventory, task.template.playbook]
            environment = task.fields.get("environment") or ""
            if environment:
                argv += ["--extra-vars", environment]
            if task.fields.get("limit"):
                argv.append("--limit=%s" % task.fields["limit"])
            env = {k: v for k, v in os.environ.items() if k not in ("ANSIBLE_NOCOLOR", "NO_COLOR")}
            env.update(ANSIBLE_FORCE_COLOR="1", ANSIBLE_RETRY_FILES_ENABLED="0", ANSIBLE_HOST_KEY_CHECKING="0",
                       ANSIBLE_LOCAL_TEMP=os.path.join(tmp, "local"), PYTHONUNBUFFERED="1")
            with self._cond:
                task.log("Preparing: %d" % task.id)
                task.log("%s" % " ".join(argv[:4]))
            return self._run_process(task, argv, env)

    def _run_process(self, task, argv, env):
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True)
        except OSError as e:
            with self._cond:
                task.log("Running app failed: %s" % e)
            return 127
        with self._cond:
            task.process = proc
            if task.stop_requested:
                self._signal_process(task, signal.SIGKILL if task.force else signal.SIGTERM)
        with proc.stdout:
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                with self._cond:
                    task.log(line)
                    self._cond.notify_all()
        status = proc.wait()
        with self._cond:
            task.process = None
        if task.stop_requested:
            return None
        return status if status >= 0 else 128 - status

    @staticmethod
    def _signal_process(task, sig):
        proc = task.process
        if proc and proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass

    # --- live updates (GET /api/ws) ----------------------------------------

    def _announce(self, message):
        """Sends a live update to every connection (called with _cond held)."""
        data = json.dumps(message, separators=(",", ":")).encode()
        for ws in list(self._websockets):
            if not ws.send(0x1, data):
                self._websockets.discard(ws)

    def websocket(self, handler):
        """Serves GET /api/ws on the handler's connection until it closes."""
        headers = {k.lower(): v for k, v in handler.headers.items()}
        entry = {"method": "GET", "path": handler.path, "headers": headers, "body": "", "time": time.time(),
                 "status": None}
        with self._cond:
            self._log.append(entry)
        user = self._authenticate(headers)
        key = headers.get("sec-websocket-key", "")
        upgrade = "websocket" in headers.get("upgrade", "").lower() and \
            "upgrade" in headers.get("connection", "").lower()
        if user is None:
            status, reply = 401, b""
        elif not self.websocket_enabled or not upgrade or headers.get("sec-websocket-version") != "13" or not key:
            # What gorilla/websocket answers when a proxy dropped the Upgrade headers.
            status, reply = 400, b"Bad Request\n"
        else:
            status, reply = 101, None
        with self._cond:
            entry["status"] = status
        handler.close_connection = True
        if status != 101:
            handler.send_response(status)
            handler.send_header("Content-Length", str(len(reply)))
            if reply:
                handler.send_header("Content-Type", "text/plain; charset=utf-8")
            handler.end_headers()
            handler.wfile.write(reply)
            return
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        handler.send_response(101, "Switching Protocols")
        handler.send_header("Upgrade", "websocket")
        handler.send_header("Connection", "Upgrade")
        handler.send_header("Sec-WebSocket-Accept", accept)
        handler.end_headers()
        handler.wfile.flush()
        ws = _WebSocket(handler.connection)
        with self._cond:
            self._websockets.add(ws)
        try:
            self._websocket_read(ws, handler.rfile)
        finally:
            with self._cond:
                self._websockets.discard(ws)
            ws.drop()

    def _websocket_read(self, ws, rfile):
        """Reads client frames: answers pings and closes, as gorilla/websocket does."""
        while True:
            head = rfile.read(2)
            if len(head) < 2:
                return
            opcode, masked, length = head[0] & 0x0F, head[1] & 0x80, head[1] & 0x7F
            if length == 126:
                length = int.from_bytes(rfile.read(2), "big")
            elif length == 127:
                length = int.from_bytes(rfile.read(8), "big")
            if not masked:  # a client must mask every frame: protocol error
                ws.send(0x8, (1002).to_bytes(2, "big"))
                return
            mask = rfile.read(4)
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(rfile.read(length)))
            if opcode == 0x8:
                ws.send(0x8, payload[:2])
                return
            if opcode == 0x9:
                with self._cond:
                    self._ws_pings += 1
                ws.send(0xA, payload)
            elif opcode == 0xA:
                with self._cond:
                    self._ws_pongs += 1

    def ping_websockets(self, payload=b"double"):
        """Pings every live-update connection (Semaphore does every 54 s)."""
        with self._cond:
            for ws in list(self._websockets):
                ws.send(0x9, payload)

    def send_websockets(self, text):
        """Sends one text frame, whatever it holds, to every live-update connection."""
        with self._cond:
            for ws in list(self._websockets):
                ws.send(0x1, text.encode())

    # --- admin endpoints --------------------------------------------------

    def _admin(self, method, path, body):
        try:
            data = json.loads(body) if body.strip() else {}
        except ValueError:
            return Reply(400, {"error": "body is not JSON"})
        route = path.split("?", 1)[0][len("/__double/"):].rstrip("/")
        m = re.fullmatch(r"templates/(\d+)", route)
        try:
            if route == "requests" and method == "GET":
                return Reply(200, self.requests())
            if route == "requests" and method == "DELETE":
                self.clear_requests()
                return Reply(204)
            if route == "tasks" and method == "GET":
                return Reply(200, self.all_tasks())
            if route == "tasks" and method == "POST":
                return Reply(200, self.add_history(**data))
            if m and method == "PUT":
                spec = dict(data, id=int(m.group(1)))
                return Reply(200, self.add_template(spec).to_api())
            if m and method == "DELETE":
                self.remove_template(int(m.group(1)))
                return Reply(204)
            if route == "config" and method == "POST":
                self.configure(**{k: data[k] for k in ("queue_delay_ms", "response_delay_ms", "answer_delay_ms",
                                                       "drop_task_posts", "task_post_answer", "tokens", "users",
                                                       "websocket") if k in data})
                return Reply(204)
            if route == "sessions/expire" and method == "POST":
                self.expire_sessions()
                return Reply(204)
            if route == "websockets" and method == "GET":
                return Reply(200, self.websockets())
            if route == "websockets/close" and method == "POST":
                self.close_websockets()
                return Reply(204)
            if route == "websockets/ping" and method == "POST":
                self.ping_websockets()
                return Reply(204)
            if route == "websockets/send" and method == "POST":
                self.send_websockets(data.get("text", "") * int(data.get("repeat", 1)))
                return Reply(204)
        except (BadTemplate, ValueError, TypeError) as e:
            return Reply(400, {"error": str(e)})
        return Reply(404, {"error": "no admin endpoint %s %s" % (method, path)})


def ansible_log(name, host, failing):
    """A made-up but typical Ansible log, coloured as under Semaphore's pty."""
    stars = "*" * 60
    lines = ["PLAY [%s] %s" % (name, stars), "", "TASK [Gathering Facts] %s" % stars,
             "%sok: [%s]%s" % (GREEN, host, RESET), "", "TASK [%s] %s" % (name, stars)]
    if failing:
        lines.append('%sfatal: [%s]: FAILED! => {"changed": false, "msg": "Unable to start service %s"}%s'
                     % (RED, host, name, RESET))
        recap = "%sok=1   %s %schanged=0   %s unreachable=0    %sfailed=1   %s" % (GREEN, RESET, YELLOW, RESET,
                                                                               RED, RESET)
    else:
        lines.append("%schanged: [%s]%s" % (YELLOW, host, RESET))
        recap = "%sok=2   %s %schanged=1   %s unreachable=0    failed=0   " % (GREEN, RESET, YELLOW, RESET)
    lines += ["", "PLAY RECAP %s" % stars, "%s%s%s                  : %s" % (YELLOW if not failing else RED, host,
                                                                             RESET, recap)]
    return lines


class _WebSocket:
    """The server side of one live-update connection: unmasked frames out."""

    def __init__(self, sock):
        self.sock = sock
        self.lock = threading.Lock()
        self.open = True

    def send(self, opcode, payload):
        n = len(payload)
        if n < 126:
            head = bytes([0x80 | opcode, n])
        elif n < 65536:
            head = bytes([0x80 | opcode, 126]) + n.to_bytes(2, "big")
        else:
            head = bytes([0x80 | opcode, 127]) + n.to_bytes(8, "big")
        with self.lock:
            if not self.open:
                return False
            try:
                self.sock.sendall(head + payload)
                return True
            except OSError:
                self.open = False
                return False

    def drop(self):
        with self.lock:
            self.open = False
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def handle_error(self, request, client_address):
        # A client that went away before its answer (a killed controld) is
        # what some tests do on purpose; anything else is still printed.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "semaphore-double"

    def log_message(self, fmt, *args):
        pass

    def _read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self):
        if self.command == "GET" and self.path.split("?", 1)[0].rstrip("/") == "/api/ws":
            return self.server.double.websocket(self)
        body = self._read_body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        reply = self.server.double.handle(self.command, self.path, headers, body)
        if reply is DROP:
            self.close_connection = True
            return
        if isinstance(reply, FaultReply):
            return self._send_fault(reply)
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        if reply.content_type:
            self.send_header("Content-Type", reply.content_type)
        if reply.status != 204:
            self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if reply.body and reply.status != 204:
            self.wfile.write(reply.body)

    def _send_fault(self, reply):
        self.close_connection = True
        try:
            if reply.mode in ("garbage", "500"):
                # (valid UTF-8: invalid bytes reach status --json, issue 11 defect 20)
                body = reply.body or b"<html>{{{ not json \x1b[31m\x01" + secrets.token_hex(32).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif reply.mode == "huge":
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(HUGE_BYTES))
                self.end_headers()
                head = b'{"id":1,"status":"'
                self.wfile.write(head)
                chunk = b"x" * (1 << 20)
                left = HUGE_BYTES - len(head)
                while left > 0:
                    n = min(left, len(chunk))
                    self.wfile.write(chunk[:n])
                    left -= n
            else:  # endless
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.write(b'1\r\n[\r\n')
                deadline = time.monotonic() + 600
                while time.monotonic() < deadline and not self.server.double._stopping:
                    self.wfile.write(b'4\r\n{},\n\r\n')
                    self.wfile.flush()
                    time.sleep(0.01)
        except OSError:
            pass  # the client went away: what it had to do

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch


def parse_user(text):
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0]:
        raise argparse.ArgumentTypeError("expected NAME:PASSWORD[:ROLE]")
    role = parts[2] if len(parts) == 3 else "owner"
    if role not in ROLES:
        raise argparse.ArgumentTypeError("ROLE must be one of %s" % ", ".join(ROLES))
    return parts[0], {"password": parts[1], "role": role}


def parse_template(text):
    try:
        spec = json.loads(text)
        Template(spec)
    except (ValueError, BadTemplate) as e:
        raise argparse.ArgumentTypeError(str(e))
    return spec


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file")
    parser.add_argument("--token", action="append")
    parser.add_argument("--user", action="append", type=parse_user, default=[])
    parser.add_argument("--project", action="append", type=int)
    parser.add_argument("--template", action="append", type=parse_template, default=[])
    parser.add_argument("--queue-delay-ms", type=int, default=200)
    parser.add_argument("--response-delay-ms", type=int, default=0)
    parser.add_argument("--answer-delay-ms", type=int, default=0)
    args = parser.parse_args()

    double = SemaphoreDouble(host=args.host, port=args.port, tokens=args.token, users=dict(args.user),
                             projects=args.project or (1,), templates=args.template,
                             queue_delay_ms=args.queue_delay_ms, response_delay_ms=args.response_delay_ms,
                             answer_delay_ms=args.answer_delay_ms)
    double.start()

    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % double.port)
        os.rename(tmp, args.port_file)
    print("semaphore double listening on %s" % double.url, flush=True)
    while not done.wait(3600):
        pass
    double.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
