"""The filing tells the arbiter what dataset inference will cost a label-only suspect."""

from __future__ import annotations

import numpy as np
import pytest
from rest_framework.test import APIClient

from ownership import services as ownership_services
from verification.methods.budgets import QUERIES_PER_SAMPLE

from .conftest import PANEL, bare_model

pytestmark = pytest.mark.django_db


def test_an_endpoint_filing_states_the_queries_dataset_inference_needs(owner, arbiter, data_dir) -> None:  # type: ignore[no-untyped-def]
    claimant = bare_model(owner, "digits")
    rng = np.random.default_rng(0)
    arrays = {"members": rng.random((60, 64), dtype=np.float32), "nonmembers": rng.random((60, 64), dtype=np.float32)}
    dataset = ownership_services.evidence_commit(model=claimant, kind="dataset", arrays=arrays)
    client = APIClient()
    client.force_authenticate(arbiter)
    body = {
        "title": "endpoint",
        "claimant_model": str(claimant.public_id),
        "methods": "dataset_inference",
        "evidence_sets": [str(dataset.public_id)],
        "suspect_url": "https://models.example.org/predict",
        "panel": PANEL,
        "query_budget": 100_000,
    }
    answer = client.post("/api/v1/disputes/", body, format="json")
    assert answer.status_code == 201, answer.content
    queries = answer.json()["dataset_inference_queries"]
    assert queries == {"needed": 60 * QUERIES_PER_SAMPLE, "budget": 100_000, "enough": False}
