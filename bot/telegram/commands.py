"""The owner's commands on Telegram. Each returns the reply to show; none calls X.

Long lists are paged: a "More" button carries the next page.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from django.conf import settings
from django.db.models import Count
from django.utils import timezone

from bot.models import Channel, FailedTweet, FailedTweetStatus, QueuedTweet, Status, TargetAccount
from bot.selectors import publishing_paused
from bot.services import x_usage
from bot.services.control import ControlError, set_publishing_paused, target_add, target_remove
from bot.services.dead_letters import dead_letter_retry_now
from bot.telegram.buttons import page_button
from resilience.registry import all_breakers

if TYPE_CHECKING:
    from bot.telegram.updates import Sender

PAGE_SIZE = 10
PREVIEW = 70

WAITING = [Status.PENDING, Status.APPROVED, Status.PUBLISHING, Status.UNKNOWN, Status.HANDOFF]
OPEN_FAILURES = [FailedTweetStatus.PENDING, FailedTweetStatus.RETRYING, FailedTweetStatus.EXHAUSTED]


@dataclass(frozen=True)
class Reply:
    text: str
    buttons: list[tuple[str, str]] = field(default_factory=list)


HELP = """Reply Guy commands
/status: health, breakers, queue and dead-letter counts, X usage today
/queue [page]: replies waiting (decision, publishing, handoff)
/dlq [page]: failed replies
/retry <id>: send failed reply <id> (from /dlq) back through its stage
/pause [reason]: stop publishing now (drafts and approvals go on)
/resume: publish again
/targets: the accounts watched; /targets add <name>, /targets remove <name>
/help: this list"""


def run(text: str, sender: Sender) -> Reply:
    """The reply to one command line, e.g. ``/retry 12``."""
    words = text.split()
    name = words[0][1:].split("@", 1)[0].lower()  # "/status@replyguy_bot" in groups
    args = words[1:]
    command = COMMANDS.get(name)
    if command is None:
        return Reply(f"Unknown command /{name}.\n\n{HELP}")
    return command(args, sender)


def page(command: str, number: int) -> Reply:
    lister = LISTS.get(command)
    if lister is None:
        return Reply("That list is gone; send the command again.")
    return lister(number)


# --- commands -----------------------------------------------------------------------------


def _help(args: list[str], sender: Sender) -> Reply:
    return Reply(HELP)


def _status(args: list[str], sender: Sender) -> Reply:
    breakers = [breaker.get_status() for breaker in all_breakers()]
    trouble = [b for b in breakers if b["state"] != "closed" or b["mode"] != "normal"]
    paused = publishing_paused()
    overall = "⚠️ degraded" if trouble or paused else "✅ healthy"
    lines = [f"Reply Guy: {overall}"]
    if paused:
        lines.append("⏸ Publishing is paused (/resume to publish again).")
    lines.append("\nServices:")
    for b in breakers:
        state = b["state"] if b["mode"] == "normal" else f"{b['mode']} by an operator"
        detail = f", retry in {b['retry_after']:.0f} s" if b.get("retry_after") else ""
        error = (
            f"\n    last error: {b['last_error'][:120]}"
            if b["state"] != "closed" and b["last_error"]
            else ""
        )
        lines.append(f"  {b['name']}: {state}{detail}{error}")
    counts = dict(QueuedTweet.objects.values_list("status").annotate(n=Count("id")).order_by())
    lines.append(
        "\nQueue: "
        + (
            ", ".join(f"{Status(s).label.lower()} {n}" for s, n in sorted(counts.items()))
            or "empty"
        )
    )
    failures = dict(
        FailedTweet.objects.filter(status__in=OPEN_FAILURES)
        .values_list("status")
        .annotate(n=Count("id"))
        .order_by()
    )
    lines.append(
        "Dead letters: "
        + (
            ", ".join(
                f"{FailedTweetStatus(s).label.lower()} {n}" for s, n in sorted(failures.items())
            )
            or "none"
        )
    )
    lines.append(_x_usage_line())
    return Reply("\n".join(lines))


def _x_usage_line() -> str:
    """X calls and their estimated cost today (X's day: UTC), and the budget if set."""
    usage = x_usage.usage_today()
    line = f"X today (UTC): {usage.calls} calls, about ${usage.cost_usd:.2f}"
    budget = settings.X_DAILY_BUDGET_USD
    if budget is None:
        return line + " (no daily budget)"
    line += f" of the ${budget:.2f} budget"
    if x_usage.budget_reached():
        line += "; reached: discovery waits until 00:00 UTC"
    return line


def _queue(args: list[str], sender: Sender) -> Reply:
    number = _page_number(args)
    return _queue_page(number) if number else Reply("Usage: /queue [page], e.g. /queue 2")


def _queue_page(number: int) -> Reply:
    rows = QueuedTweet.objects.filter(status__in=WAITING).order_by("created_at")

    def line(t: QueuedTweet) -> str:
        when = ""
        if t.status == Status.APPROVED and t.scheduled_at:
            when = f", goes out {timezone.localtime(t.scheduled_at):%H:%M}"
        status = t.get_status_display().lower()
        return f"#{t.id} @{t.author_username}: {status}{when}\n   {_short(t.draft)}"

    return _paged("queue", "Replies waiting", rows, number, line)


def _dlq(args: list[str], sender: Sender) -> Reply:
    number = _page_number(args)
    return _dlq_page(number) if number else Reply("Usage: /dlq [page], e.g. /dlq 2")


def _dlq_page(number: int) -> Reply:
    rows = FailedTweet.objects.filter(status__in=OPEN_FAILURES).order_by("created_at")

    def line(f: FailedTweet) -> str:
        status = f.get_status_display().lower()
        retries = f"{f.retry_count}/{f.max_retries} retries"
        return f"#{f.id} {f.stage}, {status}, {retries}\n   {_short(f.error)}"

    reply = _paged("dlq", "Failed replies", rows, number, line)
    return (
        Reply(reply.text + "\n\n/retry <id> sends one back now.", reply.buttons)
        if rows.exists()
        else reply
    )


def _retry(args: list[str], sender: Sender) -> Reply:
    if len(args) != 1 or not args[0].lstrip("#").isdigit():
        return Reply("Usage: /retry <id>, with an id from /dlq, e.g. /retry 12")
    return Reply(
        dead_letter_retry_now(
            int(args[0].lstrip("#")), actor=sender.actor, channel=Channel.TELEGRAM
        )
    )


def _pause(args: list[str], sender: Sender) -> Reply:
    reason = " ".join(args) or "paused on Telegram"
    if set_publishing_paused(True, actor=sender.actor, channel=Channel.TELEGRAM, reason=reason):
        return Reply("⏸ Publishing paused. Drafts and approvals go on; /resume to publish again.")
    return Reply("Publishing was already paused.")


def _resume(args: list[str], sender: Sender) -> Reply:
    if set_publishing_paused(False, actor=sender.actor, channel=Channel.TELEGRAM):
        return Reply("▶️ Publishing resumed.")
    return Reply(
        "Publishing was not paused."
        if not publishing_paused()
        else "Publishing stays paused: PUBLISHING_PAUSED is set in the environment."
    )


def _targets(args: list[str], sender: Sender) -> Reply:
    if not args:
        names = [
            f"@{t.username}" + ("" if t.enabled else " (disabled)")
            for t in TargetAccount.objects.order_by("username")
        ]
        return Reply(
            "Target accounts:\n" + "\n".join(names)
            if names
            else "No target accounts yet: /targets add <name>"
        )
    if len(args) != 2 or args[0] not in ("add", "remove"):
        return Reply("Usage: /targets, /targets add <name> or /targets remove <name>")
    try:
        if args[0] == "add":
            target = target_add(args[1], actor=sender.actor, channel=Channel.TELEGRAM)
            return Reply(f"Watching @{target.username} from now on.")
        target_remove(args[1], actor=sender.actor, channel=Channel.TELEGRAM)
        return Reply(f"No longer watching @{args[1].strip().lstrip('@').lower()}.")
    except ControlError as exc:
        return Reply(f"Not done: {exc}")


COMMANDS: dict[str, Callable[[list[str], Sender], Reply]] = {
    "start": _help,
    "help": _help,
    "status": _status,
    "queue": _queue,
    "dlq": _dlq,
    "retry": _retry,
    "pause": _pause,
    "resume": _resume,
    "targets": _targets,
}
LISTS: dict[str, Callable[[int], Reply]] = {"queue": _queue_page, "dlq": _dlq_page}


# --- helpers ------------------------------------------------------------------------------


def _page_number(args: list[str]) -> int | None:
    if not args:
        return 1
    if len(args) == 1 and args[0].isdigit() and int(args[0]) >= 1:
        return int(args[0])
    return None


def _paged(command: str, title: str, rows, number: int, line) -> Reply:  # type: ignore[no-untyped-def]
    total = rows.count()
    if total == 0:
        return Reply(f"{title}: none.")
    pages = (total + PAGE_SIZE - 1) // PAGE_SIZE
    number = min(number, pages)
    chunk = rows[(number - 1) * PAGE_SIZE : number * PAGE_SIZE]
    text = f"{title} ({total}), page {number} of {pages}:\n\n" + "\n".join(
        line(row) for row in chunk
    )
    buttons = [("More ▶", page_button(command, number + 1))] if number < pages else []
    return Reply(text, buttons)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= PREVIEW else text[: PREVIEW - 1] + "…"
