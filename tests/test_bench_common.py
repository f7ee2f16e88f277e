"""The benchmarks' shared helpers and the write-limit benchmark's window count.

No benchmark is run here and no wall-clock time is asserted.
"""

from __future__ import annotations

import argparse

import pytest

from bench.common import machine_line, number_list, percentile, refused_line, verdict
from bench.write_limit import _most_in_window


def test_number_list_is_sorted_unique_and_bounded() -> None:
    assert number_list("1000,10,10", low=0) == (10, 1000)
    with pytest.raises(argparse.ArgumentTypeError):
        number_list("0,5", low=1)
    with pytest.raises(argparse.ArgumentTypeError):
        number_list("5,200", low=1, high=100)
    with pytest.raises(argparse.ArgumentTypeError):
        number_list("a,b", low=1)


def test_percentile_is_nearest_rank() -> None:
    values = [float(n) for n in range(1, 101)]
    assert percentile(values, 0.5) in (50.0, 51.0)
    assert percentile(values, 0.99) == 99.0
    assert percentile([3.0], 0.99) == 3.0


def test_most_in_window_counts_a_sliding_window() -> None:
    burst = [60.0 * (n // 20) for n in range(100)]  # 100 posts in the first five minutes
    assert _most_in_window(burst, 900) == 100
    # 20 at the end of one fixed window and 20 at the start of the next: X's fixed windows
    # see 20 each, the sliding count sees all 40.
    edge = [840.0] * 20 + [960.0] * 20
    assert _most_in_window(edge, 900) == 40
    assert _most_in_window([0.0, 899.0, 1798.0], 900) == 2
    # A post exactly one window later is in the next window, not this one.
    assert _most_in_window([0.0, 900.0], 900) == 1
    assert _most_in_window([], 900) == 0


def test_report_lines() -> None:
    env = {
        "python": "3.11.7",
        "django": "5.2",
        "cpus": 2,
        "cpu_model": "AMD EPYC",
        "load_average": [1.5, 1.0, 0.5],
        "database": "SQLite 3.40.1",
    }
    assert machine_line(env) == "Python 3.11.7, Django 5.2, 2 CPUs (AMD EPYC), load average 1.5"
    assert refused_line("X", {"environment": env}) is None
    refused = refused_line("X", {"environment": env, "refused": "not empty."})
    assert refused == "X on SQLite 3.40.1: not run. not empty."
    assert verdict(True, "fine") == "  PASS  fine"
    assert verdict(False, "not fine") == "  FAIL  not fine"
