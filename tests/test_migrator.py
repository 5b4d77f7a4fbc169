"""The migrator: export of learned state as a derived version, ingest across an upgrade,
and hostile or broken migrators (real child processes serving the seed's gRPC service,
in-process Installer)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import trio

import agent._daemon.migrator as migrator_module
from agent._daemon.export import (
    default_derived_version,
    export_version,
)
from agent._daemon.migrator import (
    EXPORT_MARKER,
    MigratorCrashed,
    MigratorError,
    MigratorGarbage,
    MigratorNotReady,
    MigratorRefused,
    MigratorReportedFailure,
    MigratorTimeout,
    check_migrator_address,
    copy_confined,
    ingest_hook,
    is_derived,
    run_export,
    run_ingest,
)
from agent._errors import AgentError, ChunkCorrupted
from agent._storage.install import Installer
from agent._storage.paths import DataDir
from agent._storage.publish import publish
from agent._storage.store import ChunkStore
from protocol._codec import decode_value, encode_value
from protocol._errors import HostilePath
from protocol._identity import SigningIdentity
from protocol._manifest import Manifest, SemVer, merkle_root

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


@pytest.fixture(autouse=True)
def private_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Where the agent makes a started migrator's private socket directory; it must be
    empty again after every run (the socket removed), and no migrator left running."""
    root = Path(tempfile.mkdtemp(prefix="mig-", dir="/tmp"))
    monkeypatch.setattr(migrator_module, "PRIVATE_DIR", str(root))
    yield root
    assert os.listdir(root) == []
    os.rmdir(root)


def processes_under(path: Path, needle: str = "") -> list[str]:
    """Live processes whose command line names something under ``path`` (and ``needle``)."""
    out = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if str(path) in cmd and needle in cmd and p.info["status"] != psutil.STATUS_ZOMBIE \
                and p.pid != os.getpid():
            out.append(cmd)
    return out


def snapshot(root: Path, skip: tuple[Path, ...]) -> dict[str, tuple[Any, ...]]:
    """Every path under ``root`` (but those under ``skip``) with what it is and holds."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        for name in dirnames + filenames:
            p = here / name
            st = p.lstat()
            link = os.readlink(p) if p.is_symlink() else None
            if p.is_dir() and not p.is_symlink():   # its entries are listed themselves
                out[str(p.relative_to(root))] = (st.st_mode,)
            else:
                out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, link)
    return out


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

# a raw server (generated stubs, no SDK) whose Ingest does BODY; used by the broken cases
_RAW = """\
import os, sys, time
from concurrent import futures
import grpc
from agent._grpc import migrator_pb2 as pb, migrator_pb2_grpc as pb_grpc
{prelude}
class Raw(pb_grpc.MigratorServicer):
    def Ingest(self, request_iterator, context):
{body}
server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
pb_grpc.add_MigratorServicer_to_server(Raw(), server)
server.add_insecure_port(os.environ["SHOAL_MIGRATOR_ADDRESS"])
server.start()
server.wait_for_termination()
"""


def _raw(body: str, prelude: str = "") -> str:
    return _RAW.format(prelude=prelude, body=textwrap.indent(textwrap.dedent(body), " " * 8))


# garbage on the wire: a generic handler that streams bytes no IngestFileCopy parses from
_GARBAGE = """\
import os
from concurrent import futures
import grpc
def ingest(request_iterator, context):
    yield b"\\x0a\\xff\\xff\\xff\\xff\\x0f garbage"
handler = grpc.method_handlers_generic_handler("t1.fps.model.Migrator", {
    "Ingest": grpc.stream_stream_rpc_method_handler(ingest)})
server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
server.add_generic_rpc_handlers((handler,))
server.add_insecure_port(os.environ["SHOAL_MIGRATOR_ADDRESS"])
server.start()
server.wait_for_termination()
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
              MigratorCrashed, "status 3 before it served.*out of cheese"),
    "never-ready": ("import time\nprint('warming up', flush=True)\ntime.sleep(60)\n",
                    MigratorNotReady, "did not become ready .* within 1 s.*warming up"),
    "hang": (_raw("time.sleep(60)\nyield pb.IngestFileCopy()"), MigratorTimeout,
             "did not finish within 1 s"),
    "dies-mid-call": (_raw("""\
        yield pb.IngestFileCopy(source_path="state/threshold.json",
                                dest_path="state/threshold.json")
        next(request_iterator)
        sys.stderr.write("segfault-ish\\n"); sys.stderr.flush()
        os._exit(5)
        """), MigratorCrashed, "status 5 before finishing.*segfault-ish"),
    "garbage": (_GARBAGE, MigratorGarbage, "not a valid t1.fps.model message"),
    "unknown-status": (_raw("context.abort(grpc.StatusCode.DATA_LOSS, 'odd')\nyield",
                            prelude="grpc._common.STATUS_CODE_TO_CYGRPC_STATUS_CODE["
                                    "grpc.StatusCode.DATA_LOSS] = 99"),
                       # gRPC's core turns a code outside the 17 into UNKNOWN
                       MigratorReportedFailure, "status UNKNOWN: odd"),
    "non-ok-status": (_raw("""\
        yield pb.IngestFileCopy(source_path="nope", dest_path="state/nope")
        r = next(request_iterator)
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "cannot go on: " + r.error)
        """), MigratorReportedFailure,
                      "status FAILED_PRECONDITION: cannot go on: No such file"),
    "gives-up": ("from agent.migrator_sdk import MigrationError, Migrator, main\n"
                 "class M(Migrator):\n    def ingest(self, ctx):\n"
                 "        raise MigrationError('state format 0 is unsupported')\n"
                 "main(M())\n", MigratorReportedFailure, "format 0 is unsupported"),
}
SHORT = {"hang", "never-ready"}     # run with a 1 s timeout


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_bad_migrator_leaves_the_node_on_the_old_version(
        case: str, tmp_path: Path, node_a: Node, publisher: SigningIdentity) -> None:
    source, error, pattern = HOSTILE[case]
    if case == "link-out":
        (node_a.vdir("1.0.0") / "state" / "leak").symlink_to("/etc")
    m2 = v2(node_a, tmp_path, publisher, migrate=source)
    versions = node_a.data.model_dir(MODEL) / "versions"
    # the version being installed is staged in its pack (the store's, see docs/STORAGE.md)
    staged = node_a.data.store / "packs" / f"{m2.manifest_id}.default"
    before = snapshot(tmp_path, (versions, staged))
    old_files = snapshot(node_a.vdir("1.0.0"), ())
    t0 = time.monotonic()
    with pytest.raises(error, match=pattern) as info:
        await node_a.install(m2, "1.0.0", timeout=1.0 if case in SHORT else 20.0)
    assert time.monotonic() - t0 < 15
    assert isinstance(info.value, MigratorError) and isinstance(info.value, AgentError)
    assert node_a.active() == "1.0.0"
    assert not node_a.vdir("2.0.0").exists()
    assert snapshot(tmp_path, (versions, staged)) == before    # nothing outside them
    assert snapshot(node_a.vdir("1.0.0"), ()) == old_files
    assert sorted(p.name for p in versions.iterdir()) == ["1.0.0"]
    assert processes_under(tmp_path) == []


async def test_no_ingest_without_a_previous_version(
        tmp_path: Path, publisher: SigningIdentity) -> None:
    b = Node(tmp_path / "b")
    m2 = v2(b, tmp_path, publisher, migrate="import sys\nsys.exit(9)\n")
    assert ingest_hook(b.installer, m2, "default", None) is None
    await b.install(m2, None)
    assert b.active() == "2.0.0"


# ---------------------------------------------------------------------- any implementation

# A migrator written straight against the generated stubs — no SDK — as a model in any
# language would be: it serves on the address it is given (argv[1], else the agent's).
RAW_STUBS_MIGRATOR = """\
import os, signal, sys
from concurrent import futures
import grpc
from agent._grpc import migrator_pb2 as pb, migrator_pb2_grpc as pb_grpc

class Raw(pb_grpc.MigratorServicer):
    def Export(self, request, context):
        return pb.ExportResponse(paths=["state", "calib"])

    def Ingest(self, request_iterator, context):
        errors = []
        for src, dst in [("state", "state"), ("calib", "calib-v1"), ("gone.bin", "x")]:
            yield pb.IngestFileCopy(source_path=src, dest_path=dst)
            result = next(request_iterator)
            assert (result.source_path, result.dest_path) == (src, dst)
            errors.append(result.error)
        if errors[0] or errors[1] or "No such file" not in errors[2]:
            context.abort(grpc.StatusCode.INTERNAL, repr(errors))

address = sys.argv[1] if len(sys.argv) > 1 else os.environ["SHOAL_MIGRATOR_ADDRESS"]
server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
pb_grpc.add_MigratorServicer_to_server(Raw(), server)
server.add_insecure_port(address)
server.start()
print("serving", address, flush=True)
signal.signal(signal.SIGTERM, lambda *a: server.stop(0))
server.wait_for_termination()
"""


def raw_versions(tmp_path: Path) -> tuple[Path, Path]:
    old, new = tmp_path / "v1", tmp_path / "v2"
    for d in (old / "state", old / "calib" / "deep", new):
        d.mkdir(parents=True)
    (old / "state" / "threshold.json").write_text('{"samples": 7, "threshold": 0.25}')
    (old / "calib" / "deep" / "table.bin").write_bytes(bytes(range(256)) * 40)
    (new / "migrate.py").write_text(RAW_STUBS_MIGRATOR)
    (old / "migrate.py").write_text(RAW_STUBS_MIGRATOR)
    return old, new


def check_carried(old: Path, new: Path) -> None:
    assert (new / "state" / "threshold.json").read_bytes() == \
        (old / "state" / "threshold.json").read_bytes()
    assert (new / "calib-v1" / "deep" / "table.bin").read_bytes() == \
        (old / "calib" / "deep" / "table.bin").read_bytes()
    assert not (new / "x").exists()


async def test_a_migrator_written_against_the_generated_stubs_is_started_and_served(
        tmp_path: Path, private_tmp: Path) -> None:
    old, new = raw_versions(tmp_path)
    assert await run_export(old, "migrate.py", timeout=20) == ("state", "calib")
    report = await run_ingest(old, new, "migrate.py", model_id=MODEL, from_version="1",
                              to_version="2", timeout=20)
    assert (report.copies, report.failed, report.files) == (2, 1, 2)
    assert report.bytes == (old / "state" / "threshold.json").stat().st_size + 256 * 40
    check_carried(old, new)
    assert processes_under(tmp_path) == []


async def test_a_running_migrator_at_an_address_is_only_connected_to(
        tmp_path: Path) -> None:
    old, new = raw_versions(tmp_path)
    sock = Path(tempfile.mkdtemp(prefix="mig-", dir="/tmp")) / "model.sock"
    address = f"unix://{sock}"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    server = subprocess.Popen([sys.executable, str(old / "migrate.py"), address], env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().startswith("serving")
        for _ in range(2):      # the agent connects, calls, and leaves the service running
            assert await run_export(old, None, address=address, timeout=20) == \
                ("state", "calib")
            assert server.poll() is None
        await run_ingest(old, new, None, address=address, model_id=MODEL,
                         from_version="1", to_version="2", timeout=20)
        check_carried(old, new)
        assert server.poll() is None
    finally:
        server.terminate()
        server.wait(10)
        server.stdout.close()
        shutil.rmtree(sock.parent, ignore_errors=True)
    with pytest.raises(MigratorNotReady, match="did not become ready on unix:"):
        await run_export(old, None, address=address, timeout=0.5)


async def test_a_migrator_that_ignores_sigterm_is_killed_with_its_children(
        tmp_path: Path, private_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopping: SIGTERM to the group, SIGKILL after the grace period — a child the
    migrator started goes too."""
    old, _ = raw_versions(tmp_path)
    (old / "migrate.py").write_text(RAW_STUBS_MIGRATOR.replace(
        "signal.signal(signal.SIGTERM, lambda *a: server.stop(0))",
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "import subprocess\n"
        f"subprocess.Popen(['sh', '-c', 'sleep 60; : {tmp_path}'])\n"))
    monkeypatch.setattr(migrator_module, "STOP_GRACE", 0.5)
    t0 = time.monotonic()
    assert await run_export(old, "migrate.py", timeout=20) == ("state", "calib")
    assert time.monotonic() - t0 >= 0.5
    await trio.sleep(0.2)
    assert processes_under(tmp_path) == []       # the migrator and its sh child


@pytest.mark.parametrize("address, ok", [
    ("unix:///run/model/migrator.sock", True), ("unix:/run/m.sock", True),
    ("127.0.0.1:50051", True), ("localhost:7000", True), ("[::1]:7000", True),
    ("10.0.0.5:50051", False), ("model.example:443", False), ("unix:relative.sock", False),
    ("127.0.0.1", False), ("127.0.0.1:0", False), ("", False),
])
def test_migrator_addresses_are_loopback_unless_allowed(address: str, ok: bool) -> None:
    if ok:
        assert check_migrator_address(address) == address
    else:
        with pytest.raises(MigratorRefused):
            check_migrator_address(address)
    assert check_migrator_address("10.0.0.5:50051", allow_remote=True) == "10.0.0.5:50051"


async def test_cancelling_the_agent_cancels_the_call_and_stops_the_migrator(
        tmp_path: Path, private_tmp: Path) -> None:
    old, new = raw_versions(tmp_path)
    (new / "migrate.py").write_text(_raw("time.sleep(60)\nyield pb.IngestFileCopy()"))
    t0 = time.monotonic()
    with trio.move_on_after(1.5) as scope:
        await run_ingest(old, new, "migrate.py", model_id=MODEL, from_version="1",
                         to_version="2", timeout=60)
    assert scope.cancelled_caught
    assert time.monotonic() - t0 < 10
    assert processes_under(tmp_path) == []
    assert sorted(os.listdir(new)) == ["migrate.py"]


def address_manifest(node: Node, tmp: Path, publisher: SigningIdentity, address: str
                     ) -> Manifest:
    """2.0.0 whose variant names ``migrator_address`` (no program), signed directly
    (shoal-model.toml says it too: tests/test_publish.py)."""
    m = v2(node, tmp, publisher)
    variant = dataclasses.replace(m.variant("default"), migrator=None,
                                  migrator_address=address)
    signed = Manifest.sign(publisher, MODEL, "2.0.0-addr", (variant,), 3)
    node.store.stage(signed, "default")     # as a daemon has it once its chunks came
    return signed


async def test_upgrade_through_a_variants_migrator_address(
        tmp_path: Path, node_a: Node, publisher: SigningIdentity) -> None:
    learned = json.loads((node_a.vdir("1.0.0") / STATE).read_text())
    sock = Path(tempfile.mkdtemp(prefix="mig-", dir="/tmp")) / "model.sock"
    address = f"unix://{sock}"
    m2 = address_manifest(node_a, tmp_path, publisher, address)
    assert decode_value(Manifest, encode_value(m2)) == m2     # the field is signed
    m2.verify()
    service = tmp_path / "service.py"      # the model's own, already running service
    service.write_text(textwrap.dedent(_COPY.format(src=STATE, dst=STATE)).replace(
        "main(M())", "import sys\nfrom agent.migrator_sdk import serve\nserve(M(), sys.argv[1])"))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    server = subprocess.Popen([sys.executable, str(service), address], env=env)
    try:
        await node_a.install(m2, "1.0.0")
        assert node_a.active() == "2.0.0-addr"
        assert json.loads((node_a.vdir("2.0.0-addr") / STATE).read_text()) == learned
        assert server.poll() is None          # the agent only connected
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(sock.parent, ignore_errors=True)


@pytest.mark.parametrize("address, error, pattern", [
    ("10.1.2.3:50051", MigratorRefused, "only loopback"),
    ("127.0.0.1:1", MigratorNotReady, "did not become ready on 127.0.0.1:1 within 1 s"),
])
async def test_a_bad_migrator_address_fails_the_upgrade(
        tmp_path: Path, node_a: Node, publisher: SigningIdentity, address: str,
        error: type[MigratorError], pattern: str) -> None:
    m2 = address_manifest(node_a, tmp_path, publisher, address)
    versions = node_a.data.model_dir(MODEL) / "versions"
    staged = node_a.data.store / "packs" / f"{m2.manifest_id}.default"
    # assembling 2.0.0 reads the base's state chunk, which A's model rewrote in its own
    # installed file: the store quarantines that bad copy (and takes the good one)
    quarantine = node_a.data.store / "quarantine"
    before = snapshot(tmp_path, (versions, staged, quarantine))
    with pytest.raises(error, match=pattern):
        await node_a.install(m2, "1.0.0", timeout=1.0)
    assert node_a.active() == "1.0.0"
    assert snapshot(tmp_path, (versions, staged, quarantine)) == before
    assert sorted(p.name for p in versions.iterdir()) == ["1.0.0"]


def test_a_variant_names_a_program_or_an_address_never_both() -> None:
    from protocol._capabilities import Requirements
    from protocol._errors import InvalidValue
    from protocol._manifest import FileEntry, Variant

    f = FileEntry("migrate.py", 0, (), merkle_root([]), False)
    assert Variant("v", Requirements(), (f,), None, "[::1]:7000").migrator_address
    with pytest.raises(InvalidValue, match="exclusive"):
        Variant("v", Requirements(), (f,), "migrate.py", "unix:///run/m.sock")
    for bad in ("unix:relative", "host", "host:99999", "a b:1"):
        with pytest.raises(InvalidValue, match="migrator_address"):
            Variant("v", Requirements(), (f,), None, bad)


# ---------------------------------------------------------------------- two daemons


@pytest.mark.slow
def test_two_daemons_export_distribute_upgrade_and_a_failing_ingest(tmp_path: Path) -> None:
    """Real daemons: A learns, `shoal export` publishes the state, B runs with A's state
    after fetching about the state's size; an upgrade to 2.0.0 carries the state over on
    both nodes through the example's gRPC migrator (Ingest); then an upgrade whose
    migrator crashes leaves both nodes on 2.0.0 with a deployment_failed blocker."""
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

        # A -> B: 2.0.0 ingests the learned state out of 1.0.1 on each node
        upgrade = package(tmp_path, "pkg2", model_version="2")
        call(0, lambda c: c.publish(str(upgrade), MODEL, "2.0.0"))
        call(0, lambda c: c.distribute_model(MODEL, "2.0.0"))
        trio.run(fleet.wait_converged, 0, MODEL, "2.0.0", 60)
        for i in (0, 1):
            assert current(i).name == "2.0.0"
            assert json.loads((current(i) / STATE).read_text()) == learned
            assert 'MODEL_VERSION = "2"' in (current(i) / "model.py").read_text()

        crash = package(tmp_path, "pkg3", "import sys\nsys.stderr.write('no cheese\\n')\n"
                                          "sys.exit(4)\n", model_version="3")
        call(0, lambda c: c.publish(str(crash), MODEL, "3.0.0"))
        call(0, lambda c: c.distribute_model(MODEL, "3.0.0"))

        async def failed() -> Any:
            with trio.fail_after(60):
                while True:
                    rep = await fleet.call(0, lambda c: c.convergence_status(MODEL, "3.0.0"))
                    if rep.failed == 2:
                        return rep
                    await trio.sleep(0.3)
        rep = trio.run(failed)
        assert {b.reason for b in rep.blockers} == {"deployment_failed"}
        assert all("status 4" in b.details and "no cheese" in b.details
                   for b in rep.blockers), rep.blockers
        assert current(0).name == current(1).name == "2.0.0"
        assert json.loads((current(1) / STATE).read_text()) == learned
        assert processes_under(tmp_path, "migrate.py") == []

