"""Disputes over a guard's journal (api_watermark evidence): a knockoff of the guarded API against independents.

The guard's part is simulated here the way it works: on a keyed fraction of queries the owner's API served
a label other than its model's own, and those rows (input, served label, client tag, time) were committed
as a batch. A thief who trained on the API's answers repeats some of the wrong labels; an independent
model does not. Runs go through the sandbox as in production.
"""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np
import pytest
import torch

from ownership import services as ownership_services
from ownership.models import EvidenceSet, RegisteredModel
from tests.verification.conftest import PANEL, Models, _script, settle, upload
from verification.exceptions import DisputeError
from verification.methods.datasets import digits_task
from verification.methods.training import build_model, train_classifier
from verification.services import disputes as dispute_services
from verification.services import sightings as sighting_services

THIEF = bytes.fromhex("a1" * 16)
HONEST = bytes.fromhex("b2" * 16)
ROWS = 60


def _labels(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).argmax(dim=1).numpy().astype(np.int64)


@pytest.fixture(scope="module")
def guarded() -> dict[str, Any]:
    """The owner's model, the journaled (watermarked) rows, a knockoff trained on the served answers."""
    task = digits_task(0)
    owner = train_classifier(
        build_model("mlp", input_shape=(64,), num_classes=10, seed=3), task.owner_x, task.owner_y, epochs=40, seed=3
    )
    rng = np.random.default_rng(7)
    # the thief's queries: public samples and noisy copies of them; a keyed few were answered wrongly
    queries = np.clip(
        np.concatenate([task.public_x, task.public_x + rng.normal(0, 0.08, task.public_x.shape)]), 0, 1
    ).astype(np.float32)
    answers = _labels(owner, queries)
    marked = rng.choice(len(queries), size=ROWS, replace=False)
    served = answers.copy()
    served[marked] = (answers[marked] + 1 + rng.integers(0, 9, size=ROWS)) % 10
    # the knockoff learns from every answer it got, the wrong ones included
    knockoff = train_classifier(
        build_model("mlp", input_shape=(64,), num_classes=10, seed=11),
        np.concatenate([queries, np.repeat(queries[marked], 3, axis=0)]),
        np.concatenate([served, np.repeat(served[marked], 3)]),
        epochs=60,
        seed=11,
    )
    clients = np.array([THIEF] * (ROWS - 15) + [HONEST] * 15)
    return {
        "owner": _script(owner),
        "knockoff": _script(knockoff),
        "inputs": queries[marked],
        "served": served[marked],
        "clients": np.frombuffer(b"".join(clients), dtype=np.uint8).reshape(ROWS, 16),
    }


def _npz(guarded: dict[str, Any], *, served_at: float | None = None, labels: np.ndarray | None = None) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        inputs=guarded["inputs"],
        labels=guarded["served"] if labels is None else labels,
        clients=guarded["clients"],
        served_at=np.full(ROWS, time.time() - 60 if served_at is None else served_at, dtype=np.float64),
    )
    return buffer.getvalue()


def _register(owner, data: bytes, name: str) -> RegisteredModel:  # type: ignore[no-untyped-def]
    return ownership_services.model_register(
        owner=owner, name=name, task="digits", input_shape=[64], num_classes=10, artifact=upload(f"{name}.pt", data)
    )


def _commit(model: RegisteredModel, guarded: dict[str, Any], **kw: Any) -> EvidenceSet:
    batch = ownership_services.evidence_upload(model=model, kind="api_watermark", data=_npz(guarded, **kw))
    settle(batch)
    return batch


def _decide(arbiter, model: RegisteredModel, suspect: bytes, **kw: Any) -> Any:  # type: ignore[no-untyped-def]
    dispute = dispute_services.dispute_file(
        arbiter=arbiter,
        title="knockoff of the guarded API?",
        claimant_model=model,
        methods=["api_watermark"],
        suspect_file=upload("suspect.pt", suspect),
        panel=PANEL,
        **kw,
    )
    verdict = dispute_services.verification_run_execute(dispute_id=dispute.pk, task_id="t-api")
    assert verdict is not None
    return verdict


def _test(verdict: Any) -> dict[str, Any]:
    [test] = verdict.predicate["decision"]["tests"]
    assert test["kind"] == "api_watermark"
    return dict(test)


def test_the_batch_keeps_its_clients_private_and_its_rows_counted(owner, guarded, data_dir) -> None:  # type: ignore[no-untyped-def]
    model = _register(owner, guarded["owner"], "guarded")
    batch = _commit(model, guarded)
    assert batch.kind == "api_watermark"
    assert batch.size == ROWS
    assert batch.journal["clients"] == sorted([THIEF.hex(), HONEST.hex()])
    receipt = ownership_services.receipt_build(evidence_set=batch)
    assert THIEF.hex() not in str(receipt)  # the receipt is public: client tags stay with the owner


def test_a_knockoff_of_the_guarded_api_is_confirmed(owner, arbiter, guarded, data_dir) -> None:  # type: ignore[no-untyped-def]
    model = _register(owner, guarded["owner"], "guarded")
    _commit(model, guarded)
    verdict = _decide(arbiter, model, guarded["knockoff"])
    assert verdict.outcome == "ownership_confirmed", verdict.predicate["decision"]["reasons"]
    stats = _test(verdict)["statistics"]
    assert stats["K"] == ROWS
    assert stats["m"] >= 10
    assert verdict.predicate["claims"][0]["rows"] == ROWS
    assert verdict.predicate["claims"][0]["precedence"]["precedes"] is True


def test_an_independent_model_is_not_confirmed(owner, arbiter, guarded, digits_models: Models, data_dir) -> None:  # type: ignore[no-untyped-def]
    model = _register(owner, guarded["owner"], "guarded")
    _commit(model, guarded)
    verdict = _decide(arbiter, model, digits_models.independent)
    assert verdict.outcome == "not_confirmed", verdict.predicate["decision"]["reasons"]
    assert _test(verdict)["p_value"] > 1e-3


def test_one_clients_answers_pay_for_every_client_that_could_have_been_named(owner, arbiter, guarded, data_dir) -> None:  # type: ignore[no-untyped-def]
    model = _register(owner, guarded["owner"], "guarded")
    _commit(model, guarded)
    verdict = _decide(arbiter, model, guarded["knockoff"], api_client=THIEF.hex())
    assert verdict.outcome == "ownership_confirmed", verdict.predicate["decision"]["reasons"]
    stats = _test(verdict)["statistics"]
    assert stats["K"] == ROWS - 15  # the honest client's rows are left out
    assert stats["draws"] == 2  # two clients were committed: the p-value is doubled
    assert _test(verdict)["p_value"] == pytest.approx(min(1.0, 2 * stats["p_value_single_draw"]))


def test_a_client_without_journaled_answers_is_refused_at_filing(owner, arbiter, guarded, data_dir) -> None:  # type: ignore[no-untyped-def]
    model = _register(owner, guarded["owner"], "guarded")
    _commit(model, guarded)
    with pytest.raises(DisputeError, match="none of the chosen guard batches"):
        _decide(arbiter, model, guarded["knockoff"], api_client="c3" * 16)
    with pytest.raises(DisputeError, match="32 hexadecimal digits"):
        _decide(arbiter, model, guarded["knockoff"], api_client="thief")


def test_a_claimant_whose_own_model_gives_the_served_labels_is_rejected(owner, arbiter, guarded, data_dir) -> None:  # type: ignore[no-untyped-def]
    # a liar registers the knockoff itself and claims its answers were the "wrong" ones it served
    liar = _register(owner, guarded["knockoff"], "liar")
    labels = _labels(torch.jit.load(io.BytesIO(guarded["knockoff"])), guarded["inputs"])
    _commit(liar, guarded, labels=labels)
    verdict = _decide(arbiter, liar, guarded["knockoff"])
    assert verdict.outcome == "claim_rejected", verdict.predicate["decision"]["reasons"]
    assert any("does not carry" in r for r in verdict.predicate["decision"]["reasons"])


def test_a_batch_committed_after_the_suspect_was_seen_cannot_confirm(owner, arbiter, guarded, data_dir) -> None:  # type: ignore[no-untyped-def]
    model = _register(owner, guarded["owner"], "guarded")
    sighting_services.sighting_record(user=arbiter, upload=upload("seen.pt", guarded["knockoff"]))
    time.sleep(1.1)  # past the sighting token's accuracy: the batch is clearly later
    _commit(model, guarded)
    verdict = _decide(arbiter, model, guarded["knockoff"])
    assert verdict.outcome == "inconclusive", verdict.predicate["decision"]["reasons"]
    assert verdict.predicate["claims"][0]["precedence"]["precedes"] is False


def test_a_batch_served_in_the_future_is_refused(owner, guarded, data_dir) -> None:  # type: ignore[no-untyped-def]
    model = _register(owner, guarded["owner"], "guarded")
    with pytest.raises(ownership_services.RegistryError, match="served in the future"):
        ownership_services.evidence_upload(
            model=model, kind="api_watermark", data=_npz(guarded, served_at=time.time() + 86_400)
        )
