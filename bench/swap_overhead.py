#!/usr/bin/env python3
"""Swap overhead on a shared machine: what controld adds to a swap.

One machine gpu-01 (vram_gb 24, min_warm 0s) and two command-driven services
a (16) and b (12), so each wakes the other's eviction. A protocol client
subscribed as a worker (it answers the `stopping` announcement at once, as an
idle nginx worker does) wakes them in turn. For each swap:

  overhead = (warm push of the woken service received - its wake sent)
             - (the evicted service's stop command, begin to end)
             - (the woken service's start command, begin to end)

The commands time themselves (they append begin/end stamps to a file), so
what is left is controld's part: placement, the two-phase stop with its
acknowledgement, the state writes (fsync) before each driver runs, spawning
and reaping both commands, and the pushes. No health check (readiness is the
start command's end, warmup 0) so a probe interval does not count.

  bench/swap_overhead.py --controld build/controld/controld [--swaps 20] [--json out.json]
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

from benchlib import percentile, remove_work_dir

COMMAND_S = 0.05  # each start and stop command sleeps this long


class Worker:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.buf = b""
        self.send({"type": "hello", "version": 1, "role": "worker", "pid": os.getpid()})
        self.read()
        self.send({"type": "subscribe"})
        self.states = {}
        while True:
            m = self.read()
            if m.get("type") == "synced":
                break
            if m.get("type") == "state":
                self.states[m["service"]] = m

    def send(self, msg):
        self.sock.sendall((json.dumps(msg) + "\n").encode())

    def read(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise EOFError("controld closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def wait_warm(self, service, timeout=30):
        """Reads pushes, acknowledging `stopping` at once, until `service` is warm."""
        self.sock.settimeout(timeout)
        while True:
            m = self.read()
            if m.get("type") != "state":
                continue
            self.states[m["service"]] = m
            if m["state"] == "stopping":
                self.send({"type": "stopping_ack", "service": m["service"], "epoch": m["epoch"], "in_flight": 0})
            if m["state"] == "failed":
                raise RuntimeError("%s failed: %s" % (m["service"], m.get("reason")))
            if m["service"] == service and m["state"] == "warm":
                return time.time()


def stamped(work, name, kind):
    """A command that records its own begin and end (unix seconds)."""
    rec = os.path.join(work, "commands.log")
    return ["/bin/sh", "-c", 'echo "%s %s begin $(date +%%s.%%N)" >> %s; sleep %s; echo "%s %s end $(date +%%s.%%N)" >> %s'
            % (name, kind, rec, COMMAND_S, name, kind, rec)]


def read_commands(work):
    out = []
    with open(os.path.join(work, "commands.log")) as f:
        for line in f:
            name, kind, edge, at = line.split()
            out.append((name, kind, edge, float(at)))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--controld", required=True)
    ap.add_argument("--swaps", type=int, default=20)
    ap.add_argument("--json")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="od-swap-")
    sock_path = os.path.join(work, "c.sock")
    services = []
    for name, vram in (("a", 16), ("b", 12)):
        services.append("""  %s:
    machine: gpu-01
    needs: { vram_gb: %d }
    idle_timeout: 1h
    start_command: %s
    stop_command: %s
""" % (name, vram, json.dumps(stamped(work, name, "start")), json.dumps(stamped(work, name, "stop"))))
    config = os.path.join(work, "controld.yaml")
    with open(config, "w") as f:
        f.write("socket: %s\nstate_dir: %s/state\nmachines:\n  gpu-01:\n    resources: { vram_gb: 24 }\n"
                "    min_warm: 0s\nservices:\n%s" % (sock_path, work, "".join(services)))
    log = open(os.path.join(work, "controld.log"), "w")
    proc = subprocess.Popen([args.controld, "serve", "--config", config], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 10
        while not os.path.exists(sock_path):
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError("controld did not start")
            time.sleep(0.02)
        time.sleep(0.2)
        w = Worker(sock_path)
        w.send({"type": "wake", "service": "a", "reason": "bench"})
        w.wait_warm("a")
        swaps = []
        current = "a"
        for i in range(args.swaps):
            want = "b" if current == "a" else "a"
            woke = time.time()
            w.send({"type": "wake", "service": want, "reason": "bench swap %d" % i})
            warm = w.wait_warm(want)
            swaps.append((current, want, woke, warm))
            current = want
        cmds = read_commands(work)
        results = []
        for evicted, woken, woke, warm in swaps:
            def span(name, kind):
                begins = [t for n, k, e, t in cmds if n == name and k == kind and e == "begin" and woke <= t <= warm]
                ends = [t for n, k, e, t in cmds if n == name and k == kind and e == "end" and woke <= t <= warm]
                if len(begins) != 1 or len(ends) != 1:
                    raise RuntimeError("expected one %s %s within the swap, got %r" % (name, kind, (begins, ends)))
                return ends[0] - begins[0]
            stop_s = span(evicted, "stop")
            start_s = span(woken, "start")
            total = warm - woke
            results.append({"total_ms": total * 1000, "stop_ms": stop_s * 1000, "start_ms": start_s * 1000,
                            "overhead_ms": (total - stop_s - start_s) * 1000})
        overheads = sorted(r["overhead_ms"] for r in results)
        summary = {
            "swaps": len(results),
            "overhead_median_ms": percentile(overheads, 50),
            "overhead_p99_ms": percentile(overheads, 99),
            "overhead_max_ms": overheads[-1],
            "total_median_ms": percentile(sorted(r["total_ms"] for r in results), 50),
            "command_ms": COMMAND_S * 1000,
            "results": results,
        }
        print(json.dumps({k: v for k, v in summary.items() if k != "results"}, indent=1))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(summary, f, indent=1)
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
        remove_work_dir(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
