"""Trust-layer throughput, each figure beside a baseline measured in the same run.

    make bench                       # embedded SQLite
    DATABASE_URL=postgres://... make bench

Runs in a throw-away database (Django's test database machinery), never the real one.
"""

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("MODELCOURT_DATA_DIR", tempfile.mkdtemp(prefix="modelcourt-bench-"))

import django

django.setup()

from cryptography.hazmat.primitives import serialization  # noqa: E402
from django.db import connection, transaction  # noqa: E402

from timestamps import keys, merkle, rfc3161, selectors, services  # noqa: E402
from timestamps.models import SigningKey  # noqa: E402

Row = tuple[str, str, str, str]


def rate(fn: Callable[[int], None], count: int) -> float:
    """Operations per second of `fn(i)` over `count` calls."""
    start = time.perf_counter()
    for i in range(count):
        fn(i)
    return count / (time.perf_counter() - start)


def latencies(fn: Callable[[int], None], count: int) -> list[float]:
    """Per-call seconds."""
    out = []
    for i in range(count):
        start = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - start)
    return out


def _openssl_tsa_config(workdir: Path) -> Path:
    """An openssl `ts -reply` setup with our current TSA key and certificate."""
    tsa = keys.key_current(SigningKey.Purpose.TSA)
    (workdir / "tsa.key").write_bytes(
        tsa.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (workdir / "tsa.crt").write_text(tsa.record.certificate_pem)
    (workdir / "serial").write_text("01\n")
    config = workdir / "tsa.cnf"
    config.write_text(
        "[ tsa ]\ndefault_tsa = tsa_config\n[ tsa_config ]\n"
        f"dir = {workdir}\nserial = $dir/serial\nsigner_cert = $dir/tsa.crt\nsigner_key = $dir/tsa.key\n"
        "signer_digest = sha256\ndefault_policy = 1.2.3.4.1\ndigests = sha256\naccuracy = secs:1\n"
        "ordering = no\ntsa_name = no\ness_cert_id_chain = no\ness_cert_id_alg = sha256\n"
    )
    return config


def bench_tsa(tokens: int) -> list[Row]:
    """Tokens per second: the service (sign + log append), the bare signer, and openssl ts -reply."""
    query = rfc3161.build_query(b"\x5a" * 32, nonce=1)
    _, signer = keys.tsa_signer()
    service_rate = rate(lambda _: services.timestamp_issue(query_der=query), tokens)
    from django.utils import timezone

    bare_rate = rate(
        lambda i: rfc3161.issue_reply(query, signer=signer, serial=10**9 + i, gen_time=timezone.now()), tokens
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = _openssl_tsa_config(work)
        (work / "q.tsq").write_bytes(query)
        runs = max(20, tokens // 5)
        openssl = ["openssl", "ts", "-reply", "-config", str(config), "-queryfile", "q.tsq", "-out", "r.tsr"]
        openssl_rate = rate(
            lambda _: subprocess.run(openssl, cwd=work, check=True, capture_output=True),
            runs,
        )
    return [
        ("TSA tokens/s", "service: sign + log append", f"{service_rate:,.0f}", f"{service_rate / openssl_rate:.1f}x"),
        ("", "signer alone (no database)", f"{bare_rate:,.0f}", f"{bare_rate / openssl_rate:.1f}x"),
        ("", "baseline: openssl ts -reply, a process per token", f"{openssl_rate:,.0f}", "1.0x"),
    ]


def bench_appends(appends: int) -> list[Row]:
    """Log appends per second beside a bare one-row INSERT per transaction."""
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE bench_bare (id BIGINT PRIMARY KEY, data BYTEA)".replace(
                "BYTEA", "BLOB" if connection.vendor == "sqlite" else "BYTEA"
            )
        )

    def bare(i: int) -> None:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("INSERT INTO bench_bare (id, data) VALUES (%s, %s)", [i, b"entry %d" % i])

    bare_rate = rate(bare, appends)
    append_rate = rate(lambda i: services.log_append(data=b"entry %d" % i), appends)
    batch = 1000
    start = time.perf_counter()
    for chunk in range(0, appends * 5, batch):
        services.log_append_many(entries=[b"batch %d" % (chunk + j) for j in range(batch)])
    batch_rate = appends * 5 / (time.perf_counter() - start)
    return [
        ("log appends/s", "log_append, one transaction each", f"{append_rate:,.0f}", f"{append_rate / bare_rate:.2f}x"),
        ("", f"log_append_many, {batch} per transaction", f"{batch_rate:,.0f}", f"{batch_rate / bare_rate:.2f}x"),
        ("", "baseline: bare INSERT, one transaction each", f"{bare_rate:,.0f}", "1.00x"),
    ]


def bench_proofs(target: int, samples: int) -> list[Row]:
    """Inclusion-proof latency at `target` entries beside a primary-key lookup of one entry."""
    size = selectors.log_size()
    batch = 2000
    while size < target:
        count = min(batch, target - size)
        services.log_append_many(entries=[b"fill %d" % (size + j) for j in range(count)])
        size += count
    step = max(1, size // samples)
    proof = latencies(lambda i: selectors.log_inclusion_proof(index=(i * step) % size, size=size), samples)
    lookup = latencies(lambda i: selectors.log_entry_get(index=(i * step) % size), samples)
    root = merkle.tree_hash(size, selectors.log_read_nodes)
    entry = selectors.log_entry_get(index=size // 3)
    assert merkle.verify_inclusion(
        size // 3, size, bytes(entry.leaf_hash), selectors.log_inclusion_proof(index=size // 3, size=size), root
    )
    p50, lookup50 = statistics.median(proof), statistics.median(lookup)
    p99 = sorted(proof)[int(0.99 * (len(proof) - 1))]
    return [
        (f"inclusion proof at {size:,}", "median latency", f"{p50 * 1e3:.2f} ms", f"{p50 / lookup50:.1f}x"),
        ("", "p99 latency", f"{p99 * 1e3:.2f} ms", f"{p99 / lookup50:.1f}x"),
        ("", "baseline: fetch one entry by primary key", f"{lookup50 * 1e3:.2f} ms", "1.0x"),
    ]


def print_table(rows: list[Row]) -> None:
    """A plain-text table."""
    header = ("measure", "what", "value", "vs baseline")
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(4)]
    line = "  ".join("-" * w for w in widths)
    print(line)
    for row in [header, *rows]:
        print(
            "  ".join(
                cell.ljust(w) if c < 2 else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if row is header:
            print(line)
    print(line)


def main() -> None:
    """Run every benchmark in a throw-away database and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--appends", type=int, default=1000)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=500)
    args = parser.parse_args()

    if connection.vendor == "sqlite":
        # A file, as the embedded default uses, not SQLite's in-memory test database.
        connection.settings_dict["TEST"]["NAME"] = os.path.join(os.environ["MODELCOURT_DATA_DIR"], "bench.sqlite3")
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    try:
        print(f"database: {connection.vendor}; the figures come from this one run")
        rows = bench_tsa(args.tokens) + bench_appends(args.appends) + bench_proofs(args.entries, args.samples)
        print_table(rows)
    finally:
        from timestamps import dbtriggers

        dbtriggers.uninstall(connection)
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    main()
