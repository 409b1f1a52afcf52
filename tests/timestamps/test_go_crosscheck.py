"""Go's sumdb/note and sumdb/tlog accept our checkpoints and proofs, and refuse tampered ones."""

import base64
import itertools
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.timestamps.gocheck import go_verify, require_go
from timestamps import merkle, note

ORIGIN = "modelcourt.test/log"
# Every size to 20, then powers of two and their neighbours, where proofs change shape.
SIZES = [*range(1, 21), 31, 32, 33, 48, 63, 64, 65, 100, 127, 128, 129, 150, 200, 255, 256, 257, 300, 333, 400]
SIZES += [511, 512, 513, 600, 700, 777, 800, 900, 1000, 1023, 1024]


def _b64(hashes: list[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in hashes]


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    """Checkpoints signed by note.py at every size in SIZES, with proofs between and into them."""
    require_go()
    key = Ed25519PrivateKey.generate()
    store = merkle.MemoryHashStore()
    notes = []
    for size in SIZES:
        store.append_many([b"entry %d" % i for i in range(store.size, size)])
        text = note.checkpoint_text(ORIGIN, size, merkle.tree_hash(size, store.read))
        notes.append(note.sign_note(text, name=ORIGIN, private_key=key))
    inclusion = [
        {
            "index": index,
            "size": size,
            "leaf_b64": base64.b64encode(merkle.leaf_hash(b"entry %d" % index)).decode(),
            "hashes_b64": _b64(merkle.inclusion_proof(index, size, store.read)),
        }
        for size in SIZES
        for index in sorted({0, size // 3, size // 2, size - 1})
    ]
    pairs = [*itertools.pairwise(SIZES), (1, SIZES[-1]), (SIZES[-1], SIZES[-1]), (7, 600), (129, 1023)]
    consistency = [
        {"first": first, "second": second, "hashes_b64": _b64(merkle.consistency_proof(first, second, store.read))}
        for first, second in pairs
    ]
    return {
        "vkey": note.verifier_key(ORIGIN, key.public_key()),
        "notes": notes,
        "inclusion": inclusion,
        "consistency": consistency,
    }


def _tamper(hashes_b64: list[str]) -> list[str]:
    raw = bytearray(base64.b64decode(hashes_b64[-1]))
    raw[0] ^= 1
    return [*hashes_b64[:-1], base64.b64encode(raw).decode()]


def test_go_accepts_every_checkpoint_and_proof(document: dict[str, Any]) -> None:
    result = go_verify(document)

    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(document["notes"]) + len(document["inclusion"]) + len(document["consistency"])
    assert all(line.startswith("ok ") for line in lines)


def test_go_rejects_a_tampered_inclusion_proof(document: dict[str, Any]) -> None:
    proof = next(p for p in document["inclusion"] if p["size"] == 777 and p["index"] == 0)

    result = go_verify({**document, "inclusion": [{**proof, "hashes_b64": _tamper(proof["hashes_b64"])}]})

    assert result.returncode == 1
    assert "FAIL inclusion index=0 size=777" in result.stdout


def test_go_rejects_a_tampered_consistency_proof(document: dict[str, Any]) -> None:
    proof = next(p for p in document["consistency"] if (p["first"], p["second"]) == (129, 1023))

    result = go_verify({**document, "consistency": [{**proof, "hashes_b64": _tamper(proof["hashes_b64"])}]})

    assert result.returncode == 1
    assert "FAIL consistency first=129 second=1023" in result.stdout


def test_go_rejects_a_tampered_checkpoint(document: dict[str, Any]) -> None:
    forged = document["notes"][0].replace("\n1\n", "\n2\n", 1)

    result = go_verify({**document, "notes": [forged], "inclusion": [], "consistency": []})

    assert result.returncode == 1
    assert "FAIL note 0" in result.stdout


def test_go_rejects_a_checkpoint_by_another_key(document: dict[str, Any]) -> None:
    stranger = Ed25519PrivateKey.generate().public_key()

    result = go_verify({**document, "vkey": note.verifier_key(ORIGIN, stranger), "inclusion": [], "consistency": []})

    assert result.returncode == 1
    assert result.stdout.count("FAIL note") == len(document["notes"])
