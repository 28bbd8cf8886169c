#!/usr/bin/env python3
"""How fast controld lets a Semaphore-started service go once its task is done.

Measures, against the real controld binary and the Semaphore double
(tests/support/semaphore_double.py, a separate process), over N start/stop
cycles of one service (`controld start`, then `controld stop --wait`):

  release_ms   the task turning `success` (the double's recorded `end`) to
               the `warm` state push reaching a subscribed protocol client,
               with the health check already answering (demo/sample_service.py
               runs all along). Median and p99: the target is p99 < 300 ms.
  split into
    noticed_ms the task turning `success` to controld's poll that saw it
               (the double's request log);
    warm_ms    that poll to the `warm` push (health probe, state change,
               push).

  bench/semaphore_release.py --controld build/controld/controld [--cycles 50]
      [--quick] [--task-ms 1500] [--poll-interval 2s] [--queue-delay-ms 200]
      [--no-live-updates] [--json out.json]

--quick runs 5 cycles (a smoke run). --task-ms is how long each start task
runs once Semaphore's queue let it go (--queue-delay-ms); --poll-interval is
the service's semaphore.poll_interval (controld's default is 2s).
--no-live-updates makes the double refuse GET /api/ws (as behind a proxy that
drops the Upgrade), so controld finds the end by polling alone.
"""
import argparse
import datetime
import json
import os
import queue
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from benchlib import percentile, remove_work_dir

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.dirname(HERE)
DOUBLE = os.path.join(SOURCE, "tests", "support", "semaphore_double.py")
SAMPLE = os.path.join(SOURCE, "demo", "sample_service.py")
TOKEN = "kq3zk0hx0m2ccwhp4rvtsxosw8abwc5a3rwnfzc8vmgq"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def iso_seconds(text):
    t = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    return t.replace(tzinfo=datetime.timezone.utc).timestamp()


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise RuntimeError("timed out waiting for " + what)


class Subscriber:
    """A protocol client like an nginx worker; timestamps every state push."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.pushes = queue.Queue()
        self.sock.sendall((json.dumps({"type": "hello", "version": 1, "role": "worker", "pid": os.getpid()}) +
                           "\n").encode())
        self.sock.sendall(b'{"type":"subscribe"}\n')
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        buf = b""
        while True:
            try:
                chunk = self.sock.recv(1 << 16)
            except OSError:
                return
            now = time.time()
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                msg = json.loads(line)
                if msg.get("type") == "state":
                    self.pushes.put((now, msg))

    def wait_state(self, service, state, timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError("no %s push for %s" % (state, service))
            at, msg = self.pushes.get(timeout=left)
            if msg["service"] == service and msg["state"] == state:
                return at, msg
            if msg["service"] == service and msg["state"] == "failed":
                raise RuntimeError("%s failed: %s" % (service, msg.get("reason")))

    def close(self):
        self.sock.close()


def admin(port, path):
    with urllib.request.urlopen("http://127.0.0.1:%d/__double/%s" % (port, path), timeout=10) as r:
        return json.loads(r.read())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--controld", default=os.environ.get("CONTROLD_BIN", os.path.join(SOURCE, "build", "controld",
                                                                                       "controld")))
    ap.add_argument("--cycles", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="5 cycles")
    ap.add_argument("--task-ms", type=int, default=1500)
    ap.add_argument("--poll-interval", default="2s")
    ap.add_argument("--queue-delay-ms", type=int, default=200)
    ap.add_argument("--no-live-updates", action="store_true", help="the double refuses GET /api/ws")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()
    cycles = 5 if args.quick else args.cycles

    work = tempfile.mkdtemp(prefix="od-semrel-")
    procs = []
    logs = []

    def spawn(argv, name):
        log = open(os.path.join(work, name + ".log"), "w")
        logs.append(log)
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        procs.append(p)
        return p

    try:
        port_file = os.path.join(work, "double.port")
        spawn([sys.executable, DOUBLE, "--port-file", port_file, "--token", TOKEN,
               "--queue-delay-ms", str(args.queue_delay_ms),
               "--template", json.dumps({"id": 22, "name": "start", "run": "succeed", "after_ms": args.task_ms}),
               "--template", json.dumps({"id": 23, "name": "stop", "run": "succeed", "after_ms": 50})], "double")
        wait_for(lambda: os.path.exists(port_file), 10, "the Semaphore double")
        with open(port_file) as f:
            double_port = int(f.read())
        if args.no_live_updates:
            req = urllib.request.Request("http://127.0.0.1:%d/__double/config" % double_port,
                                         data=b'{"websocket": false}', method="POST")
            urllib.request.urlopen(req, timeout=10).close()

        health_port = free_port()
        spawn([sys.executable, SAMPLE, "serve", "--port", str(health_port), "--name", "svc"], "sample")

        def health_up():
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % health_port, timeout=1):
                    return True
            except OSError:
                return False

        wait_for(health_up, 10, "the health endpoint")

        sock = os.path.join(work, "c.sock")
        config = os.path.join(work, "controld.yaml")
        with open(config, "w") as f:
            f.write("""socket: {sock}
state_dir: {work}/state
semaphore:
  base_url: http://127.0.0.1:{double}
  api_token: {token}
  http_timeout: 5s
services:
  svc:
    health_url: http://127.0.0.1:{health}/healthz
    idle_timeout: 0
    start_timeout: 5m
    machine: bench-01
    semaphore:
      start_template_id: 22
      stop_template_id: 23
      task_timeout: 2m
      poll_interval: {poll}
""".format(sock=sock, work=work, double=double_port, token=TOKEN, health=health_port, poll=args.poll_interval))
        env = dict(os.environ, CONTROLD_LOG_LEVEL=os.environ.get("CONTROLD_LOG_LEVEL", "warning"))
        log = open(os.path.join(work, "controld.log"), "w")
        logs.append(log)
        controld = subprocess.Popen([args.controld, "serve", "--config", config], stderr=log, env=env)
        procs.append(controld)
        wait_for(lambda: os.path.exists(sock), 10, "controld's socket")

        sub = Subscriber(sock)
        sub.wait_state("svc", "cold")

        def cli(*argv):
            out = subprocess.run([args.controld] + list(argv) + ["--socket", sock], capture_output=True, text=True,
                                 timeout=300)
            if out.returncode != 0:
                raise RuntimeError("controld %s: %s%s" % (" ".join(argv), out.stdout, out.stderr))

        release, noticed, warm = [], [], []
        for i in range(cycles):
            cli("start", "svc")
            warm_at, push = sub.wait_state("svc", "warm")
            task_id = push["task_id"]
            task = next(t for t in admin(double_port, "tasks") if t["id"] == task_id)
            if task["status"] != "success":
                raise RuntimeError("task %d is %s" % (task_id, task["status"]))
            success_at = iso_seconds(task["end"])
            polls = [r["time"] for r in admin(double_port, "requests")
                     if r["method"] == "GET" and r["path"] == "/api/project/1/tasks/%d" % task_id]
            seen_at = min((t for t in polls if t >= success_at - 0.001), default=warm_at)
            release.append((warm_at - success_at) * 1000.0)
            noticed.append((seen_at - success_at) * 1000.0)
            warm.append((warm_at - seen_at) * 1000.0)
            cli("stop", "svc", "--wait")

        def summary(values):
            return {"median": round(statistics.median(values), 1), "p99": round(percentile(values, 99), 1),
                    "max": round(max(values), 1)}

        result = {
            "command": " ".join(["bench/semaphore_release.py"] + sys.argv[1:]),
            "cycles": cycles,
            "task_ms": args.task_ms,
            "queue_delay_ms": args.queue_delay_ms,
            "poll_interval": args.poll_interval,
            "live_updates": not args.no_live_updates,
            "release_ms": summary(release),
            "noticed_ms": summary(noticed),
            "warm_ms": summary(warm),
            "target_p99_ms": 300,
            "target_met": percentile(release, 99) < 300,
        }
        print(json.dumps(result, indent=2))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
                f.write("\n")
        sub.close()
        return 0
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        for log in logs:
            log.close()
        remove_work_dir(work)


if __name__ == "__main__":
    sys.exit(main())
