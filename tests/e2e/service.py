"""Drive a running modelcourt from outside: its processes, HTTP and the `modelcourt` CLI.

Nothing here imports the project: the service is started the way the README says (`make run`, or
gunicorn beside separately started Celery processes), and reached only over HTTP and through the
command-line client installed in the virtual environment, as a user or an operator would.
"""

import contextlib
import http.cookiejar
import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
PASSWORD = "correct horse battery staple 42"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Answer:
    status: int
    body: bytes
    headers: Mapping[str, str]
    seconds: float

    def json(self) -> Any:
        return json.loads(self.body)


def _multipart(fields: Mapping[str, str], files: Mapping[str, Path]) -> tuple[bytes, str]:
    boundary = secrets.token_hex(16)
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, path in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{path.name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        parts.append(head.encode() + path.read_bytes() + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@dataclass
class Service:
    """One running service: its URL, its data folder, its processes (each in its own process group) and logs."""

    base_url: str
    data_dir: Path
    env: dict[str, str]
    workdir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    # --- processes -----------------------------------------------------------------------

    def start(self, name: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        process = subprocess.Popen(
            list(argv), cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.processes[name] = process
        return process

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def stop(self) -> None:
        for name in list(self.processes):
            self.kill(name, signal.SIGTERM)

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name} ---\n{path.read_text(errors='replace')[-6000:]}" for path in self.workdir.glob("*.log")
        )

    def all_log_bytes(self) -> bytes:
        return b"".join(path.read_bytes() for path in self.workdir.glob("*.log"))

    def manage(self, *args: str) -> str:
        """An operator's `manage.py` command (the documented way to grant roles)."""
        done = subprocess.run(
            [str(VENV_BIN / "python"), "manage.py", *args],
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def wait_until_up(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                assert process.poll() is None, f"{name} exited with {process.returncode}:\n{self.logs()}"
            with contextlib.suppress(OSError):
                if self.get("/api/v1/log/key").status == 200:
                    return
            time.sleep(0.5)
        raise AssertionError(f"the service did not answer within {timeout:g} s:\n{self.logs()}")

    # --- HTTP ----------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json_body: Any = None,
        fields: Mapping[str, str] | None = None,
        files: Mapping[str, Path] | None = None,
        opener: urllib.request.OpenerDirector | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> Answer:
        data: bytes | None = None
        sent = dict(headers or {})
        if json_body is not None:
            data, sent["Content-Type"] = json.dumps(json_body).encode(), "application/json"
        elif files:
            data, sent["Content-Type"] = _multipart(fields or {}, files)
        elif fields is not None:
            data = urllib.parse.urlencode(fields).encode()
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        if token:
            sent["Authorization"] = f"Token {token}"
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=sent)  # noqa: S310
        started = time.monotonic()
        try:
            with (opener or urllib.request.build_opener(_NoRedirect())).open(request, timeout=timeout) as response:
                body = response.read()
                return Answer(response.status, body, dict(response.headers), time.monotonic() - started)
        except urllib.error.HTTPError as exc:
            return Answer(exc.code, exc.read(), dict(exc.headers), time.monotonic() - started)

    def get(self, path: str, **kwargs: Any) -> Answer:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Answer:
        return self.request("POST", path, **kwargs)

    def sign_up(self, username: str) -> str:
        """Sign up in the web form as a browser does (CSRF cookie and all); returns an API token."""
        jar = http.cookiejar.CookieJar()
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), _NoRedirect())
        form = self.get("/accounts/signup/", opener=browser)
        assert form.status == 200, form.body[:500]
        csrf = next(cookie.value for cookie in jar if cookie.name == "csrftoken")
        answer = self.post(
            "/accounts/signup/",
            opener=browser,
            fields={"csrfmiddlewaretoken": csrf, "username": username, "password1": PASSWORD, "password2": PASSWORD},
            headers={"Referer": self.base_url + "/accounts/signup/"},
        )
        assert answer.status == 302, (answer.status, answer.body[:2000])
        token = self.post("/api/v1/auth/token", json_body={"username": username, "password": PASSWORD})
        assert token.status == 200, token.body
        return str(token.json()["token"])

    # --- the command-line client ---------------------------------------------------------

    def cli(self, token: str | None, *args: str, check: bool = True, timeout: float = 900.0) -> str:
        env = {**self.env, "MODELCOURT_URL": self.base_url}
        if token:
            env["MODELCOURT_TOKEN"] = token
        done = subprocess.run(
            [str(VENV_BIN / "modelcourt"), *args],
            cwd=self.workdir, env=env, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        if check:
            assert done.returncode == 0, (
                f"modelcourt {' '.join(args)} -> {done.returncode}\n{done.stdout}\n{done.stderr}"
            )
        return done.stdout

    def cli_json(self, token: str | None, *args: str) -> Any:
        """A command that prints one JSON document on stdout (progress, if any, goes to stderr)."""
        return json.loads(self.cli(token, *args))


def base_env(data_dir: Path) -> dict[str, str]:
    """The environment of every process of one service: the caller's, less anything that points elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELCOURT_", "DATABASE_URL", "CELERY_"))}
    env |= {
        "MODELCOURT_DATA_DIR": str(data_dir),
        # runs and validations are re-queued quickly when their worker dies (the kill test)
        "MODELCOURT_HEARTBEAT_S": "2",
        "MODELCOURT_HEARTBEAT_STALE_S": "12",
        "MODELCOURT_SWEEP_SECONDS": "3",
        "MODELCOURT_CHECKPOINT_SECONDS": "5",
        # a model that never answers is given up on sooner than in production
        "MODELCOURT_VALIDATION_TIMEOUT_S": "8",
        "PYTHONUNBUFFERED": "1",
    }
    return env


@contextlib.contextmanager
def make_run(workdir: Path) -> Iterator[Service]:
    """The embedded default, started exactly as README says: `make run` (SQLite, filesystem broker)."""
    port = free_port()
    data_dir = workdir / "data"
    service = Service(f"http://127.0.0.1:{port}", data_dir, base_env(data_dir), workdir)
    service.start("make-run", ["make", "--no-print-directory", "run", f"PORT={port}"])
    try:
        service.wait_until_up()
        yield service
    finally:
        service.stop()


@contextlib.contextmanager
def separate_processes(workdir: Path, database_url: str, broker_url: str) -> Iterator[Service]:
    """PostgreSQL and Redis, gunicorn, and a worker and a beat process started on their own."""
    port = free_port()
    data_dir = workdir / "data"
    env = base_env(data_dir) | {"DATABASE_URL": database_url, "CELERY_BROKER_URL": broker_url}
    service = Service(f"http://127.0.0.1:{port}", data_dir, env, workdir)
    service.manage("migrate", "--noinput")
    service.manage("collectstatic", "--noinput", "-v", "0")
    service.manage("rotate_keys", "--init")
    service.start(
        "gunicorn",
        [str(VENV_BIN / "gunicorn"), "config.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "2"],
    )
    start_worker(service)
    service.start(
        "beat",
        [str(VENV_BIN / "celery"), "-A", "workers.celery", "beat", "--schedule", str(workdir / "beat-schedule")],
    )
    try:
        service.wait_until_up()
        yield service
    finally:
        service.stop()


def start_worker(service: Service, name: str = "worker") -> subprocess.Popen[bytes]:
    return service.start(
        name,
        [str(VENV_BIN / "celery"), "-A", "workers.celery", "worker", "-Q", "gpu,cpu", "--concurrency=1",
         "--prefetch-multiplier=1", "-n", f"{name}-{secrets.token_hex(4)}@%h", "--loglevel=INFO"],
    )  # fmt: skip


def _processes() -> dict[int, tuple[int, bytes]]:
    """pid -> (parent pid, command line) of every process we can see."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                found[int(entry.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), (entry / "cmdline").read_bytes())
    return found


def sandbox_children_of(root: int) -> list[int]:
    """The sandbox child processes below process `root` (a worker): its pool processes' children."""
    table = _processes()
    below, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, (ppid, _) in table.items() if ppid in frontier} - below
        below |= frontier
    return sorted(pid for pid in below if b"workers.sandbox" in table[pid][1])


def still_running(pids: list[int]) -> list[int]:
    """Those of `pids` that are alive (not gone, not a zombie)."""
    alive = []
    for pid in pids:
        with contextlib.suppress(OSError):
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state != "Z":
                alive.append(pid)
    return alive
