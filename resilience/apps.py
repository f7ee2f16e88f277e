from django.apps import AppConfig


class ResilienceConfig(AppConfig):
    name = "resilience"
    verbose_name = "Resilience"

    def ready(self) -> None:
        # The owner hears of breakers opening and closing (resilience.alerts); wired here
        # so the registry and the breakers stay free of the alert tables.
        from resilience import registry
        from resilience.alerts import on_breaker_transition

        registry.add_listener(on_breaker_transition)
