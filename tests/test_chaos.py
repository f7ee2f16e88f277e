"""The chaos run, short: the real cluster and poller on PostgreSQL under faults
(``bench/chaos.py``, described in ``docs/reliability.md``), every invariant held.

It runs the harness as its own process: the harness creates, migrates and drops a
database of its own, next to the test database, and starts the stand-ins, a django-q2
cluster with two workers and the Telegram poller. A few minutes on two CPUs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench.chaos import drop_database, summary, table
from tests.helpers import ROOT, environ_without

pytestmark = pytest.mark.postgres

POSTS = 300
SEED = 1


def test_the_short_chaos_run_keeps_every_invariant():
    database = f"replyguy_chaos_ci_{os.getpid()}"  # never another run's
    command = [sys.executable, "-m", "bench.chaos", "--posts", str(POSTS), "--seed", str(SEED)]
    try:
        run = subprocess.run(
            [*command, "--json", "--database", database],
            cwd=ROOT,
            env=environ_without("PYTEST", "DATABASE_URL"),
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        drop_database(database)
    assert run.stdout, run.stderr[-4000:]
    report = json.loads(run.stdout)
    print(table(report))
    print(summary(report))
    failed = [
        f"{c['check']}: {c['value']} (expected {c['expected']})"
        for c in report["checks"]
        if not c["ok"]
    ]
    assert not failed, "\n".join(failed) + "\n" + summary(report)
    assert run.returncode == 0, run.stderr[-4000:]
    assert report["figures"]["replies_by_the_bot"] > 0
    assert report["figures"]["harness_errors"] == {}
