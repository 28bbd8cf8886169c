#!/usr/bin/env python3
"""controld at scale: 1,000 configured services and N subscribed clients.

Measures, against the real controld binary:
  - idle CPU (% of one core) over a window with nothing starting, and RSS;
  - fan-out: time from a `controld start` to the state push reaching every
    subscribed client (median, p99 over repeated wakes);
  - wakes per second: duplicate wakes (service already starting; the message
    path only) and first wakes (each a transition, persisted with fsync);
  - start commands: how long until the start command (`true`) of every first
    wake has run and its end is on disk, and the longest a status round trip
    took meanwhile (time spent spawning is time the event loop is held).

  bench/controld_scale.py --controld build/controld/controld [--services 1000]
      [--clients 8] [--idle-seconds 60] [--json out.json]

The subscribed clients here are protocol clients in this script, so that the
moment each push arrives can be timestamped; nginx workers receive the same
bytes.
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from benchlib import percentile, remove_work_dir, rss_kib

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Client:
    def __init__(self, path, role="worker"):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.buf = b""
        self.send({"type": "hello", "version": 1, "role": role, "pid": os.getpid()})
        self.read()

    def send(self, msg):
        self.sock.sendall((json.dumps(msg) + "\n").encode())

    def read(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--controld", required=True)
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--idle-seconds", type=float, default=60)
    ap.add_argument("--fanout-rounds", type=int, default=50)
    ap.add_argument("--json")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="od-bench-")
    sock_path = os.path.join(work, "c.sock")
    lines = ["socket: %s" % sock_path, "state_dir: %s/state" % work, "services:"]
    for i in range(args.services):
        # Command-driven and cold. Readiness is a one-hour warmup, so woken
        # services stay in `starting` for the whole run without health probes
        # (this measures controld's own message and state paths).
        lines += ["  svc-%04d:" % i,
                  "    warmup_ms: 3600000",
                  "    start_timeout: 2h",
                  "    idle_timeout: 15m",
                  '    start_command: ["true"]',
                  '    stop_command: ["true"]']
    config = os.path.join(work, "controld.yaml")
    with open(config, "w") as f:
        f.write("\n".join(lines) + "\n")

    log = open(os.path.join(work, "controld.log"), "w")
    proc = subprocess.Popen([args.controld, "serve", "--config", config], stderr=log,
                            env=dict(os.environ, CONTROLD_LOG_LEVEL=os.environ.get("CONTROLD_LOG_LEVEL", "warning")))
    try:
        for _ in range(200):
            if os.path.exists(sock_path):
                break
            time.sleep(0.05)
        clients = []
        for _ in range(args.clients):
            c = Client(sock_path)
            c.send({"type": "subscribe"})
            while c.read()["type"] != "synced":
                pass
            clients.append(c)

        # 1. Idle: nothing starting, N subscribers connected.
        time.sleep(1.0)
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(args.idle_seconds)
        cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
        idle_cpu_pct = 100.0 * (cpu1 - cpu0) / (t1 - t0)
        rss = rss_kib(proc.pid)

        # 2. Fan-out latency: one wake (via a CLI-role client), time until every
        # subscriber has the `starting` push for that service.
        cli = Client(sock_path, role="cli")
        latencies = []
        import selectors
        sel = selectors.DefaultSelector()
        for idx, c in enumerate(clients):
            sel.register(c.sock, selectors.EVENT_READ, idx)
        for i in range(args.fanout_rounds):
            name = "svc-%04d" % i
            arrived = [None] * len(clients)
            sent = time.perf_counter()
            cli.send({"type": "command", "id": i + 1, "verb": "start", "service": name})
            while None in arrived:
                for key, _ in sel.select(timeout=5):
                    idx = key.data
                    c = clients[idx]
                    now = time.perf_counter()
                    c.buf += c.sock.recv(1 << 20)
                    while b"\n" in c.buf:
                        line, c.buf = c.buf.split(b"\n", 1)
                        m = json.loads(line)
                        if (m.get("type") == "state" and m.get("service") == name and m.get("state") == "starting"
                                and arrived[idx] is None):
                            arrived[idx] = now
            latencies.append((max(arrived) - sent) * 1000.0)
            while cli.read().get("type") != "reply":
                pass
            # Each start launches its start command once its record is on disk;
            # a pause keeps this figure about pushes, not process spawning.
            time.sleep(0.05)
        def drain_all():
            for c in clients:
                c.sock.setblocking(False)
                try:
                    while c.sock.recv(1 << 20):
                        pass
                except BlockingIOError:
                    pass
                c.sock.setblocking(True)

        # Let the `true` start commands finish; services then wait for health.
        time.sleep(0.5)
        drain_all()

        # 3. Wake throughput. Duplicates: services already starting.

        stop_draining = threading.Event()

        def drainer():
            while not stop_draining.is_set():
                drain_all()
                time.sleep(0.01)

        dt = threading.Thread(target=drainer)
        dt.start()
        waker = Client(sock_path)
        n_dup = 20000
        payload = b"".join((json.dumps({"type": "wake", "service": "svc-%04d" % (i % args.fanout_rounds),
                                        "reason": "GET /"}) + "\n").encode() for i in range(n_dup))
        def burst(payload, tag, started=None):
            # Messages of one connection are handled in order, so a status
            # round trip on the same connection marks the end of the burst.
            t0 = time.perf_counter()
            if started is not None:
                started.append(t0)
            waker.sock.sendall(payload + (json.dumps({"type": "command", "id": tag, "verb": "status",
                                                      "service": "svc-0000"}) + "\n").encode())
            while waker.read().get("type") != "reply":
                pass
            return time.perf_counter() - t0

        dup_rate = n_dup / burst(payload, 99999)

        first = list(range(args.fanout_rounds, args.services))
        payload = b"".join((json.dumps({"type": "wake", "service": "svc-%04d" % i, "reason": "GET /"}) + "\n").encode()
                           for i in first)
        # A probe measures status round trips while the start commands run.
        probe = Client(sock_path, role="cli")
        round_trips = []
        stop_probing = threading.Event()

        def prober():
            tag = 200000
            while not stop_probing.is_set():
                tag += 1
                t = time.perf_counter()
                probe.send({"type": "command", "id": tag, "verb": "status", "service": "svc-0000"})
                while probe.read().get("type") != "reply":
                    pass
                round_trips.append((time.perf_counter() - t) * 1000.0)
                time.sleep(0.002)

        pt = threading.Thread(target=prober)
        pt.start()
        burst_started = []
        first_rate = len(first) / burst(payload, 100000, burst_started)

        # 4. Start commands: done when every woken service's state file holds
        # the start's end (written after the command was reaped).
        pending = set(os.path.join(work, "state", "services", "svc-%04d.json" % i) for i in first)
        deadline = time.monotonic() + 300
        while pending and time.monotonic() < deadline:
            for path in list(pending):
                try:
                    with open(path) as f:
                        if '"last_operation"' in f.read():
                            pending.discard(path)
                except OSError:
                    pass
            if pending:
                time.sleep(0.01)
        commands_seconds = time.perf_counter() - burst_started[0]
        stop_probing.set()
        pt.join()
        if pending:
            raise RuntimeError("%d start commands did not end within 300 s" % len(pending))
        stop_draining.set()
        dt.join()

        result = {
            "services": args.services,
            "clients": args.clients,
            "idle_seconds": args.idle_seconds,
            "idle_cpu_percent_of_core": round(idle_cpu_pct, 3),
            "rss_mib": round(rss / 1024.0, 1),
            "fanout_ms_median": round(statistics.median(latencies), 3),
            "fanout_ms_p99": round(percentile(latencies, 99), 3),
            "duplicate_wakes_per_second": int(dup_rate),
            "first_wakes_per_second": int(first_rate),
            "start_commands": len(first),
            "start_commands_seconds": round(commands_seconds, 3),
            "start_commands_per_second": int(len(first) / commands_seconds),
            "status_ms_max_while_starting": round(max(round_trips or [0]), 3),
            "status_ms_p99_while_starting": round(percentile(round_trips or [0], 99), 3),
        }
        print(json.dumps(result, indent=2))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
        return 0
    finally:
        t0 = time.monotonic()
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            print("controld did not exit within 60 s of SIGTERM", file=sys.stderr)
        print("shutdown took %.2f s" % (time.monotonic() - t0), file=sys.stderr)
        log.close()
        remove_work_dir(work)


if __name__ == "__main__":
    sys.exit(main())
