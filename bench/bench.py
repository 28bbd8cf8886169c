#!/usr/bin/env python3
"""ondemand benchmarks: the driver behind bench/run.

Runs real processes on 127.0.0.1 only: /usr/sbin/nginx with the built module
(the "front"), a plain nginx as the services behind it (the "upstream"),
controld, wrk and holdload (bench/holdload.c) as load. Every figure is a
ratio or a difference against a baseline measured in the same run, A and B
alternating over rounds; RESULTS.md gets the median and the spread
(min..max) of the per-round figures.

  bench/bench.py --build BUILD_DIR [--quick] [--out DIR] [--only warm,burst,lag,isolation,scale,routing,cluster,swap]
"""
import argparse
import atexit
import datetime
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request

from benchlib import percentile, remove_work_dir, rss_kib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
NGINX = os.environ.get("NGINX_BIN", "/usr/sbin/nginx")
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
GATE = os.path.join(HERE, "gate.py")

# --- small helpers ---------------------------------------------------------------


def log(msg):
    sys.stderr.write("[bench %s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout, what, interval=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise RuntimeError("timed out after %.1f s waiting for %s" % (timeout, what))


def http_get(port, path="/", timeout=5.0):
    """(status, body) of one GET on a fresh connection; (0, error) when it fails."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")
    except OSError as e:
        return 0, str(e)


def children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        out = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open("/proc/%s/stat" % d) as f:
                        if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                            out.append(int(d))
                except (OSError, IndexError, ValueError):
                    pass
        return out


# --- processes -----------------------------------------------------------------


class Proc:
    all = []

    def __init__(self, argv, log_path, env=None):
        self.argv = argv
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.p = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        Proc.all.append(self)

    @property
    def pid(self):
        return self.p.pid

    def alive(self):
        return self.p.poll() is None

    def stop(self, timeout=15):
        if self.alive():
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()
        if not self.log.closed:
            self.log.close()
        if self in Proc.all:
            Proc.all.remove(self)

    @classmethod
    def stop_all(cls):
        for p in reversed(list(cls.all)):
            p.stop()


class Nginx:
    """An nginx in its own prefix under the work directory."""

    def __init__(self, bench, name, http_body, workers=1, module=True, worker_connections=1024, main_extra="",
                 ports=(), cpus=None):
        self.bench = bench
        self.name = name
        self.checked = False
        self.prefix = os.path.join(bench.work, name)
        for sub in ("logs", "tmp"):
            os.makedirs(os.path.join(self.prefix, sub), exist_ok=True)
        main = []
        if module:
            main.append("load_module %s;" % bench.module)
        if os.geteuid() == 0:
            main.append("user root;")  # workers must reach controld's socket in the work directory
        if cpus:
            main.append("worker_cpu_affinity %s;" % cpus)
        # Connections to clients and to upstreams, within what this process may have.
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        rlimit = max(1024, worker_connections + 64)
        if hard != resource.RLIM_INFINITY:
            rlimit = min(rlimit, hard)
        conf = textwrap.dedent("""\
            {main}
            worker_processes {workers};
            worker_rlimit_nofile {rlimit};
            daemon off;
            master_process on;
            pid {prefix}/logs/nginx.pid;
            error_log {prefix}/logs/error.log notice;
            {main_extra}
            events {{ worker_connections {wc}; multi_accept on; }}
            http {{
                access_log off;
                client_body_temp_path {prefix}/tmp/body;
                proxy_temp_path {prefix}/tmp/proxy;
                fastcgi_temp_path {prefix}/tmp/fastcgi;
                uwsgi_temp_path {prefix}/tmp/uwsgi;
                scgi_temp_path {prefix}/tmp/scgi;
                keepalive_requests 1000000;
            {body}
            }}
            """).format(main="\n".join(main), workers=workers, rlimit=rlimit, prefix=self.prefix,
                        main_extra=main_extra, wc=worker_connections,
                        body=textwrap.indent(textwrap.dedent(http_body), "    "))
        self.conf = os.path.join(self.prefix, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(conf)
        t = subprocess.run([NGINX, "-t", "-p", self.prefix, "-c", self.conf], capture_output=True, text=True)
        if t.returncode != 0:
            raise RuntimeError("nginx -t failed for %s:\n%s" % (name, t.stderr))
        self.proc = Proc([NGINX, "-p", self.prefix, "-c", self.conf], os.path.join(self.prefix, "nginx.out"))
        for port in ports:
            wait_until(lambda: self._listening(port), 10, "nginx %s on port %d" % (name, port))
        wait_until(lambda: len(self.workers()) == workers, 10, "nginx %s workers" % name)

    @staticmethod
    def _listening(port):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    def workers(self):
        return children(self.proc.pid) if self.proc.alive() else []

    def worker_rss_kib(self):
        return sum(rss_kib(p) for p in self.workers())

    def stop(self):
        """Stops it; lines of its error log that say something went wrong go to the report."""
        if not self.proc.alive() and self.checked:
            return
        self.proc.stop()
        self.checked = True
        try:
            with open(os.path.join(self.prefix, "logs", "error.log")) as f:
                for line in f:
                    if re.search(r"\[(alert|crit|emerg)\]", line):
                        self.bench.problems.append("%s: %s" % (self.name, line.strip()))
        except OSError:
            pass


class Controld:
    def __init__(self, bench, name, services_yaml):
        self.bench = bench
        self.dir = os.path.join(bench.work, name)
        os.makedirs(self.dir, exist_ok=True)
        self.socket = os.path.join(self.dir, "c.sock")
        self.config = os.path.join(self.dir, "controld.yaml")
        with open(self.config, "w") as f:
            f.write("socket: %s\nstate_dir: %s/state\nservices:\n%s" % (self.socket, self.dir,
                                                                         textwrap.indent(services_yaml, "  ")))
        env = dict(os.environ, CONTROLD_LOG_LEVEL=os.environ.get("CONTROLD_LOG_LEVEL", "warning"))
        self.proc = Proc([bench.controld, "serve", "--config", self.config], os.path.join(self.dir, "controld.log"),
                         env=env)
        wait_until(lambda: os.path.exists(self.socket) or not self.proc.alive(), 10, "controld socket")
        if not self.proc.alive():
            raise RuntimeError("controld exited:\n" + open(self.proc.log_path).read())

    def cli(self, *args, timeout=60):
        out = subprocess.run([self.bench.controld] + list(args) + ["--socket", self.socket], capture_output=True,
                             text=True, timeout=timeout)
        return out

    def status(self, service=None):
        out = self.cli("status", "--json", *([service] if service else []))
        if out.returncode != 0:
            raise RuntimeError("controld status: %s %s" % (out.stdout, out.stderr))
        return json.loads(out.stdout)

    def state(self, service):
        return self.status(service)["services"][0]["state"]

    def start(self, service):
        out = self.cli("start", service, "--wait")
        if out.returncode != 0:
            raise RuntimeError("controld start %s: %s %s" % (service, out.stdout, out.stderr))

    def stop_service(self, service):
        out = self.cli("stop", service, "--wait")
        if out.returncode != 0:
            raise RuntimeError("controld stop %s: %s %s" % (service, out.stdout, out.stderr))

    def stop(self):
        self.proc.stop()


# --- load ------------------------------------------------------------------------

class HoldLoad:
    """bench/holdload.c in the background; its progress lines are read by a thread."""

    def __init__(self, bench, port, conns, path="/", timeout=60, expect=None, times=None, hold=None,
                 connect_first=False, batch=500, pause_ms=5, close=False):
        argv = [bench.holdload, "--port", str(port), "--path", path, "--conns", str(conns), "--timeout",
                str(timeout), "--batch", str(batch), "--pause-ms", str(pause_ms)]
        if expect:
            argv += ["--expect", expect]
        if times:
            argv += ["--times", times]
        if hold:
            argv += ["--hold", str(hold)]
        if connect_first:
            argv.append("--connect-first")
        if close:
            argv.append("--close")
        self.command = " ".join(shlex.quote(a) for a in argv)
        self.events = {}
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            word, _, rest = line.strip().partition(" ")
            with self.cond:
                if word in ("sent", "connected"):
                    n, ns = rest.split()
                    self.events[word] = int(ns)
                    self.events[word + "_n"] = int(n)
                elif word == "done":
                    self.events["done"] = json.loads(rest)
                self.cond.notify_all()
        with self.cond:
            self.events.setdefault("exited", True)
            self.cond.notify_all()

    def wait_for(self, word, timeout):
        with self.cond:
            if not self.cond.wait_for(lambda: word in self.events or "exited" in self.events, timeout):
                raise RuntimeError("holdload: no '%s' within %.0f s" % (word, timeout))
            if word not in self.events:
                raise RuntimeError("holdload exited before '%s' (exit status %s)" % (word, self.proc.poll()))
            return self.events[word]

    def finish(self, timeout):
        done = self.wait_for("done", timeout)
        self.proc.wait(timeout=10)
        return done

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# --- the setting -------------------------------------------------------------------


def proxy_location(upstream, extra=""):
    lines = ["location / {"]
    if extra:
        lines.append("    " + extra)
    lines += ["    proxy_pass http://%s;" % upstream, "    proxy_http_version 1.1;",
              '    proxy_set_header Connection "";', "}"]
    return "\n".join(lines)


def server(port, body, listen_extra=""):
    return "server {\n    listen 127.0.0.1:%d%s;\n%s\n}\n" % (port, listen_extra, textwrap.indent(body, "    "))


class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.build = os.path.abspath(args.build)
        self.module = os.path.join(self.build, "ngx_module", "ngx_http_ondemand_module.so")
        self.controld = os.path.join(self.build, "controld", "controld")
        self.holdload = os.path.join(self.build, "bench", "holdload")
        for f in (self.module, self.controld, self.holdload):
            if not os.path.exists(f):
                raise SystemExit("missing %s: build first (scripts/build)" % f)
        self.out = os.path.abspath(args.out)
        os.makedirs(self.out, exist_ok=True)
        # Short: Unix socket paths must stay under 108 bytes.
        self.work = tempfile.mkdtemp(prefix="od-bench-")
        self.results = {}
        self.configs = {}
        self.commands = {}
        self.problems = []
        self.abload_bin = os.path.join(self.build, "bench", "abload")
        self.ports = {k: free_port() for k in ("fast", "burst", "lag", "iso")}
        self.gates = {}
        for k in ("burst", "lag", "iso"):
            self.gates[k] = os.path.join(self.work, "gate-" + k)
            os.makedirs(self.gates[k])

    # The services: one plain nginx (no module) with a fast server and the
    # gated "cold" servers, and one controld that knows all of them.
    def start_services(self):
        body = ["server {{ listen 127.0.0.1:{p} backlog=4096; location / {{ return 200 \"hello from fast\\n\"; }} }}"
                .format(p=self.ports["fast"])]
        for k in ("burst", "lag", "iso"):
            body.append(textwrap.dedent("""\
                server {{
                    listen 127.0.0.1:{p} backlog=4096;
                    location = /healthz {{ if (!-f {d}/ready) {{ return 503 "booting\\n"; }} return 200 "ok\\n"; }}
                    location / {{ if (!-f {d}/ready) {{ return 503 "booting\\n"; }} return 200 "hello from {k}\\n"; }}
                }}""").format(p=self.ports[k], d=self.gates[k], k=k))
        self.upstream = Nginx(self, "upstream", "\n".join(body), workers=1, module=False, worker_connections=30000,
                              ports=self.ports.values(), cpus=self.cpu_mask(0))
        services = ["fast:\n  health_url: http://127.0.0.1:%d/\n" % self.ports["fast"],
                    # The routing benchmark's model server: the same fast server, chosen by a body's "model".
                    "llm:\n  health_url: http://127.0.0.1:{p}/\n  base_url: http://127.0.0.1:{p}\n"
                    "  models: [bench-model]\n".format(p=self.ports["fast"])]
        delays = {"burst": ["--after", str(self.burst_ready_after())],
                  "lag": ["--after", str(self.lag_delay[0]), "--after-max", str(self.lag_delay[1])],
                  "iso": ["--after", "36000"]}
        for k in ("burst", "lag", "iso"):
            start = [PYTHON, GATE, "start", "--dir", self.gates[k]] + delays[k]
            stop = [PYTHON, GATE, "stop", "--dir", self.gates[k]]
            services.append(textwrap.dedent("""\
                {k}:
                  health_url: http://127.0.0.1:{p}/healthz
                  idle_timeout: 0
                  start_timeout: 12h
                  start_command: {start}
                  stop_command: {stop}
                """).format(k=k, p=self.ports[k], start=json.dumps(start), stop=json.dumps(stop)))
        self.ctl = Controld(self, "controld", "".join(services))

    def cpu_mask(self, i):
        """nginx's worker_cpu_affinity for CPU i (None on a single-CPU machine)."""
        n = os.cpu_count() or 1
        if n < 2:
            return None
        return "".join("1" if c == i % n else "0" for c in reversed(range(n)))

    @property
    def lag_delay(self):
        return (0.05, 0.25) if self.quick else (0.2, 0.8)

    def burst_ready_after(self):
        return 1.0 if self.quick else 3.0

    def front(self, name, servers, workers=1, worker_connections=4096, cpus=None):
        """An nginx with the module: `servers` plus a status server; returns it with .status_port set."""
        upstreams = "\n".join(self.upstream_conf(k) for k in self.ports)
        status_port = free_port()
        # reuseport: successive status requests reach every worker.
        status = ("server {{ listen 127.0.0.1:{p}{rp}; location = /ondemand {{ ondemand_status; }} "
                  "location = /nginx {{ stub_status; }} }}").format(p=status_port,
                                                                   rp=" reuseport" if workers > 1 else "")
        body = "ondemand_control unix:%s;\n%s\n%s\n%s" % (self.ctl.socket, upstreams, servers, status)
        ports = [int(p) for p in re.findall(r"listen 127\.0\.0\.1:(\d+)", servers)] + [status_port]
        ng = Nginx(self, name, body, workers=workers, worker_connections=worker_connections, ports=ports, cpus=cpus)
        ng.status_port = status_port
        # Every worker has controld's table (a request finds its service's state).
        synced = set()

        def all_synced():
            st = self.module_status(ng)
            if st["controld"]["status"] == "connected":
                synced.add(st.get("pid"))
            return set(ng.workers()) <= synced

        wait_until(all_synced, 20, "every worker of nginx %s connected to controld" % name)
        return ng

    def upstream_conf(self, k):
        return "upstream {k} {{ server 127.0.0.1:{p}; keepalive 32; keepalive_requests 1000000; }}".format(
            k=k, p=self.ports[k])

    def shown_config(self, servers, *upstreams):
        """What RESULTS.md shows of a front nginx: the upstreams used and the servers."""
        return "\n".join([self.upstream_conf(k) for k in upstreams] + [servers.strip()])

    @staticmethod
    def module_status(ng):
        code, body = http_get(ng.status_port, "/ondemand")
        if code != 200:
            return {"controld": {"status": "?"}, "services": []}
        return json.loads(body)

    def waiting(self, ng, service):
        for s in self.module_status(ng)["services"]:
            if s["name"] == service:
                return s["waiting"]
        return 0

    def gate_ready(self, k):
        """(monotonic ns, unix ns) at which the gated service k became healthy, or None."""
        try:
            with open(os.path.join(self.gates[k], "ready")) as f:
                mono, unix = f.read().split()
                return int(mono), int(unix)
        except (OSError, ValueError):
            return None

    def gate_starts(self, k):
        try:
            with open(os.path.join(self.gates[k], "starts")) as f:
                return len(f.read().splitlines())
        except OSError:
            return 0

    def make_cold(self, k):
        if self.ctl.state(k) != "cold":
            self.ctl.stop_service(k)
        wait_until(lambda: self.ctl.state(k) == "cold", 30, "%s cold" % k)
        if self.gate_ready(k) is not None:
            raise RuntimeError("%s is cold but its ready file is there" % k)

    def abload(self, a_port, b_port, conns, seconds, slice_ms=250, warmup=1.0, cpu=0, body=None, cpu_pid=None):
        """With cpu_pid (the one nginx worker serving A and B): each target's CPU time of that worker per
        answer, from the slices (only one target is in flight during a slice)."""
        argv = ([] if cpu is None or (os.cpu_count() or 1) < 2 else ["taskset", "-c", str(cpu)]) + [
            self.abload_bin, "--a", str(a_port), "--b", str(b_port), "--conns", str(conns), "--slice-ms",
            str(slice_ms), "--seconds", str(seconds), "--warmup", str(warmup)] + (["--body", body] if body else []) + (
            ["--cpu-pid", str(cpu_pid)] if cpu_pid else [])
        load_before = os.getloadavg()[0]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + warmup + 60)
        if out.returncode != 0:
            raise RuntimeError("abload failed: %s" % out.stderr)
        r = json.loads(out.stdout)
        r["command"] = " ".join(argv)
        for t in "AB":
            if r[t]["errors"]:
                raise RuntimeError("abload: %d errors on %s" % (r[t]["errors"], t))
            sl = [x for x in r["slices"] if x["t"] == t]
            r[t]["rps"] = sum(x["n"] for x in sl) / (sum(x["us"] for x in sl) / 1e6)
            if cpu_pid:
                r[t]["cpu_us_per_request"] = sum(x["cpu_us"] for x in sl) / max(1, sum(x["n"] for x in sl))
        r["load"] = (load_before, os.getloadavg()[0])  # 1-minute load average before and after
        # One figure per ABBA group: B's answers per second over A's.
        groups = []
        sl = r["slices"]
        for g in range(0, len(sl) - 3, 4):
            a = sl[g]["n"] + sl[g + 3]["n"], sl[g]["us"] + sl[g + 3]["us"]
            b = sl[g + 1]["n"] + sl[g + 2]["n"], sl[g + 1]["us"] + sl[g + 2]["us"]
            groups.append((b[0] / b[1]) / (a[0] / a[1]))
        r["group_ratios"] = groups
        r["ratio"] = r["B"]["rps"] / r["A"]["rps"]
        return r

    # --- 1. warm path ------------------------------------------------------------

    def warm_path(self):
        """The same location with and without ondemand_service, same upstream, keep-alive."""
        runs = 2 if self.quick else 4
        seconds = 2 if self.quick else 15
        lat_seconds = 2 if self.quick else 10
        pa, pb = free_port(), free_port()
        servers = "# A\n" + server(pa, proxy_location("fast")) + "# B\n" + server(
            pb, proxy_location("fast", "ondemand_service fast;"))
        self.ctl.start("fast")
        ng = self.front("front-warm", servers, cpus=self.cpu_mask(1))
        self.configs["warm"] = self.shown_config(servers, "fast")
        try:
            tput, lat = [], []
            for r in range(runs):
                tput.append(self.abload(pa, pb, 32, seconds))
                lat.append(self.abload(pa, pb, 1, lat_seconds))
                log("warm path run %d: throughput ratio %.3f (%.0f vs %.0f req/s); p99 at 1 connection %d vs %d us"
                    % (r + 1, tput[-1]["ratio"], tput[-1]["A"]["rps"], tput[-1]["B"]["rps"], lat[-1]["A"]["p99_us"],
                       lat[-1]["B"]["p99_us"]))
            self.results["warm"] = {"tput": tput, "lat": lat, "seconds": seconds, "lat_seconds": lat_seconds}
        finally:
            ng.stop()

    # --- 6. routed POST ---------------------------------------------------------

    def chat_body(self, size):
        """An OpenAI chat request of exactly `size` bytes, "model" last; returns its file."""
        head, tail = '{"messages":[{"role":"user","content":"', '"}],"stream":false,"model":"bench-model"}'
        text = head + "x" * (size - len(head) - len(tail)) + tail
        path = os.path.join(self.work, "body-%d.json" % size)
        with open(path, "w") as f:
            f.write(text)
        return path

    def routing(self):
        """The same POST through a plain proxy_pass location (A) and a location that chooses the service
        from the body's "model" (B): the module reads the body, scans it and resolves the model."""
        runs = 2 if self.quick else 6  # (a noisy machine: the median of six, each of interleaved A B B A slices)
        seconds = 2 if self.quick else 10
        pa, pb = free_port(), free_port()
        upstream = "upstream llm { server 127.0.0.1:%d; keepalive 32; keepalive_requests 1000000; }" % (
            self.ports["fast"])
        plain = proxy_location("llm")
        routed = proxy_location("$ondemand_service", "ondemand_service $ondemand_model;")
        servers = upstream + "\n# A\n" + server(pa, plain) + "# B\n" + server(pb, routed)
        self.ctl.start("llm")
        ng = self.front("front-routing", servers, cpus=self.cpu_mask(1))
        self.configs["routing"] = servers
        try:
            started = self.ctl.status("llm")["services"][0].get("started_total", 0)
            sizes = {}
            worker = ng.workers()[0]
            settings = ((1024, 32), (256 * 1024, 8))
            bodies = {size: self.chat_body(size) for size, _ in settings}
            for size, conns in settings:
                sizes[str(size)] = {"runs": [], "conns": conns}
            # The sizes take turns run by run, so a busy spell of the machine falls on both.
            for r in range(runs):
                for size, conns in settings:
                    x = self.abload(pa, pb, conns, seconds, body=bodies[size], cpu_pid=worker)
                    sizes[str(size)]["runs"].append(x)
                    log("routing %d B run %d: throughput ratio %.3f (%.0f vs %.0f req/s); worker CPU per request "
                        "%.1f vs %.1f us; load %.1f" % (size, r + 1, x["ratio"], x["A"]["rps"], x["B"]["rps"],
                                                        x["A"]["cpu_us_per_request"], x["B"]["cpu_us_per_request"],
                                                        x["load"][1]))
            # B's requests went through the module to the service it chose.
            routed_n = self.ctl.status("llm")["services"][0].get("started_total", 0) - started
            self.results["routing"] = {"sizes": sizes, "seconds": seconds, "routed": routed_n}
            self.commands["routing"] = sizes["1024"]["runs"][0]["command"]
        finally:
            ng.stop()

    # --- 2. cold burst -----------------------------------------------------------

    def burst_front(self, name, n, location_extra, zone=""):
        """Two workers (reuseport spreads the connections): each one holds about n/2
        requests and, once they go on, as many connections to the service."""
        port = free_port()
        self.access_logs = getattr(self, "access_logs", 0) + 1
        servers = (zone + "\n" if zone else "") + \
            "log_format held '$status $ondemand_state $ondemand_wait_ms $msec $pid';\n" + server(
                port, "access_log %s/%s/logs/held.log held buffer=256k;\n" % (self.work, name) +
                proxy_location("burst", location_extra), " reuseport backlog=4096")
        ng = self.front(name, servers, workers=2, worker_connections=n + 1024)
        ng.port = port
        return ng, servers

    def writing(self, ng):
        """stub_status's "Writing": requests being processed, in every worker (this one included)."""
        code, body = http_get(ng.status_port, "/nginx")
        m = re.search(r"Writing: (\d+)", body)
        return int(m.group(1)) if m else 0

    @staticmethod
    def held_log(ng):
        """(answered after being held, {"status state waited": count} of the other lines) from
        the burst server's access log."""
        held, other = 0, {}
        with open(os.path.join(ng.prefix, "logs", "held.log")) as f:
            for line in f:
                status, state, waited = line.split()[:3]
                if state in ("cold", "starting") and int(waited) > 0:
                    held += 1
                else:
                    key = "%s %s %s" % (status, state, waited)
                    other[key] = other.get(key, 0) + 1
        return held, other

    def burst_round_held(self, n, r):
        """N requests held on the cold service; released when it becomes healthy."""
        self.make_cold("burst")
        loc = "ondemand_service burst; ondemand_max_waiting %d; ondemand_wait 120s;" % (n + 100)
        ng, servers = self.burst_front("front-burst-%d-%d" % (n, r), n, loc)
        self.configs["burst"] = self.shown_config(servers, "burst")
        try:
            rss0 = ng.worker_rss_kib()
            starts0 = self.gate_starts("burst")
            times = os.path.join(self.work, "burst-%d-%d.times" % (n, r))
            hl = HoldLoad(self, ng.port, n, times=times, expect="hello from burst", timeout=120)
            self.commands["burst"] = hl.command
            hl.wait_for("sent", 60)
            # Every request is in the workers (parked) before the service is up.
            wait_until(lambda: self.writing(ng) >= n + 1 or self.gate_ready("burst"), 60, "%d held" % n,
                       interval=0.02)
            rss1 = ng.worker_rss_kib()
            ready_early = self.gate_ready("burst") is not None
            done = hl.finish(180)
            ready = self.gate_ready("burst")
            if ready is None:
                raise RuntimeError("burst: answered but never ready?")
            lags = []
            with open(times) as f:
                for line in f:
                    ns, status, ok = line.split()
                    lags.append((int(ns) - ready[0]) / 1e6)
            starts = self.gate_starts("burst") - starts0
            ng.stop()  # flushes the access log
            held, other = self.held_log(ng)
            res = {"n": n, "held": held, "not_held": other, "ready_before_all_held": ready_early, "rss0_kib": rss0, "rss1_kib": rss1,
                   "kib_per_request": (rss1 - rss0) / n, "done": done, "starts": starts,
                   "lag_ms": sorted(lags), "p50_ms": percentile(lags, 50), "p99_ms": percentile(lags, 99),
                   "max_ms": max(lags), "min_ms": min(lags)}
            log("burst %d held: %d held, %d answered by the service, %d start(s), %.2f KiB/request, "
                "answered %.1f..%.1f ms (p99 %.1f) after healthy" % (
                    n, held, done["service"], starts, res["kib_per_request"], res["min_ms"], res["max_ms"],
                    res["p99_ms"]))
            return res
        finally:
            ng.stop()

    def burst_round_warm(self, n, r):
        """Baseline: the same N requests arriving at once on the service already warm."""
        self.make_cold("burst")
        # Already booted: the first health probe answers.
        with open(os.path.join(self.gates["burst"], "ready"), "w") as f:
            f.write("%d %d\n" % (time.monotonic_ns(), time.time_ns()))
        self.ctl.start("burst")
        loc = "ondemand_service burst; ondemand_max_waiting %d; ondemand_wait 120s;" % (n + 100)
        ng, _ = self.burst_front("front-burstw-%d-%d" % (n, r), n, loc)
        try:
            times = os.path.join(self.work, "burstw-%d-%d.times" % (n, r))
            hl = HoldLoad(self, ng.port, n, times=times, expect="hello from burst", timeout=120, connect_first=True)
            self.commands["burst_warm"] = hl.command
            t0 = hl.wait_for("connected", 60)
            done = hl.finish(180)
            lags = []
            with open(times) as f:
                for line in f:
                    lags.append((int(line.split()[0]) - t0) / 1e6)
            res = {"n": n, "done": done, "lag_ms": sorted(lags), "p50_ms": percentile(lags, 50),
                   "p99_ms": percentile(lags, 99), "max_ms": max(lags)}
            log("burst %d warm baseline: %d answered by the service, p99 %.1f ms after sending" % (
                n, done["service"], res["p99_ms"]))
            return res
        finally:
            ng.stop()

    def burst_round_limit_req(self, n, r):
        """Baseline for memory: nginx holding the same N requests by its own means (limit_req's delay)."""
        zone = "limit_req_zone $server_port zone=hold:1m rate=1r/m;"
        loc = "limit_req zone=hold burst=%d;" % (n + 100)
        ng, _ = self.burst_front("front-burstl-%d-%d" % (n, r), n, loc, zone=zone)
        try:
            rss0 = ng.worker_rss_kib()
            hl = HoldLoad(self, ng.port, n, hold=120, timeout=120)
            hl.wait_for("sent", 60)
            # n delayed (one passes at once and is answered); the status request is writing too.
            wait_until(lambda: self.writing(ng) >= n, 60, "%d delayed by limit_req" % n, interval=0.02)
            rss1 = ng.worker_rss_kib()
            hl.kill()
            res = {"n": n, "rss0_kib": rss0, "rss1_kib": rss1, "kib_per_request": (rss1 - rss0) / n}
            log("burst %d limit_req baseline: %.2f KiB/request" % (n, res["kib_per_request"]))
            return res
        finally:
            ng.stop()

    def cold_burst(self):
        sizes = [200] if self.quick else [1000, 10000]
        rounds = 1 if self.quick else 3
        out = {}
        for n in sizes:
            rs = {"held": [], "warm": [], "limit_req": []}
            for r in range(rounds):
                order = ["held", "warm", "limit_req"] if r % 2 == 0 else ["limit_req", "warm", "held"]
                for kind in order:
                    fn = {"held": self.burst_round_held, "warm": self.burst_round_warm,
                          "limit_req": self.burst_round_limit_req}[kind]
                    rs[kind].append(fn(n, r))
            out[n] = rs
        self.make_cold("burst")
        self.results["burst"] = out

    # --- 3. release lag ----------------------------------------------------------

    def release_lag(self):
        starts = 5 if self.quick else 50
        port = free_port()
        servers = server(port, proxy_location("lag", "ondemand_service lag;"))
        ng = self.front("front-lag", servers, cpus=self.cpu_mask(1))
        self.configs["lag"] = self.shown_config(servers, "lag")
        rows = []
        try:
            for i in range(starts):
                self.make_cold("lag")
                times = os.path.join(self.work, "lag-%d.times" % i)
                hl = HoldLoad(self, port, 1, times=times, expect="hello from lag", timeout=30)
                self.commands["lag"] = hl.command
                done = hl.finish(60)
                ready = self.gate_ready("lag")
                if done["service"] != 1 or ready is None:
                    raise RuntimeError("release lag: request %d not answered by the service: %s" % (i, done))
                answered = done["last_ns"]
                lag = (answered - ready[0]) / 1e6
                # controld's side: when it saw the service healthy (ms resolution).
                hist = self.ctl.status("lag")["services"][0]["history"]
                warm_at = max(h["at"] for h in hist if h["to"] == "warm")
                probe_ms = warm_at - ready[1] / 1e6
                # Reference: the same request now that the service is warm.
                hw = HoldLoad(self, port, 1, expect="hello from lag", timeout=30, connect_first=True)
                sent = hw.wait_for("connected", 30)
                w = hw.finish(30)
                rows.append({"lag_ms": lag, "probe_ms": probe_ms, "after_warm_ms": lag - probe_ms,
                             "warm_request_ms": (w["last_ns"] - sent) / 1e6})
                log("cold start %d: answered %.1f ms after healthy (controld saw it after ~%.0f ms)" % (
                    i + 1, lag, probe_ms))
            self.make_cold("lag")
        finally:
            ng.stop()
        self.results["lag"] = rows

    # --- 4. isolation ------------------------------------------------------------

    def isolation(self):
        runs = 1 if self.quick else 4
        seconds = 2 if self.quick else 12
        n = 200 if self.quick else 1000
        pw, pc = free_port(), free_port()
        servers = server(pw, proxy_location("fast", "ondemand_service fast;")) + server(
            pc, proxy_location("iso", "ondemand_service iso; ondemand_wait 600s; ondemand_max_waiting %d;" % (n + 100)))
        self.configs["isolation"] = self.shown_config(servers, "fast", "iso")
        self.ctl.start("fast")
        self.make_cold("iso")
        # Two identical nginx: X holds n requests on the cold service, Y does not.
        y = self.front("front-iso-y", servers, cpus=self.cpu_mask(1))
        servers_x = servers.replace(str(pw), str(free_port())).replace(str(pc), str(free_port()))
        x = self.front("front-iso-x", servers_x, cpus=self.cpu_mask(1))
        xw, xc = [int(p) for p in re.findall(r"listen 127\.0\.0\.1:(\d+)", servers_x)]
        res = []
        try:
            for r in range(runs):
                hl = HoldLoad(self, xc, n, hold=seconds + 60, timeout=seconds + 60)
                self.commands["isolation_hold"] = hl.command
                hl.wait_for("sent", 60)
                wait_until(lambda: self.waiting(x, "iso") >= n, 60, "%d held" % n, interval=0.02)
                state = self.ctl.state("iso")
                # A: Y's warm service (nothing held); B: X's (n held).
                ab = self.abload(pw, xw, 32, seconds)
                held_after = self.waiting(x, "iso")
                hl.kill()
                wait_until(lambda: self.waiting(x, "iso") == 0, 30, "held requests gone")
                ab["held"] = held_after
                ab["cold_state"] = state
                res.append(ab)
                log("isolation run %d: warm throughput with %d held %.3f of without (%.0f vs %.0f req/s)" % (
                    r + 1, held_after, ab["ratio"], ab["B"]["rps"], ab["A"]["rps"]))
        finally:
            x.stop()
            y.stop()
        self.make_cold("iso")
        self.results["isolation"] = {"runs": res, "n": n, "seconds": seconds}

    # --- 5. controld at scale -----------------------------------------------------

    def controld_scale(self):
        script = os.path.join(HERE, "controld_scale.py")
        configs = [("baseline", 100, 8), ("scale", 1000, 8)] if not self.quick else [("baseline", 50, 2),
                                                                                   ("scale", 200, 2)]
        idle = 3 if self.quick else 60
        out = {}
        for name, services, clients in configs:
            js = os.path.join(self.work, "scale-%s.json" % name)
            argv = [PYTHON, script, "--controld", self.controld, "--services", str(services), "--clients",
                    str(clients), "--idle-seconds", str(idle), "--json", js]
            if self.quick:
                argv += ["--fanout-rounds", "20"]
            log("controld with %d services, %d subscribers (%.0f s idle)" % (services, clients, idle))
            p = subprocess.run(argv, capture_output=True, text=True, timeout=idle + 600)
            if p.returncode != 0:
                raise RuntimeError("controld_scale.py failed: %s %s" % (p.stdout, p.stderr))
            with open(js) as f:
                out[name] = json.load(f)
            out[name]["command"] = " ".join(shlex.quote(a) for a in argv)
        self.results["scale"] = out

    # --- 7. the cluster -----------------------------------------------------------

    def cluster(self):
        js = os.path.join(self.work, "cluster.json")
        argv = [PYTHON, os.path.join(HERE, "cluster_bench.py"), "--controld", self.controld, "--module", self.module,
                "--json", js] + (["--quick"] if self.quick else [])
        log("cluster: 3-member etcd, 3 controlds: propagation, warm path, cold bursts")
        p = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
        if p.returncode != 0:
            raise RuntimeError("cluster_bench.py failed: %s %s" % (p.stdout, p.stderr[-3000:]))
        with open(js) as f:
            out = json.load(f)
        out["command"] = " ".join(shlex.quote(a) for a in argv)
        self.results["cluster"] = out
    # --- 8. swap on a shared machine -----------------------------------------------

    def swap(self):
        script = os.path.join(HERE, "swap_overhead.py")
        js = os.path.join(self.work, "swap.json")
        swaps = 6 if self.quick else 20
        argv = [PYTHON, script, "--controld", self.controld, "--swaps", str(swaps), "--json", js]
        log("swap overhead over %d swaps on one shared machine" % swaps)
        p = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        if p.returncode != 0:
            raise RuntimeError("swap_overhead.py failed: %s %s" % (p.stdout, p.stderr))
        with open(js) as f:
            out = json.load(f)
        out["command"] = " ".join(shlex.quote(a) for a in argv)
        self.results["swap"] = out


# --- the report ------------------------------------------------------------------


def fmt(x, digits=3):
    if isinstance(x, float):
        return ("%%.%df" % digits) % x
    return str(x)


def spread(values, digits=3, unit=""):
    """'median (min..max)' of per-round figures."""
    return "%s%s (%s..%s)" % (fmt(statistics.median(values), digits), unit, fmt(min(values), digits),
                              fmt(max(values), digits))


def machine():
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    nginx_v = subprocess.run([NGINX, "-v"], capture_output=True, text=True).stderr.strip().replace("nginx version: ", "")
    try:
        debian = open("/etc/debian_version").read().strip()
    except OSError:
        debian = "?"
    commit = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"], capture_output=True,
                            text=True).stdout.strip() or "?"
    return {"cpu": model, "cores": os.cpu_count(), "mem_gib": mem_kib / 1048576.0, "kernel": platform.release(),
            "debian": debian, "nginx": nginx_v, "commit": commit,
            "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[1]}


def size_text(n):
    return "%d KiB" % (n // 1024) if n >= 1024 else "%d B" % n


def yes(ok):
    return "**met**" if ok else "**not met**"


class Report:
    def __init__(self, bench, elapsed, argv):
        self.b = bench
        self.r = bench.results
        self.elapsed = elapsed
        self.argv = argv
        self.lines = []
        self.plots = []

    def w(self, text=""):
        self.lines.append(text)

    def show(self, command):
        """A command line as a reader would type it: paths of this run's build and work directory
        shortened (BUILD = the build directory, WORK = a scratch directory)."""
        command = command or "?"
        for path, name in ((self.b.work, "WORK"), (self.b.build, "BUILD"), (HERE, "bench"), (PYTHON, "python3")):
            command = command.replace(path, name)
        return command

    def data(self, name, rows):
        path = os.path.join(self.b.work, name)
        with open(path, "w") as f:
            for row in rows:
                f.write(" ".join(str(x) for x in row) + "\n")
        return path

    def plot(self, name, script):
        png = os.path.join(self.b.out, name)
        if shutil.which("gnuplot") is None:
            log("gnuplot not found: no %s" % name)
            return None
        full = ("set terminal pngcairo size 900,520 font 'sans,10' noenhanced\nset output '%s'\nset grid\n"
                "set key left top\n%s\n") % (
            png, script)
        p = subprocess.run(["gnuplot"], input=full, capture_output=True, text=True)
        if p.returncode != 0:
            log("gnuplot failed for %s: %s" % (name, p.stderr))
            return None
        self.plots.append(name)
        return name

    # --- sections -------------------------------------------------------------------

    def summary_rows(self):
        rows = []
        r = self.r
        if "warm" in r:
            tput = [x["ratio"] for x in r["warm"]["tput"]]
            p99 = [(x["B"]["p99_us"] - x["A"]["p99_us"]) / 1000.0 for x in r["warm"]["lat"]]
            rows.append(("1", "warm path: throughput with / without `ondemand_service`", "≥ 0.97",
                         spread(tput), yes(statistics.median(tput) >= 0.97)))
            rows.append(("1", "warm path: added p99 latency (1 connection)", "≤ 0.1 ms",
                         spread(p99, 3, " ms"), yes(statistics.median(p99) <= 0.1)))
        if "burst" in r:
            for n, rs in sorted(r["burst"].items(), key=lambda kv: int(kv[0])):
                held = rs["held"]
                starts = [x["starts"] for x in held]
                answered = [x["done"]["service"] / x["n"] for x in held]
                rows.append(("2", "cold burst %s: starts" % f"{int(n):,}", "exactly 1",
                             ", ".join(str(x) for x in starts), yes(all(x == 1 for x in starts))))
                rows.append(("2", "cold burst %s: answered by the service" % f"{int(n):,}", "100 %",
                             ", ".join("%.2f %%" % (100 * a) for a in answered), yes(all(a == 1.0 for a in answered))))
                kib = [x["kib_per_request"] for x in held]
                base = [x["kib_per_request"] for x in rs["limit_req"]]
                extra = [a - b for a, b in zip(kib, base)]
                rows.append(("2", "cold burst %s: worker RSS per held request (RSS delta / N)" % f"{int(n):,}",
                             "≤ 4 KiB", spread(kib, 2, " KiB"), yes(statistics.median(kib) <= 4)))
                rows.append(("2", "cold burst %s: of which the module's (minus nginx's own hold, `limit_req`)"
                             % f"{int(n):,}", "≤ 4 KiB", spread(extra, 2, " KiB"), yes(statistics.median(extra) <= 4)))
                p99 = [x["p99_ms"] for x in held]
                rows.append(("2", "cold burst %s: p99 answered after the service became healthy" % f"{int(n):,}",
                             "≤ 100 ms", spread(p99, 1, " ms"), yes(statistics.median(p99) <= 100)))
                # nginx's own time for the same N requests arriving together at the warm service:
                # what proxying N requests costs on this machine, held or not.
                added = [x["p99_ms"] - w["p99_ms"] for x, w in zip(held, rs["warm"])]
                rows.append(("2", "cold burst %s: of which holding adds (minus the same N sent to the warm service)"
                             % f"{int(n):,}", "≤ 100 ms", spread(added, 1, " ms"), yes(statistics.median(added) <= 100)))
        if "lag" in r:
            lags = [x["lag_ms"] for x in r["lag"]]
            rows.append(("3", "release lag over %d cold starts: median / p99" % len(lags), "p99 ≤ 50 ms",
                         "%.1f / %.1f ms" % (statistics.median(lags), percentile(lags, 99)),
                         yes(percentile(lags, 99) <= 50)))
        if "isolation" in r:
            ratios = [x["ratio"] for x in r["isolation"]["runs"]]
            rows.append(("4", "isolation: warm throughput while %s requests wait / without"
                         % f"{r['isolation']['n']:,}", "≥ 0.95", spread(ratios), yes(statistics.median(ratios) >= 0.95)))
        if "routing" in r:
            for size, rs in sorted(r["routing"]["sizes"].items(), key=lambda kv: int(kv[0])):
                ratios = [x["ratio"] for x in rs["runs"]]
                rows.append(("7", "routed POST, %s JSON body, model last: throughput by `$ondemand_model` / plain "
                             "`proxy_pass`" % size_text(int(size)), "≥ 0.95", spread(ratios),
                             yes(statistics.median(ratios) >= 0.95)))
        if "scale" in r:
            s = r["scale"]["scale"]
            rows.append(("5", "controld, %s services, %d subscribers: idle CPU / RSS" % (f"{s['services']:,}",
                                                                                      s["clients"]),
                         "—", "%.2f %% of a core / %.1f MiB" % (s["idle_cpu_percent_of_core"], s["rss_mib"]), "—"))
            rows.append(("5", "controld: push to every subscriber, median / p99", "—",
                         "%.2f / %.2f ms" % (s["fanout_ms_median"], s["fanout_ms_p99"]), "—"))
            rows.append(("5", "controld: wakes per second (duplicate / first)", "—",
                         "%s / %s" % (f"{s['duplicate_wakes_per_second']:,}", f"{s['first_wakes_per_second']:,}"), "—"))
        if "cluster" in r:
            c = r["cluster"]
            rows.append(("6", "cluster: state change on the owner seen by every node's workers, median / p99 over %d"
                         % c["propagation"]["changes"], "p99 ≤ 100 ms",
                         "%.1f / %.1f ms" % (c["propagation"]["median_ms"], c["propagation"]["p99_ms"]),
                         yes(c["propagation"]["p99_ms"] <= 100)))
            rows.append(("6", "cluster: warm throughput with `cluster:` / without", "≥ 0.99",
                         spread(c["warm"]["ratios"]), yes(c["warm"]["ratio_median"] >= 0.99)))
            rows.append(("6", "cluster: double starts over %d concurrent cold bursts (%d requests over 3 nodes each)"
                         % (c["bursts"]["rounds"], c["bursts"]["requests_per_round"]), "0",
                         str(c["bursts"]["double_starts"]), yes(c["bursts"]["double_starts"] == 0)))
        if "swap" in r:
            w = r["swap"]
            rows.append(("8", "swap on a shared machine: controld's overhead over %d swaps, median / p99" % w["swaps"],
                         "p99 ≤ 50 ms", "%.1f / %.1f ms" % (w["overhead_median_ms"], w["overhead_p99_ms"]),
                         yes(w["overhead_p99_ms"] <= 50)))
        return rows

    def cluster(self):
        c = self.r.get("cluster")
        if not c:
            return
        p, w, b = c["propagation"], c["warm"], c["bursts"]
        self.w("## 6. The cluster")
        self.w()
        self.w("`bench/cluster_bench.py`: a 3-member etcd from Debian's etcd-server, 3 controlds with `cluster:` "
               "(node-1 owns every service), on 127.0.0.1 (docs/CLUSTER.md).")
        self.w()
        self.w("- Propagation: `controld start|stop --wait` on the owner, %d state changes; a subscriber on each "
               "node's socket (it receives what the node's workers receive) timestamps each epoch; the figure is "
               "each other node's arrival minus the owner's own push: median %.1f ms, p99 %.1f ms, max %.1f ms "
               "(%d samples)." % (p["changes"], p["median_ms"], p["p99_ms"], p["max_ms"], p["samples"]))
        self.w("- Warm path: `wrk -t1 -c16` through an nginx whose controld has `cluster:` and one whose controld "
               "has not, alternated, same run, same static upstream: %s requests/s against %s; ratios %s. The warm "
               "path never leaves the worker, so etcd plays no part in it." % (
                   ", ".join("%.0f" % x for x in w["cluster_rps"]), ", ".join("%.0f" % x for x in w["alone_rps"]),
                   ", ".join("%.3f" % x for x in w["ratios"])))
        self.w("- Cold bursts: %d rounds of %d requests at once, spread over the 3 nginx, to a cold service whose "
               "start command counts its runs; `controld stop --wait` between rounds: %d double starts, %d requests "
               "not answered 200." % (b["rounds"], b["requests_per_round"], b["double_starts"], b["failed_requests"]))
        self.w()
        self.w("Command: `%s`." % self.show(c["command"]))
        self.w()

    def header(self):
        m = machine()
        self.m = m
        b = self.b
        self.w("# ondemand benchmarks: results")
        self.w()
        self.w("Produced by `%s` on %s, in %.1f minutes. Every figure below comes from that run."
               % (" ".join(self.argv), datetime.datetime.now().strftime("%Y-%m-%d %H:%M %Z").strip(), self.elapsed / 60))
        self.w()
        self.w("| | |")
        self.w("| --- | --- |")
        self.w("| machine | %s, %d cores, %.1f GiB RAM, Linux %s, Debian %s |" % (m["cpu"], m["cores"], m["mem_gib"],
                                                                                   m["kernel"], m["debian"]))
        self.w("| nginx | %s (`/usr/sbin/nginx`, Debian), with `ngx_http_ondemand_module.so` from this tree |" % m["nginx"])
        self.w("| ondemand | `%s` (`git describe`), RelWithDebInfo build |" % m["commit"])
        self.w("| load | `abload` and `holdload` (`bench/*.c`, built with the project), on 127.0.0.1 |")
        self.w("| open files | hard limit %s |" % m["nofile"])
        self.w()
        self.w("The machine is shared with other builds and tests, so each figure is a ratio or a difference "
               "against a baseline measured in the same run, A and B alternating; a figure is given as "
               "**median (min..max)** over rounds.")
        self.w()

    def summary(self):
        self.w("## Summary")
        self.w()
        self.w("| # | figure | target | result | |")
        self.w("| --- | --- | --- | --- | --- |")
        for row in self.summary_rows():
            self.w("| %s |" % " | ".join(row))
        self.w()
        self.w("Where a target is not met, [README.md](README.md#reading-the-results) says where the time or the "
               "memory goes.")
        self.w()

    def warm(self):
        r = self.r.get("warm")
        if not r:
            return
        self.w("## 1. Warm path")
        self.w()
        self.w("One nginx (1 worker), two servers with the same location and the same upstream (kept-alive "
               "connections to a plain nginx answering `return 200`); B adds `ondemand_service fast;` (the service "
               "is warm). `abload` alternates between A and B every 250 ms (A B B A ...), with the same number of "
               "connections on each side; a run's figure is B's answers per second over A's, or B's p99 minus A's.")
        self.w()
        self.w("```nginx")
        self.w(self.show(self.b.configs["warm"]))
        self.w("```")
        self.w()
        tput, lat = r["tput"], r["lat"]
        self.w("| load | figure | per run | median (min..max) |")
        self.w("| --- | --- | --- | --- |")
        ratios = [x["ratio"] for x in tput]
        self.w("| 32 connections, %d s per run | throughput B / A | %s | %s |" % (
            r["seconds"], ", ".join("%.3f" % x for x in ratios), spread(ratios)))
        self.w("| | req/s A / B | %s | |" % ", ".join("%.0f / %.0f" % (x["A"]["rps"], x["B"]["rps"]) for x in tput))
        d = [(x["B"]["p99_us"] - x["A"]["p99_us"]) / 1000.0 for x in tput]
        self.w("| | p99 B − A | %s | %s |" % (", ".join("%+.3f ms" % x for x in d), spread(d, 3, " ms")))
        d = [(x["B"]["p99_us"] - x["A"]["p99_us"]) / 1000.0 for x in lat]
        self.w("| 1 connection, %d s per run | p99 B − A | %s | %s |" % (
            r["lat_seconds"], ", ".join("%+.3f ms" % x for x in d), spread(d, 3, " ms")))
        d = [(x["B"]["p50_us"] - x["A"]["p50_us"]) / 1000.0 for x in lat]
        self.w("| | p50 B − A | %s | %s |" % (", ".join("%+.3f ms" % x for x in d), spread(d, 3, " ms")))
        self.w("| | p50 / p99 A, B | %s | |" % ", ".join(
            "%.3f / %.3f, %.3f / %.3f ms" % (x["A"]["p50_us"] / 1e3, x["A"]["p99_us"] / 1e3, x["B"]["p50_us"] / 1e3,
                                             x["B"]["p99_us"] / 1e3) for x in lat))
        self.w()
        groups = [g for x in tput for g in x["group_ratios"]]
        self.w("Per A-B-B-A group of slices (1 s): median %.3f, quartiles %.3f..%.3f over %d groups: the spread "
               "of single seconds on this shared machine, which the alternation cancels." % (
                   statistics.median(groups), percentile(groups, 25), percentile(groups, 75), len(groups)))
        self.w()
        rows = []
        t = 0.0
        for x in tput:
            for sl in x["slices"]:
                t += sl["us"] / 1e6
                rows.append((round(t, 3), sl["t"], round(sl["n"] / (sl["us"] / 1e6))))
        da = self.data("warm-a.dat", [(t_, v) for t_, k, v in rows if k == "A"])
        db = self.data("warm-b.dat", [(t_, v) for t_, k, v in rows if k == "B"])
        png = self.plot("warm-path.png", """
set title 'Warm path: answers per second in each 250 ms slice (A and B alternate)'
set xlabel 'time (s, slices of all runs back to back)'
set ylabel 'req/s'
set yrange [0:*]
plot '%s' using 1:2 with points pt 7 ps 0.4 title 'A: without ondemand_service', \\
     '%s' using 1:2 with points pt 7 ps 0.4 title 'B: with ondemand_service'
""" % (da, db))
        if png:
            self.w("![warm path](%s)" % png)
            self.w()
        self.w("Commands (ports vary): `%s` (throughput), `%s` (latency)." % (
            self.show(tput[0]["command"]), self.show(lat[0]["command"])))
        self.w()

    def burst(self):
        r = self.r.get("burst")
        if not r:
            return
        self.w("## 2. Cold burst")
        self.w()
        self.w("N requests, each on its own connection (`holdload`), to a location whose service is cold. The "
               "service (a server of the upstream nginx) answers 503 to its health check and to everything else "
               "until its ready file exists; its start command returns at once and creates that file %.0f s later "
               "(`bench/gate.py`), which is the moment it became healthy. nginx runs 2 workers (`reuseport` "
               "spreads the connections), each holding about N/2 requests and, once they go on, as many "
               "connections to the service. Every round starts a fresh nginx." % self.b.burst_ready_after())
        self.w()
        self.w("```nginx")
        self.w(self.show(self.b.configs["burst"]))
        self.w("```")
        self.w()
        self.w("Baselines, same run, rounds alternating with the held ones:")
        self.w("- **memory**: the same nginx holding the same N requests by its own means (`limit_req zone=hold "
               "burst=N` with `rate=1r/m`, so they wait in nginx's delay): what nginx itself needs per waiting "
               "request. The module's share is the difference.")
        self.w("- **time**: the same N requests sent at once (connections opened first) to the same location "
               "with the service already warm: how long nginx and the service take to answer N requests that "
               "arrive together, with nothing held.")
        self.w()
        self.w("| N | figure | per round | median (min..max) |")
        self.w("| --- | --- | --- | --- |")
        for n, rs in sorted(r.items(), key=lambda kv: int(kv[0])):
            held, warm, lr = rs["held"], rs["warm"], rs["limit_req"]
            nn = f"{int(n):,}"
            self.w("| %s | requests held (access log: found cold/starting, waited > 0) | %s | |" % (
                nn, ", ".join("%d" % x["held"] for x in held)))
            self.w("| | all held before the service became healthy | %s | |" % ", ".join(
                "yes" if not x["ready_before_all_held"] else "no" for x in held))
            self.w("| | starts (start command runs) | %s | |" % ", ".join(str(x["starts"]) for x in held))
            self.w("| | answered 200 by the service | %s | |" % ", ".join(
                "%d (%.1f %%)" % (x["done"]["service"], 100.0 * x["done"]["service"] / x["n"]) for x in held))
            kib = [x["kib_per_request"] for x in held]
            base = [x["kib_per_request"] for x in lr]
            self.w("| | worker RSS per held request (RSS delta / N) | %s | %s |" % (
                ", ".join("%.2f KiB" % x for x in kib), spread(kib, 2, " KiB")))
            self.w("| | the same with nginx's `limit_req` holding them | %s | %s |" % (
                ", ".join("%.2f KiB" % x for x in base), spread(base, 2, " KiB")))
            extra = [a - b for a, b in zip(kib, base)]
            self.w("| | the module's share (difference) | %s | %s |" % (
                ", ".join("%+.2f KiB" % x for x in extra), spread(extra, 2, " KiB")))
            for key, label in (("min_ms", "first answered after healthy"), ("p50_ms", "p50 answered after healthy"),
                               ("p99_ms", "p99 answered after healthy"), ("max_ms", "last answered after healthy")):
                v = [x[key] for x in held]
                self.w("| | %s | %s | %s |" % (label, ", ".join("%.1f ms" % x for x in v), spread(v, 1, " ms")))
            v = [x["p99_ms"] for x in warm]
            self.w("| | baseline: p99 answered after sending, service warm | %s | %s |" % (
                ", ".join("%.1f ms" % x for x in v), spread(v, 1, " ms")))
            d = [a["p99_ms"] - b["p99_ms"] for a, b in zip(held, warm)]
            self.w("| | p99: held after healthy − warm after sending | %s | %s |" % (
                ", ".join("%+.1f ms" % x for x in d), spread(d, 1, " ms")))
        self.w()
        series = []
        for n, rs in sorted(r.items(), key=lambda kv: int(kv[0])):
            for kind, label in (("held", "held, after healthy"), ("warm", "warm baseline, after sending")):
                lags = rs[kind][0]["lag_ms"]
                f = self.data("burst-%s-%s.dat" % (n, kind), [(round(x, 3), round((i + 1) / len(lags), 5))
                                                              for i, x in enumerate(lags)])
                series.append("'%s' using 1:2 with lines lw 2 %s title 'N=%s %s'" % (
                    f, "dt 2" if kind == "warm" else "", f"{int(n):,}", label))
        png = self.plot("cold-burst.png", """
set title 'Cold burst: when each request was answered (first round of each N)'
set xlabel 'ms after the service became healthy (held) / after the requests were sent (warm baseline), log scale'
set logscale x
set ylabel 'fraction answered'
set yrange [0:1.02]
set key right bottom
plot %s
""" % ", \\\n     ".join(series))
        if png:
            self.w("![cold burst](%s)" % png)
            self.w()
        self.w("Commands (ports vary): `%s` (held), `%s` (warm baseline)." % (
            self.show(self.b.commands.get("burst")), self.show(self.b.commands.get("burst_warm"))))
        self.w()

    def lag(self):
        rows = self.r.get("lag")
        if not rows:
            return
        self.w("## 3. Release lag")
        self.w()
        lo, hi = self.b.lag_delay
        self.w("%d cold starts of one service, one request each. The start command returns at once and the "
               "service becomes healthy a random %.2f..%.2f s later (uniform, so the moment falls anywhere "
               "between two health probes). controld's default health schedule: the first probe when the start "
               "command has finished, then a probe every 20 ms for the first 10 s of the start, then every "
               "`health_interval` (default 250 ms). The lag is the time from the moment the service answers its "
               "health check to the moment the held request is answered (the baseline is that moment, in the same "
               "start). controld's transition time (ms resolution) splits it: up to controld seeing the service "
               "healthy (the probe schedule), and from there to the answer (push, release, proxying)." % (
                   len(rows), lo, hi))
        self.w()
        lags = [x["lag_ms"] for x in rows]
        probe = [x["probe_ms"] for x in rows]
        after = [x["after_warm_ms"] for x in rows]
        warmreq = [x["warm_request_ms"] for x in rows]
        self.w("| figure | median | p99 | max |")
        self.w("| --- | --- | --- | --- |")
        for label, v in (("healthy → request answered (the lag)", lags),
                         ("healthy → controld sees it healthy", probe),
                         ("controld sees it healthy → request answered", after),
                         ("reference: the same request once warm", warmreq)):
            self.w("| %s | %.1f ms | %.1f ms | %.1f ms |" % (label, statistics.median(v), percentile(v, 99), max(v)))
        self.w()
        if len(rows) <= 100:  # nearest rank
            self.w("(With %d starts the p99 is the largest of them.)" % len(rows))
            self.w()
        f = self.data("lag.dat", [(round(x, 3), round((i + 1) / len(lags), 5)) for i, x in enumerate(sorted(lags))])
        g = self.data("lag-probe.dat", [(round(x, 3), round((i + 1) / len(probe), 5))
                                         for i, x in enumerate(sorted(probe))])
        png = self.plot("release-lag.png", """
set title 'Release lag over %d cold starts'
set xlabel 'ms after the service became healthy'
set ylabel 'fraction of starts'
set yrange [0:1.02]
set key right bottom
plot '%s' using 1:2 with steps lw 2 title 'request answered', '%s' using 1:2 with steps lw 2 dt 2 title 'controld saw it healthy'
""" % (len(rows), f, g))
        if png:
            self.w("![release lag](%s)" % png)
            self.w()
        self.w("```nginx")
        self.w(self.show(self.b.configs["lag"]))
        self.w("```")
        self.w()
        self.w("Command per start (port varies): `%s`." % self.show(self.b.commands.get("lag")))
        self.w()

    def isolation(self):
        r = self.r.get("isolation")
        if not r:
            return
        self.w("## 4. Isolation")
        self.w()
        self.w("Two identical nginx (1 worker each, same CPU), each with a warm service and a cold one. In X, "
               "%s requests wait on the cold service (it is starting and never becomes healthy during the run; "
               "controld probes it meanwhile); Y holds nothing. `abload` alternates every 250 ms between the warm "
               "service of Y (A) and of X (B), 32 connections each, %d s per run." % (f"{r['n']:,}", r["seconds"]))
        self.w()
        self.w("```nginx")
        self.w(self.show(self.b.configs["isolation"]))
        self.w("```")
        self.w()
        ratios = [x["ratio"] for x in r["runs"]]
        self.w("| figure | per run | median (min..max) |")
        self.w("| --- | --- | --- |")
        self.w("| requests waiting in X during the run | %s | |" % ", ".join(str(x["held"]) for x in r["runs"]))
        self.w("| warm throughput of X / of Y | %s | %s |" % (", ".join("%.3f" % x for x in ratios), spread(ratios)))
        self.w("| req/s Y / X | %s | |" % ", ".join("%.0f / %.0f" % (x["A"]["rps"], x["B"]["rps"]) for x in r["runs"]))
        d = [(x["B"]["p99_us"] - x["A"]["p99_us"]) / 1000.0 for x in r["runs"]]
        self.w("| p99 X − Y | %s | %s |" % (", ".join("%+.3f ms" % x for x in d), spread(d, 3, " ms")))
        self.w()
        groups = [g for x in r["runs"] for g in x["group_ratios"]]
        f = self.data("iso.dat", [(i, round(g, 4)) for i, g in enumerate(groups)])
        png = self.plot("isolation.png", """
set title 'Isolation: warm throughput with %s requests waiting / without, per 1 s A-B-B-A group'
set xlabel 'group'
set ylabel 'ratio'
set yrange [0.5:1.5]
plot '%s' using 1:2 with points pt 7 ps 0.5 title 'X / Y', 0.95 with lines dt 2 title 'target 0.95', 1 with lines lc rgb 'gray' notitle
""" % (f"{r['n']:,}", f))
        if png:
            self.w("![isolation](%s)" % png)
            self.w()
        self.w("Commands (ports vary): `%s` (the waiting requests), `%s`." % (
            self.show(self.b.commands.get("isolation_hold")), self.show(r["runs"][0]["command"])))
        self.w()

    def scale(self):
        r = self.r.get("scale")
        if not r:
            return
        s, b = r["scale"], r["baseline"]
        self.w("## 5. controld at scale")
        self.w()
        self.w("`bench/controld_scale.py` against the real controld: %s command-driven services, %d subscribed "
               "protocol clients (they receive the same bytes nginx workers do, and timestamp them), baseline "
               "the same with %d services." % (f"{s['services']:,}", s["clients"], b["services"]))
        self.w()
        self.w("| figure | %s services | %s services (baseline) | difference |" % (f"{s['services']:,}",
                                                                                   f"{b['services']:,}"))
        self.w("| --- | --- | --- | --- |")
        for key, label, unit, digits in (
                ("idle_cpu_percent_of_core", "idle CPU over %g s (%% of one core; counted in %d ms ticks, so "
                 "the resolution is %.3f %%)" % (s["idle_seconds"], 1000 // os.sysconf("SC_CLK_TCK"),
                                                 100.0 / os.sysconf("SC_CLK_TCK") / s["idle_seconds"]), " %", 3),
                ("rss_mib", "RSS", " MiB", 1),
                ("fanout_ms_median", "push of a state change to every subscriber, median", " ms", 3),
                ("fanout_ms_p99", "the same, p99", " ms", 3),
                ("duplicate_wakes_per_second", "wakes per second, service already starting", "", 0),
                ("first_wakes_per_second", "wakes per second, each one a start (state written, fsync)", "", 0),
                ("start_commands_per_second", "start commands per second (`true`: spawned, reaped, end on disk)",
                 "", 0),
                ("status_ms_max_while_starting", "longest status round trip while they start", " ms", 3)):
            if key not in s or key not in b:
                continue  # results from before the figure existed
            a_, b_ = s[key], b[key]
            if digits == 0:
                self.w("| %s | %s | %s | %s |" % (label, f"{a_:,}", f"{b_:,}", f"{a_ - b_:+,}"))
            else:
                self.w("| %s | %s%s | %s%s | %+.*f%s |" % (label, fmt(a_, digits), unit, fmt(b_, digits), unit,
                                                           digits, a_ - b_, unit))
        self.w()
        self.w("Commands: `%s`; `%s`." % (self.show(s["command"]), self.show(b["command"])))
        self.w()

    def routing(self):
        r = self.r.get("routing")
        if not r:
            return
        self.w("## 7. Routed POST")
        self.w()
        self.w("One nginx (1 worker), two servers in front of the same kept-alive upstream; A is a plain "
               "`proxy_pass`, B chooses the service from the JSON body's `\"model\"` (`ondemand_service "
               "$ondemand_model; proxy_pass http://$ondemand_service;`): the module reads the body (nginx's "
               "buffers, or its temporary file past `client_body_buffer_size`), scans it for the top-level field, "
               "which is last, and resolves the model to its warm service. Both POST the same OpenAI chat "
               "request; `abload --body` alternates every 250 ms. %d requests of B reached the service through "
               "the module." % r["routed"])
        self.w()
        self.w("```nginx")
        self.w(self.show(self.b.configs["routing"]))
        self.w("```")
        self.w()
        self.w("| body | connections | throughput B / A per run | median (min..max) | req/s A / B | p99 B − A |")
        self.w("| --- | --- | --- | --- | --- | --- |")
        for size, rs in sorted(r["sizes"].items(), key=lambda kv: int(kv[0])):
            ratios = [x["ratio"] for x in rs["runs"]]
            d = [(x["B"]["p99_us"] - x["A"]["p99_us"]) / 1000.0 for x in rs["runs"]]
            self.w("| %s | %d | %s | %s | %s | %s |" % (
                size_text(int(size)), rs["conns"], ", ".join("%.3f" % x for x in ratios), spread(ratios),
                ", ".join("%.0f / %.0f" % (x["A"]["rps"], x["B"]["rps"]) for x in rs["runs"]),
                spread(d, 3, " ms")))
        self.w()
        self.w("The reported figure is the throughput ratio above. Beside it, the nginx worker's CPU time per "
               "request (utime + stime of `/proc/PID/stat` over each target's slices; one target is in flight "
               "at a time), which depends less on what else the machine runs:")
        self.w()
        self.w("| body | CPU per request A / B per run (µs) | median A / B | CPU B / A (median of runs) | "
               "throughput B / A, median of all A B B A groups | load average |")
        self.w("| --- | --- | --- | --- | --- | --- |")
        for size, rs in sorted(r["sizes"].items(), key=lambda kv: int(kv[0])):
            runs = rs["runs"]
            if "cpu_us_per_request" not in runs[0]["A"]:
                continue
            a = [x["A"]["cpu_us_per_request"] for x in runs]
            b = [x["B"]["cpu_us_per_request"] for x in runs]
            load = [x["load"][1] for x in runs]
            groups = [g for x in runs for g in x["group_ratios"]]
            self.w("| %s | %s | %.1f / %.1f | %s | %.3f (%d groups) | %s |" % (
                size_text(int(size)), ", ".join("%.1f / %.1f" % (p, q) for p, q in zip(a, b)),
                statistics.median(a), statistics.median(b), spread([q / p for p, q in zip(a, b)]),
                statistics.median(groups), len(groups), spread(load, 1)))
        self.w()
        self.w("Command (ports vary): `%s`, %d s per run, the two sizes in turn." % (
            self.show(self.b.commands.get("routing")), r["seconds"]))

    def swap(self):
        r = self.r.get("swap")
        if not r:
            return
        self.w("## 8. Swap on a shared machine")
        self.w()
        self.w("`bench/swap_overhead.py` against the real controld: machine gpu-01 (vram_gb 24, min_warm 0s), "
               "command-driven services a (16) and b (12), woken in turn by a protocol client subscribed as a "
               "worker (it acknowledges `stopping` at once), so each wake evicts the other. Per swap: from the "
               "wake sent to the warm push received, minus the evicted service's stop command and the woken "
               "one's start command (each %.0f ms, timed by the commands themselves). What is left is controld's "
               "part: placement, the two-phase stop and its acknowledgement, the state writes (fsync) before "
               "each driver, spawning and reaping both commands, the pushes." % r["command_ms"])
        self.w()
        rs = r["results"]
        self.w("| figure | median | p99 | max |")
        self.w("| --- | --- | --- | --- |")
        for key, label in (("overhead_ms", "overhead (target p99 ≤ 50 ms)"), ("total_ms", "wake to warm"),
                           ("stop_ms", "stop command"), ("start_ms", "start command")):
            v = sorted(x[key] for x in rs)
            self.w("| %s | %.1f ms | %.1f ms | %.1f ms |" % (label, statistics.median(v), percentile(v, 99), v[-1]))
        self.w()
        self.w("Command: `%s`." % self.show(r["command"]))
        self.w()

    def write(self, path):
        self.header()
        self.summary()
        for section in (self.warm, self.burst, self.lag, self.isolation, self.scale, self.cluster, self.routing,
                        self.swap):
            section()
        if self.b.problems:
            self.w("## Errors logged by nginx during the run")
            self.w()
            self.w("```")
            for line in self.b.problems[:50]:
                self.w(self.show(line))
            self.w("```")
            self.w()
        self.w("How the suite works, and where the time and memory go: [README.md](README.md).")
        with open(path, "w") as f:
            f.write("\n".join(self.lines) + "\n")

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=HERE)
    ap.add_argument("--only", default="warm,burst,lag,isolation,scale,routing,cluster,swap")
    ap.add_argument("--command", default="bench/run", help="the command line to name in RESULTS.md")
    args = ap.parse_args()
    b = Bench(args)
    atexit.register(Proc.stop_all)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    only = args.only.split(",")
    t0 = time.monotonic()
    try:
        b.start_services()
        for key, fn in (("warm", b.warm_path), ("burst", b.cold_burst), ("lag", b.release_lag),
                        ("isolation", b.isolation), ("scale", b.controld_scale), ("routing", b.routing),
                        ("cluster", b.cluster), ("swap", b.swap)):
            if key in only:
                fn()
        b.upstream.stop()
        Report(b, time.monotonic() - t0, args.command.split()).write(
            os.path.join(b.out, "RESULTS.md"))
        log("wrote %s" % os.path.join(b.out, "RESULTS.md"))
    finally:
        Proc.stop_all()
        remove_work_dir(b.work)


if __name__ == "__main__":
    sys.exit(main())
