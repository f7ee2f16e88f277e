"""The owner's desk in the Django admin. Every action calls a service; nothing saves rows here."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from bot.models import (
    Channel,
    Decision,
    FailedTweet,
    OptedOutAuthor,
    PipelineControl,
    QueuedTweet,
    SearchQuery,
    Status,
    TargetAccount,
)
from bot.replies import LINK_COST_NOTE, links_in
from bot.services import dead_letters, review
from bot.services.publishing import handoff_link

admin.site.site_header = "Reply Guy"
admin.site.site_title = "Reply Guy"


@admin.register(TargetAccount)
class TargetAccountAdmin(admin.ModelAdmin):
    list_display = ["username", "enabled", "x_user_id", "replies_per_author_per_day"]
    list_filter = ["enabled"]
    search_fields = ["username"]
    readonly_fields = ["x_user_id", "created_at"]


@admin.register(SearchQuery)
class SearchQueryAdmin(admin.ModelAdmin):
    list_display = ["query", "enabled", "created_at"]


@admin.register(OptedOutAuthor)
class OptedOutAuthorAdmin(admin.ModelAdmin):
    list_display = ["username", "reason", "created_at"]
    search_fields = ["username"]


class DecisionInline(admin.TabularInline):
    model = Decision
    extra = 0
    can_delete = False
    fields = ["created_at", "action", "actor", "channel", "text_before", "text_after"]
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ReviewForm(forms.ModelForm):
    reply_text = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4, "cols": 80}),
        required=False,
        strip=False,
        help_text="Edit before approving if you like; it is posted exactly as typed.",
    )
    # The draft version this page showed: approving names it, so a draft rewritten
    # after the page was loaded is never approved by this press.
    shown_version = forms.IntegerField(widget=forms.HiddenInput, required=False)

    class Meta:
        model = QueuedTweet
        fields: list[str] = []


@admin.register(QueuedTweet)
class QueuedTweetAdmin(admin.ModelAdmin):
    form = ReviewForm
    list_display = [
        "target_tweet_id",
        "author_username",
        "status",
        "source",
        "short_draft",
        "scheduled_at",
        "posted_at",
    ]
    list_filter = ["status", "source", "summoned"]
    search_fields = ["target_tweet_id", "author_username", "text", "draft"]
    date_hierarchy = "created_at"
    inlines = [DecisionInline]
    actions = ["approve_selected", "reject_selected", "regenerate_selected"]
    change_form_template = "admin/bot/queuedtweet/change_form.html"

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in QueuedTweet._meta.fields] + ["post_link", "handoff"]

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fields = [
            "status", "post_link", "author_username", "text", "summoned", "draft", "variants",
            "scheduled_at", "approved_by", "approved_via", "approved_at", "attempts",
            "next_attempt_at", "reply_tweet_id", "posted_at", "handoff", "skip_reason",
            "last_error", "last_error_kind",
        ]  # fmt: skip
        if obj is not None and obj.status == Status.PENDING:
            fields[6:6] = ["reply_text", "shown_version"]
        return fields

    def get_form(
        self, request: HttpRequest, obj: Any = None, **kwargs: Any
    ) -> type[forms.ModelForm]:
        form = super().get_form(request, obj, **kwargs)
        if obj is not None and "reply_text" in form.base_fields:
            form.base_fields["reply_text"].initial = obj.draft
            form.base_fields["shown_version"].initial = obj.draft_version
        return form

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The row is the record of what we found, decided and posted (and its unique
        # post id is what stops a second reply): it is never deleted, only rejected.
        return False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="draft")
    def short_draft(self, obj: QueuedTweet) -> str:
        # The version shown rides along with the bulk actions' form: "Approve the
        # selected" approves exactly the drafts this page displayed.
        return format_html(
            '{}<input type="hidden" name="shown_version_{}" value="{}">',
            obj.draft[:60],
            obj.pk,
            obj.draft_version,
        )

    @admin.display(description="post on X")
    def post_link(self, obj: QueuedTweet) -> str:
        return format_html('<a href="{}" target="_blank" rel="noopener">{}</a>', obj.url, obj.url)

    @admin.display(description="post it yourself")
    def handoff(self, obj: QueuedTweet) -> str:
        if obj.status != Status.HANDOFF:
            return "-"
        return format_html(
            '<a href="{}" target="_blank" rel="noopener">Open X with this reply filled in</a>',
            handoff_link(obj),
        )

    def save_model(self, request: HttpRequest, obj: QueuedTweet, form: Any, change: bool) -> None:
        """The buttons of the change form, each a service call; the row is never saved here."""
        actor = request.user.get_username()
        try:
            if "_approve" in request.POST:
                version = form.cleaned_data.get("shown_version")
                if version is None:
                    raise review.ReviewError("Approve from the page that shows the draft.")
                text = form.cleaned_data.get("reply_text") or None
                review.reply_approve(
                    obj, actor=actor, channel=Channel.ADMIN, version=version, text=text
                )
                messages.success(request, "Approved; it is scheduled for publishing.")
                if links_in(obj.draft):
                    messages.warning(request, LINK_COST_NOTE)
            elif "_regenerate" in request.POST:
                review.reply_regenerate(obj, actor=actor, channel=Channel.ADMIN)
                messages.success(request, "A new draft will be written shortly.")
            elif "_reject" in request.POST:
                review.reply_reject(obj, actor=actor, channel=Channel.ADMIN)
                messages.success(request, "Rejected; this post will not be answered.")
        except review.ReviewError as exc:
            messages.error(request, str(exc))

    def log_change(self, request: HttpRequest, obj: Any, message: Any) -> None:
        """The audit trail is the Decision table, written by the services."""

    def message_user(self, request: HttpRequest, message: str, *args: Any, **kwargs: Any) -> None:
        # Admin's generic "was changed successfully" would contradict the service's verdict.
        if "was changed successfully" not in str(message):
            super().message_user(request, message, *args, **kwargs)

    def _bulk(
        self, request: HttpRequest, queryset: QuerySet[QueuedTweet], apply: Any, done: str
    ) -> None:
        actor = request.user.get_username()
        ok, refused = 0, []
        for tweet in queryset:
            try:
                apply(tweet, actor=actor, channel=Channel.ADMIN)
                ok += 1
            except review.ReviewError as exc:
                refused.append(str(exc))
        if ok:
            messages.success(request, f"{done}: {ok}.")
        for reason in refused:
            messages.warning(request, reason)

    @admin.action(description="Approve the selected drafts as they are")
    def approve_selected(self, request: HttpRequest, queryset: QuerySet[QueuedTweet]) -> None:
        def approve_as_shown(tweet: QueuedTweet, **decision: Any) -> None:
            shown = request.POST.get(f"shown_version_{tweet.pk}", "")
            if not shown.isdigit():
                # "Select all" reaches rows this page never displayed.
                raise review.ReviewError(
                    f"The draft for {tweet.url} was not on the page you approved from; "
                    "nothing was approved. Open it, or select it on a page that shows it."
                )
            review.reply_approve(tweet, version=int(shown), **decision)

        self._bulk(request, queryset, approve_as_shown, "Approved")

    @admin.action(description="Reject the selected posts")
    def reject_selected(self, request: HttpRequest, queryset: QuerySet[QueuedTweet]) -> None:
        self._bulk(request, queryset, review.reply_reject, "Rejected")

    @admin.action(description="Write new drafts for the selected posts")
    def regenerate_selected(self, request: HttpRequest, queryset: QuerySet[QueuedTweet]) -> None:
        self._bulk(request, queryset, review.reply_regenerate, "Sent back for a new draft")


@admin.register(FailedTweet)
class FailedTweetAdmin(admin.ModelAdmin):
    list_display = [
        "target_tweet_id",
        "stage",
        "status",
        "error_kind",
        "retry_count",
        "next_retry_at",
        "short_error",
    ]
    list_filter = ["status", "stage", "error_kind"]
    actions = ["discard_selected"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in FailedTweet._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # discarding keeps the row and says who and why

    @admin.display(description="error")
    def short_error(self, obj: FailedTweet) -> str:
        return obj.error[:80]

    @admin.action(description="Discard the selected failures (no more retries)")
    def discard_selected(self, request: HttpRequest, queryset: QuerySet[FailedTweet]) -> None:
        actor = request.user.get_username()
        done = sum(
            dead_letters.dead_letter_discard(
                f, actor=actor, reason=f"discarded by {actor} in the admin"
            )
            for f in queryset
        )
        messages.success(request, f"Discarded: {done}.")


@admin.register(PipelineControl)
class PipelineControlAdmin(admin.ModelAdmin):
    list_display = ["__str__", "paused_reason", "updated_at"]
    fields = ["publishing_paused", "paused_reason"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # the one row is created by migration

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
