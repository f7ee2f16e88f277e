"""Operators see every breaker in the admin and can reset, force or disable it."""

from __future__ import annotations

import html

import pytest
from django.contrib.auth.models import Permission, User

from resilience import get_breaker

URL = "/admin/resilience/breakerrecord/"


@pytest.fixture
def staff_viewer(db) -> User:
    user = User.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_breakerrecord"))
    return user


def test_page_lists_every_configured_breaker_with_its_state(admin_client):
    get_breaker("ai_service").open_until(4_102_444_800)  # year 2100
    page = admin_client.get(URL)
    assert page.status_code == 200
    html = page.content.decode()
    for name in ("twitter_api", "ai_service", "database", "telegram"):
        assert f"breaker-{name}" in html
    assert page.context["breakers"][1]["name"] == "ai_service"
    assert page.context["breakers"][1]["state"] == "open"
    assert "2100-01-01T00:00:00+00:00" in html


@pytest.mark.parametrize(
    ("action", "state"),
    [("force_open", "forced_open"), ("force_closed", "forced_closed"), ("disable", "disabled")],
)
def test_actions_change_the_shared_state(admin_client, action, state):
    # Force open and disable ask first (tests/test_admin_desk.py); this is the "yes".
    response = admin_client.post(
        URL, {"action": action, "breaker": "twitter_api", "confirmed": "yes"}, follow=True
    )
    assert response.status_code == 200
    assert f"twitter_api is now {state}" in response.content.decode()
    assert get_breaker("twitter_api").state == state


def test_reset_closes_a_forced_breaker(admin_client):
    get_breaker("telegram").force_open()
    admin_client.post(URL, {"action": "reset", "breaker": "telegram"})
    assert get_breaker("telegram").state == "closed"


def test_unknown_breaker_or_action_is_reported_not_applied(admin_client):
    response = admin_client.post(URL, {"action": "force_open", "breaker": "nope"}, follow=True)
    assert "No circuit breaker named 'nope'" in html.unescape(response.content.decode())
    response = admin_client.post(URL, {"action": "explode", "breaker": "telegram"}, follow=True)
    assert "Unknown action" in response.content.decode()
    assert get_breaker("telegram").state == "closed"


def test_anonymous_users_are_sent_to_login(client, db):
    response = client.get(URL)
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_view_only_staff_sees_no_buttons_and_cannot_act(client, staff_viewer):
    client.force_login(staff_viewer)
    page = client.get(URL)
    assert page.status_code == 200
    assert "Force open" not in page.content.decode()
    assert client.post(URL, {"action": "force_open", "breaker": "telegram"}).status_code == 403
    assert get_breaker("telegram").state == "closed"
