from typing import Any

from django.apps import AppConfig


class VerificationConfig(AppConfig):
    name = "verification"
    verbose_name = "Disputes and verdicts"

    def panel_names_for(self, model: Any) -> list[str]:
        """The reference panels that can judge `model` (ownership may not import us: it asks the app registry)."""
        from verification.panel_fit import panel_names_for

        return panel_names_for(model)
