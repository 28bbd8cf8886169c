#!/usr/bin/env python3
"""The start and stop commands of the benchmarks' cold service.

The cold service is a server of the benchmarks' upstream nginx that answers
503 (health and everything else) until its ready file exists, and 200 with
its own body once it does: a service that is "booting" until then. The start
command returns at once, like `systemctl start`, and leaves a detached
process that creates the ready file after the delay:

  gate.py start --dir D --after S [--after-max S2]   ready S (or uniform S..S2) seconds from now
  gate.py stop  --dir D                               not ready any more (and no pending start)

Files in D: `ready` (contains "<CLOCK_MONOTONIC ns> <unix ns>" taken just
before it appeared: the moment the service became healthy), `starts` and
`stops` (one line per command run, to count starts).
"""
import argparse
import os
import random
import signal
import sys
import time


def start(args):
    with open(os.path.join(args.dir, "starts"), "a") as f:
        f.write("%d %d\n" % (time.monotonic_ns(), time.time_ns()))
    delay = args.after if args.after_max is None else random.uniform(args.after, args.after_max)
    if os.fork() > 0:
        return 0
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    pidfile = os.path.join(args.dir, "pending.pid")
    with open(pidfile, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(delay)
    tmp = os.path.join(args.dir, "ready.tmp")
    with open(tmp, "w") as f:
        f.write("%d %d\n" % (time.monotonic_ns(), time.time_ns()))
    os.rename(tmp, os.path.join(args.dir, "ready"))
    try:
        os.unlink(pidfile)
    except OSError:
        pass
    os._exit(0)


def stop(args):
    pidfile = os.path.join(args.dir, "pending.pid")
    try:
        with open(pidfile) as f:
            os.kill(int(f.read().strip()), signal.SIGKILL)
        os.unlink(pidfile)
    except (OSError, ValueError):
        pass
    try:
        os.unlink(os.path.join(args.dir, "ready"))
    except OSError:
        pass
    with open(os.path.join(args.dir, "stops"), "a") as f:
        f.write("%d %d\n" % (time.monotonic_ns(), time.time_ns()))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["start", "stop"])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--after", type=float, default=3.0)
    ap.add_argument("--after-max", type=float)
    args = ap.parse_args()
    return start(args) if args.action == "start" else stop(args)


if __name__ == "__main__":
    sys.exit(main())
