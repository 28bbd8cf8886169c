"""Shared pieces of the end-to-end tests: a private directory per test, the
real controld binary, the real nginx with the built module, sample services
and free loopback ports. Every process started here is stopped in tearDown,
and every test fails when a log shows an alert, an emergency or a sanitizer
report."""
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import textwrap
import time
import unittest

SOURCE_DIR = os.environ.get("ONDEMAND_SOURCE_DIR", os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
CONTROLD = os.environ.get("CONTROLD_BIN", "")
MODULE = os.environ.get("ONDEMAND_MODULE", "")
NGINX = os.environ.get("NGINX_BIN", "/usr/sbin/nginx")
SAMPLE_SERVICE = os.path.join(SOURCE_DIR, "demo", "sample_service.py")
PYTHON = sys.executable

BAD_LOG_PATTERNS = re.compile(r"\[alert\]|\[emerg\]|AddressSanitizer|LeakSanitizer|runtime error:")


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout=10.0, interval=0.02, message="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, message))


def http_request(port, path="/", method="GET", headers=None, body=None, timeout=30.0, host="127.0.0.1"):
    """One request on a fresh connection; returns (status, headers dict lower-cased, body str)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read().decode("utf-8", "replace")
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


class DatagramSink:
    """A bound datagram socket (a Unix path, or a UDP port on loopback) keeping
    what arrives with when: systemd's notify and journal sockets, a StatsD
    listener."""

    def __init__(self, path=None):
        if path is None:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind(("127.0.0.1", 0))
            self.port = self.sock.getsockname()[1]
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.sock.bind(path)
        self.path = path
        self.sock.settimeout(0.1)
        self.messages = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop:
            try:
                data = self.sock.recv(1 << 20)
            except socket.timeout:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data))

    def count(self, payload, since=0.0):
        return sum(1 for at, data in list(self.messages) if at >= since and payload in data)

    def close(self):
        self._stop = True
        self._thread.join(5)
        self.sock.close()


class Process:
    """A child process whose output goes to a file in the test directory."""

    def __init__(self, argv, log_path, env=None, cwd=None, pass_fds=()):
        self.argv = argv
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                     start_new_session=True, pass_fds=pass_fds)

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def signal(self, sig):
        if self.alive():
            self.proc.send_signal(sig)

    def stop(self, sig=None, timeout=10.0):
        # (`signal` in this class body is the method above, hence no default here)
        if self.alive():
            self.proc.send_signal(signal.SIGTERM if sig is None else sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def kill9(self):
        if self.alive():
            self.proc.kill()
            self.proc.wait()

    def output(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")


class OndemandTestCase(unittest.TestCase):
    """Base class: self.dir is a fresh directory; helpers start real processes."""

    keep_dirs = os.environ.get("ONDEMAND_KEEP_TEST_DIRS") == "1"

    def setUp(self):
        # Short: Unix socket paths inside it must stay under 108 bytes.
        self.dir = tempfile.mkdtemp(prefix="od-%s-" % self._testMethodName[5:25])
        self._processes = []
        self._checked_logs = []
        self._cleanups_run = False

    def tearDown(self):
        for proc in reversed(self._processes):
            proc.stop()
        self._kill_leftovers()
        problems = []
        for path in self._checked_logs:
            if os.path.exists(path):
                with open(path, "rb") as f:
                    for line in f.read().decode("utf-8", "replace").splitlines():
                        if BAD_LOG_PATTERNS.search(line):
                            problems.append("%s: %s" % (os.path.basename(path), line))
        if not self.keep_dirs and not problems and self._outcome_ok():
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            sys.stderr.write("\ntest files kept in %s\n" % self.dir)
        if not self._outcome_ok():
            self._show_log_tails()
        if problems:
            self.fail("bad lines in logs:\n" + "\n".join(problems[:20]))

    def _show_log_tails(self, lines=25):
        """A failed test shows the end of each process's log: on a CI machine
        the kept directory is gone once the run ends."""
        paths = [proc.log_path for proc in self._processes] + self._checked_logs
        for path in sorted(set(paths), key=paths.index):
            try:
                with open(path, "rb") as f:
                    tail = f.read().decode("utf-8", "replace").splitlines()[-lines:]
            except OSError:
                continue
            sys.stderr.write("--- last lines of %s\n%s\n" % (os.path.relpath(path, self.dir), "\n".join(tail)))

    def _kill_leftovers(self):
        """A command still running when the test ended (a start command that
        daemonizes a sample after the test's stop ran) would outlive it:
        anything with this test's directory on its command line goes."""
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                with open("/proc/%s/cmdline" % pid, "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if any(self.dir.encode() in arg for arg in argv):
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass

    def _outcome_ok(self):
        # Not unittest's _Outcome.success: tearDown runs as a part of its own,
        # for which it starts True again. What the result recorded so far says
        # whether this test failed.
        result = getattr(getattr(self, "_outcome", None), "result", None)
        if result is None:
            return True
        return not any(test is self for test, _ in list(result.failures) + list(result.errors))

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def write(self, name, text):
        p = self.path(name)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            f.write(textwrap.dedent(text))
        return p

    def spawn(self, argv, log_name, env=None, check_log=True, cwd=None, pass_fds=()):
        proc = Process(argv, self.path(log_name), env=env, cwd=cwd, pass_fds=pass_fds)
        self._processes.append(proc)
        if check_log:
            self._checked_logs.append(proc.log_path)
        return proc

    # --- controld ---------------------------------------------------------

    def controld_env(self, extra=None):
        env = dict(os.environ)
        env.update(extra or {})
        return env

    def start_controld(self, config_text, name="controld.yaml", env=None, wait=True):
        """Writes the config (socket and state_dir default into self.dir) and runs `controld serve`."""
        self.controld_config = self.write(name, config_text)
        self.controld_socket = self.path("controld.sock")
        proc = self.spawn([CONTROLD, "serve", "--config", self.controld_config], "controld.log",
                          env=self.controld_env(env))
        self.controld = proc
        if wait:
            wait_until(lambda: os.path.exists(self.controld_socket) or not proc.alive(), 10,
                       message="controld socket")
            if not proc.alive():
                self.fail("controld exited at start:\n" + proc.output())
            # The socket exists before recovery has run; a status answer means ready.
            wait_until(lambda: self.cli_ok("status") or not proc.alive(), 10, message="controld answering")
        return proc

    def restart_controld(self, env=None):
        proc = self.spawn([CONTROLD, "serve", "--config", self.controld_config], "controld.log",
                          env=self.controld_env(env))
        self.controld = proc
        wait_until(lambda: self.cli_ok("status") or not proc.alive(), 10, message="controld answering")
        return proc

    def cli(self, *args, timeout=60, socket_path=None):
        """Runs the controld CLI; returns CompletedProcess with text output."""
        argv = [CONTROLD] + list(args)
        if args and args[0] not in ("check-config", "version", "serve"):
            argv += ["--socket", socket_path or self.controld_socket]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)

    def cli_ok(self, *args):
        try:
            return self.cli(*args, timeout=5).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def status(self, service=None):
        args = ["status", "--json"] + ([service] if service else [])
        out = self.cli(*args)
        if out.returncode != 0:
            raise AssertionError("controld status failed (%d): %s%s" % (out.returncode, out.stdout, out.stderr))
        return json.loads(out.stdout)

    def service_state(self, service):
        return self.status(service)["services"][0]["state"]

    def wait_state(self, service, state, timeout=15.0):
        return wait_until(lambda: self.service_state(service) == state, timeout,
                          message="%s to be %s" % (service, state))

    # --- sample services --------------------------------------------------

    def sample_commands(self, name, port, ready_after=0.0, extra=()):
        """start_command/stop_command argv lists that daemonize the sample service."""
        pidfile = self.path("%s.pid" % name)
        log = self.path("%s.requests" % name)
        common = ["--pidfile", pidfile]
        start = [PYTHON, SAMPLE_SERVICE, "start", "--port", str(port), "--name", name,
                 "--ready-after", str(ready_after), "--request-log", log] + common + list(extra)
        stop = [PYTHON, SAMPLE_SERVICE, "stop"] + common
        return start, stop

    def sample_running(self, name):
        pidfile = self.path("%s.pid" % name)
        try:
            with open(pidfile) as f:
                os.kill(int(f.read().strip()), 0)
            return True
        except (OSError, ValueError):
            return False

    def stop_sample(self, name):
        subprocess.run([PYTHON, SAMPLE_SERVICE, "stop", "--pidfile", self.path("%s.pid" % name)])

    # --- nginx ------------------------------------------------------------

    def nginx_env(self):
        """nginx's environment. A sanitizer build of the module needs its
        runtime preloaded into nginx (ONDEMAND_NGINX_PRELOAD, set by CMake)."""
        env = dict(os.environ)
        preload = os.environ.get("ONDEMAND_NGINX_PRELOAD")
        if preload:
            env["LD_PRELOAD"] = preload
            # nginx itself does not free everything at exit; leaks inside
            # its pools are not what this checks.
            # (controld and the unit tests keep leak detection on.)
            options = [o for o in env.get("ASAN_OPTIONS", "").split(":") if o and not o.startswith("detect_leaks=")]
            env["ASAN_OPTIONS"] = ":".join(options + ["detect_leaks=0"])
        return env

    def nginx_test_config(self, conf_path, prefix=None):
        """`nginx -t` on a file; returns CompletedProcess."""
        prefix = prefix or os.path.dirname(conf_path)
        return subprocess.run([NGINX, "-t", "-p", prefix, "-c", conf_path], capture_output=True, text=True,
                              env=self.nginx_env())

    def start_nginx(self, http_body, name="nginx", workers=1, main_extra=""):
        """Runs the real nginx with the built module in its own prefix."""
        if not MODULE:
            self.skipTest("nginx module not built")
        prefix = self.path(name)
        for sub in ("logs", "tmp"):
            os.makedirs(os.path.join(prefix, sub), exist_ok=True)
        if os.geteuid() == 0 and "user " not in main_extra:
            # Workers would drop to "nobody" and could not reach controld's
            # socket inside the private test directory.
            main_extra = "user root;\n" + main_extra
        conf = textwrap.dedent("""\
            load_module {module};
            worker_processes {workers};
            daemon off;
            master_process on;
            pid {prefix}/logs/nginx.pid;
            error_log {prefix}/logs/error.log info;
            {main_extra}
            events {{ worker_connections 4096; }}
            http {{
                access_log {prefix}/logs/access.log;
                client_body_temp_path {prefix}/tmp/body;
                proxy_temp_path {prefix}/tmp/proxy;
                fastcgi_temp_path {prefix}/tmp/fastcgi;
                uwsgi_temp_path {prefix}/tmp/uwsgi;
                scgi_temp_path {prefix}/tmp/scgi;
            {body}
            }}
            """).format(module=MODULE, workers=workers, prefix=prefix, main_extra=main_extra,
                        body=textwrap.indent(textwrap.dedent(http_body), "    "))
        conf_path = os.path.join(prefix, "nginx.conf")
        with open(conf_path, "w") as f:
            f.write(conf)
        test = self.nginx_test_config(conf_path, prefix)
        if test.returncode != 0:
            self.fail("nginx -t failed:\n" + test.stderr)
        self._checked_logs.append(os.path.join(prefix, "logs", "error.log"))
        proc = self.spawn([NGINX, "-p", prefix, "-c", conf_path], name + ".out", env=self.nginx_env())
        self.nginx_prefix = prefix
        self.nginx_conf = conf_path
        self.nginx = proc
        return proc

    def reload_nginx(self):
        """`nginx -s reload`: new workers start, the old ones finish what they hold."""
        out = subprocess.run([NGINX, "-p", self.nginx_prefix, "-c", self.nginx_conf, "-s", "reload"],
                             capture_output=True, text=True, env=self.nginx_env())
        if out.returncode != 0:
            self.fail("nginx -s reload failed:\n" + out.stderr)

    def nginx_error_log(self, name="nginx"):
        path = self.path(name, "logs", "error.log")
        if not os.path.exists(path):
            return ""
        with open(path) as f:
            return f.read()
