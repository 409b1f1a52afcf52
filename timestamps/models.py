"""Trust-layer state: signing keys (public parts), the Merkle log, issued tokens.

Log entries, stored tree nodes, checkpoints and tokens are append-only: the
database refuses UPDATE, DELETE and TRUNCATE on them (see dbtriggers.py).
"""

from django.db import models
from django.db.models import Q


class SigningKey(models.Model):
    """The public half of a service key; private halves never enter the database."""

    class Purpose(models.TextChoices):
        TSA = "tsa", "RFC 3161 time-stamping"
        TSA_CA = "tsa-ca", "Certificate authority of the TSA"
        LOG = "log", "Transparency log checkpoints"
        VERDICT = "verdict", "Verdict signatures"

    class Status(models.TextChoices):
        CURRENT = "current", "current"
        RETIRED = "retired", "retired"

    purpose = models.CharField(max_length=16, choices=Purpose.choices)
    kid = models.CharField(max_length=64, unique=True, help_text="hex SHA-256 of the SubjectPublicKeyInfo")
    algorithm = models.CharField(max_length=32)
    public_key_pem = models.TextField()
    certificate_pem = models.TextField(blank=True, help_text="X.509 certificate (TSA keys and the CA)")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.CURRENT)
    created_at = models.DateTimeField()
    retired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["purpose", "created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["purpose"], condition=Q(status="current"), name="signingkey_one_current_per_purpose"
            ),
            models.CheckConstraint(
                condition=Q(status="current", retired_at__isnull=True) | Q(status="retired", retired_at__isnull=False),
                name="signingkey_retired_at_matches_status",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.purpose}:{self.kid[:16]} ({self.status})"


class LogHead(models.Model):
    """The single row appenders lock; it serialises appends so indices never gap."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    size = models.BigIntegerField(default=0)
    root_hash = models.BinaryField(max_length=32)
    # The tree's peaks (maximal complete subtrees), 32 bytes each: appends need no node reads.
    frontier = models.BinaryField(default=b"")
    updated_at = models.DateTimeField()

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=Q(id=1), name="loghead_single_row"),
            models.CheckConstraint(condition=Q(size__gte=0), name="loghead_size_nonnegative"),
        ]

    def __str__(self) -> str:
        return f"log head: {self.size} entries"


class LogEntry(models.Model):
    """One leaf of the log: the entry bytes at a gap-free index."""

    index = models.BigIntegerField(primary_key=True)
    data = models.BinaryField()
    leaf_hash = models.BinaryField(max_length=32)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["index"]
        verbose_name_plural = "log entries"
        constraints = [models.CheckConstraint(condition=Q(index__gte=0), name="logentry_index_nonnegative")]

    def __str__(self) -> str:
        return f"log entry {self.index}"


class LogNode(models.Model):
    """A stored complete-subtree hash; key = level << 56 | position (one indexed lookup per id)."""

    key = models.BigIntegerField(primary_key=True)
    hash = models.BinaryField(max_length=32)

    class Meta:
        ordering = ["key"]

    def __str__(self) -> str:
        return f"node {self.key >> 56}/{self.key & ((1 << 56) - 1)}"


class Checkpoint(models.Model):
    """A signed C2SP checkpoint of the log at some size."""

    size = models.BigIntegerField()
    root_hash = models.BinaryField(max_length=32)
    note = models.TextField()
    key = models.ForeignKey(SigningKey, on_delete=models.PROTECT, related_name="checkpoints")
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["size", "created_at"]
        get_latest_by = "size"
        constraints = [
            # One per size and key: a rotated log key re-signs the current size.
            models.UniqueConstraint(fields=["size", "key"], name="checkpoint_unique_size_per_key"),
        ]

    def __str__(self) -> str:
        return f"checkpoint at {self.size}"


class TimestampToken(models.Model):
    """An RFC 3161 token the TSA granted; its serial number is its log index."""

    serial = models.BigIntegerField(unique=True)
    log_entry = models.OneToOneField(LogEntry, on_delete=models.PROTECT, related_name="timestamp_token")
    token = models.BinaryField()
    hash_algorithm = models.CharField(max_length=16)
    message_imprint = models.BinaryField(max_length=64)
    gen_time = models.DateTimeField()
    key = models.ForeignKey(SigningKey, on_delete=models.PROTECT, related_name="timestamp_tokens")

    class Meta:
        ordering = ["serial"]

    def __str__(self) -> str:
        return f"timestamp token {self.serial}"


class LogAlarm(models.Model):
    """Raised by `log_fsck` when the stored log disagrees with itself; no checkpoint is signed while it exists.

    An operator clears it (`manage.py log_fsck --clear`) once a check comes back clean.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    problems = models.TextField()
    raised_at = models.DateTimeField()

    class Meta:
        ordering = ["id"]
        constraints = [models.CheckConstraint(condition=Q(id=1), name="logalarm_single_row")]

    def __str__(self) -> str:
        return f"log alarm raised at {self.raised_at:%Y-%m-%d %H:%M}"
