from typing import Any

from django.apps import AppConfig


class VerificationConfig(AppConfig):
    name = "verification"
    verbose_name = "Disputes and verdicts"

    def panel_names_for(self, model: Any) -> list[str]:
        """The reference panels that can judge `model` (ownership may not import us: it asks the app registry)."""
        from verification.panel_fit import panel_names_for

        return panel_names_for(model)

    def model_cases(self, model: Any) -> dict[str, list[Any]]:
        """Published verdicts that name `model`, and its owner's dispute requests for it (for the owner's page)."""
        from verification.selectors import model_cases

        return model_cases(model=model)
