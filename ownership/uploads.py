"""Upload handling that keeps evidence off the disk: it is secret until it is sealed in escrow."""

import io
from typing import Any

from django.conf import settings
from django.core.files.uploadedfile import InMemoryUploadedFile
from django.core.files.uploadhandler import FileUploadHandler, StopFutureHandlers

EVIDENCE_FIELD = "file"  # the evidence field of the API and of the owner's form


class EvidenceMemoryUploadHandler(FileUploadHandler):
    """Hold an evidence file in memory, never in a temporary file; past the limit, keep only its size.

    Django spills uploads over FILE_UPLOAD_MAX_MEMORY_SIZE to /tmp in plaintext; for evidence that
    would defeat the escrow. Other fields (model artifacts) fall through to Django's handlers.
    """

    def new_file(self, field_name: str, *args: Any, **kwargs: Any) -> None:
        super().new_file(field_name, *args, **kwargs)
        self.activated = field_name == EVIDENCE_FIELD
        if self.activated:
            self.buffer = io.BytesIO()
            self.limit = settings.MODELCOURT_MAX_EVIDENCE_BYTES
            raise StopFutureHandlers()

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        if not self.activated:
            return raw_data
        if start + len(raw_data) <= self.limit:
            self.buffer.write(raw_data)
        return None

    def file_complete(self, file_size: int) -> InMemoryUploadedFile | None:
        if not self.activated:
            return None
        # An oversized file keeps its true size (so it is refused with the right numbers) but no bytes.
        content = self.buffer if file_size <= self.limit else io.BytesIO()
        content.seek(0)
        return InMemoryUploadedFile(
            file=content,
            field_name=self.field_name,
            name=self.file_name,
            content_type=self.content_type,
            size=file_size,
            charset=self.charset,
            content_type_extra=self.content_type_extra,
        )
