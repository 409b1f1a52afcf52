"""DSSE envelopes: PAE, round trips, every kind of tampering, strict input, and openssl as a second verifier."""

import base64
import json
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from timestamps import dsse

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
TYPE = dsse.INTOTO_PAYLOAD_TYPE


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def keys(key: ec.EllipticCurvePrivateKey) -> dict[str, ec.EllipticCurvePublicKey]:
    return {dsse.key_id(key.public_key()): key.public_key()}


@pytest.fixture(scope="module")
def payload() -> bytes:
    stmt = dsse.statement(
        subjects=[("suspect", "ab" * 32), ("claimant", "cd" * 32)],
        predicate_type=dsse.VERDICT_PREDICATE_TYPE,
        predicate={"outcome": "ownership_confirmed", "alpha": 0.001, "note": "ünïcode"},
    )
    return dsse.statement_bytes(stmt)


@pytest.fixture(scope="module")
def envelope(payload: bytes, key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    return dsse.sign_envelope(payload, payload_type=TYPE, private_key=key, keyid=dsse.key_id(key.public_key()))


def _error(envelope: Any, keys: Any, **kwargs: Any) -> str:
    with pytest.raises(dsse.DsseError) as caught:
        dsse.verify_envelope(envelope, keys, **kwargs)
    return str(caught.value)


def _with_signature(envelope: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**envelope, "signatures": [{**envelope["signatures"][0], **changes}]}


# --- PAE and statements ---------------------------------------------------------------------


def test_pae_matches_the_dsse_specification_example() -> None:
    # From the DSSE protocol document: "DSSEv1 29 http://example.com/HelloWorld 11 hello world".
    assert dsse.pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_pae_counts_bytes_not_characters() -> None:
    assert dsse.pae("tÿpe", b"") == "DSSEv1 5 tÿpe 0 ".encode()


def test_a_statement_is_in_toto_v1_with_sha256_subjects(payload: bytes) -> None:
    stmt = json.loads(payload)

    assert stmt["_type"] == "https://in-toto.io/Statement/v1"
    assert stmt["predicateType"] == "https://modelcourt.dev/verdict/v1"
    assert stmt["subject"] == [
        {"name": "suspect", "digest": {"sha256": "ab" * 32}},
        {"name": "claimant", "digest": {"sha256": "cd" * 32}},
    ]


def test_statement_bytes_are_canonical(payload: bytes) -> None:
    text = payload.decode()

    assert " " not in text.replace("ünïcode", "")
    assert "ünïcode" in text  # UTF-8, not \\u escapes
    assert dsse.statement_bytes(json.loads(payload)) == payload
    assert list(json.loads(payload)) == sorted(json.loads(payload))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "\ud800", object()])
def test_statement_bytes_refuse_what_json_cannot_hold_exactly(bad: object) -> None:
    stmt = dsse.statement(subjects=[("s", "00" * 32)], predicate_type="t", predicate={"x": bad})

    with pytest.raises(dsse.DsseError, match="not canonical JSON"):
        dsse.statement_bytes(stmt)


@pytest.mark.parametrize(
    "subjects", [[], [("s", "AB" * 32)], [("s", "ab" * 31)], [("s", "zz" * 32)], [("s", "ab" * 32)] * 65]
)
def test_statement_refuses_bad_subjects(subjects: list[tuple[str, str]]) -> None:
    with pytest.raises(dsse.DsseError):
        dsse.statement(subjects=subjects, predicate_type="t", predicate={})


# --- round trips and tampering --------------------------------------------------------------


def test_round_trip(envelope: dict[str, Any], keys: dict[str, ec.EllipticCurvePublicKey], payload: bytes) -> None:
    assert dsse.verify_envelope(envelope, keys, payload_type=TYPE) == payload
    assert dsse.open_envelope(envelope, keys) == (payload, tuple(keys))


def test_round_trip_through_the_json_file(
    envelope: dict[str, Any], keys: dict[str, ec.EllipticCurvePublicKey], payload: bytes
) -> None:
    data = dsse.envelope_bytes(envelope)

    assert data.endswith(b"}\n")
    assert dsse.verify_envelope(dsse.parse_envelope(data), keys) == payload


def test_random_payloads_and_types_round_trip(key: ec.EllipticCurvePrivateKey) -> None:
    rng = random.Random(1)
    public = {dsse.key_id(key.public_key()): key.public_key()}
    for _ in range(30):
        payload = rng.randbytes(rng.randrange(0, 300))
        kind = "".join(rng.choice("abcdefé/+.-") for _ in range(rng.randrange(1, 40)))
        envelope = dsse.sign_envelope(payload, payload_type=kind, private_key=key, keyid="k" * rng.randrange(0, 5))
        envelope["signatures"][0]["keyid"] = dsse.key_id(key.public_key())

        assert dsse.verify_envelope(envelope, public, payload_type=kind) == payload


def test_a_changed_payload_fails(envelope: dict[str, Any], keys: dict[str, ec.EllipticCurvePublicKey]) -> None:
    raw = bytearray(base64.b64decode(envelope["payload"]))
    raw[len(raw) // 2] ^= 0x01
    tampered = {**envelope, "payload": base64.b64encode(bytes(raw)).decode()}

    assert "does not verify" in _error(tampered, keys)


def test_every_flipped_payload_bit_fails(envelope: dict[str, Any], keys: dict[str, ec.EllipticCurvePublicKey]) -> None:
    raw = base64.b64decode(envelope["payload"])
    for position in random.Random(2).sample(range(len(raw) * 8), 40):
        flipped = bytearray(raw)
        flipped[position // 8] ^= 1 << (position % 8)
        with pytest.raises(dsse.DsseError):
            dsse.verify_envelope({**envelope, "payload": base64.b64encode(bytes(flipped)).decode()}, keys)


def test_a_changed_payload_type_fails(envelope: dict[str, Any], keys: dict[str, ec.EllipticCurvePublicKey]) -> None:
    assert "does not verify" in _error({**envelope, "payloadType": "application/json"}, keys)


def test_an_unexpected_payload_type_is_named(
    envelope: dict[str, Any], keys: dict[str, ec.EllipticCurvePublicKey]
) -> None:
    assert "expected 'application/json'" in _error(envelope, keys, payload_type="application/json")


def test_a_changed_signature_fails(envelope: dict[str, Any], keys: dict[str, ec.EllipticCurvePublicKey]) -> None:
    sig = bytearray(base64.b64decode(envelope["signatures"][0]["sig"]))
    for index in (0, 5, len(sig) // 2, len(sig) - 1):
        flipped = bytearray(sig)
        flipped[index] ^= 0x01
        tampered = _with_signature(envelope, sig=base64.b64encode(bytes(flipped)).decode())
        assert "does not verify" in _error(tampered, keys)


def test_a_signature_by_another_key_under_a_trusted_keyid_fails(
    envelope: dict[str, Any], keys: dict[str, ec.EllipticCurvePublicKey], payload: bytes
) -> None:
    impostor = ec.generate_private_key(ec.SECP256R1())
    forged = dsse.sign_envelope(payload, payload_type=TYPE, private_key=impostor, keyid=next(iter(keys)))

    assert "does not verify" in _error(forged, keys)


def test_an_unknown_key_fails(envelope: dict[str, Any]) -> None:
    stranger = ec.generate_private_key(ec.SECP256R1()).public_key()

    message = _error(envelope, {dsse.key_id(stranger): stranger})

    assert "no signature by a trusted key" in message
    assert envelope["signatures"][0]["keyid"][:16] in message


def test_no_keys_at_all_fails(envelope: dict[str, Any]) -> None:
    assert "trusted none" in _error(envelope, {})


def test_a_signature_without_keyid_is_tried_against_every_key(
    envelope: dict[str, Any], keys: dict[str, ec.EllipticCurvePublicKey], payload: bytes
) -> None:
    stranger = ec.generate_private_key(ec.SECP256R1()).public_key()
    bare = {**envelope, "signatures": [{"sig": envelope["signatures"][0]["sig"]}]}

    assert dsse.verify_envelope(bare, {dsse.key_id(stranger): stranger, **keys}) == payload


def test_unknown_signers_beside_a_good_signature_are_ignored(
    envelope: dict[str, Any], keys: dict[str, ec.EllipticCurvePublicKey], payload: bytes
) -> None:
    extra = {"keyid": "someone-else", "sig": base64.b64encode(b"\x30\x00").decode()}
    cosigned = {**envelope, "signatures": [extra, *envelope["signatures"]]}

    assert dsse.verify_envelope(cosigned, keys) == payload


def test_url_safe_and_unpadded_base64_are_accepted(
    envelope: dict[str, Any], keys: dict[str, ec.EllipticCurvePublicKey], payload: bytes
) -> None:
    url = base64.urlsafe_b64encode(payload).decode().rstrip("=")

    assert dsse.verify_envelope({**envelope, "payload": url}, keys) == payload


# --- strict input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda e: [], "not a JSON object"),
        (lambda e: {k: v for k, v in e.items() if k != "payloadType"}, "exactly the fields"),
        (lambda e: {**e, "extra": 1}, "exactly the fields"),
        (lambda e: {**e, "payload": 5}, "not a base64 string"),
        (lambda e: {**e, "payload": e["payload"] + "*"}, "not base64"),
        (lambda e: {**e, "payload": " " + e["payload"]}, "not base64"),
        (lambda e: {**e, "payload": e["payload"].rstrip("=") + "="}, "padding"),
        (lambda e: {**e, "payload": "QR=="}, "not canonical"),
        (lambda e: {**e, "payload": "A" * (8 * 1024 * 1024)}, "larger than"),
        (lambda e: {**e, "payloadType": ""}, "payload type"),
        (lambda e: {**e, "payloadType": "a\nb"}, "unprintable"),
        (lambda e: {**e, "payloadType": "x" * 300}, "payload type"),
        (lambda e: {**e, "signatures": []}, "1 to 16 signatures"),
        (lambda e: {**e, "signatures": e["signatures"] * 17}, "1 to 16 signatures"),
        (lambda e: {**e, "signatures": {"sig": "x"}}, "1 to 16 signatures"),
        (lambda e: {**e, "signatures": ["sig"]}, "signature 1 is not an object"),
        (lambda e: _with_signature(e, extra=1), "signature 1 is not an object"),
        (lambda e: {**e, "signatures": [{"keyid": "k"}]}, "signature 1 is not an object"),
        (lambda e: _with_signature(e, keyid=7), "keyid"),
        (lambda e: _with_signature(e, keyid="k" * 300), "keyid"),
        (lambda e: _with_signature(e, sig=base64.b64encode(bytes(600)).decode()), "larger than"),
        (lambda e: _with_signature(e, sig=None), "not a base64 string"),
    ],
)
def test_malformed_envelopes_are_refused_with_a_reason(
    envelope: dict[str, Any], keys: dict[str, ec.EllipticCurvePublicKey], change: Any, reason: str
) -> None:
    assert reason in _error(change(envelope), keys)


def test_untrusted_keys_of_the_wrong_type_are_refused(envelope: dict[str, Any]) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()

    assert "not an ECDSA P-256 public key" in _error(envelope, {"k": p384})


@pytest.mark.parametrize(
    "data",
    [b"", b"[]", b"{", b'{"payload": 1, "payload": 2}', b'{"x": NaN}', b"\xff\xfe", b"[" * 100_000],
)
def test_parse_envelope_refuses_bad_json(data: bytes) -> None:
    with pytest.raises(dsse.DsseError):
        dsse.parse_envelope(data)


def test_signing_refuses_other_curves(payload: bytes) -> None:
    with pytest.raises(dsse.DsseError, match="P-256"):
        dsse.sign_envelope(payload, payload_type=TYPE, private_key=ec.generate_private_key(ec.SECP384R1()), keyid="k")


def test_garbage_never_escapes_as_another_exception(
    envelope: dict[str, Any], keys: dict[str, ec.EllipticCurvePublicKey]
) -> None:
    rng = random.Random(3)
    values: list[Any] = [None, 0, -1, 1.5, True, "", "=", "====", "A", [], {}, [{}], {"sig": ""}, "\x00", "é"]
    for _ in range(300):
        broken = dict(envelope)
        broken[rng.choice(["payload", "payloadType", "signatures"])] = rng.choice(values)
        try:
            dsse.verify_envelope(broken, keys)
        except dsse.DsseError:
            continue


# --- openssl --------------------------------------------------------------------------------


def _openssl_verify(
    tmp_path: Path, public_pem: bytes, signature: bytes, message: bytes
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "pub.pem").write_bytes(public_pem)
    (tmp_path / "sig.der").write_bytes(signature)
    (tmp_path / "pae.bin").write_bytes(message)
    return subprocess.run(
        ["openssl", "dgst", "-sha256", "-verify", "pub.pem", "-signature", "sig.der", "pae.bin"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )


@needs_openssl
def test_openssl_verifies_the_signature_over_the_pae(
    envelope: dict[str, Any], key: ec.EllipticCurvePrivateKey, tmp_path: Path
) -> None:
    public_pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    message = dsse.pae(envelope["payloadType"], base64.b64decode(envelope["payload"]))
    signature = base64.b64decode(envelope["signatures"][0]["sig"])

    result = _openssl_verify(tmp_path, public_pem, signature, message)

    assert result.returncode == 0, result.stderr
    assert "Verified OK" in result.stdout


@needs_openssl
def test_openssl_rejects_a_flipped_byte(
    envelope: dict[str, Any], key: ec.EllipticCurvePrivateKey, tmp_path: Path
) -> None:
    public_pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    message = bytearray(dsse.pae(envelope["payloadType"], base64.b64decode(envelope["payload"])))
    message[-1] ^= 0x01

    result = _openssl_verify(tmp_path, public_pem, base64.b64decode(envelope["signatures"][0]["sig"]), bytes(message))

    assert result.returncode != 0
    assert "Verification failure" in result.stdout + result.stderr
