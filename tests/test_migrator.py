"""The migrator: export of learned state as a derived version, ingest across an upgrade,
and hostile or broken migrators (real child processes, in-process Installer)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from agent._daemon.migrator import (
    EXPORT_MARKER,
    MigratorCrashed,
    MigratorError,
    MigratorGarbage,
    MigratorRefused,
    MigratorReportedFailure,
    MigratorTimeout,
    copy_confined,
    default_derived_version,
    export_version,
    ingest_hook,
    is_derived,
)
from agent._errors import AgentError, ChunkCorrupted
from agent._storage.install import Installer
from agent._storage.paths import DataDir
from agent._storage.publish import publish
from agent._storage.store import ChunkStore
from protocol._codec import decode, decode_value, encode
from protocol._errors import HostilePath
from protocol._identity import SigningIdentity
from protocol._manifest import Manifest, SemVer
from protocol._migrator_messages import (
    ExportRequest,
    ExportResponse,
    IngestFileCopy,
    IngestFileResult,
    IngestRequest,
    MigratorDone,
    MigratorFailed,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "threshold_model"
MODEL = "threshold"
STATE = "state/threshold.json"


class Node:
    """One node's data directory: a store and an installer."""

    def __init__(self, root: Path) -> None:
        self.data = DataDir(root)
        self.store = ChunkStore(self.data.store, fsync=False)
        self.installer = Installer(self.data, self.store)

    def vdir(self, version: str) -> Path:
        return self.data.version_dir(MODEL, version)

    def active(self) -> str | None:
        iv = self.installer.active(MODEL)
        return iv.version if iv else None

    def receive(self, source: Node, manifest: Manifest) -> int:
        """Copy the chunks of ``manifest`` this node lacks from ``source``; bytes moved."""
        moved = 0
        # as the daemon does: the version's files are staged, chunks written in place
        for v in manifest.variants:
            self.store.stage(manifest, v.variant_id)
        for ref in {c.hash: c for c in manifest.iter_chunks()}.values():
            if not self.store.has(ref.hash):
                self.store.put(ref.hash, source.store.get(ref.hash))
                moved += ref.size
        return moved

    async def install(self, manifest: Manifest, previous: str | None,
                      timeout: float = 20.0) -> None:
        """Install as the daemon does: ingest (if any) in a worker thread, then switch."""
        hook = ingest_hook(self.installer, manifest, "default", previous, timeout=timeout)
        await trio.to_thread.run_sync(
            lambda: self.installer.install(manifest, "default", prepare=hook))


def package(tmp: Path, name: str, migrate: str | None = None, model_version: str = "1"
            ) -> Path:
    pkg = tmp / name
    shutil.copytree(EXAMPLE, pkg)
    model = pkg / "default" / "model.py"
    model.write_text(model.read_text().replace('MODEL_VERSION = "1"',
                                               f'MODEL_VERSION = "{model_version}"'))
    if migrate is not None:
        (pkg / "default" / "migrate.py").write_text(textwrap.dedent(migrate))
    return pkg


def learn(vdir: Path, *values: float) -> dict[str, float]:
    out = subprocess.run([sys.executable, "model.py", "learn", *map(str, values)], cwd=vdir,
                         check=True, capture_output=True, text=True, timeout=30)
    return dict(json.loads(out.stdout))


@pytest.fixture
def publisher() -> SigningIdentity:
    return SigningIdentity.generate()


@pytest.fixture
def node_a(tmp_path: Path, publisher: SigningIdentity) -> Node:
    """Node A runs threshold 1.0.0 and has learned a threshold."""
    a = Node(tmp_path / "a")
    publish(a.store, package(tmp_path, "pkg1"), MODEL, "1.0.0", publisher, created_at_ms=1)
    a.installer.install(a.store.find_manifest(MODEL, "1.0.0"), "default")
    learn(a.vdir("1.0.0"), 0.9, 0.7, 0.8)
    return a


def v2(node: Node, tmp: Path, publisher: SigningIdentity, migrate: str | None = None,
       version: str = "2.0.0") -> Manifest:
    publish(node.store, package(tmp, f"pkg-{version}", migrate, model_version="2"), MODEL,
            version, publisher, created_at_ms=2)
    return node.store.find_manifest(MODEL, version)


# ---------------------------------------------------------------------- messages


@pytest.mark.parametrize("msg", [
    ExportRequest(), ExportResponse(("state", "calib/x.bin")),
    IngestRequest("m", "1.0.0", "2.0.0"), IngestFileCopy("a/b", "c"),
    IngestFileResult("a", "b", None), IngestFileResult("a", "b", "No such file"),
    MigratorDone("ok"), MigratorFailed("disk full"),
])
def test_migrator_messages_round_trip(msg: object) -> None:
    assert decode(encode(msg)) == msg


def test_default_derived_version_sorts_between_base_and_next_release() -> None:
    d = default_derived_version("1.2.3", 1700000000.5)
    assert d == "1.2.4-state.1700000000"
    assert SemVer.parse("1.2.3") < SemVer.parse(d) < SemVer.parse("1.2.4")
    rc = default_derived_version("2.0.0-rc.1", 5)
    assert SemVer.parse("2.0.0-rc.1") < SemVer.parse(rc) < SemVer.parse("2.0.0")


# ---------------------------------------------------------------------- export


async def test_export_then_distribute_moves_only_the_state(
        tmp_path: Path, node_a: Node, publisher: SigningIdentity) -> None:
    learned = json.loads((node_a.vdir("1.0.0") / STATE).read_text())
    assert learned["samples"] == 3
    res = await export_version(node_a.installer, publisher, MODEL, "1.0.1", time.time())
    derived = res.manifest
    base = node_a.store.find_manifest(MODEL, "1.0.0")
    assert derived.base_version == "1.0.0" and res.state_paths == ("state",)
    assert is_derived(derived, "default")
    files = {f.path: f for f in derived.variant("default").files}
    for f in base.variant("default").files:    # the base's files are reused unchanged
        if f.path != STATE:
            assert files[f.path] == f
    assert files[STATE] != {f.path: f for f in base.variant("default").files}[STATE]
    derived.verify()

    # node B runs the base with its default state; it fetches only what it lacks.
    # A's installed files are its store, and A's model rewrote its state file there:
    # A cannot serve the base's original state chunk (its hash no longer matches), so
    # B gets the base from a publisher that does not run it, as in a fleet
    pub = Node(tmp_path / "pub")
    publish(pub.store, package(tmp_path, "pkg1-again"), MODEL, "1.0.0", publisher,
            created_at_ms=1)
    assert pub.store.find_manifest(MODEL, "1.0.0") == base
    with pytest.raises(ChunkCorrupted):
        node_a.store.get({f.path: f for f in base.variant("default").files}[STATE]
                         .chunks[0].hash)
    b = Node(tmp_path / "b")
    b.receive(pub, base)
    await b.install(base, None)
    before = json.loads((b.vdir("1.0.0") / STATE).read_text())
    assert before["samples"] == 0
    moved = b.receive(node_a, derived)
    state_size = len((node_a.vdir("1.0.0") / STATE).read_bytes())
    marker_size = files[EXPORT_MARKER].size
    assert moved == state_size + marker_size
    assert moved < 0.1 * derived.variant("default").size + 200

    await b.install(derived, "1.0.0")       # a derived version never ingests
    assert b.active() == "1.0.1"
    assert json.loads((b.vdir("1.0.1") / STATE).read_text()) == learned
    out = subprocess.run([sys.executable, "model.py", "predict", "0.75"], cwd=b.vdir("1.0.1"),
                         capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == "negative"   # threshold 0.8 learned on A, not B's 0.5
    assert b.installer.verify(MODEL, "1.0.1") == []


async def test_export_refuses_a_state_path_outside_the_version(
        tmp_path: Path, publisher: SigningIdentity) -> None:
    a = Node(tmp_path / "a")
    pkg = package(tmp_path, "pkg1", """\
        from agent.migrator_sdk import Migrator, main
        class M(Migrator):
            def export(self): return ["state", "../../keys"]
        main(M())
        """)
    publish(a.store, pkg, MODEL, "1.0.0", publisher, created_at_ms=1)
    a.installer.install(a.store.find_manifest(MODEL, "1.0.0"), "default")
    with pytest.raises(MigratorRefused, match=r"\.\./\.\./keys"):
        await export_version(a.installer, publisher, MODEL, None, time.time())
    assert [m.version for m in a.store.manifests()] == ["1.0.0"]


# ---------------------------------------------------------------------- ingest


async def test_upgrade_with_ingest_carries_the_state_and_leaves_other_files(
        tmp_path: Path, node_a: Node, publisher: SigningIdentity) -> None:
    learned = json.loads((node_a.vdir("1.0.0") / STATE).read_text())
    m2 = v2(node_a, tmp_path, publisher)
    await node_a.install(m2, "1.0.0")
    assert node_a.active() == "2.0.0"
    new = node_a.vdir("2.0.0")
    assert json.loads((new / STATE).read_text()) == learned
    pkg = tmp_path / "pkg-2.0.0" / "default"
    for rel in ("model.py", "migrate.py"):
        assert (new / rel).read_bytes() == (pkg / rel).read_bytes()
    assert 'MODEL_VERSION = "2"' in (new / "model.py").read_text()
    problems = node_a.installer.verify(MODEL, "2.0.0")   # only where ingest wrote
    assert len(problems) == 1 and problems[0].startswith(STATE)
    assert json.loads((node_a.vdir("1.0.0") / STATE).read_text()) == learned  # A untouched


def test_copy_confined_copies_directories_and_refuses_escapes(tmp_path: Path) -> None:
    old, new, outside = tmp_path / "old", tmp_path / "new", tmp_path / "outside"
    for d in (old / "state" / "sub", new, outside):
        d.mkdir(parents=True)
    (old / "state" / "a.bin").write_bytes(b"a" * 10)
    (old / "state" / "sub" / "b.bin").write_bytes(b"b" * 5)
    (old / "state" / "inside-link").symlink_to("a.bin")
    (outside / "secret").write_text("secret")
    assert copy_confined(old, new, "state", "kept") == (3, 25)
    assert (new / "kept" / "sub" / "b.bin").read_bytes() == b"b" * 5
    assert not (new / "kept" / "inside-link").is_symlink()
    (old / "leak").symlink_to(outside)
    (old / "state" / "leak-file").symlink_to(outside / "secret")
    (new / "planted").symlink_to(outside)
    for src, dst in [("../outside/secret", "x"), ("/etc/passwd", "x"), ("leak/secret", "x"),
                     ("state", "y"), ("state/a.bin", "../escape"),
                     ("state/a.bin", "planted/owned"), ("state/a.bin", ".shoal-install")]:
        with pytest.raises(HostilePath):
            copy_confined(old, new, src, dst)
    assert sorted(os.listdir(outside)) == ["secret"]
    assert not (tmp_path / "escape").exists()
    with pytest.raises(FileNotFoundError):
        copy_confined(old, new, "missing", "x")


_COPY = """\
    from agent.migrator_sdk import Migrator, main
    class M(Migrator):
        def ingest(self, ctx):
            ctx.copy({src!r}, {dst!r})
    main(M())
    """

HOSTILE = {
    "dotdot": (_COPY.format(src="../../../../../../etc/passwd", dst="state/x"),
               MigratorRefused, "etc/passwd"),
    "absolute": (_COPY.format(src="/etc/passwd", dst="state/x"), MigratorRefused,
                 "absolute"),
    "link-out": (_COPY.format(src="state/leak/hostname", dst="state/x"), MigratorRefused,
                 "symlink|resolves outside"),
    "dest-out": (_COPY.format(src=STATE, dst="../../../../escape"), MigratorRefused,
                 "escape"),
    "crash": ("import sys\nsys.stderr.write('boom: out of cheese\\n')\nsys.exit(3)\n",
              MigratorCrashed, "status 3.*out of cheese"),
    "hang": ("import time\ntime.sleep(60)\n", MigratorTimeout, "within 1 s"),
    "garbage": ("import sys\nsys.stdout.write('hello, I am not a frame' * 3)\n"
                "sys.stdout.flush()\nimport time\ntime.sleep(30)\n", MigratorGarbage,
                "garbage|undecodable|frame"),
    "gives-up": ("from agent.migrator_sdk import MigrationError, Migrator, main\n"
                 "class M(Migrator):\n    def ingest(self, ctx):\n"
                 "        raise MigrationError('state format 0 is unsupported')\n"
                 "main(M())\n", MigratorReportedFailure, "format 0 is unsupported"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_bad_migrator_leaves_the_node_on_the_old_version(
        case: str, tmp_path: Path, node_a: Node, publisher: SigningIdentity) -> None:
    source, error, pattern = HOSTILE[case]
    if case == "link-out":
        (node_a.vdir("1.0.0") / "state" / "leak").symlink_to("/etc")
    m2 = v2(node_a, tmp_path, publisher, migrate=source)
    with pytest.raises(error, match=pattern) as info:
        await node_a.install(m2, "1.0.0", timeout=1.0 if case == "hang" else 20.0)
    assert isinstance(info.value, MigratorError) and isinstance(info.value, AgentError)
    assert node_a.active() == "1.0.0"
    assert not node_a.vdir("2.0.0").exists()
    assert [p.name for p in node_a.data.model_dir(MODEL).iterdir()
            if p.name.startswith(".tmp")] == []
    assert not (tmp_path / "escape").exists()
    assert json.loads((node_a.vdir("1.0.0") / STATE).read_text())["samples"] == 3


async def test_no_ingest_without_a_previous_version(
        tmp_path: Path, publisher: SigningIdentity) -> None:
    b = Node(tmp_path / "b")
    m2 = v2(b, tmp_path, publisher, migrate="import sys\nsys.exit(9)\n")
    assert ingest_hook(b.installer, m2, "default", None) is None
    await b.install(m2, None)
    assert b.active() == "2.0.0"


# ---------------------------------------------------------------------- two daemons


@pytest.mark.slow
def test_two_daemons_export_distribute_and_a_failing_ingest(tmp_path: Path) -> None:
    """Real daemons: A learns, `shoal export` publishes the state, B runs with A's state
    after fetching about the state's size; then an upgrade whose migrator crashes leaves
    both nodes on the derived version with a deployment_failed blocker."""
    from agent._cli.main import main as cli_main
    from agent._demo.fleet import LocalFleet

    fleet = LocalFleet(tmp_path / "fleet", 2)
    dirs = [DataDir(n.data_dir) for n in fleet.nodes]

    def call(i: int, fn: Any) -> Any:
        return trio.run(fleet.call, i, fn)

    def store_bytes(i: int) -> int:
        st = call(i, lambda c: c.status())
        return int(json.loads(st.statistics_json)["store"]["bytes"])

    def current(i: int) -> Path:
        return (dirs[i].model_dir(MODEL) / "current").resolve()

    with fleet.running():
        pkg = package(tmp_path, "pkg1")
        call(0, lambda c: c.publish(str(pkg), MODEL, "1.0.0"))
        call(0, lambda c: c.distribute_model(MODEL, "1.0.0"))
        trio.run(fleet.wait_converged, 0, MODEL, "1.0.0", 60)
        learned = learn(current(0), 0.9, 0.7, 0.8)
        before = store_bytes(1)
        rc = cli_main(["export", MODEL, "--version", "1.0.1", "--data-dir",
                       str(dirs[0].root), "--socket", fleet.socket(0)])
        assert rc == 0
        call(0, lambda c: c.distribute_model(MODEL, "1.0.1"))
        trio.run(fleet.wait_converged, 0, MODEL, "1.0.1", 60)
        assert current(1).name == "1.0.1"
        assert json.loads((current(1) / STATE).read_text()) == learned
        moved = store_bytes(1) - before
        state_size = len((current(0) / STATE).read_bytes())
        marker = len((current(1) / EXPORT_MARKER).read_bytes())
        assert moved == state_size + marker
        # the derived manifest, as node 1 received it by gossip, names its base
        received = [decode_value(Manifest, f.read_bytes())
                    for f in (dirs[1].root / "store" / "manifests").iterdir() if f.is_file()]
        derived = [m for m in received if m.version == "1.0.1"]
        assert [m.base_version for m in derived] == ["1.0.0"]

        crash = package(tmp_path, "pkg2", "import sys\nsys.stderr.write('no cheese\\n')\n"
                                          "sys.exit(4)\n", model_version="2")
        call(0, lambda c: c.publish(str(crash), MODEL, "2.0.0"))
        call(0, lambda c: c.distribute_model(MODEL, "2.0.0"))

        async def failed() -> Any:
            with trio.fail_after(60):
                while True:
                    rep = await fleet.call(0, lambda c: c.convergence_status(MODEL, "2.0.0"))
                    if rep.failed == 2:
                        return rep
                    await trio.sleep(0.3)
        rep = trio.run(failed)
        assert {b.reason for b in rep.blockers} == {"deployment_failed"}
        assert all("status 4" in b.details and "no cheese" in b.details
                   for b in rep.blockers)
        assert current(0).name == current(1).name == "1.0.1"
        assert json.loads((current(1) / STATE).read_text()) == learned

