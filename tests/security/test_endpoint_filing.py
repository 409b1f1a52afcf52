"""An arbiter's endpoint dispute aimed at a non-public address is refused at filing, as an owner's request is.

Found live: `POST /api/v1/disputes/` with `suspect_url` http://127.0.0.1:18123/, http://[::ffff:127.0.0.1]/,
http://169.254.169.254/latest/, http://10.0.0.1/, http://0.0.0.0/ ... answers 201 and queues the dispute
(`dispute_file` never calls the public-address check that `dispute_request_create` makes). The worker's
egress check then refuses every query, yet the run ends `decided`: a signed, time-stamped, logged
`inconclusive` verdict whose predicate says `"queries": 100` although no query ever left. The filing must
be refused (400, code `suspect_url`) like the owner's request for the same URL.
"""

from __future__ import annotations

from typing import Any

import pytest

from ownership import services as ownership_services
from verification.exceptions import DisputeError
from verification.services import disputes as dispute_services

pytestmark = pytest.mark.django_db

NOT_PUBLIC = [
    "http://127.0.0.1:18123/",
    "http://[::1]:18123/",
    "http://[::ffff:127.0.0.1]:18123/",
    "http://0.0.0.0:18123/",
    "http://169.254.169.254/latest/",
    "http://10.0.0.1/",
]


@pytest.mark.parametrize("url", NOT_PUBLIC)
def test_filing_refuses_a_non_public_endpoint(url: str, owner: Any, arbiter: Any) -> None:
    from tests.verification.conftest import bare_model

    model = bare_model(owner, "digits")
    ownership_services.evidence_generate(model=model, count=10)
    with pytest.raises(DisputeError) as refused:
        dispute_services.dispute_file(
            arbiter=arbiter, title="x", claimant_model=model, methods=["watermark"], suspect_url=url, start=False
        )
    assert refused.value.code == "suspect_url"
