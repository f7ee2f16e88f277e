"""Pacing rules: quiet hours across midnight, spacing, hourly, daily and per-author caps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from bot.pacing import Pacing, earliest_allowed, in_quiet_hours, quiet_hours_end

PARIS = ZoneInfo("Europe/Paris")


def pacing(**overrides) -> Pacing:
    values = {
        "min_delay": timedelta(minutes=5),
        "max_delay": timedelta(minutes=30),
        "quiet_start": 23,
        "quiet_end": 7,
        "tz": PARIS,
        "per_hour": 4,
        "per_day": 20,
        "spacing": timedelta(minutes=3),
    }
    return Pacing(**{**values, **overrides})


def paris(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=PARIS).astimezone(UTC)


@pytest.mark.parametrize(
    ("hour", "quiet"),
    [(22, False), (23, True), (0, True), (3, True), (6, True), (7, False), (12, False)],
)
def test_quiet_hours_cross_midnight_in_the_owners_time_zone(hour, quiet):
    assert in_quiet_hours(paris(10, hour, 30), pacing()) is quiet


def test_quiet_hours_within_one_day():
    daytime = pacing(quiet_start=12, quiet_end=14)
    assert in_quiet_hours(paris(10, 13), daytime)
    assert not in_quiet_hours(paris(10, 14), daytime)
    assert not in_quiet_hours(paris(10, 11), daytime)


def test_equal_start_and_end_means_no_quiet_hours():
    assert not in_quiet_hours(paris(10, 3), pacing(quiet_start=0, quiet_end=0))


def test_quiet_hours_end_is_the_next_morning_after_midnight():
    assert quiet_hours_end(paris(10, 23, 30), pacing()) == paris(11, 7)
    assert quiet_hours_end(paris(11, 2), pacing()) == paris(11, 7)
    assert quiet_hours_end(paris(11, 9), pacing()) == paris(11, 9)


def test_spacing_pushes_after_the_last_publish():
    last = paris(10, 12, 0)
    assert earliest_allowed(paris(10, 12, 1), pacing(), [last]) == paris(10, 12, 3)


def test_hourly_cap_waits_for_the_oldest_to_leave_the_window():
    published = [paris(10, 12, minute) for minute in (0, 10, 20, 30)]
    allowed = earliest_allowed(paris(10, 12, 40), pacing(), published)
    assert allowed == paris(10, 13, 0)


def test_daily_cap_moves_to_the_next_day_and_out_of_quiet_hours():
    published = [paris(10, 7) + timedelta(minutes=45 * i) for i in range(20)]
    allowed = earliest_allowed(paris(10, 22, 30), pacing(per_hour=100), published)
    # The first publish leaves the 24 h window at 07:00 the next day, which is quiet-hours end.
    assert allowed == paris(11, 7, 0)


def test_author_cap_per_day():
    earlier = paris(10, 9)
    allowed = earliest_allowed(paris(10, 12), pacing(), [earlier], [earlier], author_cap=1)
    assert allowed == paris(11, 9)
    assert earliest_allowed(paris(10, 12), pacing(), [earlier], [earlier], author_cap=2) == paris(
        10, 12
    )


def test_every_rule_holds_for_the_answer():
    published = [paris(10, 22, 50), paris(10, 22, 55)]
    allowed = earliest_allowed(paris(10, 22, 56), pacing(per_hour=2), published)
    assert not in_quiet_hours(allowed, pacing())
    assert all(abs(allowed - t) >= timedelta(minutes=3) for t in published)
    assert sum(1 for t in published if allowed - timedelta(hours=1) < t <= allowed) < 2


def test_random_delay_stays_within_the_configured_range():
    import random

    rng = random.Random(1)
    delays = [pacing().random_delay(rng) for _ in range(500)]
    assert min(delays) >= timedelta(minutes=5)
    assert max(delays) <= timedelta(minutes=30)
    assert max(delays) - min(delays) > timedelta(minutes=20)


def test_claims_stamped_later_than_now_still_count_against_the_caps():
    """Another worker's claim can carry a time after this worker's now."""
    later = [paris(10, 12, 1), paris(10, 12, 2)]
    allowed = earliest_allowed(paris(10, 12, 0), pacing(per_hour=2, spacing=timedelta(0)), later)
    assert allowed == paris(10, 13, 1)
