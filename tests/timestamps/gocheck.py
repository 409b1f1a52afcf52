"""Build and run tests/gocheck: Go's sumdb/note and sumdb/tlog judging our checkpoints and proofs."""

import functools
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

SOURCE_DIR = Path(__file__).resolve().parents[1] / "gocheck"
# Debian's golang-golang-x-mod-dev puts golang.org/x/mod here, for GOPATH-mode builds.
DEBIAN_GOPATH = "/usr/share/gocode"
REQUIRE_GO = os.environ.get("MODELCOURT_REQUIRE_GO", "") not in ("", "0")


def _gopath() -> str | None:
    """The first GOPATH entry holding golang.org/x/mod's sources."""
    user = os.environ.get("GOPATH") or str(Path.home() / "go")
    for root in [DEBIAN_GOPATH, *user.split(os.pathsep)]:
        if root and (Path(root) / "src/golang.org/x/mod/sumdb/note/note.go").is_file():
            return root
    return None


def go_unavailable_reason() -> str | None:
    """Why the Go cross-check cannot run here, or None when it can."""
    if shutil.which("go") is None:
        return "go is not installed (Debian: apt-get install golang-go golang-golang-x-mod-dev)"
    if _gopath() is None:
        return (
            f"golang.org/x/mod sources are not under {DEBIAN_GOPATH} (Debian: apt-get install golang-golang-x-mod-dev)"
        )
    return None


def go_available() -> bool:
    """Whether go and golang.org/x/mod's sources are installed."""
    return go_unavailable_reason() is None


def require_go() -> None:
    """Skip the calling test without Go, or fail it when MODELCOURT_REQUIRE_GO is set (CI)."""
    reason = go_unavailable_reason()
    if reason is None:
        return
    if REQUIRE_GO:
        pytest.fail(f"MODELCOURT_REQUIRE_GO is set, but {reason}")
    pytest.skip(f"Go cross-check skipped: {reason}")


@functools.cache
def _binary() -> Path:
    """Build the checker once per test session, offline, in GOPATH mode."""
    gopath = _gopath()
    if gopath is None:
        raise RuntimeError(go_unavailable_reason())
    # A per-session directory: parallel sessions never race on one binary; cleaned up at exit.
    out = Path(_build_dir().name) / "gocheck"
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": gopath,
        "GOFLAGS": "",
        "GOPROXY": "off",
        "GOTOOLCHAIN": "local",
        "GOCACHE": os.environ.get("GOCACHE") or str(Path(tempfile.gettempdir()) / "modelcourt-go-cache"),
    }
    built = subprocess.run(
        ["go", "build", "-o", str(out), "."], cwd=SOURCE_DIR, env=env, capture_output=True, text=True, check=False
    )
    if built.returncode != 0:
        raise RuntimeError(f"building tests/gocheck failed:\n{built.stderr}")
    return out


@functools.cache
def _build_dir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="modelcourt-gocheck-")


def go_verify(document: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """Run the checker on {"vkey", "notes", "inclusion", "consistency"}; returncode 0 means Go accepts all."""
    return subprocess.run(
        [str(_binary())], input=json.dumps(document), capture_output=True, text=True, timeout=120, check=False
    )
