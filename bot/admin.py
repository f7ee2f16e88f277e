"""The owner's desk in the Django admin. Every action calls a service; nothing saves rows here.

The index is the dashboard (``bot.dashboard``, rendered by ``admin/bot/dashboard.html``);
every admin page shows a banner while publishing is paused (``admin/base_site.html``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse, reverse_lazy
from django.utils import timezone
from django.utils.html import format_html
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.text import capfirst

from bot.models import (
    Channel,
    Decision,
    FailedTweet,
    FailedTweetStatus,
    OperatorAction,
    OptedOutAuthor,
    PipelineControl,
    QueuedTweet,
    SearchQuery,
    Status,
    TargetAccount,
)
from bot.replies import LINK_COST_NOTE, links_in
from bot.selectors import publishing_paused, through_api
from bot.services import control, dead_letters, review
from bot.services.publishing import handoff_link
from bot.services.review import checked_edit
from bot.services.scheduling import next_reply_out, reply_timing

admin.site.site_header = "Reply Guy"
admin.site.site_title = "Reply Guy"
# "View site" leads to the dashboard: the admin is the site.
admin.site.site_url = reverse_lazy("admin:index")
admin.site.index_template = "admin/bot/dashboard.html"
# The index is the map; the list pages need the width for posts and drafts at 1366 px.
admin.site.enable_nav_sidebar = False


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
    verbose_name_plural = "audit trail"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def ago(when: datetime | None, now: datetime | None = None) -> str:
    """ "3 h 5 min ago", "in 20 min": a span as the owner reads it."""
    if when is None:
        return "-"
    now = now or timezone.now()
    span = abs(now - when)
    hours, minutes = divmod(int(span.total_seconds() // 60), 60)
    days, hours = divmod(hours, 24)
    parts = [f"{days} d"] if days else []
    parts += [f"{hours} h"] if hours else []
    parts += [f"{minutes} min"] if minutes and not days else []
    words = " ".join(parts) or "under a minute"
    return f"{words} ago" if when <= now else f"in {words}"


# --- queued tweets -----------------------------------------------------------------------


class TargetFilter(admin.SimpleListFilter):
    """By target account (the post's author)."""

    title = "target (author)"
    parameter_name = "author"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        names = TargetAccount.objects.order_by("username").values_list("username", flat=True)
        return [(name, f"@{name}") for name in names]

    def queryset(self, request: HttpRequest, queryset: QuerySet[QueuedTweet]) -> Any:
        if self.value():
            return queryset.filter(author_username__iexact=self.value())
        return queryset


class ReviewForm(forms.ModelForm):
    reply_text = forms.CharField(
        label="Reply",
        widget=forms.Textarea(attrs={"rows": 4, "class": "rg-reply"}),
        required=False,
        strip=False,
        help_text="Edit before approving if you like; it is posted exactly as typed.",
    )
    # Which text to approve when the draft came with variants: "" is the draft.
    variant = forms.ChoiceField(
        label="Or approve a variant",
        widget=forms.RadioSelect(attrs={"class": "rg-variants"}),
        required=False,
    )
    # The draft version this page showed: approving names it, so a draft rewritten
    # after the page was loaded is never approved by this press.
    shown_version = forms.IntegerField(widget=forms.HiddenInput, required=False)

    class Meta:
        model = QueuedTweet
        fields: list[str] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        tweet = self.instance
        others = [
            (str(index), text)
            for index, text in enumerate(tweet.variants or [])
            if isinstance(text, str) and text != tweet.draft
        ]
        self.fields["variant"].choices = [("", "The draft, as shown above"), *others]
        self.has_variants = bool(others)

    def clean(self) -> dict[str, Any]:
        """An edit is checked as the service will check it, so a refused text comes
        back in the box it was typed in, with the reason next to it."""
        data = super().clean()
        if "_approve" not in self.data or self.instance.status != Status.PENDING:
            return data
        text = data.get("reply_text") or ""
        edited = bool(text.strip()) and text.strip() != self.instance.draft
        if edited and data.get("variant"):
            self.add_error("variant", "You edited the text and picked a variant: choose one.")
        elif edited:
            try:
                checked_edit(text)
            except review.InvalidEdit as exc:
                self.add_error("reply_text", str(exc))
        if data.get("shown_version") is None:
            self.add_error(None, "Approve from the page that shows the draft.")
        return data


@admin.register(QueuedTweet)
class QueuedTweetAdmin(admin.ModelAdmin):
    form = ReviewForm
    list_display = ["who", "post", "draft_column", "status", "source", "when", "handoff_column"]
    list_display_links = ["who"]
    list_filter = ["status", "source", TargetFilter, "summoned", "created_at"]
    search_fields = ["target_tweet_id", "author_username", "text", "draft"]
    date_hierarchy = "created_at"
    inlines = [DecisionInline]
    actions = ["approve_selected", "reject_selected", "regenerate_selected"]
    change_form_template = "admin/bot/queuedtweet/change_form.html"
    change_list_template = "admin/bot/queuedtweet/change_list.html"
    list_per_page = 50

    # What the decision panel at the top shows; the fields below it are the rest.
    IN_PANEL = {"text", "draft", "variants", "author_username", "status", "summoned"}
    DETAIL = [
        "status", "post_link", "author_username", "text", "summoned", "draft", "variants",
        "scheduled_at", "approved_by", "approved_via", "approved_at", "attempts",
        "next_attempt_at", "reply_tweet_id", "posted_at", "handoff", "skip_reason",
        "last_error", "last_error_kind", "last_error_reason", "relevance", "source",
        "tweet_created_at", "created_at", "updated_at", "target_tweet_id",
    ]  # fmt: skip

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in QueuedTweet._meta.fields] + ["post_link", "handoff"]

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        if obj is None:
            return self.DETAIL
        # Empty fields are hidden: what is left says what happened to this post.
        shown = []
        for name in self.DETAIL:
            if name in self.IN_PANEL:
                continue
            if name == "handoff" and obj.status != Status.HANDOFF:
                continue
            value = getattr(obj, name, True)
            if value in (None, "", [], 0) and not isinstance(value, bool):
                continue
            shown.append(name)
        return shown

    def get_form(
        self, request: HttpRequest, obj: Any = None, **kwargs: Any
    ) -> type[forms.ModelForm]:
        form = super().get_form(request, obj, **kwargs)
        if obj is not None:
            form.base_fields["reply_text"].initial = obj.draft
            form.base_fields["shown_version"].initial = obj.draft_version
        return form

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The row is the record of what we found, decided and posted (and its unique
        # post id is what stops a second reply): it is never deleted, only rejected.
        return False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        tweet = self.get_object(request, object_id)
        context = {**(extra_context or {})}
        if tweet is not None:
            context["decision"] = self._decision(tweet)
            context["title"] = f"The reply to @{tweet.author_username}"
        return super().change_view(request, object_id, form_url, context)

    def _decision(self, tweet: QueuedTweet) -> dict[str, Any]:
        """What the panel at the top of the page says about the post and its reply."""
        now = timezone.now()
        api = through_api(QueuedTweet.objects.filter(id=tweet.id)).exists()
        if settings.REPLY_MODE == "handoff":
            why = "REPLY_MODE is handoff"
        elif settings.REPLY_MODE == "api":
            why = "REPLY_MODE is api"
        elif tweet.summoned:
            why = "the author mentioned us or quoted one of our replies, so X allows it"
        else:
            why = "X lets an app reply only to posts that mention or quote us"
        route = (
            f"Goes through X's API: {why}."
            if api
            else f"Comes back to you as a link to post it yourself from your X app: {why}."
        )
        expiry = ""
        if tweet.status in (Status.NEW, Status.PENDING):
            ends = tweet.tweet_created_at + timedelta(hours=settings.MAX_POST_AGE_HOURS)
            expiry = f"Expires {ago(ends, now)} if not approved (MAX_POST_AGE_HOURS)."
        elif tweet.status == Status.APPROVED:
            ends = tweet.tweet_created_at + timedelta(hours=settings.MAX_REPLY_AGE_HOURS)
            expiry = f"Not sent after {ago(ends, now).removeprefix('in ')} from now."
            if ends <= now:
                expiry = "Too old to send: it expires when its turn comes."
        timing = reply_timing(tweet, now=now)
        return {
            "age": ago(tweet.tweet_created_at, now),
            "expiry": expiry,
            "route": route,
            "through_api": api,
            "timing": timing.sentence(now) if timing else "",
            "handoff_link": handoff_link(tweet) if tweet.status == Status.HANDOFF else "",
            "status": tweet.get_status_display(),
        }

    # --- the list ---

    @admin.display(description="author", ordering="tweet_created_at")
    def who(self, obj: QueuedTweet) -> str:
        return format_html(
            '@{}<span class="rg-meta">{}</span>', obj.author_username, ago(obj.tweet_created_at)
        )

    @admin.display(description="post")
    def post(self, obj: QueuedTweet) -> str:
        return format_html('<div class="rg-post">{}</div>', obj.text)

    @admin.display(description="draft")
    def draft_column(self, obj: QueuedTweet) -> str:
        # The version shown rides along with the bulk actions' form: "Approve the
        # selected" approves exactly the drafts this page displayed.
        return format_html(
            '<div class="rg-draft">{}</div>'
            '<input type="hidden" name="shown_version_{}" value="{}">',
            obj.draft or "-",
            obj.pk,
            obj.draft_version,
        )

    @admin.display(description="goes out / went out", ordering="scheduled_at")
    def when(self, obj: QueuedTweet) -> str:
        if obj.posted_at:
            return f"posted {ago(obj.posted_at)}"
        if obj.status == Status.APPROVED and obj.scheduled_at:
            return f"due {ago(obj.scheduled_at)}"
        return "-"

    @admin.display(description="post it yourself")
    def handoff_column(self, obj: QueuedTweet) -> str:
        if obj.status != Status.HANDOFF:
            return "-"
        return format_html(
            '<a href="{}" target="_blank" rel="noopener">Open X with it</a>', handoff_link(obj)
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

    # --- the buttons ---

    def save_model(self, request: HttpRequest, obj: QueuedTweet, form: Any, change: bool) -> None:
        """The buttons of the change form, each a service call; the row is never saved here."""
        actor = request.user.get_username()
        try:
            if "_approve" in request.POST:
                self._approve(request, obj, form.cleaned_data, actor)
            elif "_regenerate" in request.POST:
                review.reply_regenerate(obj, actor=actor, channel=Channel.ADMIN)
                messages.success(request, "A new draft will be written shortly.")
            elif "_reject" in request.POST:
                review.reply_reject(obj, actor=actor, channel=Channel.ADMIN)
                messages.success(request, "Rejected; this post will not be answered.")
            elif "_posted_by_hand" in request.POST:
                review.reply_posted_by_hand(obj, actor=actor, channel=Channel.ADMIN)
                messages.success(request, "Marked posted; thank you.")
        except review.ReviewError as exc:
            messages.error(request, str(exc))

    def _approve(
        self, request: HttpRequest, obj: QueuedTweet, data: dict[str, Any], actor: str
    ) -> None:
        version = data.get("shown_version")
        if version is None:
            raise review.ReviewError("Approve from the page that shows the draft.")
        variant = data.get("variant") or None
        text = data.get("reply_text") or None
        if variant is not None:
            tweet = review.reply_approve(
                obj, actor=actor, channel=Channel.ADMIN, version=version, variant=int(variant)
            )
        else:
            tweet = review.reply_approve(
                obj, actor=actor, channel=Channel.ADMIN, version=version, text=text
            )
        timing = reply_timing(tweet)
        when = f" {timing.sentence()}." if timing else ""
        messages.success(request, f"Approved; it is scheduled.{when}")
        if links_in(tweet.draft):
            messages.warning(request, LINK_COST_NOTE)

    def response_change(self, request: HttpRequest, obj: QueuedTweet) -> HttpResponse:
        # Back to the same page: it now shows what the decision did.
        return HttpResponseRedirect(request.path)

    def log_change(self, request: HttpRequest, obj: Any, message: Any) -> None:
        """The audit trail is the Decision table, written by the services."""

    def message_user(self, request: HttpRequest, message: str, *args: Any, **kwargs: Any) -> None:
        # Admin's generic "was changed successfully" would contradict the service's verdict.
        if "was changed successfully" not in str(message):
            super().message_user(request, message, *args, **kwargs)

    def _bulk(
        self, request: HttpRequest, queryset: QuerySet[QueuedTweet], apply: Any, done: str
    ) -> int:
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
        return ok

    @admin.action(description="Approve the selected drafts as they are", permissions=["change"])
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

        if self._bulk(request, queryset, approve_as_shown, "Approved"):
            upcoming = next_reply_out()
            if upcoming is not None:
                tweet, timing = upcoming
                messages.info(
                    request, f"Next out, to @{tweet.author_username}: {timing.sentence()}."
                )

    @admin.action(description="Reject the selected posts", permissions=["change"])
    def reject_selected(self, request: HttpRequest, queryset: QuerySet[QueuedTweet]) -> None:
        self._bulk(request, queryset, review.reply_reject, "Rejected")

    @admin.action(description="Write new drafts for the selected posts", permissions=["change"])
    def regenerate_selected(self, request: HttpRequest, queryset: QuerySet[QueuedTweet]) -> None:
        self._bulk(request, queryset, review.reply_regenerate, "Sent back for a new draft")


# --- the dead-letter queue ---------------------------------------------------------------


class AgeFilter(admin.SimpleListFilter):
    """How long ago the item failed."""

    title = "failed"
    parameter_name = "age"
    SPANS = {
        "hour": ("in the last hour", timedelta(hours=1)),
        "day": ("in the last day", timedelta(days=1)),
        "week": ("in the last 7 days", timedelta(days=7)),
    }

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(key, label) for key, (label, _) in self.SPANS.items()] + [
            ("older", "more than 7 days ago")
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[FailedTweet]) -> Any:
        now = timezone.now()
        if self.value() in self.SPANS:
            return queryset.filter(created_at__gte=now - self.SPANS[self.value()][1])
        if self.value() == "older":
            return queryset.filter(created_at__lt=now - timedelta(days=7))
        return queryset


class DeadLetterForm(forms.ModelForm):
    reply_text = forms.CharField(
        label="New reply",
        widget=forms.Textarea(attrs={"rows": 4, "class": "rg-reply"}),
        required=False,
        strip=False,
        help_text="Posted exactly as typed; writing it is your approval of it.",
    )
    # Not ``discard_reason``: the admin leaves out a form field named like a read-only one.
    reason = forms.CharField(
        label="Why discard it",
        required=False,
        max_length=200,
        widget=forms.TextInput(
            attrs={"size": 50, "placeholder": "Why discard it (kept with the row)"}
        ),
    )

    class Meta:
        model = FailedTweet
        fields: list[str] = []

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if "_edit_retry" in self.data:
            try:
                checked_edit(data.get("reply_text") or "")
            except review.InvalidEdit as exc:
                self.add_error("reply_text", str(exc))
        if "_discard" in self.data and not (data.get("reason") or "").strip():
            self.add_error("reason", "Say why: the reason is kept with the row.")
        return data


class DiscardForm(forms.Form):
    reason = forms.CharField(
        max_length=200, widget=forms.TextInput(attrs={"size": 60, "autofocus": True})
    )


@admin.register(FailedTweet)
class FailedTweetAdmin(admin.ModelAdmin):
    form = DeadLetterForm
    list_display = [
        "failure",
        "stage",
        "status",
        "error_kind",
        "retries",
        "next_retry",
        "post_status",
        "short_error",
    ]
    list_display_links = ["failure"]
    list_filter = ["stage", "error_kind", "status", AgeFilter]
    search_fields = ["target_tweet_id", "error", "queued_tweet__author_username"]
    list_select_related = ["queued_tweet"]
    actions = ["retry_selected", "park_selected", "discard_selected"]
    change_form_template = "admin/bot/failedtweet/change_form.html"
    change_list_template = "admin/bot/failedtweet/change_list.html"
    list_per_page = 50
    fields = [
        "stage", "status", "error_kind", "error", "retry_count", "max_retries",
        "next_retry_at", "last_retry_at", "discard_reason", "created_at", "updated_at",
    ]  # fmt: skip

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in FailedTweet._meta.fields]

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        if obj is None:
            return self.fields
        return [name for name in self.fields if getattr(obj, name) not in (None, "")]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # discarding keeps the row and says who and why

    def get_urls(self) -> list[Any]:
        info = self.opts.app_label, self.opts.model_name
        return [
            path(
                "retry-matching/",
                self.admin_site.admin_view(self.retry_matching_view),
                name="{}_{}_retry_matching".format(*info),
            ),
            *super().get_urls(),
        ]

    # --- the list ---

    @admin.display(description="failed reply", ordering="created_at")
    def failure(self, obj: FailedTweet) -> str:
        return format_html(
            "#{} <span class='rg-meta'>@{} · {}</span>",
            obj.id,
            obj.queued_tweet.author_username,
            ago(obj.created_at),
        )

    @admin.display(description="next retry", ordering="next_retry_at")
    def next_retry(self, obj: FailedTweet) -> str:
        return ago(obj.next_retry_at) if obj.next_retry_at else "-"

    @admin.display(description="retries")
    def retries(self, obj: FailedTweet) -> str:
        return f"{obj.retry_count} / {obj.max_retries}"

    @admin.display(description="its post", ordering="queued_tweet__status")
    def post_status(self, obj: FailedTweet) -> str:
        return obj.queued_tweet.get_status_display()

    @admin.display(description="error")
    def short_error(self, obj: FailedTweet) -> str:
        return format_html('<div class="rg-error">{}</div>', obj.error[:300])

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        context = {**(extra_context or {}), "can_change": self.has_change_permission(request)}
        return super().changelist_view(request, context)

    # --- actions on the selected rows ---

    @admin.action(description="Retry the selected now", permissions=["change"])
    def retry_selected(self, request: HttpRequest, queryset: QuerySet[FailedTweet]) -> None:
        batch = dead_letters.dead_letters_retry(
            queryset, actor=request.user.get_username(), channel=Channel.ADMIN, what="selected"
        )
        self._report(request, batch, "Sent back to their stage")

    @admin.action(description="Park the selected (no automatic retries)", permissions=["change"])
    def park_selected(self, request: HttpRequest, queryset: QuerySet[FailedTweet]) -> None:
        batch = dead_letters.dead_letters_park(
            queryset, actor=request.user.get_username(), channel=Channel.ADMIN, what="selected"
        )
        self._report(request, batch, "Parked")

    @admin.action(description="Discard the selected, with a reason…", permissions=["change"])
    def discard_selected(
        self, request: HttpRequest, queryset: QuerySet[FailedTweet]
    ) -> HttpResponse | None:
        form = DiscardForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            batch = dead_letters.dead_letters_discard(
                queryset,
                actor=request.user.get_username(),
                channel=Channel.ADMIN,
                reason=form.cleaned_data["reason"],
            )
            self._report(request, batch, "Discarded")
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Discard failed replies",
            "opts": self.opts,
            "form": form,
            "rows": queryset[:20],
            "count": queryset.count(),
            "selected": request.POST.getlist(admin.helpers.ACTION_CHECKBOX_NAME),
            "select_across": request.POST.get("select_across", "0"),
            "query": request.GET.urlencode(),
        }
        return TemplateResponse(request, "admin/bot/failedtweet/discard.html", context)

    def _report(self, request: HttpRequest, batch: dead_letters.Batch, done: str) -> None:
        messages.success(request, f"{done}: {batch.done:,}.")
        if batch.skipped:
            messages.warning(
                request,
                f"Left alone: {batch.skipped:,} (already posted, outcome unknown, being "
                "retried, or closed).",
            )

    # --- everything matching the filter ---

    def retry_matching_view(self, request: HttpRequest) -> HttpResponse:
        """Retry every row the list's current filters and search select, once confirmed."""
        if not self.has_change_permission(request):
            raise PermissionDenied
        changelist = reverse("admin:bot_failedtweet_changelist")
        try:
            matching = self.get_changelist_instance(request).get_queryset(request)
        except IncorrectLookupParameters:
            messages.error(request, "Those filters are not valid any more.")
            return HttpResponseRedirect(changelist)
        filters = self._filters_in_words(request)
        back = f"{changelist}?{request.GET.urlencode()}" if request.GET else changelist
        if request.method == "POST" and request.POST.get("confirmed") == "yes":
            batch = dead_letters.dead_letters_retry(
                matching,
                actor=request.user.get_username(),
                channel=Channel.ADMIN,
                what=f"everything matching {filters}",
            )
            self._report(request, batch, "Sent back to their stage")
            return HttpResponseRedirect(back)
        context = {
            **self.admin_site.each_context(request),
            "title": "Retry everything matching this filter?",
            "opts": self.opts,
            "filters": filters,
            "total": matching.count(),
            "retryable": dead_letters.dead_letters_retryable(matching).count(),
            "left_alone": dead_letters.dead_letters_left_alone(matching),
            "back": back,
        }
        return TemplateResponse(request, "admin/bot/failedtweet/retry_matching.html", context)

    def _filters_in_words(self, request: HttpRequest) -> str:
        params = [(key, value) for key, value in request.GET.items() if not key.startswith("_")]
        if not params:
            return "no filter (every row)"
        return ", ".join(f"{key.replace('__exact', '')}={value}" for key, value in params)

    # --- the detail page ---

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        failure = self.get_object(request, object_id)
        context = {**(extra_context or {})}
        if failure is not None:
            context["title"] = f"Failed reply #{failure.id}"
            context["history"] = self._history(failure)
            context["tweet"] = failure.queued_tweet
            context["retryable"] = dead_letters.dead_letters_retryable(
                FailedTweet.objects.filter(id=failure.id)
            ).exists()
            context["parkable"] = failure.status in (
                FailedTweetStatus.PENDING,
                FailedTweetStatus.EXHAUSTED,
            )
            context["closable"] = failure.status in dead_letters.OPEN
            context["editable"] = context["retryable"] and failure.stage == "publish"
        return super().change_view(request, object_id, form_url, context)

    def get_form(
        self, request: HttpRequest, obj: Any = None, **kwargs: Any
    ) -> type[forms.ModelForm]:
        form = super().get_form(request, obj, **kwargs)
        if obj is not None:
            form.base_fields["reply_text"].initial = obj.queued_tweet.draft
        return form

    def _history(self, failure: FailedTweet) -> list[tuple[datetime, str, str]]:
        """What happened to this item, oldest first: (when, what, who)."""
        tweet = failure.queued_tweet
        events: list[tuple[datetime, str, str]] = [
            (tweet.created_at, f"Found ({tweet.get_source_display().lower()})", "Reply Guy"),
            (
                failure.created_at,
                f"Failed at stage {failure.stage} ({failure.error_kind}): {failure.error}",
                "Reply Guy",
            ),
        ]
        for decision in tweet.decisions.all():
            words = decision.get_action_display()
            text = decision.text_after or decision.text_before
            events.append(
                (decision.created_at, f"{words}: {text}" if text else words, decision.actor)
            )
        operator = OperatorAction.objects.filter(detail__startswith=f"failed reply #{failure.id} (")
        for action in operator:
            events.append((action.created_at, action.get_action_display(), action.actor))
        if failure.last_retry_at:
            events.append(
                (
                    failure.last_retry_at,
                    f"Last retry (retries spent: {failure.retry_count} of {failure.max_retries})",
                    "",
                )
            )
        if tweet.last_error and tweet.last_error != failure.error:
            events.append((tweet.updated_at, f"Latest error: {tweet.last_error}", "Reply Guy"))
        return sorted(events, key=lambda event: event[0])

    def save_model(self, request: HttpRequest, obj: FailedTweet, form: Any, change: bool) -> None:
        """The buttons of the detail page, each a service call."""
        actor = request.user.get_username()
        one = FailedTweet.objects.filter(id=obj.id)
        try:
            if "_retry" in request.POST:
                said = dead_letters.dead_letter_retry_now(
                    obj.id, actor=actor, channel=Channel.ADMIN
                )
                (messages.warning if "cannot" in said else messages.success)(request, said)
            elif "_park" in request.POST:
                batch = dead_letters.dead_letters_park(one, actor=actor, channel=Channel.ADMIN)
                self._one_done(request, batch, "Parked: no automatic retries until you retry it.")
            elif "_discard" in request.POST:
                batch = dead_letters.dead_letters_discard(
                    one,
                    actor=actor,
                    channel=Channel.ADMIN,
                    reason=form.cleaned_data["reason"],
                )
                self._one_done(request, batch, "Discarded; the row is kept with your reason.")
            elif "_edit_retry" in request.POST:
                said = dead_letters.dead_letter_edit_retry(
                    obj, form.cleaned_data["reply_text"], actor=actor, channel=Channel.ADMIN
                )
                messages.success(request, said)
        except (dead_letters.DeadLetterError, review.ReviewError) as exc:
            messages.error(request, str(exc))

    def _one_done(self, request: HttpRequest, batch: dead_letters.Batch, done: str) -> None:
        if batch.done:
            messages.success(request, done)
        else:
            messages.warning(request, "Nothing changed: this row is no longer open.")

    def response_change(self, request: HttpRequest, obj: FailedTweet) -> HttpResponse:
        return HttpResponseRedirect(request.path)

    def log_change(self, request: HttpRequest, obj: Any, message: Any) -> None:
        """The audit trail is OperatorAction and Decision, written by the services."""

    def message_user(self, request: HttpRequest, message: str, *args: Any, **kwargs: Any) -> None:
        if "was changed successfully" not in str(message):
            super().message_user(request, message, *args, **kwargs)


# --- the pause switch --------------------------------------------------------------------


@admin.register(PipelineControl)
class PipelineControlAdmin(admin.ModelAdmin):
    """One switch, through ``control.set_publishing_paused`` (audited), not a row editor."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # the one row is created by migration

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def change_view(self, request: HttpRequest, object_id: str, *args: Any, **kwargs: Any) -> Any:
        return HttpResponseRedirect(reverse("admin:bot_pipelinecontrol_changelist"))

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            return self._switch(request)
        control_row = PipelineControl.objects.filter(pk=1).first()
        context = {
            **self.admin_site.each_context(request),
            "title": "Publishing",
            "opts": self.opts,
            "paused": publishing_paused(control_row) if control_row else publishing_paused(),
            "by_environment": settings.PUBLISHING_PAUSED,
            "control": control_row,
            "recent": OperatorAction.objects.filter(
                action__in=[OperatorAction.Action.PAUSE, OperatorAction.Action.RESUME]
            )[:10],
            "can_change": self.has_change_permission(request),
        }
        return TemplateResponse(request, "admin/bot/pipelinecontrol/switch.html", context)

    def _switch(self, request: HttpRequest) -> HttpResponse:
        if not self.has_change_permission(request):
            raise PermissionDenied
        pause = request.POST.get("publishing") == "pause"
        reason = request.POST.get("reason", "").strip() or "paused in the admin"
        actor = request.user.get_username()
        changed = control.set_publishing_paused(
            pause, actor=actor, channel=Channel.ADMIN, reason=reason if pause else ""
        )
        if pause:
            said = (
                "Publishing paused. Drafts and approvals go on." if changed else "Already paused."
            )
        elif settings.PUBLISHING_PAUSED:
            said = "Publishing stays paused: PUBLISHING_PAUSED is set in the environment."
        else:
            said = "Publishing resumed." if changed else "Publishing was not paused."
        messages.success(request, capfirst(said))
        back = request.POST.get("next", "")
        if not url_has_allowed_host_and_scheme(back, {request.get_host()}):
            back = request.path
        return HttpResponseRedirect(back)
