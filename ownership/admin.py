from django.contrib import admin

from ownership.models import EvidenceSet, RegisteredModel


@admin.register(RegisteredModel)
class RegisteredModelAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "artifact_format", "model_digest", "created_at"]
    search_fields = ["name", "model_digest", "owner__username"]
    readonly_fields = ["public_id", "model_digest", "file_digests", "artifact_size", "artifact_format"]


@admin.register(EvidenceSet)
class EvidenceSetAdmin(admin.ModelAdmin):
    list_display = ["commitment", "kind", "model", "size", "verifiable", "created_at"]
    list_filter = ["kind", "verifiable"]
    # The escrow stays sealed: operators see that it exists, never its contents.
    exclude = ["escrow"]
    readonly_fields = ["public_id", "commitment", "evidence_digest", "timestamp_token", "generator"]
