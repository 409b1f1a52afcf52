"""The owner's stress-test form; field names follow `verification.services.stress.stress_test_start`."""

from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from ownership.models import EvidenceSet, RegisteredModel
from verification import reference, selectors
from verification.exceptions import StressTestError
from verification.forms.disputes import RegistrationChoiceField, as_sentence, panel_choices
from verification.services import stress as stress_services

THEFT_CHOICES = [
    ("copy", "Exact copy"),
    ("fine_tune", "Fine-tuning"),
    ("prune", "Pruning + fine-tuning"),
    ("distill", "Distillation"),
    ("extract", "Model extraction"),
]
THEFT_HELP = {
    "copy": "the thief serves your artifact as it is",
    "fine_tune": "10 more epochs on the thief's own labelled data (TorchScript models)",
    "prune": "half the weights zeroed, then fine-tuned (TorchScript models)",
    "distill": "a fresh model trained on your model's soft labels for the thief's data",
    "extract": "a fresh model trained on your model's answers to 1,600 queries",
}
ERROR_FIELDS = {
    "model": "model",
    "evidence_sets": "evidence_sets",
    "thefts": "thefts",
    "alpha": "alpha",
    "seed": "seed",
    "panel": "panel",
}


class EvidenceChoiceField(forms.ModelMultipleChoiceField):  # type: ignore[type-arg]
    """Evidence sets chosen by public id, shown as model · kind · size · commitment prefix."""

    def label_from_instance(self, obj: EvidenceSet) -> str:
        return f"{obj.model.name} · {obj.kind} · {obj.size} · {obj.commitment[:12]}"


class StressTestForm(forms.Form):
    """One of the owner's models, some of its evidence, the thefts, the panel, alpha and the seed."""

    model = RegistrationChoiceField(
        queryset=RegisteredModel.objects.none(),
        to_field_name="public_id",
        label="Your registered model",
        empty_label="Choose one of your registered models…",
    )
    evidence_sets = EvidenceChoiceField(
        queryset=EvidenceSet.objects.none(),
        to_field_name="public_id",
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="Evidence to test",
        help_text="None ticked: every evidence set of the model. Your evidence is opened only inside the service.",
    )
    thefts = forms.MultipleChoiceField(
        choices=THEFT_CHOICES,
        initial=[value for value, _ in THEFT_CHOICES],
        widget=forms.CheckboxSelectMultiple,
        error_messages={"required": "Choose at least one theft."},
    )
    panel = forms.ChoiceField(
        choices=panel_choices,
        label="Reference panel",
        help_text="Independent models of your task: they calibrate the p-values; the thief holds their public data.",
    )
    alpha = forms.FloatField(
        initial=0.001,
        label="Significance level (alpha)",
        help_text="A cell survives when its p-value is at most alpha; at most 0.1.",
        widget=forms.NumberInput(attrs={"step": "any"}),
    )
    seed = forms.IntegerField(
        initial=0, min_value=0, max_value=stress_services.MAX_SEED, help_text="The same seed gives the same table."
    )

    def __init__(self, *args: Any, owner: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        model_field = self.fields["model"]
        evidence_field = self.fields["evidence_sets"]
        assert isinstance(model_field, RegistrationChoiceField)  # noqa: S101 (declared just above)
        assert isinstance(evidence_field, EvidenceChoiceField)  # noqa: S101 (declared just above)
        model_field.queryset = selectors.registration_list(owner=owner)
        evidence = EvidenceSet.objects.filter(model__owner=owner).select_related("model")
        chosen = self.data.get("model") if self.is_bound else self.initial.get("model")
        if chosen:
            # the chosen model's evidence only (a malformed id lists none; the model field says why)
            try:
                evidence = evidence.filter(model__public_id=str(chosen))
                list(evidence[:1])
            except ValidationError:
                evidence = EvidenceSet.objects.none()
        evidence_field.queryset = evidence.order_by("model__name", "created_at", "id")
        names = list(reference.panel_list())
        if names:
            self.fields["panel"].initial = "digits" if "digits" in names else names[0]

    def service_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `stress.stress_test_start` (without the owner)."""
        data = self.cleaned_data
        return {
            "model": data["model"],
            "evidence_sets": list(data["evidence_sets"]) or None,
            "thefts": data["thefts"],
            "panel": data["panel"],
            "alpha": data["alpha"],
            "seed": data["seed"],
        }

    def add_service_error(self, exc: StressTestError | ValidationError) -> None:
        """Show a service's refusal next to the field it is about, or above the form, as a sentence."""
        if isinstance(exc, ValidationError):
            for message in exc.messages:
                self.add_error(None, as_sentence(message))
            return
        self.add_error(ERROR_FIELDS.get(exc.code), as_sentence(str(exc)))
