"""The chaos run, short: the real cluster and poller on PostgreSQL under faults
(``bench/chaos.py``, described in ``docs/reliability.md``), every invariant held; and
the harness leaves nothing running when it is interrupted.

It runs the harness as its own process: the harness creates, migrates and drops a
database of its own, next to the test database, and starts the stand-ins, a django-q2
cluster with two workers and the Telegram poller. A few minutes on two CPUs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from bench.chaos import drop_database, group_members, summary, table
from tests.helpers import ROOT, environ_without

pytestmark = pytest.mark.postgres

POSTS = 300
SEED = 1


def harness(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.chaos", *args],
        cwd=ROOT,
        env=environ_without("PYTEST", "DATABASE_URL"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(run: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """Its output; past ``timeout``, SIGTERM (the harness then stops its children)."""
    try:
        return run.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        run.send_signal(signal.SIGTERM)
        try:
            out, err = run.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            run.kill()
            out, err = run.communicate()
        pytest.fail(f"the chaos run took over {timeout:.0f} s\n{err[-4000:]}")
        return out, err


def test_the_short_chaos_run_keeps_every_invariant():
    database = f"replyguy_chaos_ci_{os.getpid()}"  # never another run's
    run = harness("--posts", str(POSTS), "--seed", str(SEED), "--json", "--database", database)
    try:
        out, err = finish(run, timeout=900)
    finally:
        drop_database(database)
    assert out, err[-4000:]
    report = json.loads(out)
    print(table(report))
    print(summary(report))
    failed = [
        f"{c['check']}: {c['value']} (expected {c['expected']})"
        for c in report["checks"]
        if not c["ok"]
    ]
    assert not failed, "\n".join(failed) + "\n" + summary(report)
    assert run.returncode == 0, err[-4000:]
    assert report["figures"]["replies_by_the_bot"] > 0
    assert report["figures"]["harness_errors"] == {}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_chaos_run_leaves_no_process_behind(signum):
    database = f"replyguy_chaos_ci_stop_{os.getpid()}"
    run = harness("--posts", "30", "--chaos-seconds", "120", "--database", database)
    groups: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        for line in run.stdout:  # the harness names its children as it starts them
            groups.update(int(pid) for pid in re.findall(r"pid (\d+)", line))
            if "cluster pid" in line or time.monotonic() > deadline:
                break
        assert len(groups) == 2, "the harness never said it started the cluster and poller"
        time.sleep(8)  # into the chaos: workers busy, connections being cut
        run.send_signal(signum)
        out, _ = finish(run, timeout=90)
    finally:
        if run.poll() is None:
            run.kill()
        drop_database(database)
    assert run.returncode == 130, out
    assert "every child stopped" in out
    left = {pgid: group_members(pgid) for pgid in groups}
    assert not any(left.values()), f"left running after the harness exited: {left}"
