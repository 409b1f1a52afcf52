from typing import Any

from django.apps import AppConfig


class VerificationConfig(AppConfig):
    name = "verification"
    verbose_name = "Disputes and verdicts"

    def panel_names_for(self, model: Any) -> list[str]:
        """The reference panels that can judge `model` (ownership asks through the app registry: it may not import us)."""
        from verification.panel_fit import panel_names_for

        return panel_names_for(model)
