"""Deterministic keys, ledgers, manifests and intents shared by the ledger tests."""

from __future__ import annotations

import blake3

from protocol._capabilities import Capabilities, GpuInfo, Requirements
from protocol._chunking import chunk_bytes
from protocol._hlc import HLC
from protocol._identity import Certificate, FleetTrust, Role, SigningIdentity
from protocol._intents import Intent, IntentKind, Scope
from protocol._ledger import Ledger, ModelState, NodeRecord, Suspicion
from protocol._manifest import FileEntry, Manifest, Variant, merkle_root
from protocol._types import ModelOperationalStatus, TransferPriority

FLEET = "test-fleet"


def key(label: str) -> SigningIdentity:
    return SigningIdentity(blake3.blake3(label.encode()).digest())


ROOT = key("root")
OPERATOR = key("operator")
PUBLISHER = key("publisher")
ROGUE = key("rogue")          # never admitted


def make_trust() -> FleetTrust:
    trust = FleetTrust(FLEET, ROOT.public_key)
    trust.add_certificate(Certificate.issue(ROOT, FLEET, OPERATOR.public_key, Role.OPERATOR,
                                            "ops", 1))
    trust.add_certificate(Certificate.issue(ROOT, FLEET, PUBLISHER.public_key,
                                            Role.PUBLISHER, "pub", 1))
    return trust


def node_key(i: int) -> SigningIdentity:
    return key(f"node-{i}")


def node_cert(ident: SigningIdentity, name: str = "node") -> Certificate:
    return Certificate.issue(ROOT, FLEET, ident.public_key, Role.NODE, name, 1)


def admitted_ledger(n_nodes: int) -> Ledger:
    """An empty ledger whose trust already admits nodes 0..n-1."""
    trust = make_trust()
    for i in range(n_nodes):
        trust.add_certificate(node_cert(node_key(i)))
    return Ledger(trust)


def caps(gpu_gb: int = 0, arch: str = "x86_64", storage_mb: int = 100_000) -> Capabilities:
    gpus = (GpuInfo("gpu", gpu_gb * 1024, gpu_gb * 1024, "550", "9.0"),) if gpu_gb else ()
    eps = ("CUDAExecutionProvider", "CPUExecutionProvider") if gpu_gb else (
        "CPUExecutionProvider",)
    return Capabilities(arch, 8, 16_384, storage_mb, gpus, eps)


def record(name: str = "n", formation: str = "", capabilities: Capabilities | None = None,
           models: tuple[ModelState, ...] = (), written_at: float = 0.0,
           suspects: tuple[Suspicion, ...] = ()) -> NodeRecord:
    return NodeRecord(name, formation, capabilities, "", models, suspects, written_at)


def running(model_id: str, version: str, status: ModelOperationalStatus
            = ModelOperationalStatus.OPERATIONAL, **kw: object) -> ModelState:
    return ModelState(model_id, version, "v", status,
                      active_version=version if status is ModelOperationalStatus.OPERATIONAL
                      else "", **kw)  # type: ignore[arg-type]


def intent(version: str = "1.0.0", *, model: str = "m", wall: int = 1,
           kind: IntentKind = IntentKind.DISTRIBUTE, scope: Scope | None = None,
           cancels: str | None = None, issuer: SigningIdentity = OPERATOR,
           variant: str | None = None,
           priority: TransferPriority = TransferPriority.NORMAL) -> Intent:
    return Intent.create(issuer, kind, model, version, HLC(wall, 0, "op"), scope=scope,
                         cancels=cancels, variant_id=variant, priority=priority)


def model_files(seed: str, size: int) -> tuple[FileEntry, bytes]:
    data = b"".join(blake3.blake3(f"{seed}{i}".encode()).digest(1024)
                    for i in range((size + 1023) // 1024))[:size]
    refs = tuple(chunk_bytes(data))
    return FileEntry("model.bin", size, refs, merkle_root([r.hash for r in refs])), data


def manifest(model: str = "m", version: str = "1.0.0", seed: str = "a", size: int = 4096,
             requirements: Requirements | None = None,
             publisher: SigningIdentity = PUBLISHER) -> tuple[Manifest, bytes]:
    f, data = model_files(seed, size)
    variant = Variant("cpu", requirements or Requirements(), (f,))
    return Manifest.sign(publisher, model, version, (variant,), 1), data
