"""Dispute forms: the arbiter's filing, and what the request forms share (the suspect, the run's settings).

Field names follow the services' arguments (`verification.services.disputes.dispute_file`).
"""

from typing import Any

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError
from django.template.defaultfilters import filesizeformat

from ownership.exceptions import RegistryError
from ownership.models import RegisteredModel
from verification import reference, selectors
from verification.exceptions import DisputeError
from verification.models import Dispute

METHOD_CHOICES = [
    ("watermark", "Watermark"),
    ("fingerprint", "Fingerprint"),
    ("dataset_inference", "Dataset inference"),
    ("api_watermark", "API watermark"),
]
METHOD_HELP = {
    "watermark": "the claimant's trigger set: K queries, m matching labels",
    "fingerprint": "conferrable adversarial examples of the claimant's model",
    "dataset_inference": "the claimant's private training samples (needs a TorchScript claimant)",
    "api_watermark": "the wrong answers the claimant's guard served and committed: does the suspect repeat them?",
}


class SuspectSource:
    UPLOAD = "upload"
    REGISTERED = "registered"
    ENDPOINT = "endpoint"
    CHOICES = [
        (UPLOAD, "Upload a file"),
        (REGISTERED, "A registered model"),
        (ENDPOINT, "A prediction endpoint"),
    ]


# Dispute error codes (see verification.services.disputes.dispute_file) -> the form field they are about.
DISPUTE_ERROR_FIELDS = {
    "title": "title",
    "methods": "methods",
    "evidence_sets": "methods",
    "alpha": "alpha",
    "query_budget": "query_budget",
    "panel": "panel",
    "suspect_file": "suspect_file",
    "too_large": "suspect_file",
    "suspect_url": "suspect_url",
    "suspect_protocol": "suspect_protocol",
    "suspect_model_name": "suspect_model_name",
    "suspect_output": "suspect_output",
    "claimant_model": "claimant",
    "statement": "statement",
}


class RegistrationChoiceField(forms.ModelChoiceField):  # type: ignore[type-arg]
    """A registered model, chosen by public id, shown as name · owner · digest prefix."""

    default_error_messages = {"invalid_choice": "No such registered model: choose one from the list."}

    def label_from_instance(self, obj: RegisteredModel) -> str:
        return f"{obj.name} · {obj.owner.get_username()} · {obj.model_digest[:12]}"

    def to_python(self, value: Any) -> RegisteredModel | None:
        try:
            model: RegisteredModel | None = super().to_python(value)
        except ValidationError as exc:  # a malformed id says "not a valid UUID"; for a select, it is no choice
            if exc.code == "invalid_choice":
                raise
            raise ValidationError(self.error_messages["invalid_choice"], code="invalid_choice") from None
        return model


def panel_choices() -> list[tuple[str, str]]:
    return [(name, f"{name} — {description}") for name, description in reference.panel_list().items()]


class SuspectForm(forms.Form):
    """Exactly one suspect (a file, a registration or an endpoint), and the service errors shown by field."""

    api_client = forms.CharField(
        required=False,
        max_length=64,
        label="API client (optional)",
        help_text="With API watermark: only this client's journaled answers, by the guard's tag (from an alarm).",
        widget=forms.TextInput(attrs={"autocomplete": "off", "placeholder": "32 hexadecimal digits"}),
    )
    suspect_source = forms.ChoiceField(
        label="Suspect", choices=SuspectSource.CHOICES, initial=SuspectSource.UPLOAD, widget=forms.RadioSelect
    )
    suspect_file = forms.FileField(
        required=False,
        label="Suspect artifact",
        widget=forms.ClearableFileInput(attrs={"accept": ".onnx,.pt,.pth,.ts,.torchscript"}),
    )
    suspect_registration = RegistrationChoiceField(
        queryset=selectors.registration_list(),
        to_field_name="public_id",
        required=False,
        label="Suspect registration",
        empty_label="Choose a registered model…",
    )
    suspect_url = forms.CharField(
        required=False,
        max_length=500,
        label="Endpoint URL",
        widget=forms.TextInput(attrs={"placeholder": "https://models.example.org/v2/models/clf/infer", "type": "url"}),
    )
    suspect_protocol = forms.ChoiceField(
        required=False, label="Protocol", choices=Dispute.Protocol.choices, initial=Dispute.Protocol.JSON
    )
    suspect_model_name = forms.CharField(
        required=False, max_length=200, label="Model name", help_text="The model's name on the server (v2 protocol)."
    )
    suspect_output = forms.ChoiceField(
        required=False, label="Output", choices=Dispute.OutputKind.choices, initial=Dispute.OutputKind.LOGITS
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limit = filesizeformat(settings.MODELCOURT_MAX_ARTIFACT_BYTES)
        self.fields[
            "suspect_file"
        ].help_text = f"ONNX (.onnx) or TorchScript (.pt), up to {limit}. Run in a sandbox, never unpickled."

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        source = data.get("suspect_source")
        if source == SuspectSource.UPLOAD and not data.get("suspect_file") and "suspect_file" not in self.errors:
            self.add_error("suspect_file", "Choose the suspect's ONNX or TorchScript file.")
        elif source == SuspectSource.REGISTERED and not data.get("suspect_registration"):
            if "suspect_registration" not in self.errors:
                self.add_error("suspect_registration", "Choose the suspect's registration.")
        elif source == SuspectSource.ENDPOINT and not str(data.get("suspect_url") or "").strip():
            self.add_error("suspect_url", "Give the endpoint's URL.")
        return data

    def suspect_kwargs(self) -> dict[str, Any]:
        """The chosen suspect as service keyword arguments (the other sources' fields are ignored)."""
        data = self.cleaned_data
        source = data["suspect_source"]
        if source == SuspectSource.UPLOAD:
            return {"suspect_file": data["suspect_file"]}
        if source == SuspectSource.REGISTERED:
            return {"suspect_registration": data["suspect_registration"]}
        return {
            "suspect_url": data["suspect_url"].strip(),
            "suspect_protocol": data["suspect_protocol"] or Dispute.Protocol.JSON,
            "suspect_model_name": data["suspect_model_name"],
            "suspect_output": data["suspect_output"] or Dispute.OutputKind.LOGITS,
        }

    def add_service_error(self, exc: DisputeError | RegistryError | ValidationError) -> None:
        """Show a service's refusal next to the field it is about, or above the form, as a sentence."""
        if isinstance(exc, ValidationError):
            for message in exc.messages:
                self.add_error(None, as_sentence(message))
            return
        field = DISPUTE_ERROR_FIELDS.get(exc.code)
        if exc.code == "suspect" and self.cleaned_data.get("suspect_source") == SuspectSource.REGISTERED:
            field = "suspect_registration"
        if field is not None and field not in self.fields:
            field = None
        self.add_error(field, as_sentence(str(exc)))


def _methods_field() -> forms.MultipleChoiceField:
    return forms.MultipleChoiceField(
        choices=METHOD_CHOICES,
        initial=["watermark"],
        widget=forms.CheckboxSelectMultiple,
        error_messages={"required": "Choose at least one method."},
    )


class RunSettingsForm(forms.Form):
    """What the arbiter decides for a run: alpha, the query budget and the reference panel."""

    alpha = forms.FloatField(
        initial=0.001,
        label="Significance level (alpha)",
        help_text="Holm-Bonferroni over the tests run; at most 0.1.",
        widget=forms.NumberInput(attrs={"step": "any"}),
    )
    query_budget = forms.IntegerField(
        initial=100_000, label="Query budget", help_text="The most queries the suspect may be sent."
    )
    panel = forms.ChoiceField(
        choices=panel_choices,
        label="Reference panel",
        help_text="Independent models of the same task: they calibrate p0 and screen for false claims.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        names = list(reference.panel_list())
        if names:
            self.fields["panel"].initial = "digits" if "digits" in names else names[0]

    def run_kwargs(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {"alpha": data["alpha"], "query_budget": data["query_budget"], "panel": data["panel"]}


class DisputeFileForm(SuspectForm, RunSettingsForm):
    """File one claimant registration against one suspect; the service checks the rest."""

    title = forms.CharField(
        max_length=200,
        widget=forms.TextInput(attrs={"autocomplete": "off", "placeholder": "e.g. digits-mlp vs. acme-classifier"}),
    )
    claimant = RegistrationChoiceField(
        queryset=selectors.registration_list(),
        to_field_name="public_id",
        label="Claimant registration",
        empty_label="Choose the claimant's registered model…",
        help_text="Its committed evidence of the chosen kinds is opened for the dispute.",
    )
    methods = _methods_field()
    suspect_released_at = forms.DateTimeField(
        required=False,
        label="Suspect first released (UTC)",
        help_text="If you know when the suspect was first released: evidence the claimant could have chosen "
        "counts only if it was committed before then. Leave empty if unknown.",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
    )
    suspect_release_source = forms.CharField(
        required=False,
        max_length=300,
        label="Source of the release time",
        help_text="A URL or a document; it is signed into the verdict with the time.",
    )

    field_order = ["title", "claimant", "methods", "suspect_source"]

    def service_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `disputes.dispute_file` (without the arbiter), the chosen suspect only."""
        data = self.cleaned_data
        return {
            "title": data["title"],
            "claimant_model": data["claimant"],
            "methods": data["methods"],
            "suspect_released_at": data.get("suspect_released_at"),
            "suspect_release_source": data.get("suspect_release_source") or "",
            "api_client": data.get("api_client") or "",
            **self.run_kwargs(),
            **self.suspect_kwargs(),
        }


def as_sentence(text: str) -> str:
    text = text.strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else f"{text}."
