"""Disputes, their verification runs and the signed verdicts."""

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

from ownership.models import EvidenceSet, RegisteredModel
from timestamps.models import TimestampToken


def suspect_upload_path(instance: "SuspectDescription", filename: str) -> str:
    """Suspect artifacts live under their dispute's (or dispute request's) public id."""
    folder = "suspects/requests" if isinstance(instance, DisputeRequest) else "suspects"
    return f"{folder}/{instance.public_id}/{filename}"


class SuspectDescription(models.Model):
    """Exactly one suspect: an uploaded artifact, a registered model or a remote endpoint (abstract)."""

    class SuspectKind(models.TextChoices):
        ARTIFACT = "artifact", "Uploaded artifact"
        ENDPOINT = "endpoint", "Remote prediction endpoint"
        REGISTERED = "registered", "Registered model"

    class Protocol(models.TextChoices):
        V2 = "v2", "Open Inference Protocol v2"
        JSON = "json", "Plain JSON"

    class OutputKind(models.TextChoices):
        LOGITS = "logits", "Logits"
        PROBABILITIES = "probabilities", "Probabilities"
        LABELS = "labels", "Labels only"

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    suspect_kind = models.CharField(max_length=16, choices=SuspectKind.choices)
    suspect_artifact = models.FileField(upload_to=suspect_upload_path, max_length=300, blank=True)
    suspect_format = models.CharField(max_length=16, choices=RegisteredModel.Format.choices, blank=True)
    suspect_digest = models.CharField(max_length=64, blank=True, db_index=True)
    suspect_registration = models.ForeignKey(
        RegisteredModel, on_delete=models.PROTECT, null=True, blank=True, related_name="%(class)s_suspected_in"
    )
    suspect_url = models.URLField(max_length=500, blank=True)
    suspect_protocol = models.CharField(max_length=8, choices=Protocol.choices, blank=True)
    suspect_model_name = models.CharField(max_length=200, blank=True)
    suspect_output = models.CharField(max_length=16, choices=OutputKind.choices, default=OutputKind.LOGITS)

    class Meta:
        abstract = True


class Dispute(SuspectDescription):
    """A claimant's registration against a suspect model, filed by an arbiter."""

    class State(models.TextChoices):
        FILED = "filed", "Filed"
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DECIDED = "decided", "Decided"
        PUBLISHED = "published", "Published"
        FAILED = "failed", "Failed"
        WITHDRAWN = "withdrawn", "Withdrawn"

    arbiter = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="disputes")
    title = models.CharField(max_length=200)
    claimant_model = models.ForeignKey(RegisteredModel, on_delete=models.PROTECT, related_name="claims")
    evidence_sets = models.ManyToManyField(EvidenceSet, related_name="disputes")
    methods = models.JSONField(help_text="requested methods: watermark, fingerprint, dataset_inference, api_watermark")
    api_client = models.CharField(
        max_length=32,
        blank=True,
        help_text="api_watermark evidence: only this client's journaled answers (the guard's tag); empty: all",
    )
    alpha = models.FloatField(default=1e-3)
    query_budget = models.PositiveIntegerField(default=100_000)
    panel = models.CharField(max_length=100, help_text="the reference panel the run compares against")
    state = models.CharField(max_length=16, choices=State.choices, default=State.FILED)
    progress = models.PositiveSmallIntegerField(default=0)
    phase = models.CharField(max_length=200, blank=True)
    failure_reason = models.TextField(blank=True)
    # the outbox and the lease: see verification.sweeps
    dispatched_at = models.DateTimeField(
        null=True, blank=True, help_text="when the queued run was last handed to the broker; empty: waiting to be sent"
    )
    dispatch_attempts = models.PositiveIntegerField(default=0)
    attempts = models.PositiveSmallIntegerField(default=0, help_text="runs started since the dispute was queued")
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="the running attempt's last sign of life")
    # precedence: a release time the arbiter knows of, with where it comes from (signed into the verdict as such)
    suspect_released_at = models.DateTimeField(
        null=True, blank=True, help_text="when the suspect was first released, as the arbiter found it"
    )
    suspect_release_source = models.CharField(
        max_length=300, blank=True, help_text="where the release time comes from (a URL, a document, a filing)"
    )
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["state", "dispatched_at"], name="dispute_state_dispatched")]
        constraints = [
            models.CheckConstraint(condition=Q(alpha__gt=0) & Q(alpha__lt=1), name="dispute_alpha_in_unit_interval"),
            models.CheckConstraint(condition=Q(progress__lte=100), name="dispute_progress_at_most_100"),
            models.CheckConstraint(
                condition=~Q(state="failed") | ~Q(failure_reason=""), name="dispute_failure_has_a_reason"
            ),
            models.CheckConstraint(
                condition=Q(suspect_released_at__isnull=True) | ~Q(suspect_release_source=""),
                name="dispute_release_time_has_a_source",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.title} ({self.state})"


class VerificationRun(models.Model):
    """One attempt at verifying a dispute; a retried task claims a new run, never a second verdict."""

    class State(models.TextChoices):
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        ABANDONED = "abandoned", "Abandoned (worker lost)"

    dispute = models.ForeignKey(Dispute, on_delete=models.CASCADE, related_name="runs")
    attempt = models.PositiveIntegerField()
    task_id = models.CharField(max_length=100, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.RUNNING)
    error = models.TextField(blank=True)
    timings = models.JSONField(default=dict, blank=True)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["dispute_id", "attempt"]
        constraints = [models.UniqueConstraint(fields=["dispute", "attempt"], name="run_unique_attempt")]

    def __str__(self) -> str:
        return f"run {self.attempt} of dispute {self.dispute_id} ({self.state})"


class Verdict(models.Model):
    """The signed outcome of a dispute: a DSSE envelope over an in-toto Statement, timestamped and logged."""

    class Outcome(models.TextChoices):
        OWNERSHIP_CONFIRMED = "ownership_confirmed", "Ownership confirmed"
        NOT_CONFIRMED = "not_confirmed", "Not confirmed"
        CLAIM_REJECTED = "claim_rejected", "Claim rejected"
        INCONCLUSIVE = "inconclusive", "Inconclusive"

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    # one verdict per dispute, whatever number of runs or redelivered messages
    dispute = models.OneToOneField(Dispute, on_delete=models.PROTECT, related_name="verdict")
    run = models.OneToOneField(VerificationRun, on_delete=models.PROTECT, related_name="verdict")
    outcome = models.CharField(max_length=32, choices=Outcome.choices)
    predicate = models.JSONField(help_text="the verdict predicate as signed")
    envelope = models.BinaryField(help_text="the DSSE envelope, exactly the bytes that were timestamped")
    attachments = models.JSONField(default=dict, help_text="file name -> base64 content (report, plots)")
    bundle_parts = models.JSONField(
        default=dict,
        help_text="keys, certificates and receipts as signed: verdict_keys, tsa_certificates, log_vkey, receipts",
    )
    timestamp_token = models.OneToOneField(TimestampToken, on_delete=models.PROTECT, related_name="verdict")
    created_at = models.DateTimeField()
    published_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"verdict {self.public_id} ({self.outcome})"


class DisputeRequest(SuspectDescription):
    """An owner's request that an arbiter file a dispute for their registration against a suspect.

    An arbiter accepts it (which files the dispute, copying the suspect and the chosen evidence) or
    declines it with a reason; the owner may withdraw it while it is open.
    """

    class State(models.TextChoices):
        OPEN = "open", "Open"
        ACCEPTED = "accepted", "Accepted"
        DECLINED = "declined", "Declined"
        WITHDRAWN = "withdrawn", "Withdrawn"

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="dispute_requests")
    title = models.CharField(max_length=200)
    statement = models.TextField(blank=True, help_text="why the owner suspects this model, for the arbiter")
    # a request holds nothing up: deleting the claimant's model deletes its requests (an accepted one's dispute
    # still protects it), and deleting a suspect's registration leaves its digest in the request
    claimant_model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="dispute_requests")
    suspect_registration = models.ForeignKey(
        RegisteredModel, on_delete=models.SET_NULL, null=True, blank=True, related_name="suspected_in_requests"
    )
    evidence_sets = models.ManyToManyField(EvidenceSet, related_name="dispute_requests")
    methods = models.JSONField(help_text="requested methods: watermark, fingerprint, dataset_inference, api_watermark")
    api_client = models.CharField(
        max_length=32,
        blank=True,
        help_text="api_watermark evidence: only this client's journaled answers (the guard's tag); empty: all",
    )
    state = models.CharField(max_length=16, choices=State.choices, default=State.OPEN)
    arbiter = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="handled_requests"
    )
    decision_note = models.TextField(blank=True)
    dispute = models.OneToOneField(Dispute, on_delete=models.PROTECT, null=True, blank=True, related_name="request")
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=~Q(state="declined") | ~Q(decision_note=""), name="request_decline_has_a_reason"
            ),
            models.CheckConstraint(
                condition=~Q(state="accepted") | Q(dispute__isnull=False), name="request_accepted_has_a_dispute"
            ),
        ]

    def __str__(self) -> str:
        return f"request {self.title} ({self.state})"


class StressTest(models.Model):
    """An owner's robustness check: simulate thefts of their own model and test each evidence set on each."""

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="stress_tests")
    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="stress_tests")
    evidence_sets = models.ManyToManyField(EvidenceSet, related_name="stress_tests")
    thefts = models.JSONField(help_text="simulated thefts: copy, fine_tune, prune, distill, extract")
    panel = models.CharField(max_length=100, help_text="the reference panel whose task the thief's data comes from")
    alpha = models.FloatField(default=1e-3)
    seed = models.PositiveIntegerField(default=0)
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    progress = models.PositiveSmallIntegerField(default=0)
    phase = models.CharField(max_length=200, blank=True)
    failure_reason = models.TextField(blank=True)
    results = models.JSONField(
        default=dict, blank=True, help_text="per theft: stolen model's accuracy, per evidence test"
    )
    timings = models.JSONField(default=dict, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    dispatched_at = models.DateTimeField(
        null=True, blank=True, help_text="when the queued test was last handed to the broker; empty: waiting to be sent"
    )
    dispatch_attempts = models.PositiveIntegerField(default=0)
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="the running attempt's last sign of life")
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["state", "dispatched_at"], name="stress_state_dispatched")]
        constraints = [
            models.CheckConstraint(condition=Q(progress__lte=100), name="stress_progress_at_most_100"),
            models.CheckConstraint(
                condition=~Q(state="failed") | ~Q(failure_reason=""), name="stress_failure_has_a_reason"
            ),
        ]

    def __str__(self) -> str:
        return f"stress test {self.public_id} ({self.state})"


class Sighting(models.Model):
    """A time-stamped record that a model existed: a file's digest, or an endpoint's answers to a probe set.

    Anyone signed in may record one; a later dispute over a suspect with that digest (or that endpoint,
    if it still answers the probes the same way) counts the sighting as a first known time of the suspect
    (see verification.precedence). Only digests and labels are kept, never the file.
    """

    class Kind(models.TextChoices):
        FILE = "file", "Model file"
        ENDPOINT = "endpoint", "Prediction endpoint"

    class State(models.TextChoices):
        PROBING = "probing", "Probing the endpoint"
        RECORDED = "recorded", "Recorded"
        FAILED = "failed", "Failed"

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    recorded_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="sightings")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.FILE)
    state = models.CharField(max_length=16, choices=State.choices, default=State.RECORDED)
    failure_reason = models.CharField(max_length=300, blank=True)
    model_digest = models.CharField(
        max_length=64, db_index=True, blank=True, help_text="a file: hex SHA-256 model digest; an endpoint: empty"
    )
    file_format = models.CharField(max_length=16, choices=RegisteredModel.Format.choices, blank=True)
    # an endpoint: where, how it was asked, the probe set's seed and the labels it gave
    url = models.URLField(max_length=500, blank=True)
    # the URL's scheme, host and port, normalised: sightings of one server match whatever path or query a
    # dispute spells (the run then re-sends the probes, and only an endpoint answering alike counts)
    endpoint_host = models.CharField(max_length=300, blank=True, db_index=True)
    protocol = models.CharField(max_length=8, choices=SuspectDescription.Protocol.choices, blank=True)
    model_name = models.CharField(max_length=200, blank=True)
    output_kind = models.CharField(max_length=16, choices=SuspectDescription.OutputKind.choices, blank=True)
    input_shape = models.JSONField(default=list, blank=True)
    num_classes = models.PositiveIntegerField(default=0)
    probe_seed = models.CharField(max_length=64, blank=True)
    probe_labels = models.JSONField(default=list, blank=True)
    transcript_digest = models.CharField(max_length=64, blank=True)
    note = models.CharField(max_length=300, blank=True, help_text="where the model was seen")
    timestamp_token = models.OneToOneField(
        TimestampToken, on_delete=models.PROTECT, null=True, blank=True, related_name="sighting"
    )
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=~Q(state="recorded") | Q(timestamp_token__isnull=False), name="sighting_recorded_is_stamped"
            ),
            models.CheckConstraint(
                condition=Q(kind="endpoint") | ~Q(model_digest=""), name="sighting_file_has_a_digest"
            ),
        ]

    def __str__(self) -> str:
        return f"sighting {self.public_id} ({self.kind})"
