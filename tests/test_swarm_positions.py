"""Per-chunk state by position (issue 16): the bitsets and indexes that replaced sets
and dicts of hashes answer exactly as the sets did.

Each representation is run against a plain set-based reference model on random
sequences of operations (hypothesis): ``ChunkList.find`` against a scan, a key's
:class:`FirstPositions` and :class:`HashView` against the dict and list they replaced,
:class:`PositionSet` against a set of hashes, :class:`PeerHas` (a peer's, and the
node's own held chunks) against a set of hashes while keys become known and are
forgotten, and the store's :class:`IndexedDir` against the dicts it replaced.
"""

from __future__ import annotations

import dataclasses

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent._storage.index import new_dir
from protocol._capabilities import Requirements
from protocol._config import SwarmConfig
from protocol._identity import SigningIdentity
from protocol._manifest import ChunkList, ChunkRef, FileEntry, Manifest, Variant, merkle_root
from protocol._swarm_keys import FirstPositions, HashView, KeyCatalog, PositionSet
from tests.swarm_sim import KEY, Net, make_key


def _h(i: int) -> bytes:
    return blake3.blake3(i.to_bytes(4, "big")).digest()


def _list(ids: list[int]) -> ChunkList:
    return ChunkList(ChunkRef(_h(i), 1 + i % 5000) for i in ids)


# ---------------------------------------------------------------- ChunkList.find


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 40), max_size=60), st.lists(st.integers(0, 50), max_size=20))
def test_find_is_the_first_position_a_scan_gives(ids: list[int], probes: list[int]) -> None:
    chunks = _list(ids)
    for i in [*ids, *probes]:
        expected = ids.index(i) if i in ids else -1
        assert chunks.find(_h(i)) == expected
    assert chunks.distinct == (len(set(ids)) == len(ids))


def test_find_refuses_what_is_not_a_hash() -> None:
    chunks = _list([1, 2, 3])
    assert chunks.find(b"short") == -1
    assert chunks.find(_h(2)[:31] + b"x") == -1
    assert chunks.find("not bytes") == -1   # type: ignore[arg-type]
    assert chunks.find(memoryview(_h(3))) == 2
    assert _list([]).find(_h(1)) == -1


def test_find_remembers_an_answer_only_for_the_same_immutable_object() -> None:
    chunks = _list([1, 2, 3])
    h = _h(2)
    assert chunks.find(h) == chunks.find(h) == 1            # asked twice: the memo
    assert chunks.find(_h(3)) == 2 and chunks.find(h) == 1
    mutable = bytearray(_h(1))
    assert chunks.find(mutable) == 0
    mutable[:] = _h(3)                                       # same object, new bytes
    assert chunks.find(mutable) == 2
    view = memoryview(bytearray(_h(2)))
    assert chunks.find(view) == 1
    view[:] = _h(9)
    assert chunks.find(view) == -1


# ---------------------------------------------------------------- PositionSet


def test_a_position_set_refuses_bad_positions_and_foreign_hashes() -> None:
    cat = KeyCatalog()
    info = cat.add("k", _list([1, 2, 3]))
    s = PositionSet(info)
    with pytest.raises(IndexError):
        s.add_pos(8)
    with pytest.raises(IndexError):
        s.add_pos(-1)
    with pytest.raises(KeyError):
        s.add(_h(99))
    s.discard(_h(99))                 # (discarding a foreign hash is a no-op, as in a set)
    assert _h(99) not in s and "x" not in s and len(s) == 0 and not s
    empty = PositionSet()
    assert _h(1) not in empty and list(empty) == [] and len(empty) == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=1, max_size=40),
       st.lists(st.tuples(st.booleans(), st.integers(0, 45)), max_size=80))
def test_a_position_set_answers_as_a_set_of_hashes(ids: list[int],
                                                  ops: list[tuple[bool, int]]) -> None:
    cat = KeyCatalog()
    info = cat.add("k", _list(ids))
    s = PositionSet(info)
    ref: set[bytes] = set()
    for add, i in ops:
        h = _h(i)
        if add and i in ids:
            s.add(h)
            ref.add(h)
        elif not add:
            s.discard(h)
            ref.discard(h)
        assert len(s) == len(ref) and bool(s) == bool(ref)
        assert (h in s) == (h in ref)
        assert s.size_sum == sum(info.size_of[x] for x in ref)    # kept, not summed
    assert set(s) == ref
    assert list(s) == sorted(ref, key=lambda h: info.index_of[h])   # position order
    assert all(h in s for h in ref)


# ---------------------------------------------------------------- PeerHas


_KEYS = {"a": list(range(0, 20)), "b": list(range(10, 30)), "c": [5, 25, 35, 5, 40]}


@settings(max_examples=80, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(0, 44)),
    st.tuples(st.just("discard"), st.integers(0, 44)),
    st.tuples(st.just("know"), st.sampled_from(sorted(_KEYS))),
    st.tuples(st.just("forget"), st.sampled_from(sorted(_KEYS))),
), max_size=80))
def test_a_peer_have_set_answers_as_a_set_of_hashes(ops: list[tuple[str, object]]) -> None:
    """Chunks announced under one key count in the others that share them; a key
    forgotten while the peer holds its chunks keeps them (as the set of hashes did)."""
    cat = KeyCatalog()
    has = cat.new_have_set("p")
    ref: set[bytes] = set()
    for op, arg in ops:
        if op == "know" and arg not in cat.infos:
            cat.add(str(arg), _list(_KEYS[str(arg)]))
        elif op == "forget":
            cat.forget(str(arg))
        elif op == "add":
            # (the engine adds only chunks of a known key; a loose one is allowed too)
            assert has.add(_h(int(str(arg)))) == (_h(int(str(arg))) not in ref)
            ref.add(_h(int(str(arg))))
        elif op == "discard":
            assert has.discard(_h(int(str(arg)))) == (_h(int(str(arg))) in ref)
            ref.discard(_h(int(str(arg))))
        assert len(has) == len(ref)
        assert all(h in has for h in ref)
        assert not any(_h(i) in has for i in range(45) if _h(i) not in ref)
        assert sorted(has) == sorted(ref)
        for key, info in cat.infos.items():      # complete for every known key
            bits = has.by_key[key]
            for h, i in info.index_of.items():
                assert bool(bits[i]) == (h in ref)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 30), max_size=50), st.lists(st.integers(0, 40), max_size=20))
def test_first_positions_and_hash_view_answer_as_the_dict_and_list(
        ids: list[int], probes: list[int]) -> None:
    """What ``KeyCatalog.add`` built before (a dict of each hash's first position, a
    list of one hash per position) and the views of the chunk list that replaced them
    give the same answers, duplicates in the list included."""
    chunks = _list(ids)
    index_of: dict[bytes, int] = {}
    hashes: list[bytes] = []
    for i, h in enumerate(chunks.iter_hashes()):
        first = index_of.setdefault(h, i)
        hashes.append(h if first == i else hashes[first])
    first_of, view = FirstPositions(chunks), HashView(chunks)
    assert len(first_of) == len(index_of)
    assert list(first_of) == list(index_of)
    assert list(first_of.items()) == list(index_of.items())
    assert list(first_of.values()) == list(index_of.values())
    for i in [*ids, *probes]:
        h = _h(i)
        assert (h in first_of) == (h in index_of)
        assert first_of.get(h) == index_of.get(h)
        assert first_of.get(h, -1) == index_of.get(h, -1)
        if h in index_of:
            assert first_of[h] == index_of[h]
        else:
            with pytest.raises(KeyError):
                first_of[h]
    for odd in (b"short", "text", None, memoryview(_h(0))):
        assert odd not in first_of and first_of.get(odd) is None
    assert len(view) == len(hashes) and list(view) == hashes
    assert [view[i] for i in range(-len(hashes), len(hashes))] == hashes + hashes
    assert view[1:-1:2] == hashes[1:-1:2]
    with pytest.raises(IndexError):
        view[len(hashes)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 44), max_size=10), st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(0, 44)),
    st.tuples(st.just("discard"), st.integers(0, 44)),
    st.tuples(st.just("know"), st.sampled_from(sorted(_KEYS))),
    st.tuples(st.just("forget"), st.sampled_from(sorted(_KEYS))),
), max_size=80))
def test_the_nodes_held_chunks_answer_as_a_set_of_hashes(
        start: list[int], ops: list[tuple[str, object]]) -> None:
    """The engine's ``held`` (``KeyCatalog.held_set``): starts from the store's hashes,
    follows the keys as they become known and are forgotten, and is no peer's set."""
    cat = KeyCatalog()
    cat.add("a", _list(_KEYS["a"]))
    held = cat.held_set(_h(i) for i in start)
    ref = {_h(i) for i in start}
    for op, arg in ops:
        if op == "know" and arg not in cat.infos:
            cat.add(str(arg), _list(_KEYS[str(arg)]))
        elif op == "forget":
            cat.forget(str(arg))
        elif op == "add":
            held.add(_h(int(str(arg))))
            ref.add(_h(int(str(arg))))
        elif op == "discard":
            held.discard(_h(int(str(arg))))
            ref.discard(_h(int(str(arg))))
        assert len(held) == len(ref)
        assert sorted(held) == sorted(ref)
        assert not any((_h(i) in held) != (_h(i) in ref) for i in range(45))
        for key, info in cat.infos.items():
            bits = held.by_key[key]
            assert all(bool(bits[i]) == (h in ref) for h, i in info.index_of.items())
    assert held not in cat.have_sets.values()


# ---------------------------------------------------------------- the store's index


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 25), min_size=1, max_size=15), min_size=1, max_size=3),
       st.lists(st.integers(0, 30), max_size=30))
def test_a_store_directory_index_answers_as_the_dicts_did(files: list[list[int]],
                                                        held: list[int]) -> None:
    entries = []
    for k, ids in enumerate(files):
        refs = tuple(ChunkRef(_h(i), 1 + i % 5000) for i in ids)
        entries.append(FileEntry(f"f{k}.bin", sum(r.size for r in refs), refs,
                                 merkle_root([r.hash for r in refs])))
    variant = Variant("cpu", Requirements(), tuple(entries))
    m = Manifest.sign(SigningIdentity(b"\x05" * 32), "m", "1.0.0", (variant,), created_at=1)
    d = new_dir("/x", m, m.variants[0], installed=False)
    # the reference: hash -> every (file, offset) in order, as the layout and dups held
    places: dict[bytes, list[tuple[str, int]]] = {}
    for k, ids in enumerate(files):
        off = 0
        for i in ids:
            places.setdefault(_h(i), []).append((f"f{k}.bin", off))
            off += 1 + i % 5000
    assert len(d) == len(places)
    id_of = {_h(i): i for i in range(26)}
    for h, where in places.items():
        assert h in d and d.places(h) == where and d.place(h) == where[0]
        assert d.size(h) == 1 + id_of[h] % 5000
    for i in range(26, 31):
        assert _h(i) not in d
        with pytest.raises(KeyError):
            d.place(_h(i))
    d.mark(_h(i) for i in held)
    ref = {_h(i) for i in held} & places.keys()
    assert d.n_have == len(ref) and set(d.held_hashes()) == ref
    assert d.complete == (ref == places.keys())
    assert all(d.holds(h) == (h in ref) for h in places)
    d.mark(None)
    assert d.complete and set(d.held_hashes()) == set(places)


# ---------------------------------------------------------------- progress


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_progress_without_detail_gives_the_same_figures_at_every_step(seed: int) -> None:
    """The node's per-timer refresh (``detail=False``: the missing bytes kept, not
    summed; ``stalled`` decided at the first chunk available or in flight) answers as
    the full count does, at every step of transfers that stall and resume."""
    refs, data = make_key(f"p{seed}", 40)
    hashes = {r.hash for r in refs}
    net = Net(seed=seed, n=3, keys={KEY: refs}, data=data,
              holdings=[hashes, set(), set()], config=SwarmConfig(request_timeout=2.0))
    net.connect(0, 1)
    net.connect(1, 2)
    net.want(1, KEY)
    net.want(2, KEY)
    seen: list[tuple[int, bool]] = []

    def same() -> bool:
        for eng in (net.engines[1], net.engines[2]):
            full, fast = eng.progress(KEY), eng.progress(KEY, detail=False)
            assert dataclasses.replace(full, detail="") == dataclasses.replace(fast,
                                                                              detail="")
            seen.append((fast.bytes_held, fast.stalled))
        return net.now > 1.0

    net.run(same)
    net.disconnect(0, 1)             # node 2 may stall now, node 1 too
    net.run(lambda: same() and net.now > 4.0)
    net.connect(0, 1)
    net.run(lambda: same() and net.holds_key(2, KEY), max_time=60.0)
    assert {held for held, _ in seen} >= {0, 40_000}
    assert {stalled for _, stalled in seen} == {False, True}     # both answers checked
    assert net.engines[2].progress(KEY, detail=False).bytes_held == 40_000
