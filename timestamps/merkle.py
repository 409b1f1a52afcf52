"""RFC 9162 Merkle tree hashes and proofs over stored complete-subtree hashes (the layout of Go's sumdb/tlog).

Storage holds one hash per complete subtree, addressed by `NodeId` (level, index): the root of the
2**level leaves starting at leaf index * 2**level. Every function takes a `HashReader` and calls it
at most once, with every id it needs: each call is a database query.
"""

import hashlib
from collections.abc import Callable, Sequence

NodeId = tuple[int, int]
HashReader = Callable[[Sequence[NodeId]], Sequence[bytes]]
_Range = tuple[int, int]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(entry: bytes) -> bytes:
    """RFC 9162 leaf hash: SHA-256(0x00 || entry)."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 interior node hash: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def nodes_for_append(index: int, leaf: bytes, read: HashReader) -> list[tuple[NodeId, bytes]]:
    """Subtree hashes completed by appending the leaf hash `leaf` as leaf number `index`."""
    return nodes_for_append_many(index, [leaf], read)


def nodes_for_append_many(start: int, leaves: Sequence[bytes], read: HashReader) -> list[tuple[NodeId, bytes]]:
    """Subtree hashes completed by appending the leaf hashes `leaves` to a tree of `start` leaves."""
    if start < 0:
        raise ValueError(f"start must be >= 0 (start={start})")
    end = start + len(leaves)
    # Only the first new parent on a level can have an old left child: when the level's first new
    # node has an odd index, its left sibling was completed before `start`.
    old_ids = [
        (level, (start >> level) - 1)
        for level in range(end.bit_length())
        if (start >> level) & 1 and (start >> (level + 1)) < (end >> (level + 1))
    ]
    old = dict(zip(old_ids, _read(read, old_ids), strict=True))
    nodes: list[tuple[NodeId, bytes]] = [((0, start + offset), leaf) for offset, leaf in enumerate(leaves)]
    row, level = list(leaves), 0
    while (start >> (level + 1)) < (end >> (level + 1)):
        row_start = start >> level
        parents = [
            node_hash(row[2 * i - row_start] if 2 * i >= row_start else old[(level, 2 * i)], row[2 * i + 1 - row_start])
            for i in range(start >> (level + 1), end >> (level + 1))
        ]
        level += 1
        nodes.extend(((level, (start >> level) + offset), digest) for offset, digest in enumerate(parents))
        row = parents
    return nodes


def frontier(size: int, read: HashReader) -> list[bytes]:
    """The peaks of a tree of `size` leaves: its maximal complete subtrees, left to right (one read)."""
    if size < 0:
        raise ValueError(f"size must be >= 0 (size={size})")
    return _read(read, _subtrees(0, size))


def frontier_append(
    size: int, peaks: Sequence[bytes], leaves: Sequence[bytes]
) -> tuple[list[bytes], list[tuple[NodeId, bytes]]]:
    """Append leaf hashes to a tree known by its peaks, reading nothing.

    Returns the new peaks and every subtree hash the leaves complete (the leaves included).
    """
    if len(peaks) != size.bit_count():
        raise ValueError(f"a tree of {size} leaves has {size.bit_count()} peaks, not {len(peaks)}")
    stack, nodes = list(peaks), []
    for index, leaf in enumerate(leaves, start=size):
        node, level = leaf, 0
        nodes.append(((0, index), leaf))
        # Each trailing one bit of `index` is a peak of equal height that the new node completes.
        while (index >> level) & 1:
            node = node_hash(stack.pop(), node)
            level += 1
            nodes.append(((level, index >> level), node))
        stack.append(node)
    return stack, nodes


def frontier_root(peaks: Sequence[bytes]) -> bytes:
    """RFC 9162 MTH of a tree from its peaks: they join right to left."""
    if not peaks:
        return EMPTY_ROOT
    root = peaks[-1]
    for peak in reversed(peaks[:-1]):
        root = node_hash(peak, root)
    return root


def tree_hash(size: int, read: HashReader) -> bytes:
    """RFC 9162 MTH of the first `size` leaves."""
    if size < 0:
        raise ValueError(f"size must be >= 0 (size={size})")
    if size == 0:
        return EMPTY_ROOT
    return _range_hashes([(0, size)], read)[0]


def inclusion_proof(index: int, size: int, read: HashReader) -> list[bytes]:
    """RFC 9162 inclusion proof PATH(index, D[0:size]), hashes nearest the leaf first."""
    if not 0 <= index < size:
        raise ValueError(f"inclusion proofs need 0 <= index < size (index={index}, size={size})")
    ranges: list[_Range] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo += k
    return _range_hashes(ranges[::-1], read)


def consistency_proof(first: int, second: int, read: HashReader) -> list[bytes]:
    """RFC 9162 consistency proof PROOF(first, D[0:second]); empty when the sizes are equal."""
    _check_sizes(first, second)
    ranges: list[_Range] = []
    lo, hi = 0, second
    while hi != first:
        k = _split(hi - lo)
        if first <= lo + k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo += k
    # Having gone right at least once, the old tree's last subtree is not its root, so the
    # verifier needs it (SUBPROOF with b = false).
    if lo:
        ranges.append((lo, hi))
    return _range_hashes(ranges[::-1], read)


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> bool:
    """Check an inclusion proof of the leaf hash `leaf` by RFC 9162 section 2.1.3.2."""
    if not 0 <= index < size:
        raise ValueError(f"inclusion proofs need 0 <= index < size (index={index}, size={size})")
    if any(len(node) != HASH_SIZE for node in proof):
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def verify_consistency(first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]) -> bool:
    """Check a consistency proof by RFC 9162 section 2.1.4.2; equal sizes need equal roots and no proof."""
    _check_sizes(first, second)
    if first == second:
        return not proof and first_root == second_root
    if not proof or any(len(node) != HASH_SIZE for node in proof):
        return False
    path = list(proof)
    if first & (first - 1) == 0:
        # The old tree is one complete subtree of the new one: the proof leaves out what the verifier knows.
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == first_root and sr == second_root


class MemoryHashStore:
    """Dict-backed node storage, for tests and benchmarks."""

    def __init__(self) -> None:
        self.nodes: dict[NodeId, bytes] = {}
        self.size = 0

    def append(self, entry: bytes) -> int:
        """Append one entry; returns its index."""
        return self.append_many([entry])

    def append_many(self, entries: Sequence[bytes]) -> int:
        """Append entries as one batch; returns the index of the first."""
        start = self.size
        self.nodes.update(nodes_for_append_many(start, [leaf_hash(entry) for entry in entries], self.read))
        self.size += len(entries)
        return start

    def read(self, ids: Sequence[NodeId]) -> list[bytes]:
        """The HashReader over this store."""
        return [self.nodes[node] for node in ids]


def _check_sizes(first: int, second: int) -> None:
    if not 0 < first <= second:
        raise ValueError(f"consistency proofs need 0 < first <= second (first={first}, second={second})")


def _split(width: int) -> int:
    """RFC 9162's k: the largest power of two smaller than `width` (> 1)."""
    return 1 << ((width - 1).bit_length() - 1)


def _subtrees(lo: int, hi: int) -> list[NodeId]:
    """Stored subtrees covering leaves [lo, hi), left to right, each as large as alignment allows."""
    ids: list[NodeId] = []
    while lo < hi:
        level = (hi - lo).bit_length() - 1
        if lo:
            level = min(level, (lo & -lo).bit_length() - 1)
        ids.append((level, lo >> level))
        lo += 1 << level
    return ids


def _range_hashes(ranges: Sequence[_Range], read: HashReader) -> list[bytes]:
    """MTH of each leaf range (each starting where RFC 9162's recursion splits), in one read."""
    groups = [_subtrees(lo, hi) for lo, hi in ranges]
    hashes = _read(read, [node for group in groups for node in group])
    result, offset = [], 0
    for group in groups:
        # A ragged range is its complete subtrees joined right to left, as RFC 9162's recursion does.
        root = hashes[offset + len(group) - 1]
        for left in reversed(hashes[offset : offset + len(group) - 1]):
            root = node_hash(left, root)
        result.append(root)
        offset += len(group)
    return result


def _read(read: HashReader, ids: Sequence[NodeId]) -> list[bytes]:
    if not ids:
        return []
    hashes = list(read(ids))
    if len(hashes) != len(ids):
        raise ValueError(f"the hash reader returned {len(hashes)} hashes for {len(ids)} ids")
    return hashes
