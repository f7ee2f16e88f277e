"""The reply pipeline's data: what we watch, what we found, what we decided, what failed.

Rows move between statuses only through the services in ``bot.services``, each a
conditional update on the expected current status, so two workers can never both
move one row. The database itself refuses a publishable row without an approval.
"""

from __future__ import annotations

from django.core.validators import MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q

X_USERNAME = RegexValidator(
    r"^@?[A-Za-z0-9_]{1,15}$", "An X username: letters, digits, _; at most 15."
)


class TargetAccount(models.Model):
    """An X account whose posts we consider answering."""

    username = models.CharField(
        max_length=15,
        unique=True,
        validators=[X_USERNAME],
        help_text="Without the @: letters, digits and underscores, at most 15.",
    )
    x_user_id = models.CharField(max_length=32, blank=True, help_text="Resolved on first use.")
    enabled = models.BooleanField(default=True)
    persona = models.TextField(blank=True, help_text="Overrides the global persona if set.")
    replies_per_author_per_day = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Empty: MAX_REPLIES_PER_AUTHOR_PER_DAY.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["username"]

    def __str__(self) -> str:
        return f"@{self.username}"

    def clean(self) -> None:
        self.username = self.username.strip().lstrip("@").lower()


class SearchQuery(models.Model):
    """An X recent-search query whose results we consider answering."""

    query = models.CharField(max_length=512, unique=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "search queries"

    def __str__(self) -> str:
        return self.query


class OptedOutAuthor(models.Model):
    """Authors we never answer (they asked, or the owner muted them)."""

    username = models.CharField(max_length=15, unique=True, validators=[X_USERNAME])
    reason = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"@{self.username}"

    def clean(self) -> None:
        self.username = self.username.strip().lstrip("@").lower()


class Cursor(models.Model):
    """How far a source has been read (X's ``since_id``, exclusive).

    A read that stopped part way (X failed on a later page) leaves a gap: posts above
    ``since_id`` and below ``until_id`` are still unread, those from ``until_id`` up to
    ``top_id`` are read. The next read fills the gap first, so the cursor never moves
    past a post it has not read and no post is read (and paid for) twice.
    """

    source = models.CharField(max_length=80, unique=True)
    since_id = models.CharField(max_length=32, blank=True)
    until_id = models.CharField(max_length=32, blank=True)
    top_id = models.CharField(max_length=32, blank=True)
    # X thins a page after cutting it (``exclude``): a page can come back empty with a
    # token for the rest. Kept so a read cut short after one resumes from it.
    page_token = models.CharField(max_length=200, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.source} > {self.since_id or '-'}"


class OurReply(models.Model):
    """A reply of ours, published by us or seen on our timeline (the owner's by hand too).

    Read once (X bills every read) and matched later: "have we answered this post?"
    """

    reply_id = models.CharField(max_length=32, unique=True)
    in_reply_to_id = models.CharField(max_length=32, db_index=True)
    text = models.TextField(blank=True)
    seen_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        verbose_name_plural = "our replies"

    def __str__(self) -> str:
        return f"{self.reply_id} -> {self.in_reply_to_id}"


class Source(models.TextChoices):
    TARGET = "target", "Target account"
    MENTION = "mention", "Mention"
    SEARCH = "search", "Search"


class Status(models.TextChoices):
    NEW = "new", "New"
    PENDING = "pending", "Waiting for approval"
    APPROVED = "approved", "Approved"
    PUBLISHING = "publishing", "Publishing"
    POSTED = "posted", "Posted"
    REJECTED = "rejected", "Rejected"
    EXPIRED = "expired", "Expired"
    SKIPPED = "skipped", "Skipped"
    FAILED = "failed", "Failed"
    UNKNOWN = "unknown", "Outcome unknown"
    HANDOFF = "handoff", "Handed off"


# Statuses that mean a human approved the text; the database refuses them without it.
APPROVED_STATUSES = [
    Status.APPROVED,
    Status.PUBLISHING,
    Status.POSTED,
    Status.UNKNOWN,
    Status.HANDOFF,
]


class Channel(models.TextChoices):
    ADMIN = "admin", "Django admin"
    TELEGRAM = "telegram", "Telegram"
    SYSTEM = "system", "Reply Guy"


class QueuedTweet(models.Model):
    """A post found on X and everything we did about it."""

    target_tweet_id = models.CharField(max_length=32, unique=True)
    author_id = models.CharField(max_length=32)
    # X allows 15 characters today; what X sends is kept as it is, never refused.
    author_username = models.CharField(max_length=100)
    text = models.TextField()
    tweet_created_at = models.DateTimeField()
    source = models.CharField(max_length=10, choices=Source.choices)
    summoned = models.BooleanField(
        default=False, help_text="The author mentioned or quoted us: X allows an API reply."
    )
    relevance = models.FloatField(null=True, blank=True)

    status = models.CharField(max_length=12, choices=Status.choices, default=Status.NEW)
    skip_reason = models.CharField(max_length=200, blank=True)
    draft = models.TextField(blank=True)
    variants = models.JSONField(default=list, blank=True)
    draft_attempts = models.PositiveSmallIntegerField(default=0)
    # Counts every new draft: an approval names the version it was shown, so a draft
    # that changed since (regenerated, redrafted) cannot be approved by that press.
    draft_version = models.PositiveIntegerField(default=0)

    approved_at = models.DateTimeField(null=True, blank=True)
    approved_by = models.CharField(max_length=150, blank=True)
    approved_via = models.CharField(max_length=10, choices=Channel.choices, blank=True)

    scheduled_at = models.DateTimeField(null=True, blank=True)
    publish_request_id = models.UUIDField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # The last time this reply was sent to X. A row that was ever sent may exist on X
    # whatever its status, so reconcile keeps looking for it until it is settled.
    sent_at = models.DateTimeField(null=True, blank=True)
    reply_tweet_id = models.CharField(max_length=32, blank=True)
    posted_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_error_kind = models.CharField(max_length=16, blank=True)
    last_error_reason = models.CharField(max_length=32, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "tweet_queue"
        verbose_name = "queued tweet"
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "scheduled_at"]),
            models.Index(fields=["status", "next_attempt_at"]),
            models.Index(fields=["status", "lease_until"]),
            models.Index(fields=["status", "claimed_at"]),
            models.Index(fields=["author_id", "claimed_at"]),
            models.Index(fields=["status", "sent_at"]),
        ]
        constraints = [
            # Invariant 1, held by the database: nothing publishable without an approval.
            models.CheckConstraint(
                condition=~Q(status__in=APPROVED_STATUSES) | Q(approved_at__isnull=False),
                name="tweet_queue_approved_has_approval",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.target_tweet_id} by @{self.author_username} ({self.status})"

    @property
    def url(self) -> str:
        return f"https://x.com/{self.author_username}/status/{self.target_tweet_id}"


class FailedTweetStatus(models.TextChoices):
    PENDING = "pending", "Waiting for a retry"
    RETRYING = "retrying", "Retrying"
    EXHAUSTED = "exhausted", "Retries exhausted"
    RESOLVED = "resolved", "Resolved"
    DISCARDED = "discarded", "Discarded"
    # Set aside by the owner: no automatic retries, kept until they retry or discard it.
    PARKED = "parked", "Parked"


class FailedTweet(models.Model):
    """The dead-letter queue: one row per queued tweet that failed at some stage."""

    queued_tweet = models.OneToOneField(
        QueuedTweet, on_delete=models.CASCADE, related_name="failure"
    )
    target_tweet_id = models.CharField(max_length=32)
    stage = models.CharField(max_length=16)
    error = models.TextField()
    error_kind = models.CharField(max_length=16)
    retry_count = models.PositiveSmallIntegerField(default=0)
    max_retries = models.PositiveSmallIntegerField(default=5)
    next_retry_at = models.DateTimeField(null=True, blank=True)
    last_retry_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(
        max_length=10, choices=FailedTweetStatus.choices, default=FailedTweetStatus.PENDING
    )
    discard_reason = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "failed_tweets"
        verbose_name = "failed tweet"
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "next_retry_at"])]

    def __str__(self) -> str:
        return f"{self.target_tweet_id} at {self.stage} ({self.status})"


class Decision(models.Model):
    """The audit trail: every decision about a queued tweet, by whom, where, with what text."""

    class Action(models.TextChoices):
        APPROVE = "approve", "Approved"
        EDIT = "edit", "Edited and approved"
        REGENERATE = "regenerate", "Asked for a new draft"
        REJECT = "reject", "Rejected"
        DISCARD = "discard", "Discarded a failure"
        REVISE = "revise", "Rewrote the draft"
        MARK_POSTED = "mark_posted", "Marked posted"
        SKIP = "skip", "Not sent"
        EXPIRE = "expire", "Expired"
        FOUND_LIVE = "found_live", "Found live on X"

    queued_tweet = models.ForeignKey(
        QueuedTweet, on_delete=models.CASCADE, related_name="decisions"
    )
    action = models.CharField(max_length=16, choices=Action.choices)
    actor = models.CharField(max_length=150)
    channel = models.CharField(max_length=10, choices=Channel.choices)
    text_before = models.TextField(blank=True)
    text_after = models.TextField(blank=True)
    # Where the decision was taken, e.g. the Telegram message whose button was pressed.
    reference = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"{self.get_action_display()} by {self.actor} via {self.channel}"


class PipelineControl(models.Model):
    """Operator switches that must take effect at once in every worker (one row)."""

    publishing_paused = models.BooleanField(
        default=False, help_text="Stop publishing now; approvals and drafts continue."
    )
    paused_reason = models.CharField(max_length=200, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "pipeline control"

    def __str__(self) -> str:
        return "Publishing paused" if self.publishing_paused else "Publishing running"


class OperatorAction(models.Model):
    """The audit trail of switches that concern no single post: pause, targets, retries."""

    class Action(models.TextChoices):
        PAUSE = "pause", "Paused publishing"
        RESUME = "resume", "Resumed publishing"
        ADD_TARGET = "add_target", "Added a target account"
        REMOVE_TARGET = "remove_target", "Removed a target account"
        RETRY = "retry", "Retried failed replies"
        DISCARD = "discard", "Discarded failed replies"
        PARK = "park", "Parked failed replies"

    action = models.CharField(max_length=16, choices=Action.choices)
    actor = models.CharField(max_length=150)
    channel = models.CharField(max_length=10, choices=Channel.choices)
    detail = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.get_action_display()} by {self.actor} via {self.channel}"


class ApprovalMessage(models.Model):
    """The owner's Telegram message about one queued tweet, and what it shows now.

    Sent once when the draft is ready (or a reply is handed off), then edited to follow
    the tweet: a new draft, the decision, the result. ``rendered`` fingerprints what it
    shows, so it is edited only when that changes.
    """

    queued_tweet = models.OneToOneField(
        QueuedTweet, on_delete=models.CASCADE, related_name="approval_message"
    )
    message_id = models.BigIntegerField(null=True, blank=True, help_text="Empty: not sent yet.")
    rendered = models.CharField(max_length=64, blank=True)
    # A sender's claim on sending it: a second sender leaves it alone until then.
    sending_until = models.DateTimeField(null=True, blank=True)
    send_attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    reminded_at = models.DateTimeField(null=True, blank=True)
    # The force-reply prompt asking for an edited text, and the draft version it edits.
    edit_prompt_id = models.BigIntegerField(null=True, blank=True, unique=True)
    edit_version = models.PositiveIntegerField(null=True, blank=True)
    # Shows a final outcome: never edited again.
    settled = models.BooleanField(default=False)
    # The tweet's ``updated_at`` when the message was last drawn: the outbox looks only
    # at messages whose tweet changed since, however many wait (held replies, say).
    drawn_from = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["settled", "message_id"])]

    def __str__(self) -> str:
        return f"message {self.message_id or '(not sent)'} for {self.queued_tweet_id}"


class TelegramUpdate(models.Model):
    """An update from Telegram, kept once by its ``update_id``: redeliveries are ignored."""

    update_id = models.BigIntegerField(unique=True)
    payload = models.JSONField()
    received_at = models.DateTimeField(auto_now_add=True)
    claimed_until = models.DateTimeField(null=True, blank=True)
    handled_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        indexes = [models.Index(fields=["handled_at", "update_id"])]

    def __str__(self) -> str:
        return f"update {self.update_id}"


class XUsage(models.Model):
    """X calls of one UTC day to one endpoint, and what they are estimated to cost.

    Written only by ``bot.services.x_usage.record``, an atomic increment in the
    database, so every process and machine adds to the same row and none is lost.
    """

    day = models.DateField(help_text="The UTC day: X bills by UTC day.")
    endpoint = models.CharField(max_length=40)
    calls = models.PositiveBigIntegerField(default=0)
    units = models.PositiveBigIntegerField(default=0, help_text="Posts or users X returned.")
    cost_micros = models.PositiveBigIntegerField(
        default=0, help_text="Estimated cost in millionths of a US dollar."
    )
    updated_at = models.DateTimeField()

    class Meta:
        verbose_name = "X usage"
        verbose_name_plural = "X usage"
        constraints = [
            models.UniqueConstraint(fields=["day", "endpoint"], name="x_usage_one_row_per_day"),
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.endpoint}: {self.calls} calls"
