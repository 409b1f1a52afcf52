"""Multipart form encoding (multipart/form-data), the one body the `modelcourt` command and the guard upload.

Standard library only, so that both the command and the guard can use it without pulling in anything else.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

__all__ = ["encode_multipart", "quoted"]


def quoted(value: str) -> str:
    """A field or file name made safe inside the quoted string of a Content-Disposition header.

    This is the HTML form encoding: the characters that would end the quoted string or the header line (CR,
    LF and the double quote) are percent-escaped; everything else is left as it is.
    """
    return value.replace("\r", "%0D").replace("\n", "%0A").replace('"', "%22")


def encode_multipart(fields: Sequence[tuple[str, str]], files: Sequence[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type, from text fields and (field, filename, bytes) files.

    The boundary is random (128 bits), so no file's bytes can end a part early by chance or by design.
    """
    boundary = f"modelcourt-{secrets.token_hex(16)}"
    parts: list[bytes] = []
    for name, value in fields:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{quoted(name)}"\r\n\r\n'.encode())
        parts.append(value.encode() + b"\r\n")
    for name, filename, data in files:
        disposition = f'form-data; name="{quoted(name)}"; filename="{quoted(filename)}"'
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: application/octet-stream\r\n\r\n"
        parts.append(head.encode())
        parts.append(data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"
