"""Publishing model packages into the store."""

from __future__ import annotations

import os
import time
from pathlib import Path

import blake3
import pytest

from agent._errors import ConfigError, PublishError
from agent._storage.files import copy_range_flushing
from agent._storage.publish import load_package, publish
from agent._storage.store import ChunkStore
from protocol._chunking import ChunkParams, chunk_bytes
from protocol._identity import SigningIdentity

PUB = SigningIdentity(b"\x11" * 32)
SMALL = ChunkParams.around(16 * 1024)  # many chunks from small files, fast tests
TOML = """
[[variant]]
id = "fp16-gpu"
precision = "fp16"
min_gpu_mem_gb = 4
execution_providers = ["CUDAExecutionProvider"]
cpu_arch = ["x86_64", "aarch64"]
min_ram_gb = 2.5
min_storage_mb = 300
migrator = "migrate.py"

[[variant]]
id = "int8-cpu"
precision = "int8"
"""


def _rand(seed: str, size: int) -> bytes:
    return blake3.blake3(seed.encode()).digest(length=size)


def _package(root: Path, weights: bytes = b"", extra: bytes = b"") -> Path:
    gpu, cpu = root / "fp16-gpu", root / "int8-cpu"
    (gpu / "sub").mkdir(parents=True)
    cpu.mkdir(parents=True)
    (root / "shoal-model.toml").write_text(TOML)
    (gpu / "model.safetensors").write_bytes(weights or _rand("gpu", 300_000))
    (gpu / "sub" / "config.json").write_bytes(b'{"layers": 4}')
    (gpu / "migrate.py").write_text("print('migrate')\n")
    os.chmod(gpu / "migrate.py", 0o755)
    (cpu / "model.onnx").write_bytes(_rand("cpu", 150_000) + extra)
    return root


def test_package_description_is_parsed_in_preference_order(tmp_path: Path) -> None:
    specs = load_package(_package(tmp_path / "pkg"))
    assert [s.variant_id for s in specs] == ["fp16-gpu", "int8-cpu"]
    r = specs[0].requirements
    assert (r.precision, r.min_gpu_mem_gb, r.execution_providers, r.cpu_arch, r.min_ram_gb,
            r.min_storage_mb) == ("fp16", 4.0, ("CUDAExecutionProvider",),
                                  ("x86_64", "aarch64"), 2.5, 300)
    assert specs[0].migrator == "migrate.py" and specs[1].migrator is None
    assert specs[1].requirements.precision == "int8"


def test_publish_builds_a_signed_manifest(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "store")
    res = publish(store, _package(tmp_path / "pkg"), "det", "1.0.0", PUB, params=SMALL)
    m = store.get_manifest(res.manifest_id)
    m.verify()
    assert store.is_pinned(m.manifest_id)
    gpu = m.variant("fp16-gpu")
    assert [f.path for f in gpu.files] == ["migrate.py", "model.safetensors", "sub/config.json"]
    assert [f.executable for f in gpu.files] == [True, False, False]
    assert gpu.migrator == "migrate.py"
    assert res.variants == ("fp16-gpu", "int8-cpu")
    assert res.files == 4
    assert res.bytes_total == 300_000 + 13 + len("print('migrate')\n") + 150_000
    assert res.chunks_new == res.chunks_total and res.bytes_new == store.statistics().bytes
    assert not res.already_published
    # every chunk is in the store and verifies
    assert store.verify_manifest(m) == []


def test_streamed_chunking_equals_whole_file_chunking(tmp_path: Path) -> None:
    data = _rand("big", 700_000)
    f = tmp_path / "weights.bin"
    f.write_bytes(data)
    store = ChunkStore(tmp_path / "store")
    # a window far smaller than the file forces many carried-over tails
    res = publish(store, f, "one", "1.0.0", PUB, params=SMALL, window=SMALL.max_size)
    entry = store.get_manifest(res.manifest_id).variant("default").files[0]
    assert entry.path == "weights.bin"
    assert list(entry.chunks) == chunk_bytes(data, SMALL)
    assert b"".join(store.get(c.hash) for c in entry.chunks) == data


def test_publishing_twice_stores_nothing_new(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "store")
    pkg = _package(tmp_path / "pkg")
    first = publish(store, pkg, "det", "1.0.0", PUB, params=SMALL)
    before = store.statistics()
    again = publish(store, pkg, "det", "1.0.0", PUB, params=SMALL)
    assert again.already_published and again.manifest_id == first.manifest_id
    assert (again.chunks_new, again.bytes_new) == (0, 0)
    after = store.statistics()
    assert (after.chunks, after.bytes, after.manifests) == (
        before.chunks, before.bytes, before.manifests)


def test_two_versions_that_share_files_share_chunks(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "store")
    weights = _rand("w", 400_000)
    v1 = publish(store, _package(tmp_path / "a", weights), "det", "1.0.0", PUB, params=SMALL)
    # 1.1.0: the cpu model grows by 20 kB at its end; the gpu weights change in one place
    changed = bytearray(weights)
    changed[200_000:200_100] = b"\xff" * 100
    v2 = publish(store, _package(tmp_path / "b", bytes(changed), extra=_rand("x", 20_000)),
                 "det", "1.1.0", PUB, params=SMALL)
    m1, m2 = store.get_manifest(v1.manifest_id), store.get_manifest(v2.manifest_id)
    shared = {c.hash for c in m1.iter_chunks()} & {c.hash for c in m2.iter_chunks()}
    assert len(shared) >= v2.chunks_total - 8
    assert 0 < v2.chunks_new <= 8
    assert v2.bytes_new < 0.3 * v2.bytes_total
    assert v2.chunks_new == len({c.hash for c in m2.iter_chunks()} - shared)


def test_same_version_with_other_content_is_refused(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "store")
    publish(store, _package(tmp_path / "a"), "det", "1.0.0", PUB, params=SMALL)
    with pytest.raises(PublishError, match="already published with different content"):
        publish(store, _package(tmp_path / "b", _rand("other", 1000)), "det", "1.0.0", PUB,
                params=SMALL)


def test_symlink_leaving_the_package_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.key"
    secret.write_bytes(b"do not publish")
    pkg = _package(tmp_path / "pkg")
    os.symlink(secret, pkg / "int8-cpu" / "innocent.bin")
    store = ChunkStore(tmp_path / "store")
    with pytest.raises(PublishError, match="outside the package"):
        publish(store, pkg, "det", "1.0.0", PUB, params=SMALL)
    assert store.manifests() == []


def test_relative_symlink_escape_and_variant_path_escape_refused(tmp_path: Path) -> None:
    pkg = _package(tmp_path / "pkg")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "f").write_bytes(b"x")
    os.symlink("../../outside/f", pkg / "int8-cpu" / "rel")
    with pytest.raises(PublishError, match="outside the package"):
        publish(ChunkStore(tmp_path / "s1"), pkg, "det", "1.0.0", PUB, params=SMALL)
    os.unlink(pkg / "int8-cpu" / "rel")
    (pkg / "shoal-model.toml").write_text('[[variant]]\nid = "x"\npath = "../outside"\n')
    with pytest.raises(ConfigError, match="escapes"):
        publish(ChunkStore(tmp_path / "s2"), pkg, "det", "1.0.0", PUB, params=SMALL)


def test_symlink_inside_the_package_is_followed(tmp_path: Path) -> None:
    pkg = _package(tmp_path / "pkg")
    os.symlink("../fp16-gpu/sub/config.json", pkg / "int8-cpu" / "config.json")
    store = ChunkStore(tmp_path / "store")
    res = publish(store, pkg, "det", "1.0.0", PUB, params=SMALL)
    cpu = store.get_manifest(res.manifest_id).variant("int8-cpu")
    entry = next(f for f in cpu.files if f.path == "config.json")
    assert b"".join(store.get(c.hash) for c in entry.chunks) == b'{"layers": 4}'


def test_symlinked_directory_and_special_files_are_refused(tmp_path: Path) -> None:
    pkg = _package(tmp_path / "pkg")
    os.symlink("../fp16-gpu/sub", pkg / "int8-cpu" / "linked")
    with pytest.raises(PublishError, match="only symlinks to regular files"):
        publish(ChunkStore(tmp_path / "s1"), pkg, "det", "1.0.0", PUB, params=SMALL)
    os.unlink(pkg / "int8-cpu" / "linked")
    os.mkfifo(pkg / "int8-cpu" / "pipe")
    with pytest.raises(PublishError, match="FIFOs"):
        publish(ChunkStore(tmp_path / "s2"), pkg, "det", "1.0.0", PUB, params=SMALL)


@pytest.mark.parametrize(("toml", "match"), [
    ("[[variant]]\nid = 'a'\nmin_gpu_mem = 4\n", "unknown key"),
    ("model = 'x'\n", "unknown key"),
    ("[[variant]]\nid = 'a'\nprecision = 'fp64'\n", "unknown precision"),
    ("[[variant]]\nid = 'a'\ncpu_arch = 'x86_64'\n", "list of strings"),
    ("[[variant]]\nid = 'missing'\n", "not a directory"),
    ("this is not toml", "Expected"),
    ("", "no \\[\\[variant\\]\\]"),
])
def test_bad_package_descriptions(tmp_path: Path, toml: str, match: str) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "a").mkdir(parents=True)
    (pkg / "shoal-model.toml").write_text(toml)
    with pytest.raises(ConfigError, match=match):
        load_package(pkg)


def test_directory_without_description_is_one_default_variant(tmp_path: Path) -> None:
    pkg = tmp_path / "plain"
    (pkg / "d").mkdir(parents=True)
    (pkg / "d" / "a.bin").write_bytes(_rand("a", 5000))
    (pkg / "empty.txt").write_bytes(b"")
    store = ChunkStore(tmp_path / "store")
    res = publish(store, pkg, "plain", "0.1.0", PUB, params=SMALL)
    v = store.get_manifest(res.manifest_id).variant("default")
    assert [(f.path, f.size, len(f.chunks)) for f in v.files] == [
        ("d/a.bin", 5000, 1), ("empty.txt", 0, 0)]


def test_invalid_model_id_or_version(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    with pytest.raises(PublishError, match="invalid model id"):
        publish(ChunkStore(tmp_path / "s"), f, "Bad/Id", "1.0.0", PUB)
    with pytest.raises(PublishError, match="semantic version"):
        publish(ChunkStore(tmp_path / "s"), f, "ok", "1.0", PUB)


def test_publish_reports_progress_up_to_the_total(tmp_path: Path) -> None:
    pkg = _package(tmp_path / "pkg")
    calls: list[tuple[int, int]] = []
    res = publish(ChunkStore(tmp_path / "store"), pkg, "det", "1.0.0", PUB, params=SMALL,
                  progress=lambda done, total: calls.append((done, total)))
    assert len(calls) == res.chunks_total              # one report per chunk cut
    assert {t for _, t in calls} == {res.bytes_total}  # the total is known from the start
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == res.bytes_total


def test_package_keys_for_a_served_migrator_and_a_health_check(tmp_path: Path) -> None:
    """migrator_address (a model already serving the Migrator) and health_check are read
    from shoal-model.toml, signed into the variant, and checked."""
    pkg = tmp_path / "pkg"
    (pkg / "svc").mkdir(parents=True)
    (pkg / "svc" / "w.bin").write_bytes(b"w" * 1000)
    (pkg / "svc" / "check.py").write_text("import sys; sys.exit(0)\n")
    (pkg / "shoal-model.toml").write_text(
        '[[variant]]\nid = "svc"\nmigrator_address = "unix:///run/model/migrator.sock"\n'
        'health_check = "check.py"\n')
    store = ChunkStore(tmp_path / "store")
    res = publish(store, pkg, "svc", "1.0.0", PUB)
    v = store.get_manifest(res.manifest_id).variants[0]
    assert (v.migrator_address, v.health_check) == ("unix:///run/model/migrator.sock",
                                                    "check.py")
    (pkg / "shoal-model.toml").write_text(
        '[[variant]]\nid = "svc"\nmigrator_address = "unix:///m.sock"\n'
        'migrator = "check.py"\n')
    with pytest.raises((ConfigError, PublishError), match="exclusive"):
        publish(store, pkg, "svc", "1.0.1", PUB)
    (pkg / "shoal-model.toml").write_text(
        '[[variant]]\nid = "svc"\nhealth_check = "nope.py"\n')
    with pytest.raises((ConfigError, PublishError), match="health_check"):
        publish(store, pkg, "svc", "1.0.2", PUB)


@pytest.mark.parametrize("size", [0, 1, 65536, 65536 * 3 + 123])
def test_the_flushing_copy_is_byte_exact_across_its_steps(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    (tmp_path / "src").write_bytes(data)
    src = os.open(tmp_path / "src", os.O_RDONLY)
    dst = os.open(tmp_path / "dst", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        copy_range_flushing(src, dst, size, step=65536)
        os.fsync(dst)
    finally:
        os.close(src)
        os.close(dst)
    assert (tmp_path / "dst").read_bytes() == data


def test_an_error_while_cutting_leaves_no_copy_step_behind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The copy of a file is queued ahead in steps; when cutting or hashing fails half
    way, every step has ended (cancelled or run) before the error leaves, so none runs
    after the source's descriptor is closed (its number could be another file's)."""
    from concurrent.futures import Future

    import agent._storage.publish as pub

    monkeypatch.setattr(pub, "_COPY_STEP", 64 * 1024)
    real_copy = pub.copy_range_flushing

    def slow_copy(*args: int) -> None:   # 64 steps of 10 ms: most are queued at the error
        time.sleep(0.01)
        real_copy(*args)

    monkeypatch.setattr(pub, "copy_range_flushing", slow_copy)
    steps: list[Future[None]] = []
    copy = pub._Writer.copy

    def recording(self: pub._Writer, src: int, dst: int, offset: int, size: int) -> Future[None]:
        steps.append(copy(self, src, dst, offset, size))
        return steps[-1]

    monkeypatch.setattr(pub._Writer, "copy", recording)
    (tmp_path / "model.bin").write_bytes(os.urandom(4 << 20))
    store = ChunkStore(tmp_path / "store")
    writer = pub._Writer(store)
    dest = store.new_pack_dir()

    def fail(_: int) -> None:
        raise RuntimeError("the cut failed")

    try:
        with pytest.raises(RuntimeError, match="the cut failed"):
            pub._publish_file("model.bin", str(tmp_path / "model.bin"), False, writer, dest,
                              ChunkParams.around(16 * 1024), 256 * 1024, tick=fail)
        assert len(steps) == 64
        assert all(s.done() for s in steps)
    finally:
        writer.close()
