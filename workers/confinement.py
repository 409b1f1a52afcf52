"""Kernel confinement of the sandbox child: no_new_privs, a network namespace, Landlock, seccomp-BPF (no Django).

The parent decides the policy (`ensure_enforceable`, `plan_paths`); the child applies it in two steps:
`enter_child` at the very start of the child, while it is still single-threaded (namespaces need that),
and `confine` when a job arrives, before the job's call is read (Landlock binds only the calling thread
and the threads it starts later, so the child must still be single-threaded then; seccomp syncs all).

Plain ctypes around four syscalls (prctl, unshare, landlock_*, seccomp): the bindings on PyPI either
wrap a C library we would have to install too (libseccomp) or cover one layer; the whole is short enough
to read in one sitting. See docs/sandbox.md for the threat model and what each layer stops.
"""

import contextlib
import ctypes
import errno
import functools
import hashlib
import json
import logging
import os
import platform
import signal
import struct
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "ALLOW_UNCONFINED_ENV",
    "ALLOW_UNCONFINED_VALUE",
    "LAYERS",
    "ConfinementError",
    "ConfinementUnavailable",
    "confine",
    "enforced_layers",
    "ensure_enforceable",
    "enter_child",
    "landlock_abi",
    "plan_paths",
    "policy_describe",
    "policy_record",
    "selected_layers",
]

POLICY_SCHEMA = "modelcourt-sandbox-v1"
LAYERS = ("landlock", "seccomp", "netns", "rlimits")
LAYERS_ENV = "MODELCOURT_SANDBOX_LAYERS"
ALLOW_UNCONFINED_ENV = "MODELCOURT_SANDBOX_ALLOW_UNCONFINED"
ALLOW_UNCONFINED_VALUE = "i-understand-models-can-read-keys"
# the project's own packages the child imports from; never the repository root (it holds ./data)
PROJECT_PACKAGES = ("workers", "verification", "ownership", "modelcourt", "config", "timestamps", "tests")
SYSTEM_READ = ("/usr/lib", "/lib", "/lib64", "/usr/lib64", "/usr/local/lib", "/etc/ld.so.cache")
DEVICES_READ = ("/dev/urandom", "/dev/random", "/dev/zero")
DEVICES_WRITE = ("/dev/null",)
# what CPU-feature detection in torch/oneDNN/onnxruntime reads; numbers of CPUs and caches, no secrets
CPU_INFO_READ = ("/proc/cpuinfo", "/sys/devices/system/cpu")
GPU_DEVICES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset", "/dev/nvidia-caps")
GPU_READ = ("/proc/driver/nvidia", "/sys/bus/pci", "/sys/devices", "/proc/devices")

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_GET_SECCOMP = 21
_PR_SET_NO_NEW_PRIVS = 38
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_CLONE_THREAD = 0x00010000
_AF_UNIX = 1

# Landlock (include/uapi/linux/landlock.h)
_SYS_LANDLOCK_CREATE_RULESET = 444  # the same number on every architecture
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
_FS = {
    "execute": 1 << 0,
    "write_file": 1 << 1,
    "read_file": 1 << 2,
    "read_dir": 1 << 3,
    "remove_dir": 1 << 4,
    "remove_file": 1 << 5,
    "make_char": 1 << 6,
    "make_dir": 1 << 7,
    "make_reg": 1 << 8,
    "make_sock": 1 << 9,
    "make_fifo": 1 << 10,
    "make_block": 1 << 11,
    "make_sym": 1 << 12,
    "refer": 1 << 13,  # ABI 2
    "truncate": 1 << 14,  # ABI 3
    "ioctl_dev": 1 << 15,  # ABI 5
}
_FS_SINCE = {"refer": 2, "truncate": 3, "ioctl_dev": 5}
_FILE_ONLY = _FS["execute"] | _FS["write_file"] | _FS["read_file"] | _FS["truncate"] | _FS["ioctl_dev"]
_NET = {"bind_tcp": 1 << 0, "connect_tcp": 1 << 1}  # ABI 4
_SCOPE = {"abstract_unix_socket": 1 << 0, "signal": 1 << 1}  # ABI 6
_READ = _FS["read_file"] | _FS["read_dir"]
_SCRATCH = (
    _READ
    | _FS["write_file"]
    | _FS["remove_dir"]
    | _FS["remove_file"]
    | _FS["make_dir"]
    | _FS["make_reg"]
    | _FS["refer"]
    | _FS["truncate"]
)

# numbers from 424 on are the same on every architecture (the unified syscall table)
_UNIFIED_SYSCALLS = {
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "mount_setattr": 442,
}
# seccomp (include/uapi/linux/seccomp.h, filter.h, audit.h)
_SECCOMP_SET_MODE_FILTER = 1
_SECCOMP_FILTER_FLAG_TSYNC = 1
_SECCOMP_RET_KILL_PROCESS = 0x80000000
_SECCOMP_RET_ERRNO = 0x00050000
_SECCOMP_RET_ALLOW = 0x7FFF0000
_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_JGE_K = 0x35
_BPF_JSET_K = 0x45
_BPF_RET_K = 0x06
_X32_SYSCALL_BIT = 0x40000000
_ARCHES: dict[str, dict[str, Any]] = {
    "x86_64": {
        "audit": 0xC000003E,
        "seccomp": 317,
        "numbers": {
            "execve": 59,
            "execveat": 322,
            "fork": 57,
            "vfork": 58,
            "clone": 56,
            "clone3": 435,
            "socket": 41,
            "socketpair": 53,
            "ptrace": 101,
            "process_vm_readv": 310,
            "process_vm_writev": 311,
            "kexec_load": 246,
            "kexec_file_load": 320,
            "mount": 165,
            "umount2": 166,
            "pivot_root": 155,
            "chroot": 161,
            "unshare": 272,
            "setns": 308,
            "bpf": 321,
            "perf_event_open": 298,
            "keyctl": 250,
            "add_key": 248,
            "request_key": 249,
            "userfaultfd": 323,
            "init_module": 175,
            "finit_module": 313,
            "delete_module": 176,
            **_UNIFIED_SYSCALLS,
        },
    },
    "aarch64": {
        "audit": 0xC00000B7,
        "seccomp": 277,
        "numbers": {
            "execve": 221,
            "execveat": 281,
            "clone": 220,
            "clone3": 435,
            "socket": 198,
            "socketpair": 199,
            "ptrace": 117,
            "process_vm_readv": 270,
            "process_vm_writev": 271,
            "kexec_load": 104,
            "kexec_file_load": 294,
            "mount": 40,
            "umount2": 39,
            "pivot_root": 41,
            "chroot": 51,
            "unshare": 97,
            "setns": 268,
            "bpf": 280,
            "perf_event_open": 241,
            "keyctl": 219,
            "add_key": 217,
            "request_key": 218,
            "userfaultfd": 282,
            "init_module": 105,
            "finit_module": 273,
            "delete_module": 106,
            **_UNIFIED_SYSCALLS,
        },
    },
}
# denied with EPERM; clone (without CLONE_THREAD) and socketpair (but AF_UNIX) are checked on their flags,
# clone3 answers ENOSYS so libc falls back to clone, whose flags the filter can read
_SECCOMP_DENIED = (
    "execve", "execveat", "fork", "vfork", "socket", "ptrace", "process_vm_readv", "process_vm_writev",
    "kexec_load", "kexec_file_load", "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "bpf",
    "perf_event_open", "keyctl", "add_key", "request_key", "userfaultfd", "init_module", "finit_module",
    "delete_module", "io_uring_setup", "io_uring_enter", "io_uring_register", "open_tree", "move_mount",
    "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
)  # fmt: skip


class ConfinementError(RuntimeError):
    """A confinement layer could not be applied in the child."""


class ConfinementUnavailable(ConfinementError):  # noqa: N818 (a refusal to run, named for what is missing)
    """A required layer is not available on this host and the operator did not allow running unconfined."""

    def __init__(self, missing: Sequence[str]) -> None:
        super().__init__(
            f"the sandbox cannot enforce {', '.join(missing)} on this host, so untrusted models are refused; "
            f"fix the host (see docs/sandbox.md) or set {ALLOW_UNCONFINED_ENV}={ALLOW_UNCONFINED_VALUE}"
        )
        self.missing = tuple(missing)


# The policy as the service reports it.


def selected_layers() -> tuple[str, ...]:
    """The layers `MODELCOURT_SANDBOX_LAYERS` asks for (default: all); "none" or "" asks for none."""
    raw = os.environ.get(LAYERS_ENV)
    if raw is None:
        return LAYERS
    names = {part.strip().lower() for part in raw.split(",") if part.strip()} - {"none"}
    unknown = names - set(LAYERS)
    if unknown:
        raise ValueError(f"{LAYERS_ENV} names unknown layers {sorted(unknown)}; the layers are {', '.join(LAYERS)}")
    return tuple(layer for layer in LAYERS if layer in names)


def landlock_abi() -> int:
    """The Landlock ABI version this kernel offers; 0 when it has none (too old, or disabled at boot)."""
    libc = _libc()
    version = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), _LANDLOCK_CREATE_RULESET_VERSION)
    return max(0, int(version))


def available_layers() -> dict[str, bool]:
    """Which layers this host can enforce (netns is probed once in a child process)."""
    return {
        "landlock": landlock_abi() >= 1,
        "seccomp": _seccomp_available(),
        "netns": _netns_available(),
        "rlimits": True,
    }


def enforced_layers() -> tuple[str, ...]:
    """The selected layers this host can enforce, in `LAYERS` order."""
    available = available_layers()
    return tuple(layer for layer in selected_layers() if available[layer])


def policy_describe() -> dict[str, Any]:
    """The policy in full: what is selected, available and enforced, and what each enforced layer allows."""
    available = available_layers()
    selected = selected_layers()
    return {
        "schema": POLICY_SCHEMA,
        "selected": list(selected),
        "available": available,
        "landlock_abi": landlock_abi(),
        "arch": platform.machine(),
        "unconfined_allowed": _unconfined_allowed(),
        "policy": _policy(tuple(layer for layer in selected if available[layer])),
    }


def policy_record() -> dict[str, str]:
    """{"name", "sha256"} of the enforced policy, for verdicts and the health check.

    The name lists the layers enforced on this host ("modelcourt-sandbox-v1:landlock7+seccomp+netns+rlimits");
    the hash is SHA-256 over the canonical JSON of `policy_describe()["policy"]` (path classes, not paths,
    so two hosts with the same layers and kernel ABI report the same hash).
    """
    layers = enforced_layers()
    policy = _policy(layers)
    canonical = json.dumps(policy, sort_keys=True, separators=(",", ":")).encode()
    names = [f"landlock{policy['landlock']['abi']}" if layer == "landlock" else layer for layer in layers]
    return {"name": f"{POLICY_SCHEMA}:{'+'.join(names) or 'none'}", "sha256": hashlib.sha256(canonical).hexdigest()}


def ensure_enforceable() -> tuple[str, ...]:
    """The layers to enforce; ConfinementUnavailable when a selected layer is missing and no override is set."""
    return _ensure_enforceable(os.environ.get(LAYERS_ENV), os.environ.get(ALLOW_UNCONFINED_ENV))


@functools.cache
def _ensure_enforceable(layers_env: str | None, override: str | None) -> tuple[str, ...]:
    selected = selected_layers()
    enforced = enforced_layers()
    missing = [layer for layer in selected if layer not in enforced]
    if missing and override != ALLOW_UNCONFINED_VALUE:
        raise ConfinementUnavailable(missing)
    if missing:
        logger.warning(
            "SANDBOX UNCONFINED: %s=%s lets untrusted models run without %s; a model may read keys and the database",
            ALLOW_UNCONFINED_ENV,
            ALLOW_UNCONFINED_VALUE,
            ", ".join(missing),
        )
    left_out = [layer for layer in LAYERS if layer not in selected]
    if left_out:
        logger.warning("sandbox layers %s are turned off by %s", ", ".join(left_out), LAYERS_ENV)
    return enforced


def _unconfined_allowed() -> bool:
    return os.environ.get(ALLOW_UNCONFINED_ENV) == ALLOW_UNCONFINED_VALUE


def _policy(layers: tuple[str, ...]) -> dict[str, Any]:
    policy: dict[str, Any] = {
        "schema": POLICY_SCHEMA,
        "layers": list(layers),
        "always": ["no_new_privs", "parent_death_kill", "not_dumpable", "no_core_dumps", "fresh_interpreter"],
    }
    if "landlock" in layers:
        abi = landlock_abi()
        fs, net, scoped = _handled(abi)
        policy["landlock"] = {
            "abi": abi,
            "handled_fs": sorted(name for name, bit in _FS.items() if fs & bit),
            "handled_net": sorted(name for name, bit in _NET.items() if net & bit),
            "scoped": sorted(name for name, bit in _SCOPE.items() if scoped & bit),
            "tcp_rules": [],  # handled with no rule: no TCP bind or connect at all
            "read": [
                "python_runtime",
                "python_path",
                "project_packages",
                "system_libraries",
                "devices",
                "proc_self",
                "cpu_info",
                "declared_readable",
                "job_files",
            ],
            "write": ["job_scratch", "dev_null"],
            "execute": [],
        }
    if "seccomp" in layers:
        arch = platform.machine()
        known = _ARCHES.get(arch, {}).get("numbers", {})
        policy["seccomp"] = {
            "arch": arch,
            "eperm": sorted(name for name in _SECCOMP_DENIED if name in known),
            "eperm_unless": {"clone": "CLONE_THREAD", "socketpair": "AF_UNIX"},
            "enosys": ["clone3"],
            "other_arch": "kill_process",
            "default": "allow",
        }
    if "netns" in layers:
        policy["netns"] = {"interfaces": ["lo (down)"]}
    if "rlimits" in layers:
        policy["rlimits"] = ["RLIMIT_AS (RLIMIT_DATA with a GPU)", "RLIMIT_CPU", "RLIMIT_FSIZE"]
    return policy


def _handled(abi: int) -> tuple[int, int, int]:
    fs = 0
    for name, bit in _FS.items():
        if abi >= _FS_SINCE.get(name, 1):
            fs |= bit
    net = _NET["bind_tcp"] | _NET["connect_tcp"] if abi >= 4 else 0
    scoped = _SCOPE["abstract_unix_socket"] | _SCOPE["signal"] if abi >= 6 else 0
    return fs, net, scoped


def _seccomp_available() -> bool:
    if platform.machine() not in _ARCHES:
        return False
    libc = _libc()
    return int(libc.prctl(_PR_GET_SECCOMP, 0, 0, 0, 0)) >= 0


_NETNS_PROBE = (
    "import ctypes, os, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    f"ok = libc.unshare({_CLONE_NEWNET}) == 0 or libc.unshare({_CLONE_NEWUSER | _CLONE_NEWNET}) == 0\n"
    "sys.exit(0 if ok else 1)\n"
)


@functools.cache
def _netns_available() -> bool:
    """Whether a child can make its own network namespace (as root, or through a user namespace)."""
    try:
        probe = subprocess.run(  # noqa: S603 (our own interpreter and a fixed snippet)
            [sys.executable, "-I", "-c", _NETNS_PROBE], capture_output=True, timeout=30, env={}, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


@functools.cache
def _libc() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    libc.prctl.restype = ctypes.c_int
    return libc


# The paths (parent side).


def plan_paths(
    *, scratch: str, readable: Iterable[str] = (), writable: Iterable[str] = (), gpu: bool = False
) -> dict[str, list[str]]:
    """The Landlock path rules for one job: {"read": [...], "write": [...], "device": [...]}, all absolute.

    Never the repository root, the data folder or the key folder, nor a folder holding one of them, nor
    anything inside the key folder. What the call declares (`readable`, `writable`: folders of ours, such
    as a reference panel inside the data folder or a progress folder) is the caller's choice within that
    rule; a declared path that breaks it is a programming error (ValueError).
    """
    secrets = _secret_dirs()
    root = _project_root()
    read: list[str] = []
    write: list[str] = []

    def grant(path: str | Path, into: list[str], *, declared: bool = False) -> None:
        real = os.path.realpath(path)
        if not os.path.exists(real):
            if declared:
                raise ValueError(f"the sandbox cannot grant {path}: it does not exist")
            return
        if _holds(real, [*secrets, root]) or _holds(secrets[1], [real]):
            if declared:
                raise ValueError(f"the sandbox never grants {path}: it is, holds or lies in the data or key folder")
            return
        if not declared and _holds(secrets[0], [real]):
            return  # a sys.path entry inside the data folder: not code of ours
        if real not in into:
            into.append(real)

    grant(scratch, write, declared=True)
    for path in writable:
        grant(path, write, declared=True)
    for base in {sys.base_prefix, sys.base_exec_prefix, sys.prefix}:
        grant(Path(base, "lib"), read)
    for entry in sys.path:
        if entry and os.path.isabs(entry):
            grant(entry, read)
    for package in PROJECT_PACKAGES:
        grant(Path(root, package), read)
    for path in (*SYSTEM_READ, *DEVICES_READ, *CPU_INFO_READ):
        grant(path, read)
    if gpu:
        for path in GPU_READ:
            grant(path, read)
    for path in readable:
        grant(path, read, declared=True)
    devices = [path for path in DEVICES_WRITE if os.path.exists(path)]
    if gpu:
        devices += [path for path in (*GPU_DEVICES, *_nvidia_devices()) if os.path.exists(path)]
    return {"read": read, "write": write, "device": devices}


def _project_root() -> str:
    return os.path.realpath(Path(__file__).resolve().parent.parent)


def _secret_dirs() -> list[str]:
    """The data folder and the key folder as settings places them (read from the environment, no Django)."""
    data = os.environ.get("MODELCOURT_DATA_DIR") or os.path.join(_project_root(), "data")
    keys = os.environ.get("MODELCOURT_KEY_DIR") or os.path.join(data, "keys")
    return [os.path.realpath(data), os.path.realpath(keys)]


def _holds(path: str, others: Sequence[str]) -> bool:
    """Whether `path` is one of `others` or a folder above one of them."""
    return any(os.path.commonpath([path, other]) == path for other in others)


def _nvidia_devices() -> list[str]:
    with contextlib.suppress(OSError):
        return sorted(f"/dev/{name}" for name in os.listdir("/dev") if name.startswith("nvidia") and name[6:].isdigit())
    return []


# The child side.


def enter_child(*, parent_pid: int, layers: Sequence[str]) -> None:
    """First thing in the child, single-threaded: no_new_privs, die with the parent, not dumpable, a netns."""
    libc = _libc()
    _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _check(libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "the parent-death signal")
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)
    _check(libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0), "not dumpable")
    if "netns" in layers:
        _enter_netns(libc)


def _enter_netns(libc: Any) -> None:
    _single_threaded("a network namespace")
    if libc.unshare(_CLONE_NEWNET) == 0:
        return
    uid, gid = os.getuid(), os.getgid()
    _check(libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET), "a network namespace")
    # map ourselves to ourselves, so files and getuid() look the same inside
    with contextlib.suppress(OSError):
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    with contextlib.suppress(OSError):
        Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")


def confine(*, layers: Sequence[str], paths: Mapping[str, Sequence[str]]) -> None:
    """Apply Landlock (with `paths` from `plan_paths`) then seccomp; ConfinementError when either fails."""
    if "landlock" in layers:
        _landlock(paths)
    if "seccomp" in layers:
        _seccomp()


def _landlock(paths: Mapping[str, Sequence[str]]) -> None:
    _single_threaded("Landlock")  # restrict_self binds this thread and the threads it starts later, no other
    libc = _libc()
    abi = landlock_abi()
    if abi < 1:
        raise ConfinementError("Landlock is not available")
    fs, net, scoped = _handled(abi)
    attr = struct.pack("<QQQ", fs, net, scoped)[: 8 if abi < 4 else 16 if abi < 6 else 24]
    buffer = ctypes.create_string_buffer(attr, len(attr))
    ruleset = int(libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, buffer, ctypes.c_size_t(len(attr)), 0))
    _check(ruleset, "a Landlock ruleset")
    try:
        proc_self = os.path.realpath(f"/proc/{os.getpid()}")  # the rule binds this process's /proc entry
        for path in (*paths.get("read", ()), proc_self):
            _add_rule(libc, ruleset, path, _READ & fs)
        for path in paths.get("write", ()):
            _add_rule(libc, ruleset, path, _SCRATCH & fs)
        for path in paths.get("device", ()):
            _add_rule(libc, ruleset, path, (_FS["read_file"] | _FS["write_file"] | _FS["ioctl_dev"]) & fs)
        _check(libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0), "the Landlock restriction")
    finally:
        os.close(ruleset)


def _add_rule(libc: Any, ruleset: int, path: str, access: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # gone since the parent planned it: nothing to grant
    try:
        if not os.path.isdir(path):
            access &= _FILE_ONLY
        attr = struct.pack("<Qi", access, fd)  # struct landlock_path_beneath_attr is packed: 12 bytes
        buffer = ctypes.create_string_buffer(attr, len(attr))
        _check(libc.syscall(_SYS_LANDLOCK_ADD_RULE, ruleset, _LANDLOCK_RULE_PATH_BENEATH, buffer, 0), "a rule")
    finally:
        os.close(fd)


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def seccomp_program(arch: str) -> list[tuple[int, int, int, int]]:
    """The BPF program as (code, jt, jf, k) rows for `arch`; ConfinementError for an architecture we do not know."""
    if arch not in _ARCHES:
        raise ConfinementError(f"no seccomp filter for the {arch} architecture")
    spec = _ARCHES[arch]
    numbers: dict[str, int] = spec["numbers"]
    eperm = _SECCOMP_RET_ERRNO | errno.EPERM
    arg0 = 16  # offsetof(struct seccomp_data, args[0]); its low 32 bits on these little-endian arches
    program = [
        (_BPF_LD_W_ABS, 0, 0, 4),  # arch
        (_BPF_JEQ_K, 1, 0, spec["audit"]),
        (_BPF_RET_K, 0, 0, _SECCOMP_RET_KILL_PROCESS),
        (_BPF_LD_W_ABS, 0, 0, 0),  # nr
    ]
    if arch == "x86_64":  # the x32 ABI shares AUDIT_ARCH_X86_64 with its own numbers
        program += [(_BPF_JGE_K, 0, 1, _X32_SYSCALL_BIT), (_BPF_RET_K, 0, 0, eperm)]
    for name in _SECCOMP_DENIED:
        if name in numbers:
            program += [(_BPF_JEQ_K, 0, 1, numbers[name]), (_BPF_RET_K, 0, 0, eperm)]
    program += [(_BPF_JEQ_K, 0, 1, numbers["clone3"]), (_BPF_RET_K, 0, 0, _SECCOMP_RET_ERRNO | errno.ENOSYS)]
    program += [
        (_BPF_JEQ_K, 0, 4, numbers["clone"]),
        (_BPF_LD_W_ABS, 0, 0, arg0),
        (_BPF_JSET_K, 1, 0, _CLONE_THREAD),
        (_BPF_RET_K, 0, 0, eperm),
        (_BPF_RET_K, 0, 0, _SECCOMP_RET_ALLOW),
        (_BPF_JEQ_K, 0, 4, numbers["socketpair"]),
        (_BPF_LD_W_ABS, 0, 0, arg0),
        (_BPF_JEQ_K, 1, 0, _AF_UNIX),
        (_BPF_RET_K, 0, 0, eperm),
        (_BPF_RET_K, 0, 0, _SECCOMP_RET_ALLOW),
        (_BPF_RET_K, 0, 0, _SECCOMP_RET_ALLOW),
    ]
    return program


def _seccomp() -> None:
    arch = platform.machine()
    rows = seccomp_program(arch)
    filters = (_SockFilter * len(rows))(*(_SockFilter(*row) for row in rows))
    program = _SockFprog(len(rows), filters)
    libc = _libc()
    # TSYNC: every thread of the process gets the filter, not only this one
    result = libc.syscall(
        _ARCHES[arch]["seccomp"], _SECCOMP_SET_MODE_FILTER, _SECCOMP_FILTER_FLAG_TSYNC, ctypes.byref(program)
    )
    _check(result, "the seccomp filter")
    if result != 0:
        raise ConfinementError("the seccomp filter could not reach every thread")


def _single_threaded(layer: str) -> None:
    with contextlib.suppress(OSError):
        if len(os.listdir("/proc/self/task")) != 1:
            raise ConfinementError(f"{layer} needs a single-threaded process")


def _check(result: int, what: str) -> None:
    if result < 0:
        number = ctypes.get_errno()
        raise ConfinementError(f"could not set up {what} ({errno.errorcode.get(number, number)})")
