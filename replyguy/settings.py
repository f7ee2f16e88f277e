"""Reply Guy settings: one module, everything read from the environment.

Every variable is listed with its default in ``.env.example``. Bad values stop the
process at start (see ``replyguy.env``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from replyguy.defaults import PACING_DEFAULTS
from replyguy.env import env_bool, env_choice, env_float, env_int, env_int_list, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("REPLYGUY_VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DEBUG", False)

# Local mode (DEBUG on) may run without a secret; anything else must bring its own.
SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is required when DEBUG is off. Generate one with: "
            "python -c 'import secrets; print(secrets.token_urlsafe(50))'"
        )
    SECRET_KEY = "django-insecure-local-only-never-use-in-production"  # noqa: S105

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    # Before the admin, so bot/templates/admin/base_site.html (the paused banner on every
    # admin page) overrides the admin's own.
    "bot",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_q",
    # Its HTML page and `manage.py health_check`; our checks are in resilience/ and bot/.
    "health_check",
    "resilience",
]

MIDDLEWARE = [
    "replyguy.middleware.ProbeHostMiddleware",  # first: probes pass whatever their Host
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "replyguy.urls"
WSGI_APPLICATION = "replyguy.wsgi.application"
ASGI_APPLICATION = "replyguy.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------
# Default: an SQLite file. IMMEDIATE transactions take the write lock at BEGIN, so two
# workers queue on the busy timeout instead of failing with "database is locked" when
# a read transaction tries to upgrade; WAL lets readers run beside the writer.
SQLITE_PATH = VAR_DIR / "db.sqlite3"
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{SQLITE_PATH}")
if urlsplit(DATABASE_URL).scheme not in ("postgres", "postgresql", "pgsql", "sqlite"):
    # Never the URL itself in the message: it carries the password.
    raise ImproperlyConfigured(
        "DATABASE_URL is not valid: expected postgres://user:password@host:5432/name "
        "or sqlite:///path (PostgreSQL and SQLite are supported)"
    )
try:
    DATABASES = {
        "default": dj_database_url.parse(
            DATABASE_URL,
            conn_max_age=env_int("CONN_MAX_AGE", 60, minimum=0),
            conn_health_checks=True,
        )
    }
except ValueError:  # dj_database_url's ParseError too; its message may hold the URL
    raise ImproperlyConfigured(
        "DATABASE_URL is not valid: expected postgres://user:password@host:5432/name "
        "(a port is a number) or sqlite:///path"
    ) from None
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    try:
        Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ImproperlyConfigured(
            f"the SQLite file's folder {Path(DATABASES['default']['NAME']).parent} cannot be "
            f"made ({error.strerror}): set REPLYGUY_VAR_DIR or DATABASE_URL"
        ) from None
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": env_int("SQLITE_BUSY_TIMEOUT_SECONDS", 20, minimum=1),
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file, not memory, so tests can start real worker processes against it.
    # One per test process, so two test runs on one machine never share it.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-db-{os.getpid()}.sqlite3")}
else:
    DATABASES["default"].setdefault("OPTIONS", {})
    DATABASES["default"]["OPTIONS"].setdefault("connect_timeout", 5)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache: always shared between processes ----------------------------------------
# Alert cooldowns and django-q2 cluster stats must be seen by every process, so there
# is no per-process memory cache: Redis when configured, else a database table.
REDIS_URL = env_str("REDIS_URL")
if REDIS_URL and urlsplit(REDIS_URL).scheme not in ("redis", "rediss", "unix"):
    raise ImproperlyConfigured(
        "REDIS_URL is not valid: expected redis://host:6379/0, rediss://... or unix://..."
    )
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2},
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.db.DatabaseCache",
            "LOCATION": "replyguy_cache",
        }
    }

# --- django-q2 --------------------------------------------------------------------
# A task that runs longer than `retry` would be handed out twice, so `timeout` stays
# well below it. Tasks find their work in the database, so a redelivery is harmless,
# but a hung one should still be killed long before it is duplicated.
Q_BROKER = env_choice("Q_BROKER", "orm", ["orm", "redis"])
if Q_BROKER == "redis" and not REDIS_URL:
    raise ImproperlyConfigured("Q_BROKER=redis needs REDIS_URL")
Q_CLUSTER = {
    "name": "replyguy",
    "workers": env_int("Q_WORKERS", 2, minimum=1),
    "timeout": env_int("Q_TIMEOUT_SECONDS", 300, minimum=10),
    "retry": env_int("Q_RETRY_SECONDS", 900, minimum=20),
    "max_attempts": 3,
    "catch_up": False,
    "ack_failures": True,
    "save_limit": 500,
    "cache": "default",
    "poll": 1,
    "label": "Task queue",
}
# After SIGTERM or Ctrl-C, running tasks get this long before the cluster is killed
# (bot/management/commands/qcluster.py): keep it under the platform's own grace period.
Q_STOP_GRACE_SECONDS = env_float("Q_STOP_GRACE_SECONDS", 10.0, minimum=0)
# A cluster with tasks waiting and none started for this long is stuck (a worker killed
# while it held the task queue's lock): it is killed and started again. More than a
# task's timeout, so a busy cluster is never taken for a stuck one.
Q_STUCK_SECONDS = env_int(
    "Q_STUCK_SECONDS", max(Q_CLUSTER["timeout"] * 2, Q_CLUSTER["timeout"] + 30), minimum=1
)
if Q_CLUSTER["timeout"] + 30 > Q_STUCK_SECONDS:
    raise ImproperlyConfigured("Q_STUCK_SECONDS must be at least Q_TIMEOUT_SECONDS + 30")
if Q_CLUSTER["timeout"] * 2 > Q_CLUSTER["retry"]:
    raise ImproperlyConfigured("Q_RETRY_SECONDS must be at least twice Q_TIMEOUT_SECONDS")
if Q_BROKER == "redis":
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

# --- Resilience ---------------------------------------------------------------------
# Where breaker state lives: "database" (default) or "redis". The `database` breaker
# never keeps its state in the database it guards.
BREAKER_STORE = env_choice(
    "BREAKER_STORE", "redis" if REDIS_URL else "database", ["database", "redis"]
)
if BREAKER_STORE == "redis" and not REDIS_URL:
    raise ImproperlyConfigured("BREAKER_STORE=redis needs REDIS_URL")
RESILIENCE = {
    "STORE": BREAKER_STORE,
    "REDIS_URL": REDIS_URL,
    # How stale a process's view of a breaker may be on the success path, in seconds.
    "SNAPSHOT_TTL": env_float("BREAKER_SNAPSHOT_TTL_SECONDS", 1.0, minimum=0),
    "BREAKERS": {
        "twitter_api": {
            "failure_threshold": 5,
            "recovery_timeout": 120,
            "half_open_max_calls": 3,
            "failure_on": "resilience.errors.is_service_failure",
        },
        "ai_service": {
            "failure_threshold": 3,
            "recovery_timeout": 60,
            "half_open_max_calls": 2,
            "failure_on": "resilience.errors.is_service_failure",
        },
        "database": {
            "failure_threshold": 3,
            "recovery_timeout": 30,
            "half_open_max_calls": 2,
            "failure_on": "resilience.db.is_connection_failure",
            # Never in the database it guards: the cache's Redis when there is one.
            "store": "redis" if REDIS_URL else "memory",
        },
        "telegram": {
            "failure_threshold": 5,
            "recovery_timeout": 60,
            "half_open_max_calls": 1,
            "failure_on": "resilience.errors.is_service_failure",
        },
    },
}

# --- Outside services (used by bot/clients) ---------------------------------------------
X_API_BASE_URL = env_str("X_API_BASE_URL", "https://api.twitter.com")
X_API_KEY = env_str("X_API_KEY")
X_API_SECRET = env_str("X_API_SECRET")
X_ACCESS_TOKEN = env_str("X_ACCESS_TOKEN")
X_ACCESS_TOKEN_SECRET = env_str("X_ACCESS_TOKEN_SECRET")
X_BEARER_TOKEN = env_str("X_BEARER_TOKEN")

OPENAI_BASE_URL = env_str("OPENAI_BASE_URL", "https://api.openai.com/v1")
OPENAI_API_KEY = env_str("OPENAI_API_KEY")
AI_MODEL = env_str("AI_MODEL", "gpt-4o-mini")

TELEGRAM_BOT_TOKEN = env_str("TELEGRAM_BOT_TOKEN")
TELEGRAM_CHAT_ID = env_str("TELEGRAM_CHAT_ID")
TELEGRAM_API_BASE_URL = env_str("TELEGRAM_API_BASE_URL", "https://api.telegram.org")
TELEGRAM_WEBHOOK_SECRET = env_str("TELEGRAM_WEBHOOK_SECRET")
# Who may act in TELEGRAM_CHAT_ID; empty: the chat's own user (a private chat's id is its
# user's id). A group chat needs the list.
TELEGRAM_ALLOWED_USER_IDS = env_int_list("TELEGRAM_ALLOWED_USER_IDS")
# Telegram allows about one message a second per chat; every sender keeps to this.
TELEGRAM_SEND_INTERVAL_SECONDS = env_float("TELEGRAM_SEND_INTERVAL_SECONDS", 1.0, minimum=0)
# A draft waiting this long for a decision gets one reminder (it expires with its post).
APPROVAL_REMINDER_HOURS = env_int("APPROVAL_REMINDER_HOURS", 6, minimum=1)

# --- Alerts ----------------------------------------------------------------------------------
# At most one alert per kind and subject in this window; repeats are counted in the next.
ALERT_COOLDOWN_MINUTES = env_int("ALERT_COOLDOWN_MINUTES", 60, minimum=1)
# What delivers alerts: a dotted path to a callable taking the alert's text.
ALERT_NOTIFIER = env_str("ALERT_NOTIFIER", "bot.telegram.outbox.send_alert")

# --- Pipeline pacing --------------------------------------------------------------------
REPLY_MODE = env_choice("REPLY_MODE", "auto", ["auto", "api", "handoff"])

MIN_DELAY_MINUTES = env_int("MIN_DELAY_MINUTES", PACING_DEFAULTS["MIN_DELAY_MINUTES"], minimum=0)
MAX_DELAY_MINUTES = env_int("MAX_DELAY_MINUTES", PACING_DEFAULTS["MAX_DELAY_MINUTES"], minimum=0)
if MAX_DELAY_MINUTES < MIN_DELAY_MINUTES:
    raise ImproperlyConfigured("MAX_DELAY_MINUTES must be at least MIN_DELAY_MINUTES")
QUIET_HOURS_START = env_int(
    "QUIET_HOURS_START", PACING_DEFAULTS["QUIET_HOURS_START"], minimum=0, maximum=23
)
QUIET_HOURS_END = env_int(
    "QUIET_HOURS_END", PACING_DEFAULTS["QUIET_HOURS_END"], minimum=0, maximum=23
)
# X takes at most 100 posts per 15 minutes from a user; an hourly cap above that would
# leave X's 429 as the only brake.
MAX_POSTS_PER_HOUR = env_int("MAX_POSTS_PER_HOUR", 4, minimum=1, maximum=100)
MAX_POSTS_PER_DAY = env_int("MAX_POSTS_PER_DAY", 20, minimum=1)
MIN_SPACING_MINUTES = env_int(
    "MIN_SPACING_MINUTES", PACING_DEFAULTS["MIN_SPACING_MINUTES"], minimum=0
)
MAX_REPLIES_PER_AUTHOR_PER_DAY = env_int("MAX_REPLIES_PER_AUTHOR_PER_DAY", 1, minimum=1)
PUBLISHING_PAUSED = env_bool("PUBLISHING_PAUSED", False)
# X bills every call (docs/operations.md has the prices). Unset: no limit. When today's
# estimate reaches it, discovery stops until tomorrow; reconcile and publishing go on.
X_DAILY_BUDGET_USD = env_float("X_DAILY_BUDGET_USD", 0.0, minimum=0) or None

# --- Operations --------------------------------------------------------------------------
# A bearer token /metrics requires when set (Authorization: Bearer <token>).
METRICS_TOKEN = env_str("METRICS_TOKEN")
# "text" (one plain line per event) or "json" (one JSON object per line).
LOG_FORMAT = env_choice("LOG_FORMAT", "text", ["text", "json"])

# --- Discovery and drafting ---------------------------------------------------------------
PERSONA = env_str(
    "PERSONA",
    "You are a friendly, knowledgeable person replying on X. Be brief, specific and kind; "
    "no hashtags, no emojis unless the post uses them, never salesy.",
)
TOPIC_KEYWORDS = env_list("TOPIC_KEYWORDS")
RELEVANCE_THRESHOLD = env_float("RELEVANCE_THRESHOLD", 0.0, minimum=0, maximum=1)
if RELEVANCE_THRESHOLD > 0 and not TOPIC_KEYWORDS:
    raise ImproperlyConfigured(
        "RELEVANCE_THRESHOLD needs TOPIC_KEYWORDS (the topics to score posts against): "
        "set TOPIC_KEYWORDS, or RELEVANCE_THRESHOLD=0 to draft for every post"
    )
MAX_POST_AGE_HOURS = env_int("MAX_POST_AGE_HOURS", 24, minimum=1)
# An approved reply whose post has grown older than this when its turn comes (after a
# long outage, say) is not sent: it expires, and the owner sees why.
MAX_REPLY_AGE_HOURS = env_int("MAX_REPLY_AGE_HOURS", 48, minimum=1)
if MAX_REPLY_AGE_HOURS < MAX_POST_AGE_HOURS:
    raise ImproperlyConfigured(
        "MAX_REPLY_AGE_HOURS must be at least MAX_POST_AGE_HOURS (a post is drafted only "
        "while younger than MAX_POST_AGE_HOURS, then still needs time to be approved and sent)"
    )
DRAFT_VARIANTS = env_int("DRAFT_VARIANTS", 1, minimum=1, maximum=5)
# X bills a post with a link $0.20 instead of $0.015, and prompt-injected posts ask for
# links: model drafts with a link are refused unless this is on. The owner's own edit
# may keep one (the admin shows the cost).
ALLOW_LINKS_IN_REPLIES = env_bool("ALLOW_LINKS_IN_REPLIES", False)

# --- Internationalisation ---------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
try:
    ZoneInfo(TIME_ZONE)
except (ValueError, ZoneInfoNotFoundError):
    raise ImproperlyConfigured(
        f"TIME_ZONE={TIME_ZONE!r} is not valid: expected a zone name such as Europe/Berlin"
    ) from None
USE_I18N = True
USE_TZ = True

# --- Static files (admin), served by WhiteNoise --------------------------------------------
# WhiteNoise serves the admin's files straight from the installed apps, so a deploy
# works whether or not the platform runs collectstatic (if it does, STATIC_ROOT is used).
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
WHITENOISE_USE_FINDERS = True
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
warnings.filterwarnings("ignore", message="No directory at", category=UserWarning)

# --- Production safety -----------------------------------------------------------------------
# PaaS routers terminate TLS and forward the scheme; health probes and metrics come
# over plain HTTP from inside the platform, so they are exempt from the redirect.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SECURE_REDIRECT_EXEMPT = [r"^health/", r"^metrics$"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "resilience.events.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": env_choice("LOG_LEVEL", "INFO", LOG_LEVELS)},
    "loggers": {
        # django-q2 logs every task it enqueues and runs at INFO: off unless asked for.
        "django-q": {"level": env_choice("Q_LOG_LEVEL", "WARNING", LOG_LEVELS)},
        # These libraries log request URLs and headers, which carry the Telegram bot token
        # and X bearer token; they stay quiet whatever LOG_LEVEL says.
        **{
            name: {"level": "WARNING"}
            for name in (
                "httpx",
                "httpcore",
                "httpx2",
                "httpcore2",
                "tweepy",
                "requests_oauthlib",
                "oauthlib",
                "openai",
                "telegram",
            )
        },
    },
}
