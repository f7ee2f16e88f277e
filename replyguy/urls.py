from django.contrib import admin
from django.urls import path

from bot.views import telegram_webhook
from replyguy import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("telegram/webhook/", telegram_webhook, name="telegram-webhook"),
    # Probes and metrics: exempt from the HTTPS redirect (settings.SECURE_REDIRECT_EXEMPT).
    path("health/live/", views.live, name="health-live"),
    path("health/ready/", views.ready, name="health-ready"),
    path("health/status/", views.status, name="health-status"),
    path("health/", views.every, name="health"),
    path("metrics", views.metrics, name="metrics"),
]
