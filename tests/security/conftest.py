"""What a hostile artifact must not reach: real keys, the secret key file, /etc/passwd, the checkout and site-packages.

`secrets` makes the service's real signing keys (in the test's key folder) and gathers the bytes an
attack would read; `Secrets.assert_absent` looks for any 12-character run of them in what a person or
a log could see. `untouched` hashes the checkout, the data, key and media folders and lists
site-packages before an attack, and `untouched.check()` says what changed after it (removing what an
attack planted, so a failing run leaves no .pth behind).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import site
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from tests.security import attacks

ROOT = Path(__file__).resolve().parents[2]
PTH_NAME = "zz_modelcourt_test.pth"
# caches of the tooling, and the folders the service itself writes while it works (uploads spooled, artifacts
# stored, broker messages): new files there are the service's; changed or planted ones are still caught below
_SKIPPED_DIRS = {
    ".git",
    ".venv",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".mypy_cache",
    ".hypothesis",
    "node_modules",
}
_SERVICE_WRITES = ("tmp", "broker", "artifacts", "suspects", "cache", "panels")
_NEEDLE = 12
_SAFE_RUN = re.compile(rb"[A-Za-z0-9+/=:_.,@-]{%d,}" % _NEEDLE)
LOOP_TIMEOUT_S = 4.0
# In a checkout that people edit while the suite runs, a changed file counts only when it carries the
# attack's marker or is a path an attack aimed at (every payload here carries the marker). CI runs strict.
TOLERATE_EDITS = os.environ.get("MODELCOURT_HOSTILE_TOLERATE_EDITS") == "1"


@dataclass(frozen=True)
class Target:
    """A file an attack reads: where, how many bytes, and the 12-character runs that would give it away."""

    name: str
    path: str
    size: int
    needles: frozenset[str]


def _needles(data: bytes, *, public: str = "") -> frozenset[str]:
    found = set()
    for run in _SAFE_RUN.findall(data):
        text = run.decode("ascii")
        for start in range(0, len(text) - _NEEDLE + 1, 3):
            found.add(text[start : start + _NEEDLE])
        found.add(text[-_NEEDLE:])
    # the public half (in bundles, on /keys) may share base64 runs with the private file's encoding
    return frozenset(n for n in found if n not in public)


@dataclass
class Secrets:
    """The secrets of one test: the verdict and log private keys, the escrow keys, the secret key file, /etc/passwd."""

    targets: dict[str, Target] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Target:
        return self.targets[name]

    def assert_absent(self, **places: Any) -> None:
        """No 12-character run of any secret in any of `places` (text, bytes, or anything JSON can show)."""
        for where, value in places.items():
            text = _as_text(value)
            for target in self.targets.values():
                hits = [n for n in target.needles if n in text]
                assert not hits, f"{target.name} leaked into {where} ({len(hits)} fragments, e.g. {hits[0]!r})"


def _as_text(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("latin-1")
    if isinstance(value, str):
        return value
    return json.dumps(value, default=repr, ensure_ascii=False)


def _common_key_text() -> str:
    """What every key file of these types shares (PKCS#8 headers, curve OIDs): private keys nobody uses."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    pems = []
    for key in (ec.generate_private_key(ec.SECP256R1()), ed25519.Ed25519PrivateKey.generate()):
        pems.append(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ).decode()
        )
    return "\n".join(pems)


def _secret_key_file(tmp: Path) -> Path:
    """The settings' secret key file; a stand-in under the test's folder where SECRET_KEY comes from the env."""
    path = Path(settings.DATA_DIR) / "secret_key"
    if path.is_file() and path.read_text().strip() == settings.SECRET_KEY:
        return path
    stand_in = tmp / "secret_key"
    stand_in.write_text(settings.SECRET_KEY)
    return stand_in


@pytest.fixture
def secrets(db, tmp_path: Path) -> Secrets:  # type: ignore[no-untyped-def]
    """Real verdict and log keys in the test's key folder, named as the service names them (purpose-kid16.pem)."""
    from timestamps import keys as timestamp_keys

    found = Secrets()
    timestamp_keys.tsa_signer()  # every key file the service makes is there before the test looks at the folder
    for purpose in ("verdict", "log"):
        record = timestamp_keys.key_current(purpose).record
        path = Path(settings.MODELCOURT_KEY_DIR) / f"{purpose}-{record.kid[:16]}.pem"
        data = path.read_bytes()
        public = record.public_key_pem + (record.certificate_pem or "") + _common_key_text()
        found.targets[f"{purpose} key"] = Target(f"{purpose} key", str(path), len(data), _needles(data, public=public))
    from ownership import escrow

    escrow.escrow_keys()  # made on first use, like the signing keys
    escrow_file = Path(settings.MODELCOURT_KEY_DIR) / "escrow.keys"
    if escrow_file.is_file():  # absent where MODELCOURT_ESCROW_KEYS pins the keys
        data = escrow_file.read_bytes()
        found.targets["escrow keys"] = Target("escrow keys", str(escrow_file), len(data), _needles(data))
    secret_file = _secret_key_file(tmp_path)
    data = secret_file.read_bytes()
    found.targets["secret key file"] = Target("secret key file", str(secret_file), len(data), _needles(data))
    passwd = Path("/etc/passwd").read_bytes()[:400]
    found.targets["/etc/passwd"] = Target("/etc/passwd", "/etc/passwd", len(passwd), _needles(passwd))
    assert all(target.needles for target in found.targets.values())
    return found


# --- the checkout, the data folders and site-packages -------------------------------------------------


def _site_packages() -> list[Path]:
    folders = {Path(p) for p in site.getsitepackages() if Path(p).is_dir()}
    user = Path(site.getusersitepackages())
    if user.is_dir():
        folders.add(user)
    return sorted(folders)


def _digest(path: Path) -> str:
    try:
        if path.is_symlink():
            return "link:" + os.readlink(path)
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        return f"unreadable:{exc.errno}"


def _walk(root: Path, skipped: set[Path]) -> dict[str, str]:
    hashes: dict[str, str] = {}
    if not root.is_dir():
        return hashes
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = [d for d in dirs if d not in _SKIPPED_DIRS and (here / d) not in skipped]
        for name in files:
            path = here / name
            hashes[str(path)] = _digest(path)
    return hashes


@dataclass
class Untouched:
    """The state before an attack, and `check()` for what it changed; `plant` names paths an attack aims at."""

    roots: list[Path]
    strict: set[Path]
    skipped: set[Path]
    before: dict[str, str]
    listings: dict[Path, set[str]]
    planted: list[Path] = field(default_factory=list)

    @classmethod
    def take(cls, roots: list[Path], *, strict: set[Path], skipped: set[Path]) -> Untouched:
        before: dict[str, str] = {}
        for root in roots:
            before |= _walk(root, skipped)
        listings = {folder: set(os.listdir(folder)) for folder in _site_packages()}
        return cls(roots, strict, skipped, before, listings)

    def _service_write(self, path: str) -> bool:
        """A file the service itself writes (spooled uploads, stored artifacts, broker messages, caches)."""
        for root in self.roots:
            if root not in self.strict and Path(path).is_relative_to(root):
                return any(part in _SERVICE_WRITES for part in Path(path).relative_to(root).parts)
        return False

    def plant(self, path: Path) -> Path:
        """Remember a path an attack writes to (it must stay as it was; it is removed after the test if new)."""
        self.planted.append(path)
        return path

    def changes(self) -> list[str]:
        after: dict[str, str] = {}
        for root in self.roots:
            after |= _walk(root, self.skipped)
        changed = [p for p, h in self.before.items() if p in after and after[p] != h]
        removed = [p for p in self.before if p not in after and not self._service_write(p)]
        if TOLERATE_EDITS:  # only what carries the attack's marker, or what it aimed at, is its doing
            changed = [p for p in changed if attacks.MARKER.encode() in _head(Path(p)) or Path(p) in self.planted]
            removed = [p for p in removed if Path(p) in self.planted]
        problems = [f"changed: {p}" for p in changed] + [f"removed: {p}" for p in removed]
        for path in sorted(set(after) - set(self.before)):
            marked = attacks.MARKER.encode() in _head(Path(path)) or Path(path) in self.planted
            private = any(Path(path).is_relative_to(root) for root in self.strict)
            if marked or private or not (TOLERATE_EDITS or self._service_write(path)):
                problems.append(f"created: {path}")
        for folder, names in self.listings.items():
            problems += [f"created in site-packages: {folder / n}" for n in sorted(set(os.listdir(folder)) - names)]
        problems += [f"planted: {p}" for p in self.planted if p.exists() and str(p) not in self.before]
        return problems

    def check(self) -> None:
        problems = self.changes()
        assert not problems, "the attack changed files:\n" + "\n".join(problems)

    def clean_up(self) -> None:
        """Remove what an attack planted (a .pth would run code in the next interpreter)."""
        for path in self.planted:
            if str(path) not in self.before:
                with contextlib.suppress(OSError):
                    path.unlink()
        for folder in _site_packages():
            with contextlib.suppress(OSError):
                (folder / PTH_NAME).unlink()


def _head(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            return handle.read(1 << 16)
    except OSError:
        return b""


@pytest.fixture
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder outside the checkout that an attack tries to write into (not the test's tmp_path)."""
    return tmp_path_factory.mktemp("outside")


@pytest.fixture
def untouched(tmp_path: Path, outside: Path) -> Iterator[Untouched]:
    """The checkout (caches aside), the data, key and media folders, `outside` and site-packages, before the test."""
    roots = [ROOT, Path(settings.DATA_DIR), Path(settings.MODELCOURT_KEY_DIR), Path(settings.MEDIA_ROOT), outside]
    unique = sorted({root.resolve() for root in roots if root.exists()})
    # a folder inside another is walked once
    roots = [r for r in unique if not any(r != o and r.is_relative_to(o) for o in unique)]
    state = Untouched.take(roots, strict={outside.resolve()}, skipped={tmp_path.resolve()})
    try:
        yield state
    finally:
        state.clean_up()


def site_packages_pth() -> Path:
    """Where a .pth would run code in every interpreter of this environment (the venv's site-packages)."""
    candidates = [Path(p) for p in site.getsitepackages() if Path(p).is_dir() and Path(p).is_relative_to(sys.prefix)]
    return (candidates or [Path(p) for p in site.getsitepackages()])[0] / PTH_NAME


PTH_PAYLOAD = b"import os; os.environ.setdefault('ZZ_HOSTILE_PTH', '1')  # zz-hostile\n"


# --- what the service logs and prints -------------------------------------------------------------


@dataclass
class Heard:
    """Everything logged (DEBUG and up) and written to this process's stdout and stderr during the test."""

    caplog: pytest.LogCaptureFixture
    capfd: pytest.CaptureFixture[str]

    def text(self) -> str:
        out, err = self.capfd.readouterr()
        # readouterr consumes the capture: write it back so pytest still shows it on a failure
        sys.stdout.write(out)
        sys.stderr.write(err)
        records = []
        for record in self.caplog.records:
            records.append(record.getMessage())
            if record.exc_info:
                records.append(logging.Formatter().formatException(record.exc_info))
            if record.exc_text:
                records.append(record.exc_text)
            if record.stack_info:
                records.append(record.stack_info)
        return "\n".join([self.caplog.text, *records, out, err])


@pytest.fixture
def heard(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> Heard:
    caplog.set_level(logging.DEBUG)
    return Heard(caplog, capfd)


# --- the sandbox: spares, short limits, and the caller alive afterwards ---------------------------


@pytest.fixture(scope="package", autouse=True)
def _warm_spares() -> Iterator[None]:
    """Use the worker's pre-warmed sandbox children (as Celery workers do): a cold one imports torch each time.

    Package-scoped: the spares go (and the process opts out) when this folder's tests end.
    """
    from workers import sandbox

    sandbox.warm_spare()
    try:
        yield
    finally:
        sandbox.discard_spares()


@pytest.fixture
def short_timeouts(monkeypatch: pytest.MonkeyPatch, settings) -> float:  # type: ignore[no-untyped-def]
    """Every sandboxed call in the test gets at most LOOP_TIMEOUT_S (registration, runs, stress tests)."""
    from workers import sandbox

    real = sandbox.run_sandboxed

    def capped(fn: Callable[..., Any], *args: Any, timeout_s: float, **kwargs: Any) -> Any:
        return real(fn, *args, timeout_s=min(timeout_s, LOOP_TIMEOUT_S), **kwargs)

    for module in list(sys.modules.values()):
        name = getattr(module, "__name__", "")
        if (
            name.startswith(("ownership.", "verification.", "workers."))
            and getattr(module, "run_sandboxed", None) is real
        ):
            monkeypatch.setattr(module, "run_sandboxed", capped)
    settings.MODELCOURT_VALIDATION_TIMEOUT_S = LOOP_TIMEOUT_S
    settings.MODELCOURT_RUN_TIMEOUT_S = LOOP_TIMEOUT_S
    settings.MODELCOURT_STRESS_TIMEOUT_S = LOOP_TIMEOUT_S
    return LOOP_TIMEOUT_S


def assert_sandbox_still_works() -> None:
    """The calling process is alive and a following benign sandboxed call answers."""
    from workers import sandbox

    pid = sandbox.run_sandboxed(sandbox.child_pid, timeout_s=60, memory_bytes=2 << 30, prewarm=False)
    assert isinstance(pid, int)
    assert pid != os.getpid()


def assert_clean_sentence(reason: str, *, attack_paths: tuple[str, ...] = ()) -> None:
    """Our own sentence: non-empty, one line, nothing the model said or named (its marker, its paths, a traceback)."""
    assert reason.strip(), "no reason was given"
    assert "\n" not in reason.strip(), f"the reason spans lines: {reason!r}"
    for banned in (attacks.MARKER, "Traceback", "code/__torch__", "attacks.py", "builtins.", *attack_paths):
        assert banned not in reason, f"the reason repeats the model's own text ({banned!r}): {reason!r}"


@pytest.fixture
def scratch_dir() -> Iterator[Path]:
    """A private folder outside the checkout for files the test hands to the sandbox."""
    folder = Path(tempfile.mkdtemp(prefix="modelcourt-hostile-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --- disputes and stress tests: a tiny installed panel, a claimant with evidence ----------------------

PANEL = "hostile-digits"


@pytest.fixture(scope="session")
def panel_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder with an installed two-model digits panel (enough to run; not to decide well)."""
    from verification.methods.datasets import digits_task
    from verification.methods.panels import train_panel

    root = tmp_path_factory.mktemp("hostile-data")
    train_panel(digits_task(0), size=2, seed=1, epochs=1).save(root / "panels" / "installed" / PANEL)
    return root


@pytest.fixture
def data_dir(panel_root: Path, settings) -> Path:  # type: ignore[no-untyped-def]
    settings.DATA_DIR = panel_root
    return panel_root


def registered_row(owner: Any, name: str, artifact: bytes | None = None) -> Any:
    """A registration row as the worker leaves an accepted one (the sandbox check is not what is tested here)."""
    import uuid

    from django.core.files.base import ContentFile
    from django.utils import timezone

    from ownership.models import RegisteredModel

    model = RegisteredModel.objects.create(
        owner=owner,
        name=name,
        task="digits",
        input_shape=[attacks.FEATURES],
        num_classes=attacks.CLASSES,
        artifact_format="torchscript",
        artifact_size=len(artifact or b"-"),
        model_digest=uuid.uuid4().hex * 2,
        file_digests={},
        created_at=timezone.now(),
    )
    if artifact is not None:
        model.artifact.save("model.pt", ContentFile(artifact), save=True)
    return model


def signed_and_stored(secrets: Secrets, **places: Any) -> None:
    """`secrets.assert_absent` over `places` and every row a run or a stress test may have written."""
    from django.apps import apps

    rows = {}
    for label in ("verification", "ownership", "timestamps"):
        for model in apps.get_app_config(label).get_models():
            rows[model._meta.label] = list(model.objects.values())
    secrets.assert_absent(**places, rows=rows)
