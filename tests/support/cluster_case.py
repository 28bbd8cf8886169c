"""Helpers for the cluster's end-to-end tests: a real 3-member etcd cluster
from Debian's etcd-server on free loopback ports (data dirs inside the test's
directory), several real controlds joined to it, and one real nginx in front
of each."""
import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request

from harness import CONTROLD, PYTHON, SAMPLE_SERVICE, free_port, http_request, wait_until
from module_case import ModuleTestCase

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def b64(text):
    return base64.b64encode(text.encode()).decode()


def unb64(text):
    return base64.b64decode(text).decode("utf-8", "replace")


class Etcd:
    """A 3-member etcd cluster, each member a process of the test."""

    def __init__(self, case, members=3):
        self.case = case
        self.names = ["e%d" % i for i in range(members)]
        self.client = {n: free_port() for n in self.names}
        self.peer = {n: free_port() for n in self.names}
        self.procs = {}
        self.token = "od-%d" % os.getpid()

    @property
    def endpoints(self):
        return ["http://127.0.0.1:%d" % self.client[n] for n in self.names]

    def start_member(self, name, new=True):
        initial = ",".join("%s=http://127.0.0.1:%d" % (n, self.peer[n]) for n in self.names)
        argv = [ETCD, "--name", name, "--data-dir", self.case.path("etcd-" + name),
                "--listen-client-urls", "http://127.0.0.1:%d" % self.client[name],
                "--advertise-client-urls", "http://127.0.0.1:%d" % self.client[name],
                "--listen-peer-urls", "http://127.0.0.1:%d" % self.peer[name],
                "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % self.peer[name],
                "--initial-cluster", initial, "--initial-cluster-token", self.token,
                "--initial-cluster-state", "new",
                "--heartbeat-interval", "50", "--election-timeout", "500", "--log-level", "error"]
        self.procs[name] = self.case.spawn(argv, "etcd-%s.log" % name, check_log=False)

    def start(self):
        for n in self.names:
            self.start_member(n)
        wait_until(self.healthy, 30, interval=0.2, message="etcd cluster healthy")

    def stop_all(self):
        for n in self.names:
            self.procs[n].stop()

    def restart_all(self):
        for n in self.names:
            self.start_member(n)
        wait_until(self.healthy, 30, interval=0.2, message="etcd cluster healthy again")

    def call(self, path, body, endpoint=None):
        req = urllib.request.Request((endpoint or self.endpoints[0]) + "/v3/" + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read().decode())

    def healthy(self):
        for e in self.endpoints:
            try:
                self.call("kv/range", {"key": b64("health")}, endpoint=e)
            except OSError:
                return False
        return True

    def get(self, key):
        kvs = self.call("kv/range", {"key": b64(key)}).get("kvs", [])
        return kvs[0] if kvs else None

    def prefix(self, prefix):
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        return self.call("kv/range", {"key": b64(prefix), "range_end": b64(end)}).get("kvs", [])

    def history(self, key, start_revision=1):
        """Every PUT/DELETE of a key since start_revision, read through a watch."""
        req = urllib.request.Request(self.endpoints[0] + "/v3/watch", data=json.dumps(
            {"create_request": {"key": b64(key), "start_revision": str(start_revision)}}).encode(), method="POST")
        events = []
        try:
            with urllib.request.urlopen(req, timeout=1.5) as r:
                for line in r:
                    msg = json.loads(line.decode())
                    events += msg.get("result", {}).get("events", [])
        except OSError:
            pass  # the stream never ends by itself: the timeout ends it
        return events


class ClusterTestCase(ModuleTestCase):
    """N nodes, each a controld (node-1..N) with its own nginx, on one etcd."""

    lease_ttl = 3

    def setUp(self):
        super().setUp()
        if not os.path.exists(ETCD):
            self.skipTest("etcd-server is not installed (scripts/install-deps installs it)")
        self.etcd = Etcd(self)
        self.etcd.start()
        self.nodes = {}

    def cluster_yaml(self, node):
        return "cluster:\n  etcd: %s\n  node: %s\n  prefix: /od-test/\n  lease_ttl: %ds\n  request_timeout: 2s\n" % (
            json.dumps(self.etcd.endpoints), node, self.lease_ttl)

    def counted_start(self, name, port, ready_after=0.0):
        """A start command that counts its runs in <name>.starts."""
        start, stop = self.sample_commands(name, port, ready_after=ready_after)
        counter = self.path("%s.starts" % name)
        start = ["sh", "-c", 'echo run >> "$0"; exec "$@"', counter] + start
        self._samples.append(name)
        return start, stop

    def starts(self, name):
        try:
            with open(self.path("%s.starts" % name)) as f:
                return len(f.read().splitlines())
        except OSError:
            return 0

    def service_yaml(self, name, port, idle="1h", start_timeout="20s", ready_after=0.0):
        start, stop = self.counted_start(name, port, ready_after)
        return ("  {name}:\n    health_url: http://127.0.0.1:{port}/healthz\n    idle_timeout: {idle}\n"
                "    start_timeout: {st}\n    start_command: {start}\n    stop_command: {stop}\n").format(
            name=name, port=port, idle=idle, st=start_timeout, start=json.dumps(start), stop=json.dumps(stop))

    def start_node(self, node, services_yaml, locations, top_yaml=""):
        """A controld joined to the cluster and an nginx in front of it;
        top_yaml: more top-level sections of its controld.yaml (semaphore:)."""
        d = self.path(node)
        os.makedirs(d, exist_ok=True)
        sock = os.path.join(d, "c.sock")
        config = self.write("%s/controld.yaml" % node, "socket: %s\nstate_dir: %s/state\n%s%sservices:\n%s" % (
            sock, d, self.cluster_yaml(node), top_yaml, services_yaml))
        proc = self.spawn([CONTROLD, "serve", "--config", config], "%s-controld.log" % node)
        wait_until(lambda: os.path.exists(sock) or not proc.alive(), 10, message="%s socket" % node)
        port = free_port()
        body = """
            ondemand_control unix:{sock};
            server {{
                listen 127.0.0.1:{port};
                location = /_ondemand {{ ondemand_status; }}
                {locations}
            }}
            """.format(sock=sock, port=port, locations=locations)
        self.controld_socket = sock
        nginx = self.start_nginx(body, name="nginx-" + node)
        wait_until(lambda: self._listening(port), 10, message="nginx of %s listening" % node)
        self.nodes[node] = {"socket": sock, "config": config, "controld": proc, "port": port, "nginx": nginx}
        wait_until(lambda: self.node_status(node).get("cluster", {}).get("etcd", {}).get("synced"), 20,
                   message="%s synced with etcd" % node)
        return self.nodes[node]

    def restart_controld_of(self, node):
        n = self.nodes[node]
        n["controld"] = self.spawn([CONTROLD, "serve", "--config", n["config"]], "%s-controld.log" % node)
        wait_until(lambda: self.node_status(node).get("cluster", {}).get("etcd", {}).get("synced"), 20,
                   message="%s synced with etcd" % node)

    def node_status(self, node):
        out = subprocess.run([CONTROLD, "status", "--json", "--socket", self.nodes[node]["socket"]],
                             capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            return {}
        return json.loads(out.stdout)

    def node_service(self, node, name):
        for s in self.node_status(node).get("services", []):
            if s["name"] == name:
                return s
        return {}

    def node_get(self, node, path, timeout=60, headers=None):
        started = time.time()
        try:
            status, hdrs, text = http_request(self.nodes[node]["port"], path, timeout=timeout, headers=headers)
            from module_case import Result
            return Result(status, hdrs, text, started, time.time())
        except OSError as e:
            from module_case import Result
            return Result(None, {}, "", started, time.time(), error=e)

    def owner(self, name):
        kv = self.etcd.get("/od-test/owner/" + name)
        return unb64(kv["value"]) if kv else None

    def front(self, node, name):
        try:
            status, _, body = http_request(self.nodes[node]["port"], "/_ondemand", timeout=5)
        except OSError:
            return {}
        if status != 200:
            return {}
        for s in json.loads(body).get("services", []):
            if s["name"] == name:
                return s
        return {}
