"""Manifests: hostile paths, signatures, trust, ids, semantic versions."""

from __future__ import annotations

import itertools
import re

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol._capabilities import Requirements
from protocol._codec import canonical, decode_value, encode_value
from protocol._errors import (
    HostilePath,
    InvalidValue,
    MalformedMessage,
    RemoteProtocolError,
    SignatureError,
    UntrustedKey,
)
from protocol._identity import Certificate, FleetTrust, Role, SigningIdentity
from protocol._manifest import (
    ChunkRef,
    FileEntry,
    Manifest,
    SemVer,
    Variant,
    merkle_root,
    validate_model_id,
    validate_version,
)

FLEET = "fleet-test"
ROOT = SigningIdentity(b"\x01" * 32)
PUBLISHER = SigningIdentity(b"\x02" * 32)
OTHER = SigningIdentity(b"\x03" * 32)


def _file(path: str, n: int = 2, salt: bytes = b"") -> FileEntry:
    chunks = tuple(ChunkRef(bytes([i + 1]) * 31 + salt[:1].ljust(1, b"\x00"), 1000 + i)
                   for i in range(n))
    return FileEntry(path, sum(c.size for c in chunks), chunks,
                     merkle_root([c.hash for c in chunks]))


def _variant(*paths: str, variant_id: str = "cpu") -> Variant:
    return Variant(variant_id, Requirements(), tuple(_file(p) for p in paths))


def _manifest(signer: SigningIdentity = PUBLISHER, version: str = "1.0.0") -> Manifest:
    return Manifest.sign(signer, "detector", version,
                         (_variant("model.onnx", "cfg/labels.txt"),), created_at=1_700_000_000_000)


def _trust(with_publisher: bool = True) -> FleetTrust:
    trust = FleetTrust(FLEET, ROOT.public_key)
    if with_publisher:
        trust.add_certificate(Certificate.issue(ROOT, FLEET, PUBLISHER.public_key,
                                                Role.PUBLISHER, "ci", 1))
    return trust


HOSTILE = [
    "/etc/passwd", "../escape", "a/../../b", "a/./b", "./a", "a//b", "a/", "", "a\x00b",
    "a\\b", "..\\..\\x", "C:/Windows/x", "c:evil", "a/\x07b", "x" * 1025,
]


@pytest.mark.parametrize("path", HOSTILE)
def test_hostile_paths_refused_at_build(path: str) -> None:
    with pytest.raises(HostilePath):
        _file(path)


@pytest.mark.parametrize("path", HOSTILE)
def test_hostile_paths_refused_when_decoded(path: str) -> None:
    good = _file("placeholder")
    raw = msgpack.unpackb(encode_value(good))
    raw[0] = path  # FileEntry's first field is its path
    with pytest.raises(MalformedMessage):
        decode_value(FileEntry, msgpack.packb(raw, use_bin_type=True))


@pytest.mark.parametrize(
    "paths",
    [("a.bin", "a.bin"), ("Model.bin", "model.BIN"), ("a", "a/b"), ("x/y", "x/y/z"),
     ("dir/A", "DIR/a")],
)
def test_clashing_paths_refused(paths: tuple[str, ...]) -> None:
    with pytest.raises(HostilePath):
        _variant(*paths)
    # ... and when the variant arrives encoded (built field by field, bypassing __init__)
    ok = _variant("one", "two")
    raw = msgpack.unpackb(encode_value(ok))
    raw[2] = [msgpack.unpackb(encode_value(_file(p))) for p in paths]
    with pytest.raises(MalformedMessage):
        decode_value(Variant, msgpack.packb(raw, use_bin_type=True))


def test_hostile_path_in_a_whole_encoded_manifest() -> None:
    m = _manifest()
    wire = encode_value(m)
    assert b"cfg/labels.txt" in wire
    bad = wire.replace(b"cfg/labels.txt", b"../labels.txt")  # same length, still msgpack
    with pytest.raises(MalformedMessage):
        decode_value(Manifest, bad)
    assert decode_value(Manifest, wire) == m


def test_plain_paths_accepted() -> None:
    v = _variant("model.onnx", "cfg/labels.txt", "a/b/c.d", "weird name (1).bin", "ünï.bin")
    assert len(v.files) == 5


def test_file_sizes_must_add_up() -> None:
    f = _file("x")
    with pytest.raises(InvalidValue):
        FileEntry("x", f.size + 1, f.chunks, f.merkle_root)


def test_signed_manifest_verifies() -> None:
    m = _manifest()
    m.verify()
    m.verify(_trust())


def test_bad_signature_refused() -> None:
    m = _manifest()
    forged = Manifest(m.model_id, m.version, m.variants, m.publisher_key, m.created_at,
                      m.base_version, bytes(64))
    with pytest.raises(SignatureError):
        forged.verify()
    flipped = bytearray(m.signature)
    flipped[0] ^= 1
    with pytest.raises(SignatureError):
        Manifest(m.model_id, m.version, m.variants, m.publisher_key, m.created_at,
                 m.base_version, bytes(flipped)).verify()


def test_tampered_chunk_list_refused() -> None:
    m = _manifest()
    v = m.variants[0]
    f = v.files[0]
    swapped = (ChunkRef(b"\xee" * 32, f.chunks[0].size), *f.chunks[1:])
    # 1. the Merkle root still names the old list: refused as inconsistent
    bad_file = FileEntry(f.path, f.size, swapped, f.merkle_root)
    bad = Manifest(m.model_id, m.version,
                   (Variant(v.variant_id, v.requirements, (bad_file, *v.files[1:])),),
                   m.publisher_key, m.created_at, m.base_version, m.signature)
    with pytest.raises(RemoteProtocolError):
        bad.verify()
    # 2. the tamperer fixes the root too: the signature no longer matches
    fixed_file = FileEntry(f.path, f.size, swapped, merkle_root([c.hash for c in swapped]))
    fixed = Manifest(m.model_id, m.version,
                     (Variant(v.variant_id, v.requirements, (fixed_file, *v.files[1:])),),
                     m.publisher_key, m.created_at, m.base_version, m.signature)
    with pytest.raises(SignatureError):
        fixed.verify()


def test_other_tampering_refused() -> None:
    m = _manifest()
    for bumped in (
        Manifest(m.model_id, "1.0.1", m.variants, m.publisher_key, m.created_at,
                 m.base_version, m.signature),
        Manifest("other", m.version, m.variants, m.publisher_key, m.created_at,
                 m.base_version, m.signature),
        Manifest(m.model_id, m.version, m.variants, m.publisher_key, m.created_at + 1,
                 m.base_version, m.signature),
    ):
        with pytest.raises(SignatureError):
            bumped.verify()


def test_unadmitted_publisher_refused() -> None:
    m = _manifest()
    with pytest.raises(UntrustedKey):
        m.verify(_trust(with_publisher=False))
    # a key admitted as something else is not a publisher
    trust = _trust(with_publisher=False)
    trust.add_certificate(Certificate.issue(ROOT, FLEET, PUBLISHER.public_key, Role.NODE,
                                            "n", 1))
    with pytest.raises(UntrustedKey):
        m.verify(trust)
    # a well-signed manifest from a key the root never admitted
    with pytest.raises(UntrustedKey):
        _manifest(OTHER).verify(_trust())


def test_publisher_key_swap_refused() -> None:
    m = _manifest()
    swapped = Manifest(m.model_id, m.version, m.variants, OTHER.public_key, m.created_at,
                       m.base_version, m.signature)
    with pytest.raises(SignatureError):
        swapped.verify()


def test_manifest_id_is_stable_and_content_derived() -> None:
    a, b = _manifest(), _manifest()
    assert a.manifest_id == b.manifest_id
    assert re.fullmatch(r"[0-9a-f]{64}", a.manifest_id)
    assert decode_value(Manifest, encode_value(a)).manifest_id == a.manifest_id
    assert _manifest(version="1.0.1").manifest_id != a.manifest_id
    assert _manifest(OTHER).manifest_id != a.manifest_id
    # the id covers the content, not the signature bytes (Ed25519 is deterministic anyway)
    resigned = Manifest(a.model_id, a.version, a.variants, a.publisher_key, a.created_at,
                        a.base_version, bytes(64))
    assert resigned.manifest_id == a.manifest_id
    assert canonical(a) == canonical(b)


def test_variant_lookup_and_chunk_refs() -> None:
    m = _manifest()
    assert m.variant("cpu") is m.variants[0]
    with pytest.raises(InvalidValue, match="no variant"):
        m.variant("gpu")
    v = Variant("v", Requirements(), (_file("a"), _file("b")))  # same chunks in both files
    assert len(v.chunk_refs()) == 2


def test_manifest_needs_distinct_variants() -> None:
    v = _variant("a")
    with pytest.raises(InvalidValue):
        Manifest.sign(PUBLISHER, "m", "1.0.0", (), 0)
    with pytest.raises(InvalidValue):
        Manifest.sign(PUBLISHER, "m", "1.0.0", (v, v), 0)


@pytest.mark.parametrize("model_id", ["a", "resnet50", "yolo-v8.n_int8", "0day", "x" * 128])
def test_valid_model_ids(model_id: str) -> None:
    assert validate_model_id(model_id) == model_id


@pytest.mark.parametrize("model_id",
                         ["", "A", "-lead", ".hidden", "a b", "a/b", "x" * 129, "é", "a\n"])
def test_invalid_model_ids(model_id: str) -> None:
    with pytest.raises(InvalidValue):
        validate_model_id(model_id)


@pytest.mark.parametrize("version", ["0.0.0", "1.2.3", "10.20.30", "1.0.0-alpha.1",
                                     "1.0.0-0.3.7", "1.0.0+20130313144700", "1.0.0-x-y.z+b.1"])
def test_valid_versions(version: str) -> None:
    assert validate_version(version) == version


@pytest.mark.parametrize("version", ["", "1", "1.2", "01.2.3", "1.2.3-", "1.2.3-01",
                                     "v1.2.3", "1.2.3.4", "1.2.3+", " 1.2.3", "1.2.3\n"])
def test_invalid_versions(version: str) -> None:
    with pytest.raises(InvalidValue):
        validate_version(version)
    with pytest.raises(InvalidValue):
        SemVer.parse(version)


def test_semver_precedence_examples() -> None:
    # the chain from semver.org section 11
    chain = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta",
             "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.1.0",
             "2.0.0"]
    parsed = [SemVer.parse(v) for v in chain]
    assert parsed == sorted(parsed)
    assert all(a < b for a, b in itertools.pairwise(parsed))
    assert SemVer.parse("1.0.0+build.1") == SemVer.parse("1.0.0+build.2")


def _reference_key(text: str) -> tuple[object, ...]:
    """semver.org section 11, written independently of SemVer._key."""
    core, _, _build = text.partition("+")
    main, dash, pre = core.partition("-")
    nums = tuple(int(x) for x in main.split("."))
    if not dash:
        return (nums, 1, ())
    ids: list[tuple[int, int, str]] = []
    for ident in pre.split("."):
        ids.append((0, int(ident), "") if ident.isdigit() else (1, 0, ident))
    return (nums, 0, tuple(ids))


_num = st.integers(0, 30).map(str)
_alnum = st.text(alphabet="abcXYZ-0123", min_size=1, max_size=4).filter(
    lambda s: not s.isdigit())
_pre = st.lists(st.one_of(_num, _alnum), min_size=1, max_size=3).map(".".join)
_semver = st.builds(
    lambda a, b, c, p, bld: f"{a}.{b}.{c}" + (f"-{p}" if p else "") + (f"+{bld}" if bld else ""),
    _num, _num, _num, st.none() | _pre, st.none() | st.sampled_from(["b1", "exp.sha.5114f85"]),
)


@given(st.lists(_semver, min_size=2, max_size=8))
def test_semver_ordering_matches_reference(versions: list[str]) -> None:
    ours = sorted(versions, key=SemVer.parse)
    ref = sorted(versions, key=_reference_key)
    assert [_reference_key(v) for v in ours] == [_reference_key(v) for v in ref]
    for a in versions:
        for b in versions:
            assert (SemVer.parse(a) < SemVer.parse(b)) == (_reference_key(a) < _reference_key(b))
