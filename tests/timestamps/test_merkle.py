"""The stored-hash Merkle tree against a naive RFC 9162 reference and the RFC 6962 test vectors."""

from collections.abc import Callable, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from timestamps import merkle

# The project conftest has autouse function-scoped fixtures; these tests touch none of their state.
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
MAX_SIZE = 300


# -- The reference: RFC 9162 section 2.1, transcribed recursively over a list of leaf hashes.


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(leaves: Sequence[bytes]) -> bytes:
    if not leaves:
        return merkle.EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = _k(len(leaves))
    return merkle.node_hash(ref_mth(leaves[:k]), ref_mth(leaves[k:]))


def ref_path(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    if len(leaves) == 1:
        return []
    k = _k(len(leaves))
    if m < k:
        return [*ref_path(m, leaves[:k]), ref_mth(leaves[k:])]
    return [*ref_path(m - k, leaves[k:]), ref_mth(leaves[:k])]


def ref_subproof(m: int, leaves: Sequence[bytes], b: bool) -> list[bytes]:
    if m == len(leaves):
        return [] if b else [ref_mth(leaves)]
    k = _k(len(leaves))
    if m <= k:
        return [*ref_subproof(m, leaves[:k], b), ref_mth(leaves[k:])]
    return [*ref_subproof(m - k, leaves[k:], False), ref_mth(leaves[:k])]


def _entries(n: int) -> list[bytes]:
    return [b"entry %d" % i for i in range(n)]


LEAVES = [merkle.leaf_hash(entry) for entry in _entries(MAX_SIZE)]


@pytest.fixture(scope="module")
def store() -> merkle.MemoryHashStore:
    store = merkle.MemoryHashStore()
    for entry in _entries(MAX_SIZE):
        store.append(entry)
    return store


class CountingReader:
    """A HashReader over a store that records every call."""

    def __init__(self, store: merkle.MemoryHashStore) -> None:
        self.store = store
        self.calls: list[list[merkle.NodeId]] = []

    def __call__(self, ids: Sequence[merkle.NodeId]) -> list[bytes]:
        self.calls.append(list(ids))
        return self.store.read(ids)


def _flip(value: bytes, position: int) -> bytes:
    return value[:position] + bytes([value[position] ^ 1]) + value[position + 1 :]


# -- Hashing and the stored layout


def test_hashes_are_domain_separated() -> None:
    assert merkle.EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert merkle.leaf_hash(b"") == bytes.fromhex("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d")
    assert merkle.node_hash(LEAVES[0], LEAVES[1]) != merkle.leaf_hash(LEAVES[0] + LEAVES[1])


def test_store_holds_exactly_the_complete_subtrees(store: merkle.MemoryHashStore) -> None:
    expected = {
        (level, index): ref_mth(LEAVES[index << level : (index + 1) << level])
        for level in range(MAX_SIZE.bit_length())
        for index in range(MAX_SIZE >> level)
    }

    assert store.nodes == expected


@SETTINGS
@given(start=st.integers(0, MAX_SIZE), count=st.integers(0, 700))
def test_batch_append_equals_one_by_one(start: int, count: int) -> None:
    entries = _entries(start + count)
    single = merkle.MemoryHashStore()
    for entry in entries:
        single.append(entry)
    batch = merkle.MemoryHashStore()
    for entry in entries[:start]:
        batch.append(entry)

    index = batch.append_many(entries[start:])

    assert index == start
    assert batch.nodes == single.nodes


@SETTINGS
@given(start=st.integers(0, MAX_SIZE - 1), count=st.integers(1, 64))
def test_batch_append_reads_once_and_only_below_start(start: int, count: int, store: merkle.MemoryHashStore) -> None:
    reader = CountingReader(store)

    nodes = merkle.nodes_for_append_many(start, LEAVES[start : start + count], reader)

    assert len(reader.calls) <= 1
    assert all((index + 1) << level <= start for call in reader.calls for level, index in call)
    assert all(store.nodes[node] == digest for node, digest in nodes if node in store.nodes)


def test_single_append_returns_the_nodes_it_completes(store: merkle.MemoryHashStore) -> None:
    # Leaf 7 completes the subtrees of 1, 2, 4 and 8 leaves ending at it.
    nodes = merkle.nodes_for_append(7, LEAVES[7], store.read)

    assert dict(nodes) == {
        (0, 7): LEAVES[7],
        (1, 3): store.nodes[(1, 3)],
        (2, 1): store.nodes[(2, 1)],
        (3, 0): store.nodes[(3, 0)],
    }


# -- Tree hashes and proofs against the reference


@SETTINGS
@given(size=st.integers(0, MAX_SIZE))
def test_tree_hash_matches_reference(size: int, store: merkle.MemoryHashStore) -> None:
    assert merkle.tree_hash(size, store.read) == ref_mth(LEAVES[:size])


@SETTINGS
@given(data=st.data(), size=st.integers(1, MAX_SIZE))
def test_inclusion_proof_matches_reference_and_verifies(
    data: st.DataObject, size: int, store: merkle.MemoryHashStore
) -> None:
    index = data.draw(st.integers(0, size - 1))

    proof = merkle.inclusion_proof(index, size, store.read)

    assert proof == ref_path(index, LEAVES[:size])
    assert merkle.verify_inclusion(index, size, LEAVES[index], proof, ref_mth(LEAVES[:size]))


@SETTINGS
@given(data=st.data(), second=st.integers(1, MAX_SIZE))
def test_consistency_proof_matches_reference_and_verifies(
    data: st.DataObject, second: int, store: merkle.MemoryHashStore
) -> None:
    first = data.draw(st.integers(1, second))

    proof = merkle.consistency_proof(first, second, store.read)

    assert proof == ref_subproof(first, LEAVES[:second], True)
    assert merkle.verify_consistency(first, second, ref_mth(LEAVES[:first]), ref_mth(LEAVES[:second]), proof)


def test_every_proof_up_to_64_leaves_matches_reference(store: merkle.MemoryHashStore) -> None:
    for size in range(1, 65):
        for m in range(size):
            assert merkle.inclusion_proof(m, size, store.read) == ref_path(m, LEAVES[:size]), (m, size)
            assert merkle.consistency_proof(m + 1, size, store.read) == ref_subproof(m + 1, LEAVES[:size], True)


@pytest.mark.parametrize(
    "call",
    [
        lambda read: merkle.tree_hash(MAX_SIZE, read),
        lambda read: merkle.inclusion_proof(123, MAX_SIZE, read),
        lambda read: merkle.consistency_proof(77, MAX_SIZE, read),
    ],
    ids=["tree_hash", "inclusion_proof", "consistency_proof"],
)
def test_each_function_reads_once(call: Callable[[merkle.HashReader], object], store: merkle.MemoryHashStore) -> None:
    reader = CountingReader(store)

    call(reader)

    assert len(reader.calls) == 1


# -- Tampering


@SETTINGS
@given(data=st.data(), size=st.integers(2, MAX_SIZE))
def test_inclusion_fails_when_a_hash_is_altered(data: st.DataObject, size: int, store: merkle.MemoryHashStore) -> None:
    index = data.draw(st.integers(0, size - 1))
    proof = merkle.inclusion_proof(index, size, store.read)
    root = ref_mth(LEAVES[:size])
    which = data.draw(st.integers(0, len(proof) - 1))
    byte = data.draw(st.integers(0, 31))

    bad = [*proof[:which], _flip(proof[which], byte), *proof[which + 1 :]]
    assert not merkle.verify_inclusion(index, size, LEAVES[index], bad, root)
    assert not merkle.verify_inclusion(index, size, _flip(LEAVES[index], byte), proof, root)
    assert not merkle.verify_inclusion(index, size, LEAVES[index], proof, _flip(root, byte))
    assert not merkle.verify_inclusion(index, size, LEAVES[index], proof[:-1], root)
    assert not merkle.verify_inclusion(index, size, LEAVES[index], [*proof, root], root)


@SETTINGS
@given(data=st.data(), size=st.integers(2, MAX_SIZE))
def test_inclusion_fails_at_another_index_or_size(
    data: st.DataObject, size: int, store: merkle.MemoryHashStore
) -> None:
    index = data.draw(st.integers(0, size - 1))
    proof = merkle.inclusion_proof(index, size, store.read)
    root = ref_mth(LEAVES[:size])
    # Certificate Transparency's corruption probes. Not every other size fails: a proof in a tree of
    # 3 leaves also proves leaf 0 in a tree of 4 with the same root, which says nothing false.
    probes = [(index - 1, size), (index + 1, size), (index ^ 2, size), (index, size * 2), (index, size // 2)]

    for other_index, other_size in probes:
        if 0 <= other_index < other_size:
            assert not merkle.verify_inclusion(other_index, other_size, LEAVES[index], proof, root), (
                other_index,
                other_size,
            )


@SETTINGS
@given(data=st.data(), second=st.integers(2, MAX_SIZE))
def test_consistency_fails_when_a_hash_is_altered(
    data: st.DataObject, second: int, store: merkle.MemoryHashStore
) -> None:
    first = data.draw(st.integers(1, second - 1))
    proof = merkle.consistency_proof(first, second, store.read)
    first_root, second_root = ref_mth(LEAVES[:first]), ref_mth(LEAVES[:second])
    which = data.draw(st.integers(0, len(proof) - 1))
    byte = data.draw(st.integers(0, 31))

    bad = [*proof[:which], _flip(proof[which], byte), *proof[which + 1 :]]
    assert not merkle.verify_consistency(first, second, first_root, second_root, bad)
    assert not merkle.verify_consistency(first, second, _flip(first_root, byte), second_root, proof)
    assert not merkle.verify_consistency(first, second, first_root, _flip(second_root, byte), proof)
    assert not merkle.verify_consistency(first, second, second_root, first_root, proof)
    assert not merkle.verify_consistency(first, second, first_root, second_root, [])
    assert not merkle.verify_consistency(first, second, first_root, second_root, proof[:-1])
    assert not merkle.verify_consistency(first, second, first_root, second_root, [*proof, second_root])
    assert not merkle.verify_consistency(first, second, first_root, second_root, [proof[0], *proof])


@SETTINGS
@given(data=st.data(), second=st.integers(2, MAX_SIZE))
def test_consistency_fails_at_other_sizes(data: st.DataObject, second: int, store: merkle.MemoryHashStore) -> None:
    first = data.draw(st.integers(1, second - 1))
    proof = merkle.consistency_proof(first, second, store.read)
    first_root, second_root = ref_mth(LEAVES[:first]), ref_mth(LEAVES[:second])
    probes = [(first - 1, second), (first + 1, second), (first ^ 2, second), (first, second * 2), (first, second // 2)]

    for other_first, other_second in probes:
        if 0 < other_first <= other_second:
            assert not merkle.verify_consistency(other_first, other_second, first_root, second_root, proof), (
                other_first,
                other_second,
            )


def test_equal_sizes_are_consistent_only_with_equal_roots_and_no_proof() -> None:
    root = ref_mth(LEAVES[:5])

    assert merkle.verify_consistency(5, 5, root, root, [])
    assert not merkle.verify_consistency(5, 5, root, _flip(root, 0), [])
    assert not merkle.verify_consistency(5, 5, root, root, [root])


def test_proof_hashes_of_the_wrong_length_fail() -> None:
    assert not merkle.verify_inclusion(0, 2, LEAVES[0], [LEAVES[1] + b"\x00"], ref_mth(LEAVES[:2]))
    assert not merkle.verify_consistency(1, 2, LEAVES[0], ref_mth(LEAVES[:2]), [LEAVES[1][:31]])


# -- Arguments out of range


@pytest.mark.parametrize(("index", "size"), [(0, 0), (5, 5), (-1, 3), (6, 5)])
def test_inclusion_rejects_index_outside_tree(index: int, size: int, store: merkle.MemoryHashStore) -> None:
    with pytest.raises(ValueError, match="index"):
        merkle.inclusion_proof(index, size, store.read)
    with pytest.raises(ValueError, match="index"):
        merkle.verify_inclusion(index, size, LEAVES[0], [], merkle.EMPTY_ROOT)


@pytest.mark.parametrize(("first", "second"), [(0, 5), (6, 5), (-1, 0)])
def test_consistency_rejects_sizes_out_of_order(first: int, second: int, store: merkle.MemoryHashStore) -> None:
    with pytest.raises(ValueError, match="first"):
        merkle.consistency_proof(first, second, store.read)
    with pytest.raises(ValueError, match="first"):
        merkle.verify_consistency(first, second, merkle.EMPTY_ROOT, merkle.EMPTY_ROOT, [])


def test_negative_sizes_are_rejected(store: merkle.MemoryHashStore) -> None:
    with pytest.raises(ValueError, match="size"):
        merkle.tree_hash(-1, store.read)
    with pytest.raises(ValueError, match="start"):
        merkle.nodes_for_append_many(-1, [LEAVES[0]], store.read)


def test_a_reader_returning_too_few_hashes_is_an_error() -> None:
    with pytest.raises(ValueError, match="returned 0 hashes"):
        merkle.tree_hash(3, lambda ids: [])


def test_empty_tree_needs_no_read() -> None:
    assert merkle.tree_hash(0, lambda ids: pytest.fail("read called")) == merkle.EMPTY_ROOT


# -- RFC 6962 test vectors (certificate-transparency's merkle tree tests, also used by Trillian)

CT_ENTRIES = [
    bytes.fromhex(h)
    for h in ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
]
CT_ROOTS = [
    bytes.fromhex(h)
    for h in [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ]
]
# fmt: off
# (0-based index, size, proof)
CT_INCLUSION = [
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]
CT_CONSISTENCY = [
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]
# fmt: on


@pytest.fixture(scope="module")
def ct_store() -> merkle.MemoryHashStore:
    store = merkle.MemoryHashStore()
    for entry in CT_ENTRIES:
        store.append(entry)
    return store


def test_rfc6962_roots(ct_store: merkle.MemoryHashStore) -> None:
    assert [merkle.tree_hash(size, ct_store.read) for size in range(1, 9)] == CT_ROOTS


@pytest.mark.parametrize(("index", "size", "proof"), CT_INCLUSION)
def test_rfc6962_inclusion_proofs(index: int, size: int, proof: list[str], ct_store: merkle.MemoryHashStore) -> None:
    expected = [bytes.fromhex(h) for h in proof]

    assert merkle.inclusion_proof(index, size, ct_store.read) == expected
    assert merkle.verify_inclusion(index, size, merkle.leaf_hash(CT_ENTRIES[index]), expected, CT_ROOTS[size - 1])


@pytest.mark.parametrize(("first", "second", "proof"), CT_CONSISTENCY)
def test_rfc6962_consistency_proofs(
    first: int, second: int, proof: list[str], ct_store: merkle.MemoryHashStore
) -> None:
    expected = [bytes.fromhex(h) for h in proof]

    assert merkle.consistency_proof(first, second, ct_store.read) == expected
    assert merkle.verify_consistency(first, second, CT_ROOTS[first - 1], CT_ROOTS[second - 1], expected)


@SETTINGS
@given(start=st.integers(0, MAX_SIZE - 1), count=st.integers(0, 64))
def test_frontier_append_matches_stored_nodes_and_root(start: int, count: int, store: merkle.MemoryHashStore) -> None:
    # given the peaks of the first `start` leaves, read from storage
    peaks = merkle.frontier(start, store.read)
    assert merkle.frontier_root(peaks) == merkle.tree_hash(start, store.read)

    # when more leaves are appended from the peaks alone
    end = min(start + count, MAX_SIZE)
    new_peaks, nodes = merkle.frontier_append(start, peaks, LEAVES[start:end])

    # then the completed nodes are the stored ones and the new peaks give the new root
    assert dict(nodes) == dict(merkle.nodes_for_append_many(start, LEAVES[start:end], store.read))
    assert merkle.frontier_root(new_peaks) == merkle.tree_hash(end, store.read)
    assert new_peaks == merkle.frontier(end, store.read)


def test_frontier_append_checks_the_peak_count() -> None:
    with pytest.raises(ValueError, match="peaks"):
        merkle.frontier_append(3, [LEAVES[0]], [LEAVES[3]])
