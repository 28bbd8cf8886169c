"""Helpers shared by the benchmark scripts (bench.py, controld_scale.py,
semaphore_release.py), so that every figure is computed the same way."""
import os
import shutil
import sys


def percentile(values, p):
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    v = sorted(values)
    k = max(0, min(len(v) - 1, int(-(-p * len(v) // 100)) - 1))
    return v[k]


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def remove_work_dir(work):
    """A benchmark's scratch directory goes, unless BENCH_KEEP is set (to read its logs)."""
    if os.environ.get("BENCH_KEEP"):
        print("kept " + work, file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
