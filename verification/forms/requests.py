"""Dispute request forms: the owner's request, the arbiter's acceptance and refusal.

Field names follow the services' arguments (`verification.services.requests.dispute_request_create`).
"""

from typing import Any

from django import forms

from ownership.models import RegisteredModel
from verification import selectors
from verification.forms.disputes import RegistrationChoiceField, RunSettingsForm, SuspectForm, _methods_field


class DisputeRequestForm(SuspectForm):
    """An owner's request: one of their registrations, the methods, one suspect and why they suspect it."""

    title = forms.CharField(
        max_length=200,
        widget=forms.TextInput(attrs={"autocomplete": "off", "placeholder": "e.g. my digits model, resold"}),
    )
    claimant = RegistrationChoiceField(
        queryset=RegisteredModel.objects.none(),
        to_field_name="public_id",
        label="Your registered model",
        empty_label="Choose one of your registered models…",
        help_text="Its committed evidence of the chosen kinds is opened only if an arbiter files the dispute.",
    )
    methods = _methods_field()
    statement = forms.CharField(
        required=False,
        max_length=5000,
        label="Why you suspect this model",
        widget=forms.Textarea(attrs={"rows": 4, "placeholder": "Where you found it, what it does, since when."}),
    )

    def __init__(self, *args: Any, owner: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        claimant = self.fields["claimant"]
        assert isinstance(claimant, RegistrationChoiceField)  # noqa: S101 (declared just above)
        claimant.queryset = selectors.registration_list(owner=owner)
        # owners do not browse the registry: a registered suspect is named by its public id
        suspect = self.fields["suspect_registration"]
        suspect.widget = forms.TextInput(attrs={"autocomplete": "off", "placeholder": "e.g. 3f2b…, a UUID"})
        suspect.label = "Suspect registration (public id)"
        suspect.help_text = "The id of a model registered here, as its public receipts show it."

    def service_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `requests.dispute_request_create` (without the owner)."""
        data = self.cleaned_data
        return {
            "title": data["title"],
            "statement": data["statement"],
            "claimant_model": data["claimant"],
            "methods": data["methods"],
            "api_client": data.get("api_client") or "",
            **self.suspect_kwargs(),
        }


class RequestAcceptForm(RunSettingsForm):
    """Accept a dispute request: the run's settings and a note for the owner."""

    note = forms.CharField(
        required=False, max_length=5000, label="Note to the owner", widget=forms.Textarea(attrs={"rows": 2})
    )


class RequestDeclineForm(forms.Form):
    """Decline a dispute request, saying why."""

    reason = forms.CharField(
        max_length=5000, label="Why the request is declined", widget=forms.Textarea(attrs={"rows": 3})
    )
