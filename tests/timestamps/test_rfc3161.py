"""The RFC 3161 issuer and verifier, cross-checked with `openssl ts` and rfc3161-client."""

import hashlib
import random
import shutil
import subprocess
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from asn1crypto import cms, core, tsp  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from rfc3161_client import PKIStatus

from timestamps import pki, rfc3161

POLICY = "1.3.6.1.4.1.55555.1.1"
DATA = b"model weights, say"
DIGEST = hashlib.sha256(DATA).digest()
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


class Tsa(NamedTuple):
    ca: x509.Certificate
    signer: rfc3161.TsaSigner


class _Reply(core.Sequence):  # type: ignore[misc]
    """TimeStampResp as RFC 3161 has it: asn1crypto 1.5 wrongly makes the token mandatory."""

    _fields = [("status", tsp.PKIStatusInfo), ("time_stamp_token", cms.ContentInfo, {"optional": True})]


def _make_tsa(now: datetime, *, tsa_days: int = 365, accuracy: timedelta = timedelta(seconds=1)) -> Tsa:
    ca_key = pki.generate_p256_key()
    ca = pki.make_ca_certificate(key=ca_key, common_name="Test Root CA", now=now)
    key = pki.generate_p256_key()
    leaf = pki.make_tsa_certificate(
        ca_key=ca_key, ca_cert=ca, public_key=key.public_key(), common_name="Test TSA", valid_days=tsa_days, now=now
    )
    signer = rfc3161.TsaSigner(private_key=key, certificate=leaf, chain=(ca,), policy_oid=POLICY, accuracy=accuracy)
    return Tsa(ca, signer)


@pytest.fixture(scope="module")
def tsa() -> Tsa:
    return _make_tsa(datetime.now(UTC))


@pytest.fixture(scope="module")
def other_tsa() -> Tsa:
    return _make_tsa(datetime.now(UTC))


def _now() -> datetime:
    return datetime.now(UTC)


def _grant(tsa: Tsa, query: bytes, *, serial: int = 1, gen_time: datetime | None = None) -> rfc3161.IssueResult:
    result = rfc3161.issue_reply(query, signer=tsa.signer, serial=serial, gen_time=gen_time or _now())
    assert result.status == PKIStatus.GRANTED, result.fail_info
    assert result.token_der is not None
    return result


def _token(tsa: Tsa, query: bytes | None = None, **kwargs: Any) -> bytes:
    token = _grant(tsa, query or rfc3161.build_query(DIGEST), **kwargs).token_der
    assert token is not None
    return token


def _signed_data(token: bytes) -> Any:
    return cms.ContentInfo.load(token)["content"]


def _tst_info(token: bytes) -> Any:
    return _signed_data(token)["encap_content_info"]["content"].parsed


def _openssl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", "ts", *args], cwd=cwd, capture_output=True, text=True, check=False)


@pytest.fixture
def workdir(tmp_path: Path, tsa: Tsa) -> Path:
    """A folder with the data file F, the CA as ca.pem and the TSA certificate as tsa.pem."""
    (tmp_path / "F").write_bytes(DATA)
    (tmp_path / "ca.pem").write_bytes(tsa.ca.public_bytes(Encoding.PEM))
    (tmp_path / "tsa.pem").write_bytes(tsa.signer.certificate.public_bytes(Encoding.PEM))
    return tmp_path


def _openssl_query(workdir: Path, *options: str) -> bytes:
    made = _openssl("-query", "-data", "F", *options, "-out", "q.tsq", cwd=workdir)
    assert made.returncode == 0, made.stderr
    return (workdir / "q.tsq").read_bytes()


# -- Granted tokens, as openssl sees them


@needs_openssl
@pytest.mark.parametrize("hash_option", ["-sha256", "-sha384", "-sha512"])
def test_openssl_queries_are_granted_and_the_replies_verify_against_the_query(
    tsa: Tsa, workdir: Path, hash_option: str
) -> None:
    # given an openssl query asking for the certificate
    query = _openssl_query(workdir, hash_option, "-cert")

    # when we answer it
    (workdir / "r.tsr").write_bytes(_grant(tsa, query).reply_der)

    # then openssl verifies the reply against the query and our CA
    verified = _openssl("-verify", "-in", "r.tsr", "-queryfile", "q.tsq", "-CAfile", "ca.pem", cwd=workdir)
    assert "Verification: OK" in verified.stdout, verified.stderr


@needs_openssl
def test_openssl_verifies_the_reply_against_the_data(tsa: Tsa, workdir: Path) -> None:
    (workdir / "r.tsr").write_bytes(_grant(tsa, _openssl_query(workdir, "-sha256", "-cert")).reply_der)

    verified = _openssl("-verify", "-in", "r.tsr", "-data", "F", "-CAfile", "ca.pem", cwd=workdir)

    assert "Verification: OK" in verified.stdout, verified.stderr


@needs_openssl
def test_openssl_refuses_the_reply_for_other_data(tsa: Tsa, workdir: Path) -> None:
    (workdir / "r.tsr").write_bytes(_grant(tsa, _openssl_query(workdir, "-sha256", "-cert")).reply_der)
    (workdir / "G").write_bytes(DATA + b"!")

    refused = _openssl("-verify", "-in", "r.tsr", "-data", "G", "-CAfile", "ca.pem", cwd=workdir)

    assert refused.returncode != 0
    assert "Verification: OK" not in refused.stdout


@needs_openssl
def test_openssl_refuses_the_reply_under_another_ca(tsa: Tsa, other_tsa: Tsa, workdir: Path) -> None:
    (workdir / "r.tsr").write_bytes(_grant(tsa, _openssl_query(workdir, "-sha256", "-cert")).reply_der)
    (workdir / "other.pem").write_bytes(other_tsa.ca.public_bytes(Encoding.PEM))

    refused = _openssl("-verify", "-in", "r.tsr", "-queryfile", "q.tsq", "-CAfile", "other.pem", cwd=workdir)

    assert refused.returncode != 0
    assert "Verification: OK" not in refused.stdout


@needs_openssl
def test_openssl_verifies_a_token_without_certificates_given_the_tsa_certificate(tsa: Tsa, workdir: Path) -> None:
    # given a query without -cert: the token carries no certificate
    (workdir / "r.tsr").write_bytes(_grant(tsa, _openssl_query(workdir, "-sha256")).reply_der)

    # when openssl is handed the TSA certificate
    verified = _openssl(
        "-verify", "-in", "r.tsr", "-queryfile", "q.tsq", "-CAfile", "ca.pem", "-untrusted", "tsa.pem", cwd=workdir
    )

    # then it verifies
    assert "Verification: OK" in verified.stdout, verified.stderr


@needs_openssl
def test_openssl_verifies_after_the_tsa_certificate_expired_at_the_stamping_time(tmp_path: Path) -> None:
    # given a token stamped 10 days ago by a TSA whose certificate lived 2 days
    then = _now() - timedelta(days=10)
    old = _make_tsa(then, tsa_days=2)
    query = rfc3161.build_query(DIGEST)
    (tmp_path / "r.tsr").write_bytes(_grant(old, query, gen_time=then + timedelta(hours=1)).reply_der)
    (tmp_path / "q.tsq").write_bytes(query)
    (tmp_path / "ca.pem").write_bytes(old.ca.public_bytes(Encoding.PEM))
    verify = ["-verify", "-in", "r.tsr", "-queryfile", "q.tsq", "-CAfile", "ca.pem"]

    # then openssl refuses it today but accepts it at its stamping time
    assert "Verification: OK" not in _openssl(*verify, cwd=tmp_path).stdout
    at_stamping = _openssl(*verify, "-attime", str(int((then + timedelta(hours=1)).timestamp())), cwd=tmp_path)
    assert "Verification: OK" in at_stamping.stdout, at_stamping.stderr


@needs_openssl
def test_openssl_parses_our_queries(workdir: Path) -> None:
    (workdir / "q.tsq").write_bytes(rfc3161.build_query(DIGEST, nonce=0xBEEF, policy_oid=POLICY))

    shown = _openssl("-query", "-in", "q.tsq", "-text", cwd=workdir)

    assert shown.returncode == 0, shown.stderr
    assert "Hash Algorithm: sha256" in shown.stdout
    assert f"Policy OID: {POLICY}" in shown.stdout
    assert "Nonce: 0xBEEF" in shown.stdout
    assert "Certificate required: yes" in shown.stdout


# -- What a granted token holds


def test_the_reply_carries_the_token_byte_for_byte(tsa: Tsa) -> None:
    result = _grant(tsa, rfc3161.build_query(DIGEST))

    reply = _Reply.load(result.reply_der)
    assert reply["status"]["status"].native == "granted"
    assert reply["time_stamp_token"].dump() == result.token_der
    assert result.fail_info is None


def test_token_info_echoes_the_query(tsa: Tsa) -> None:
    token = _token(tsa, rfc3161.build_query(DIGEST, nonce=2**70 + 3), serial=77)

    info = rfc3161.parse_token(token)

    assert info.message_imprint == DIGEST
    assert info.hash_algorithm == "sha256"
    assert info.nonce == 2**70 + 3
    assert info.serial == 77
    assert info.policy_oid == POLICY
    assert info.accuracy == timedelta(seconds=1)


def test_without_a_nonce_none_is_echoed(tsa: Tsa) -> None:
    assert rfc3161.parse_token(_token(tsa, rfc3161.build_query(DIGEST))).nonce is None


@pytest.mark.parametrize("serial", [0, 1, 2**63, 2**159 + 1])
def test_serials_are_preserved(tsa: Tsa, serial: int) -> None:
    token = _token(tsa, serial=serial)

    assert rfc3161.parse_token(token).serial == serial
    assert _tst_info(token)["serial_number"].native == serial


def test_negative_serials_are_a_caller_bug(tsa: Tsa) -> None:
    with pytest.raises(ValueError, match="non-negative"):
        rfc3161.issue_reply(rfc3161.build_query(DIGEST), signer=tsa.signer, serial=-1, gen_time=_now())


def test_tst_info_fields(tsa: Tsa) -> None:
    tst = _tst_info(_token(tsa, rfc3161.build_query(DIGEST, nonce=9)))

    assert tst["version"].native == "v1"
    assert tst["policy"].dotted == POLICY
    assert tst["accuracy"].native == {"seconds": 1, "millis": None, "micros": None}
    assert tst["ordering"].native is False
    assert tst["nonce"].native == 9


@pytest.mark.parametrize(
    ("accuracy", "fields"),
    [
        (timedelta(milliseconds=500), {"seconds": None, "millis": 500, "micros": None}),
        (timedelta(seconds=2, microseconds=1001), {"seconds": 2, "millis": 1, "micros": 1}),
    ],
)
def test_accuracy_below_a_second(accuracy: timedelta, fields: dict[str, int | None]) -> None:
    token = _token(_make_tsa(_now(), accuracy=accuracy))

    assert _tst_info(token)["accuracy"].native == fields
    assert rfc3161.parse_token(token).accuracy == accuracy


def test_zero_accuracy_is_left_out() -> None:
    token = _token(_make_tsa(_now(), accuracy=timedelta(0)))

    assert isinstance(_tst_info(token)["accuracy"], core.Void)
    assert rfc3161.parse_token(token).accuracy is None


def test_gen_time_is_utc_in_whole_seconds(tsa: Tsa) -> None:
    stamped = datetime(2030, 1, 2, 5, 4, 5, 999_999, tzinfo=timezone(timedelta(hours=2)))

    info = rfc3161.parse_token(_token(tsa, gen_time=stamped))

    assert info.gen_time == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert info.gen_time.utcoffset() == timedelta(0)


def test_naive_gen_time_is_a_caller_bug(tsa: Tsa) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        rfc3161.issue_reply(rfc3161.build_query(DIGEST), signer=tsa.signer, serial=1, gen_time=datetime(2030, 1, 1))  # noqa: DTZ001


def test_cert_req_puts_the_certificate_and_its_chain_in_the_token(tsa: Tsa) -> None:
    certificates = _signed_data(_token(tsa, rfc3161.build_query(DIGEST, cert_req=True)))["certificates"]

    ders = {c.chosen.dump() for c in certificates}
    assert ders == {tsa.signer.certificate.public_bytes(Encoding.DER), tsa.ca.public_bytes(Encoding.DER)}


def test_without_cert_req_the_token_has_no_certificates(tsa: Tsa) -> None:
    signed_data = _signed_data(_token(tsa, rfc3161.build_query(DIGEST, cert_req=False)))

    assert isinstance(signed_data["certificates"], core.Void)


def test_signed_attributes_bind_content_type_digest_and_signing_certificate(tsa: Tsa) -> None:
    token = _token(tsa)
    signed_data = _signed_data(token)
    signer_info = signed_data["signer_infos"][0]
    attrs = {a["type"].native: a["values"][0] for a in signer_info["signed_attrs"]}
    leaf_der = tsa.signer.certificate.public_bytes(Encoding.DER)

    assert signed_data["encap_content_info"]["content_type"].native == "tst_info"
    assert attrs["content_type"].native == "tst_info"
    assert attrs["message_digest"].native == hashlib.sha256(_tst_info(token).dump()).digest()
    ess_cert_id = attrs["signing_certificate_v2"]["certs"][0]
    assert ess_cert_id["cert_hash"].native == hashlib.sha256(leaf_der).digest()
    assert ess_cert_id["hash_algorithm"]["algorithm"].native == "sha256"
    assert ess_cert_id["issuer_serial"]["serial_number"].native == tsa.signer.certificate.serial_number
    assert ess_cert_id["issuer_serial"]["issuer"][0].chosen.native == {"common_name": "Test Root CA"}
    assert signer_info["signature_algorithm"]["algorithm"].native == "sha256_ecdsa"


def test_the_signer_must_match_its_certificate(tsa: Tsa) -> None:
    with pytest.raises(ValueError, match="not for the TSA private key"):
        rfc3161.TsaSigner(
            private_key=pki.generate_p256_key(),
            certificate=tsa.signer.certificate,
            chain=(tsa.ca,),
            policy_oid=POLICY,
            accuracy=timedelta(seconds=1),
        )


def test_the_signer_key_must_be_p256(tsa: Tsa) -> None:
    with pytest.raises(ValueError, match="P-256"):
        rfc3161.TsaSigner(
            private_key=ec.generate_private_key(ec.SECP384R1()),
            certificate=tsa.signer.certificate,
            chain=(tsa.ca,),
            policy_oid=POLICY,
            accuracy=timedelta(seconds=1),
        )


# -- Bad queries get rejection replies


def _query(**changes: Any) -> bytes:
    """A DER TimeStampReq for DIGEST with fields replaced (asn1crypto values)."""
    fields: dict[str, Any] = {
        "version": "v1",
        "message_imprint": {"hash_algorithm": {"algorithm": "sha256"}, "hashed_message": DIGEST},
        "cert_req": True,
    }
    fields.update(changes)
    der: bytes = tsp.TimeStampReq(fields).dump()
    return der


def _imprint(algorithm: str, digest: bytes) -> dict[str, Any]:
    return {"hash_algorithm": {"algorithm": algorithm}, "hashed_message": digest}


def _der(tag: int, *parts: bytes) -> bytes:
    body = b"".join(parts)
    assert len(body) < 0x80
    return bytes([tag, len(body)]) + body


def _raw_query(*hash_parameters: bytes) -> bytes:
    """A sha256 TimeStampReq by hand: asn1crypto writes only NULL parameters for SHA-2."""
    sha256 = _der(0x06, bytes.fromhex("608648016503040201"))
    imprint = _der(0x30, _der(0x30, sha256, *hash_parameters), _der(0x04, DIGEST))
    return _der(0x30, _der(0x02, b"\x01"), imprint)


BAD_QUERIES = {
    "empty": (b"", "badDataFormat"),
    "garbage": (b"garbage", "badDataFormat"),
    "random bytes": (random.Random(3161).randbytes(200), "badDataFormat"),
    "short sequence": (b"\x30\x03\x02\x01", "badDataFormat"),
    "truncated": (rfc3161.build_query(DIGEST, nonce=5)[:-4], "badDataFormat"),
    "trailing bytes": (rfc3161.build_query(DIGEST) + b"\x00", "badDataFormat"),
    "a certificate instead": (b"\x30\x82\x01\x00" + b"\x00" * 256, "badDataFormat"),
    "version 2": (_query(version=2), "badRequest"),
    "sha1": (_query(message_imprint=_imprint("sha1", hashlib.sha1(DATA).digest())), "badAlg"),  # noqa: S324
    "md5": (_query(message_imprint=_imprint("md5", hashlib.md5(DATA).digest())), "badAlg"),  # noqa: S324
    "unknown algorithm": (_query(message_imprint=_imprint("1.2.3.4.5", DIGEST)), "badAlg"),
    # OpenSSL says badAlg here; asn1crypto cannot parse the query at all, and the request is refused all the same.
    "hash parameters": (_raw_query(_der(0x02, b"\x01")), "badDataFormat"),
    "short digest": (_query(message_imprint=_imprint("sha256", DIGEST[:31])), "badDataFormat"),
    "long digest": (_query(message_imprint=_imprint("sha384", DIGEST)), "badDataFormat"),
    "other policy": (_query(req_policy="1.2.3.4"), "unacceptedPolicy"),
    "extension": (
        _query(extensions=[{"extn_id": "1.2.3.4", "critical": False, "extn_value": b"\x05\x00"}]),
        "unacceptedExtension",
    ),
    "negative nonce": (_query(nonce=-5), "badDataFormat"),
}

_ASN1CRYPTO_NAMES = {
    "badAlg": "bad_alg",
    "badRequest": "bad_request",
    "badDataFormat": "bad_data_format",
    "unacceptedPolicy": "unaccepted_policy",
    "unacceptedExtension": "unaccepted_extensions",
}
_OPENSSL_TEXTS = {
    "badAlg": "unrecognized or unsupported algorithm identifier",
    "badRequest": "transaction not permitted or supported",
    "badDataFormat": "the data submitted has the wrong format",
    "unacceptedPolicy": "the requested TSA policy is not supported by the TSA",
    "unacceptedExtension": "the requested extension is not supported by the TSA",
}


@pytest.mark.parametrize(("query", "failure"), list(BAD_QUERIES.values()), ids=list(BAD_QUERIES))
def test_bad_queries_get_a_rejection_with_the_right_failure_info(tsa: Tsa, query: bytes, failure: str) -> None:
    result = rfc3161.issue_reply(query, signer=tsa.signer, serial=1, gen_time=_now())

    assert result.status is PKIStatus.REJECTION
    assert int(result.status) == 2
    assert result.fail_info == failure
    assert result.token_der is None
    status = _Reply.load(result.reply_der)["status"]
    assert status["status"].native == "rejection"
    assert status["fail_info"].native == {_ASN1CRYPTO_NAMES[failure]}
    assert status["status_string"].native


@needs_openssl
@pytest.mark.parametrize(("query", "failure"), list(BAD_QUERIES.values()), ids=list(BAD_QUERIES))
def test_openssl_reads_our_rejections(tsa: Tsa, tmp_path: Path, query: bytes, failure: str) -> None:
    (tmp_path / "r.tsr").write_bytes(rfc3161.issue_reply(query, signer=tsa.signer, serial=1, gen_time=_now()).reply_der)

    shown = _openssl("-reply", "-in", "r.tsr", "-text", cwd=tmp_path)

    assert shown.returncode == 0, shown.stderr
    assert "Status: Rejected." in shown.stdout
    assert f"Failure info: {_OPENSSL_TEXTS[failure]}" in shown.stdout
    assert "TST info:\nNot included." in shown.stdout


def test_a_query_for_our_policy_is_granted(tsa: Tsa) -> None:
    token = _token(tsa, rfc3161.build_query(DIGEST, policy_oid=POLICY))

    assert rfc3161.parse_token(token).policy_oid == POLICY


@pytest.mark.parametrize("hash_parameters", [(), (b"\x05\x00",)], ids=["absent", "null"])
def test_the_imprint_is_copied_as_sent(tsa: Tsa, hash_parameters: tuple[bytes, ...]) -> None:
    query = _raw_query(*hash_parameters)

    imprint = _tst_info(_token(tsa, query))["message_imprint"]

    assert imprint.dump() == tsp.TimeStampReq.load(query)["message_imprint"].dump()


# -- Verification


def test_a_granted_token_verifies(tsa: Tsa) -> None:
    token = _token(tsa, rfc3161.build_query(DIGEST, nonce=11), serial=5)

    info = rfc3161.verify_token(token, roots=[tsa.ca], digest=DIGEST, nonce=11)

    assert (info.serial, info.message_imprint, info.nonce, info.policy_oid) == (5, DIGEST, 11, POLICY)


def test_a_token_verifies_against_the_data(tsa: Tsa) -> None:
    assert rfc3161.verify_token(_token(tsa), roots=[tsa.ca], data=DATA).message_imprint == DIGEST


@pytest.mark.parametrize("hash_name", ["sha384", "sha512"])
def test_longer_hashes_verify(tsa: Tsa, hash_name: str) -> None:
    digest = hashlib.new(hash_name, DATA).digest()

    token = _token(tsa, rfc3161.build_query(digest, hash_name=hash_name))

    assert rfc3161.verify_token(token, roots=[tsa.ca], digest=digest, data=DATA).hash_algorithm == hash_name


def test_without_digest_or_data_only_signature_and_chain_are_checked(tsa: Tsa) -> None:
    assert rfc3161.verify_token(_token(tsa), roots=[tsa.ca]).message_imprint == DIGEST


def test_a_token_without_certificates_verifies_given_the_tsa_certificate(tsa: Tsa) -> None:
    token = _token(tsa, rfc3161.build_query(DIGEST, cert_req=False))

    rfc3161.verify_token(token, roots=[tsa.ca], digest=DIGEST, leaf=tsa.signer.certificate)

    with pytest.raises(rfc3161.TokenVerificationError):
        rfc3161.verify_token(token, roots=[tsa.ca], digest=DIGEST)


def test_a_token_with_certificates_also_verifies_given_the_tsa_certificate(tsa: Tsa) -> None:
    rfc3161.verify_token(_token(tsa), roots=[tsa.ca], digest=DIGEST, leaf=tsa.signer.certificate)


def test_a_token_verifies_after_the_tsa_certificate_expired() -> None:
    then = _now() - timedelta(days=10)
    old = _make_tsa(then, tsa_days=2)

    token = _token(old, gen_time=then + timedelta(hours=1))

    assert rfc3161.verify_token(token, roots=[old.ca], digest=DIGEST).gen_time < _now() - timedelta(days=9)


def test_a_token_stamped_outside_the_certificate_validity_is_refused() -> None:
    then = _now() - timedelta(days=10)
    old = _make_tsa(then, tsa_days=2)

    token = _token(old, gen_time=then + timedelta(days=3))

    with pytest.raises(rfc3161.TokenVerificationError):
        rfc3161.verify_token(token, roots=[old.ca], digest=DIGEST)


def test_wrong_digest_is_refused(tsa: Tsa) -> None:
    with pytest.raises(rfc3161.TokenVerificationError):
        rfc3161.verify_token(_token(tsa), roots=[tsa.ca], digest=hashlib.sha256(b"other").digest())


def test_wrong_data_is_refused(tsa: Tsa) -> None:
    with pytest.raises(rfc3161.TokenVerificationError, match="other data"):
        rfc3161.verify_token(_token(tsa), roots=[tsa.ca], data=b"other")


def test_data_and_digest_must_agree(tsa: Tsa) -> None:
    with pytest.raises(rfc3161.TokenVerificationError):
        rfc3161.verify_token(_token(tsa), roots=[tsa.ca], digest=DIGEST, data=b"other")


def test_wrong_root_is_refused(tsa: Tsa, other_tsa: Tsa) -> None:
    with pytest.raises(rfc3161.TokenVerificationError):
        rfc3161.verify_token(_token(tsa), roots=[other_tsa.ca], digest=DIGEST)


def test_wrong_root_is_refused_even_when_the_tsa_certificate_is_given(tsa: Tsa, other_tsa: Tsa) -> None:
    # The leaf goes into OpenSSL's trust store beside the roots: it must still chain to one of them.
    token = _token(tsa, rfc3161.build_query(DIGEST, cert_req=False))

    with pytest.raises(rfc3161.TokenVerificationError):
        rfc3161.verify_token(token, roots=[other_tsa.ca], digest=DIGEST, leaf=tsa.signer.certificate)


def test_another_tsa_certificate_is_refused(tsa: Tsa, other_tsa: Tsa) -> None:
    token = _token(tsa, rfc3161.build_query(DIGEST, cert_req=False))

    with pytest.raises(rfc3161.TokenVerificationError):
        rfc3161.verify_token(token, roots=[tsa.ca, other_tsa.ca], digest=DIGEST, leaf=other_tsa.signer.certificate)


def test_no_roots_is_refused(tsa: Tsa) -> None:
    with pytest.raises(rfc3161.TokenVerificationError, match="no trusted root"):
        rfc3161.verify_token(_token(tsa), roots=[], digest=DIGEST)


def test_wrong_nonce_is_refused(tsa: Tsa) -> None:
    token = _token(tsa, rfc3161.build_query(DIGEST, nonce=1))

    with pytest.raises(rfc3161.TokenVerificationError, match="Nonce"):
        rfc3161.verify_token(token, roots=[tsa.ca], digest=DIGEST, nonce=2)


def test_a_missing_nonce_is_refused_when_one_is_expected(tsa: Tsa) -> None:
    with pytest.raises(rfc3161.TokenVerificationError):
        rfc3161.verify_token(_token(tsa), roots=[tsa.ca], digest=DIGEST, nonce=1)


def _flip(token: bytes, at: int) -> bytes:
    return token[:at] + bytes([token[at] ^ 0x01]) + token[at + 1 :]


def test_a_changed_byte_anywhere_in_the_stamped_content_is_refused(tsa: Tsa) -> None:
    # given a token and the offsets of its TSTInfo inside it
    token = _token(tsa, rfc3161.build_query(DIGEST, nonce=3))
    tst_der = _tst_info(token).dump()
    start = token.index(tst_der)

    # then flipping any bit of any TSTInfo byte (past its header) breaks verification
    for at in range(start + 2, start + len(tst_der)):
        with pytest.raises(rfc3161.TokenVerificationError):
            rfc3161.verify_token(_flip(token, at), roots=[tsa.ca], digest=DIGEST, nonce=3)


def test_a_changed_signature_is_refused(tsa: Tsa) -> None:
    token = _token(tsa)

    with pytest.raises(rfc3161.TokenVerificationError):
        rfc3161.verify_token(_flip(token, len(token) - 1), roots=[tsa.ca], digest=DIGEST)


def test_a_changed_signed_attribute_is_refused(tsa: Tsa) -> None:
    token = _token(tsa)
    signed_attrs = _signed_data(token)["signer_infos"][0]["signed_attrs"].contents
    at = token.index(signed_attrs) + len(signed_attrs) // 2

    with pytest.raises(rfc3161.TokenVerificationError):
        rfc3161.verify_token(_flip(token, at), roots=[tsa.ca], digest=DIGEST)


@pytest.mark.parametrize("token", [b"", b"garbage", b"\x30\x00"], ids=["empty", "garbage", "empty sequence"])
def test_malformed_tokens_are_refused(tsa: Tsa, token: bytes) -> None:
    with pytest.raises(rfc3161.TokenVerificationError):
        rfc3161.verify_token(token, roots=[tsa.ca], digest=DIGEST)


def test_a_signing_certificate_attribute_naming_another_certificate_is_refused(
    tsa: Tsa, other_tsa: Tsa, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a token whose ESS attribute names another TSA's certificate (validly signed: the issuer erred)
    ess_attribute = rfc3161._ess_attribute
    monkeypatch.setattr(rfc3161, "_ess_attribute", lambda cert: ess_attribute(other_tsa.signer.certificate))
    token = _token(tsa)
    monkeypatch.undo()

    # then it is refused, although its signature and chain are fine
    with pytest.raises(rfc3161.TokenVerificationError, match="ESS"):
        rfc3161.verify_token(token, roots=[tsa.ca], digest=DIGEST)


# -- Queries and parsing


def test_build_query_fields() -> None:
    request = tsp.TimeStampReq.load(rfc3161.build_query(DIGEST, nonce=12, cert_req=False, policy_oid=POLICY))

    assert request.native["version"] == "v1"
    assert request["message_imprint"]["hash_algorithm"]["algorithm"].native == "sha256"
    assert request["message_imprint"]["hashed_message"].native == DIGEST
    assert request["nonce"].native == 12
    assert request["cert_req"].native is False
    assert request["req_policy"].dotted == POLICY


@pytest.mark.parametrize(
    ("digest", "hash_name", "nonce"),
    [(DIGEST[:20], "sha256", None), (DIGEST, "sha1", None), (DIGEST, "sha512", None), (DIGEST, "sha256", -1)],
    ids=["short digest", "sha1", "digest of the wrong size", "negative nonce"],
)
def test_build_query_refuses_what_we_would_reject(digest: bytes, hash_name: str, nonce: int | None) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 -- each case has its own message
        rfc3161.build_query(digest, hash_name=hash_name, nonce=nonce)


@pytest.mark.parametrize("token", [b"", b"\x30\x03\x02\x01\x00", b"garbage"], ids=["empty", "integer", "garbage"])
def test_parse_token_refuses_what_is_not_a_token(token: bytes) -> None:
    with pytest.raises(rfc3161.TokenError):
        rfc3161.parse_token(token)
