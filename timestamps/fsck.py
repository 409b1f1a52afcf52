"""log_fsck: re-derive the Merkle log from its entries and hold everything stored against it.

One pass over the entries in index order: every leaf is hashed again (RFC 9162) and appended to
an in-memory frontier, which yields every complete-subtree hash the log should store and the root
at every size a checkpoint was signed. Work is O(n) hashes and O(n / BATCH) queries; memory is the
frontier (log2 n hashes), one batch of nodes and one root per checkpoint. Every run is a full
check (no state between runs): rows edited behind the triggers' back anywhere in the log are found.

Appends may go on meanwhile: the check covers the log as the head stood when it began (appends
commit their entries, nodes and head together). Rows past that size are only judged when the head
has not moved by the end (a "quiet" run); otherwise the next run judges them.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from django.conf import settings

from timestamps import keys, merkle, note, rfc3161
from timestamps.models import Checkpoint, LogEntry, LogHead, LogNode, SigningKey, TimestampToken
from timestamps.selectors import node_key

BATCH = 1000
# below SQLite's oldest bound on parameters per statement
NODE_QUERY_CHUNK = 900
MAX_PROBLEMS = 100


@dataclass
class FsckReport:
    """What a check found: the log size it derived and the problems, first MAX_PROBLEMS of them."""

    size: int = 0
    problems: list[str] = field(default_factory=list)
    omitted: int = 0

    @property
    def clean(self) -> bool:
        """No problem found."""
        return not self.problems

    def add(self, problem: str) -> None:
        """Record a problem; past MAX_PROBLEMS only count it."""
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)
        else:
            self.omitted += 1

    def summary(self) -> str:
        """The problems, one a line."""
        lines = list(self.problems)
        if self.omitted:
            lines.append(f"... and {self.omitted} more")
        return "\n".join(lines)


class _Derivation:
    """The tree re-derived leaf by leaf."""

    def __init__(self, checkpoint_sizes: Iterable[int]) -> None:
        self.size = 0
        self.peaks: list[bytes] = []
        self.wanted = set(checkpoint_sizes)
        self.roots = {0: merkle.EMPTY_ROOT}

    def append(self, leaf: bytes) -> list[tuple[merkle.NodeId, bytes]]:
        self.peaks, nodes = merkle.frontier_append(self.size, self.peaks, [leaf])
        self.size += 1
        if self.size in self.wanted:
            self.roots[self.size] = merkle.frontier_root(self.peaks)
        return nodes


def _check_nodes(expected: dict[int, bytes], report: FsckReport) -> None:
    keys_wanted = sorted(expected)
    for start in range(0, len(keys_wanted), NODE_QUERY_CHUNK):
        chunk = keys_wanted[start : start + NODE_QUERY_CHUNK]
        stored = dict(LogNode.objects.filter(key__in=chunk).values_list("key", "hash"))
        for key in chunk:
            label = f"node {key >> 56}/{key & ((1 << 56) - 1)}"
            if key not in stored:
                report.add(f"{label} is missing")
            elif bytes(stored[key]) != expected[key]:
                report.add(f"{label} does not match the hash re-derived from the entries")


def _check_entries(size: int, derivation: _Derivation, report: FsckReport) -> None:
    entries = LogEntry.objects.filter(index__lt=size).order_by("index")
    rows = entries.values_list("index", "data", "leaf_hash").iterator(chunk_size=BATCH)
    expected: dict[int, bytes] = {}
    for index, data, stored_leaf in rows:
        if index != derivation.size:
            # Past a gap the tree is not defined: nothing after it can be checked.
            report.add(f"entry {derivation.size} is missing (the next stored entry is {index})")
            break
        leaf = merkle.leaf_hash(bytes(data))
        if bytes(stored_leaf) != leaf:
            report.add(f"entry {index}: stored leaf hash does not match its data")
        for node, digest in derivation.append(leaf):
            expected[node_key(node)] = digest
        if len(expected) >= 2 * BATCH:
            _check_nodes(expected, report)
            expected = {}
    else:
        if derivation.size < size:
            report.add(f"entries {derivation.size} to {size - 1} are missing")
    _check_nodes(expected, report)


def _check_head(head: LogHead | None, derivation: _Derivation, report: FsckReport) -> None:
    size = head.size if head else 0
    if size != derivation.size:
        report.add(f"the head says {size} entries; {derivation.size} were re-derived")
        return
    if head is None:
        return
    if bytes(head.root_hash) != merkle.frontier_root(derivation.peaks):
        report.add(f"the head's root at size {size} does not match the re-derived root")
    if bytes(head.frontier) != b"".join(derivation.peaks):
        report.add(f"the head's peaks at size {size} do not match the re-derived peaks")


def _check_nothing_beyond(size: int, report: FsckReport) -> None:
    """With the head still at `size`: no entry, node, checkpoint or token may lie past it."""
    node_count = sum(size >> level for level in range(size.bit_length()))
    stored = LogNode.objects.count()
    if stored != node_count:
        report.add(f"{stored} tree nodes are stored; a log of {size} entries has {node_count}")
    beyond = LogEntry.objects.filter(index__gte=size).count()
    if beyond:
        report.add(f"{beyond} entries are stored past the head's size {size}")
    for checkpoint in Checkpoint.objects.filter(size__gt=size).order_by("size", "pk"):
        report.add(f"checkpoint {checkpoint.pk} (size {checkpoint.size}) is beyond the log of {size} entries")
    tokens = TimestampToken.objects.filter(serial__gte=size).count()
    if tokens:
        report.add(f"{tokens} timestamp tokens have serials past the head's size {size}")


def _check_checkpoints(checkpoints: Sequence[Checkpoint], derivation: _Derivation, report: FsckReport) -> None:
    verifiers: dict[int, str | None] = {}
    for checkpoint in checkpoints:
        label = f"checkpoint {checkpoint.pk} (size {checkpoint.size})"
        root = derivation.roots.get(checkpoint.size)
        if root is None:
            report.add(f"{label} is beyond the re-derived log of {derivation.size} entries")
        elif bytes(checkpoint.root_hash) != root:
            report.add(f"{label}: its root does not match the re-derived root at its size")
        if checkpoint.key_id not in verifiers:
            try:
                verifiers[checkpoint.key_id] = (
                    keys.log_verifier_key(checkpoint.key) if checkpoint.key.purpose == SigningKey.Purpose.LOG else None
                )
            except keys.KeyConfigurationError:
                verifiers[checkpoint.key_id] = None
        verifier = verifiers[checkpoint.key_id]
        if verifier is None:
            report.add(f"{label}: its key {checkpoint.key.kid[:16]} is not a log key")
            continue
        try:
            text = note.parse_checkpoint(note.open_note(checkpoint.note, [verifier]))
        except note.NoteError:
            report.add(f"{label}: its signed note does not verify with its key")
            continue
        if (text.origin, text.size, text.root_hash) != (
            settings.MODELCOURT_LOG_ORIGIN,
            checkpoint.size,
            bytes(checkpoint.root_hash),
        ):
            report.add(f"{label}: its signed note names another origin, size or root")


def _check_tokens(size: int, report: FsckReport) -> None:
    roots = [
        x509.load_pem_x509_certificate(pem.encode())
        for pem in SigningKey.objects.filter(purpose=SigningKey.Purpose.TSA_CA).values_list(
            "certificate_pem", flat=True
        )
    ]
    leaves: dict[int, x509.Certificate | None] = {}
    tokens = (
        TimestampToken.objects.filter(serial__lt=size)
        .select_related("log_entry", "key")
        .order_by("serial")
        .iterator(chunk_size=BATCH)
    )
    for token in tokens:
        label = f"timestamp token {token.serial}"
        der = bytes(token.token)
        if token.log_entry_id != token.serial:
            report.add(f"{label} is filed under log entry {token.log_entry_id}")
        if bytes(token.log_entry.data) != der:
            report.add(f"{label}: log entry {token.log_entry_id} holds other bytes")
        if token.key_id not in leaves:
            pem = token.key.certificate_pem
            leaves[token.key_id] = x509.load_pem_x509_certificate(pem.encode()) if pem else None
        try:
            info = rfc3161.verify_token(der, roots=roots, leaf=leaves[token.key_id])
        except rfc3161.TokenError:
            report.add(f"{label} does not verify with the published TSA certificates")
            continue
        stored = (token.serial, token.hash_algorithm, bytes(token.message_imprint), token.gen_time)
        if (info.serial, info.hash_algorithm, info.message_imprint, info.gen_time) != stored:
            report.add(f"{label}: its row disagrees with the signed token (serial, imprint or time)")


def log_check() -> FsckReport:
    """Check the stored log against itself: entries, nodes, head, checkpoints and time-stamp tokens."""
    report = FsckReport()
    head = LogHead.objects.filter(id=1).first()
    size = head.size if head else 0
    checkpoints = list(Checkpoint.objects.filter(size__lte=size).select_related("key").order_by("size", "pk"))
    derivation = _Derivation(checkpoint.size for checkpoint in checkpoints)
    _check_entries(size, derivation, report)
    report.size = derivation.size
    _check_head(head, derivation, report)
    _check_checkpoints(checkpoints, derivation, report)
    _check_tokens(size, report)
    # quiet: the head has not moved since the start (or there is still none)
    if LogHead.objects.filter(id=1).values_list("size", flat=True).first() == (head.size if head else None):
        _check_nothing_beyond(size, report)
    return report
