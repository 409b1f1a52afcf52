"""A verdict bundle with bytes after the end of its zip archive must not verify.

Found live: a real published bundle with anything appended (here an HTML/JS payload) still passes every
check of `modelcourt verify` (exit 0, "bundle archive: 11 files, ... names safe"), although bytes before the
archive, gaps between entries and duplicate names are all refused: the verified file is not the bytes the
service served, and it can carry a polyglot tail that other readers of the file act on.
"""

from __future__ import annotations

import pytest

from modelcourt.bundle import all_ok
from tests.modelcourt.test_bundle import Published, published  # noqa: F401 (the module's bundle fixture)

pytestmark = pytest.mark.django_db

TAILS = [b"JUNK", b"<html><script>alert(document.domain)</script></html>" * 20, b"\x00" * 3]


@pytest.mark.parametrize("tail", TAILS, ids=["junk", "html", "zeros"])
def test_bytes_after_the_archive_fail_the_bundle(published: Published, tail: bytes) -> None:  # noqa: F811
    assert all_ok(published.verify()), "the genuine bundle should pass"

    checks = published.verify(published.data + tail)

    assert not all_ok(checks), "a bundle with bytes appended after its zip archive verified"
