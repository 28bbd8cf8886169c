"""What the fault-injection tests share: counts that are bounded by default
(a few minutes for the whole suite) and full with ONDEMAND_FAULTS_FULL=1, a
figures line per scenario for docs/RELIABILITY.md, and readings of a
process's memory (rss_kib, as the benchmarks read it) and descriptors."""
import os
import random
import sys

from harness import SOURCE_DIR
from module_case import ModuleTestCase

sys.path.insert(0, os.path.join(SOURCE_DIR, "bench"))
from benchlib import rss_kib  # noqa: E402  (the benchmarks' reading of VmRSS, shared)

FULL = os.environ.get("ONDEMAND_FAULTS_FULL") == "1"


def count(full, bounded):
    """The full count with ONDEMAND_FAULTS_FULL=1, else the bounded one."""
    return full if FULL else bounded


def rng(test):
    """A random source whose seed shows in the log (ONDEMAND_FAULTS_SEED replays one)."""
    seed = int(os.environ.get("ONDEMAND_FAULTS_SEED") or random.SystemRandom().randrange(1 << 30))
    sys.stderr.write("\n%s: seed %d (ONDEMAND_FAULTS_SEED=%d replays it)\n" % (test.id(), seed, seed))
    return random.Random(seed)


def figures(scenario, **numbers):
    """One line per scenario that docs/RELIABILITY.md quotes."""
    sys.stderr.write("FAULTS %s: %s%s\n" % (scenario, ", ".join("%s %s" % kv for kv in numbers.items()),
                                            "" if FULL else " (bounded; ONDEMAND_FAULTS_FULL=1 for full counts)"))


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


class FaultsCase(ModuleTestCase):
    def location(self, path, service, port, extra=""):
        return "location %s { ondemand_service %s; %s proxy_pass http://127.0.0.1:%d; }\n" % (
            path, service, extra, port)

    def serve_sample(self, name, port):
        """A sample service run by the test itself (always up), as an upstream."""
        from harness import PYTHON, SAMPLE_SERVICE, wait_until
        proc = self.spawn([PYTHON, SAMPLE_SERVICE, "serve", "--port", str(port), "--name", name], name + ".out")
        wait_until(lambda: self._listening(port), 10, message="%s listening" % name)
        return proc
