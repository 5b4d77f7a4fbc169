"""The checked-in Migrator gRPC stubs are exactly what `make proto` generates, and the
.proto is the seed's service field for field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ["agent/_grpc/migrator.proto", "agent/_grpc/health.proto"]
GENERATED = [f"agent/_grpc/{name}{ext}" for name in ("migrator", "health")
             for ext in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")]


def test_regenerating_the_stubs_gives_the_checked_in_files(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    out = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I.", f"--python_out={tmp_path}",
         f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", *PROTOS],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for rel in GENERATED:
        assert (tmp_path / rel).read_bytes() == (ROOT / rel).read_bytes(), \
            f"{rel} is stale: run `make proto` and commit the result"


def test_the_service_is_the_seeds() -> None:
    from agent._grpc import migrator_pb2 as pb

    d = pb.DESCRIPTOR
    assert d.package == "t1.fps.model"
    assert b"proto3" in d.serialized_pb

    def fields(name: str) -> list[tuple[str, int, bool]]:
        return [(f.name, f.number, f.is_repeated)
                for f in d.message_types_by_name[name].fields]

    assert fields("IngestFileResult") == [("source_path", 1, False), ("dest_path", 2, False),
                                          ("error", 3, False)]
    assert fields("IngestFileCopy") == [("source_path", 1, False), ("dest_path", 2, False)]
    assert fields("ExportRequest") == []
    assert fields("ExportResponse") == [("paths", 1, True)]
    svc = d.services_by_name["Migrator"]
    assert svc.full_name == "t1.fps.model.Migrator"
    ingest, export = svc.methods_by_name["Ingest"], svc.methods_by_name["Export"]
    assert (ingest.input_type.name, ingest.output_type.name) == ("IngestFileResult",
                                                                 "IngestFileCopy")
    assert ingest.client_streaming and ingest.server_streaming
    assert (export.input_type.name, export.output_type.name) == ("ExportRequest",
                                                                 "ExportResponse")
    assert not export.client_streaming and not export.server_streaming
