#!/usr/bin/env python3
"""The cluster's benchmark (docs/CLUSTER.md): a real 3-member etcd from
Debian's etcd-server, 3 controlds with `cluster:` and, for the warm path, an
nginx in front of a node, all on 127.0.0.1.

  propagation  a state change on the owner -> the push reaching a subscriber
               on every node (what the node's workers get), median and p99
  warm ratio   requests/s through nginx whose controld has `cluster:` against
               one whose controld has not, same run, alternated
  bursts       concurrent cold bursts over the 3 nodes: start commands per burst

  cluster_bench.py --controld BIN --module SO [--quick] --json OUT
"""
import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from benchlib import percentile, remove_work_dir

PYTHON = sys.executable
NGINX = "/usr/sbin/nginx"
HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLE = os.path.join(HERE, "..", "demo", "sample_service.py")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise RuntimeError("timed out waiting for " + what)


def get(port, path="/", timeout=30):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=timeout) as r:
        return r.status


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = tempfile.mkdtemp(prefix="od-cluster-bench-")
        self.procs = []

    def spawn(self, argv, name):
        log = open(os.path.join(self.work, name + ".log"), "ab")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def close(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        subprocess.run([PYTHON, SAMPLE, "stop", "--pidfile", os.path.join(self.work, "up.pid")])
        remove_work_dir(self.work)

    # --- etcd and controlds ------------------------------------------------------

    def start_etcd(self):
        names = ["e0", "e1", "e2"]
        client = {n: free_port() for n in names}
        peer = {n: free_port() for n in names}
        initial = ",".join("%s=http://127.0.0.1:%d" % (n, peer[n]) for n in names)
        for n in names:
            self.spawn([shutil.which("etcd") or "/usr/bin/etcd", "--name", n, "--data-dir", os.path.join(self.work, n),
                        "--listen-client-urls", "http://127.0.0.1:%d" % client[n],
                        "--advertise-client-urls", "http://127.0.0.1:%d" % client[n],
                        "--listen-peer-urls", "http://127.0.0.1:%d" % peer[n],
                        "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % peer[n],
                        "--initial-cluster", initial, "--initial-cluster-state", "new",
                        "--heartbeat-interval", "50", "--election-timeout", "500", "--log-level", "error"], "etcd-" + n)
        self.endpoints = ["http://127.0.0.1:%d" % client[n] for n in names]

        def healthy():
            try:
                for e in self.endpoints:
                    req = urllib.request.Request(e + "/v3/kv/range", data=b'{"key":"eA=="}', method="POST")
                    urllib.request.urlopen(req, timeout=2).read()
                return True
            except OSError:
                return False

        wait_until(healthy, 30, "etcd")

    def controld(self, name, services, cluster=True):
        d = os.path.join(self.work, name)
        os.makedirs(d, exist_ok=True)
        sock = os.path.join(d, "c.sock")
        text = "socket: %s\nstate_dir: %s/state\n" % (sock, d)
        if cluster:
            text += "cluster:\n  etcd: %s\n  node: %s\n  prefix: /bench/\n  lease_ttl: 5s\n" % (
                json.dumps(self.endpoints), name)
        text += "services:\n" + services
        cfg = os.path.join(d, "controld.yaml")
        with open(cfg, "w") as f:
            f.write(text)
        self.spawn([self.args.controld, "serve", "--config", cfg], name + "-controld")
        wait_until(lambda: os.path.exists(sock), 10, name + " socket")
        wait_until(lambda: self.status(sock) is not None and (not cluster or self.status(sock)["cluster"]["etcd"]["synced"]),
                   20, name + " ready")
        return sock

    def status(self, sock):
        p = subprocess.run([self.args.controld, "status", "--json", "--socket", sock], capture_output=True, text=True)
        return json.loads(p.stdout) if p.returncode == 0 else None

    def cli(self, sock, *args):
        return subprocess.run([self.args.controld] + list(args) + ["--socket", sock], capture_output=True, text=True)

    def nginx(self, name, sock, body):
        prefix = os.path.join(self.work, name)
        for sub in ("logs", "tmp"):
            os.makedirs(os.path.join(prefix, sub), exist_ok=True)
        port = free_port()
        fast = free_port()  # a static upstream in the same nginx: the warm path, not Python, is measured
        conf = os.path.join(prefix, "nginx.conf")
        with open(conf, "w") as f:
            f.write("""load_module %s;
worker_processes 1; daemon off; master_process on; pid %s/logs/nginx.pid; error_log %s/logs/error.log warn;
%s
events { worker_connections 4096; }
http { access_log off; client_body_temp_path %s/tmp/b; proxy_temp_path %s/tmp/p; fastcgi_temp_path %s/tmp/f;
  uwsgi_temp_path %s/tmp/u; scgi_temp_path %s/tmp/s;
  ondemand_control unix:%s;
  upstream up { server 127.0.0.1:%d; keepalive 32; }
  upstream fast { server 127.0.0.1:%d; keepalive 32; }
  server { listen 127.0.0.1:%d; location / { return 200 "ok\\n"; } }
  server { listen 127.0.0.1:%d; location = /_ondemand { ondemand_status; } %s }
}
""" % (self.args.module, prefix, prefix, "user root;" if os.geteuid() == 0 else "", prefix, prefix, prefix, prefix,
                prefix, sock, self.up_port, fast, fast, port, body))
        self.spawn([NGINX, "-p", prefix, "-c", conf], name + "-nginx")

        def listening():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return True
            except OSError:
                return False

        wait_until(listening, 10, name + " nginx")
        return port

    # --- subscribers ---------------------------------------------------------------

    def subscribe(self, sock, service, seen):
        """A client subscribed like a worker (role cli: no stopping-acks owed);
        records when each epoch of `service` arrived."""
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock)
        s.sendall(b'{"type":"hello","version":1,"role":"cli","pid":%d}\n{"type":"subscribe"}\n' % os.getpid())

        def read():
            buf = b""
            while True:
                try:
                    data = s.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    now = time.monotonic()
                    try:
                        m = json.loads(line)
                    except ValueError:
                        continue
                    if m.get("type") == "state" and m.get("service") == service:
                        seen.setdefault(m["epoch"], now)

        threading.Thread(target=read, daemon=True).start()
        return s

    # --- the figures -----------------------------------------------------------------

    def run(self):
        self.start_etcd()
        self.up_port = free_port()
        subprocess.run([PYTHON, SAMPLE, "start", "--port", str(self.up_port), "--name", "up", "--pidfile",
                        os.path.join(self.work, "up.pid")], check=True)
        counter = os.path.join(self.work, "starts")
        services = """  flip:
    start_command: ["true"]
    stop_command: ["true"]
    idle_timeout: 1h
  warm:
    start_command: ["true"]
    idle_timeout: 0
  burst:
    start_command: ["sh", "-c", "echo run >> %s; sleep 0.2"]
    stop_command: ["true"]
    idle_timeout: 1h
""" % counter
        socks = [self.controld("node-%d" % i, services) for i in (1, 2, 3)]
        lone = self.controld("alone", services, cluster=False)
        owner = self.status(socks[0])["cluster"]["owners"]
        if set(owner.values()) != {"node-1"}:
            raise RuntimeError("node-1 should own every service: %s" % owner)
        out = {"propagation": self.propagation(socks), "warm": self.warm(socks[1], lone),
               "bursts": self.bursts(socks, counter)}
        return out

    def propagation(self, socks):
        n = 10 if self.args.quick else 50
        seen = [dict() for _ in socks]
        subs = [self.subscribe(s, "flip", seen[i]) for i, s in enumerate(socks)]
        time.sleep(0.5)
        delays = []
        for _ in range(n):
            state = self.status(socks[0])["services"]
            flip = [s for s in state if s["name"] == "flip"][0]
            verb = "start" if flip["state"] == "cold" else "stop"
            epoch = flip["epoch"]
            self.cli(socks[0], verb, "flip", "--wait")
            target = self.status(socks[0])["services"]
            final = [s for s in target if s["name"] == "flip"][0]["epoch"]
            wait_until(lambda: all(final in s for s in seen), 10, "every node seeing epoch %d" % final)
            for e in range(epoch + 1, final + 1):
                if all(e in s for s in seen):
                    for s in seen[1:]:
                        delays.append((s[e] - seen[0][e]) * 1000.0)
        for s in subs:
            s.close()
        return {"changes": len(delays) // 2, "samples": len(delays), "median_ms": percentile(delays, 50),
                "p99_ms": percentile(delays, 99), "max_ms": max(delays)}

    def wrk(self, port, seconds):
        p = subprocess.run(["wrk", "-t1", "-c16", "-d%ds" % seconds, "http://127.0.0.1:%d/warm/" % port],
                           capture_output=True, text=True)
        for line in p.stdout.splitlines():
            if line.startswith("Requests/sec:"):
                return float(line.split()[1])
        raise RuntimeError("wrk: " + p.stdout + p.stderr)

    def warm(self, cluster_sock, lone_sock):
        loc = "location /warm/ { ondemand_service warm; proxy_pass http://fast/; proxy_http_version 1.1; " \
              "proxy_set_header Connection \"\"; }"
        with_cluster = self.nginx("nginx-cluster", cluster_sock, loc)
        alone = self.nginx("nginx-alone", lone_sock, loc)
        get(with_cluster, "/warm/")
        get(alone, "/warm/")
        seconds = 2 if self.args.quick else 5
        rounds = 2 if self.args.quick else 5
        a, b = [], []
        for _ in range(rounds):
            b.append(self.wrk(alone, seconds))
            a.append(self.wrk(with_cluster, seconds))
        ratios = [x / y for x, y in zip(a, b)]
        return {"cluster_rps": a, "alone_rps": b, "ratio_median": sorted(ratios)[len(ratios) // 2],
                "ratios": ratios}

    def bursts(self, socks, counter):
        loc = "location /b/ { ondemand_service burst; ondemand_wait 30s; proxy_pass http://up/; }"
        ports = [self.nginx("nginx-b%d" % i, s, loc) for i, s in enumerate(socks)]
        rounds = 10 if self.args.quick else 200
        per_node = 10
        doubles = 0
        failures = 0
        for r in range(rounds):
            before = self.count(counter)
            results = []
            barrier = threading.Barrier(per_node * len(ports))

            def one(port):
                barrier.wait()
                try:
                    results.append(get(port, "/b/"))
                except OSError:
                    results.append(None)

            threads = [threading.Thread(target=one, args=(p,)) for p in ports for _ in range(per_node)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            started = self.count(counter) - before
            if started > 1:
                doubles += started - 1
            failures += sum(1 for x in results if x != 200)
            self.cli(socks[0], "stop", "burst", "--wait")
            wait_until(lambda: all(self.service_state(s, "burst") == "cold" for s in socks), 10, "cold everywhere")
        return {"rounds": rounds, "requests_per_round": per_node * len(ports), "double_starts": doubles,
                "failed_requests": failures}

    def service_state(self, sock, name):
        st = self.status(sock)
        return [s for s in st["services"] if s["name"] == name][0]["state"] if st else None

    @staticmethod
    def count(path):
        try:
            with open(path) as f:
                return len(f.read().splitlines())
        except OSError:
            return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--controld", required=True)
    ap.add_argument("--module", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    b = Bench(args)
    try:
        out = b.run()
    finally:
        b.close()
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
