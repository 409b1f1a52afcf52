"""Commitments: RFC 8785 canonical JSON and container-independent evidence digests."""

import numpy as np
import pytest

from ownership import commitments

HEX = "ab" * 32


def test_canonical_json_sorts_keys_and_drops_whitespace() -> None:
    assert commitments.canonical_json({"b": [1, True, None], "a": "é\n"}) == '{"a":"é\\n","b":[1,true,null]}'.encode()


def test_canonical_json_orders_keys_by_utf16_code_units() -> None:
    # U+E000 sorts before U+1F600 in UTF-16 (0xE000 < 0xD83D surrogate is false: 0xD83D < 0xE000)
    assert commitments.canonical_json({"\ue000": 1, "\U0001f600": 2}) == '{"\U0001f600":2,"\ue000":1}'.encode()


@pytest.mark.parametrize("value", [1.5, {1: "x"}, object(), 2**60])
def test_canonical_json_refuses_what_it_cannot_encode_interoperably(value: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        commitments.canonical_json({"v": value})


def test_evidence_digest_ignores_byte_order_and_array_order_but_not_content() -> None:
    inputs = np.arange(12, dtype=np.float32).reshape(3, 4)
    labels = np.array([0, 1, 2], dtype=np.int64)
    digest = commitments.evidence_digest({"inputs": inputs, "labels": labels})

    assert digest == commitments.evidence_digest({"labels": labels.astype(">i8"), "inputs": inputs.astype(">f4")})
    assert digest != commitments.evidence_digest({"inputs": inputs.reshape(4, 3), "labels": labels})
    assert digest != commitments.evidence_digest({"inputs": inputs.astype(np.float64), "labels": labels})
    changed = inputs.copy()
    changed[0, 0] = np.nextafter(changed[0, 0], np.float32(1))
    assert digest != commitments.evidence_digest({"inputs": changed, "labels": labels})


def test_commitment_binds_every_field() -> None:
    base = {"model_digest": HEX, "evidence_digest": HEX, "kind": "watermark", "salt": HEX}
    reference = commitments.commitment(**base)
    assert commitments.commitment(**{**base, "salt": "cd" * 32}) != reference
    assert commitments.commitment(**{**base, "kind": "fingerprint"}) != reference
    assert commitments.commitment(**base, seed="00") != reference
    with pytest.raises(ValueError, match="salt"):
        commitments.commitment(**{**base, "salt": "AB" * 32})
