from __future__ import annotations

import logging
import multiprocessing
from typing import Any

from django.apps import AppConfig

log = logging.getLogger(__name__)

# One recovery per cluster start: the first worker of a cluster claims this key.
CLUSTER_KEY = "replyguy:recover_stale:cluster:{}"
CLUSTER_KEY_TTL = 7 * 24 * 60 * 60


class BotConfig(AppConfig):
    name = "bot"
    verbose_name = "Reply pipeline"

    def ready(self) -> None:
        from django_q.signals import post_spawn

        post_spawn.connect(recover_on_cluster_start, dispatch_uid="replyguy.recover_stale")


def recover_on_cluster_start(sender: Any = None, proc_name: str = "", **kwargs: Any) -> None:
    """django-q2's ``post_spawn``, in each new worker: the cluster's first worker settles
    what workers of the last run left behind (``recovery.recover_stale_tweets``).

    django-q2 has no cluster-start signal; ``post_spawn`` fires in every worker, and
    again for each one it reincarnates. The workers of one start share their parent, the
    sentinel, whose process name django-q2 makes unique per start: the first worker to
    add that key to the shared cache runs the recovery, the others and any later
    reincarnation do not. Whatever goes wrong is logged, never raised: a raise here
    would kill the worker, and the sentinel would start another into the same fault.
    """
    try:
        parent = multiprocessing.parent_process()
        cluster = parent.name if parent is not None else proc_name
        from django.core.cache import cache

        if not cache.add(CLUSTER_KEY.format(cluster), proc_name, CLUSTER_KEY_TTL):
            return
        from bot.services.recovery import recover_stale_tweets

        report = recover_stale_tweets()
        # Something left behind is worth a line in a quiet log; a clean start is not.
        level = logging.WARNING if any(report.actions.values()) or report.failed else logging.INFO
        log.log(level, "recover_stale at cluster start: %s", report.as_dict())
    except Exception:
        log.exception("recover_stale at cluster start failed; the worker goes on")
