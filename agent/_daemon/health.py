"""A variant's health check: run it in its version directory, read its verdict.

Theory of operation
-------------------
A variant may name a health check (``health_check`` in ``shoal-model.toml``: a file
of the variant, like its migrator). The agent starts it in the version directory
(``python FILE`` for a ``.py`` file, else the file itself, which must be
executable) with ``SHOAL_MODEL_ID``, ``SHOAL_VERSION``, ``SHOAL_VARIANT`` and
``SHOAL_DATA_DIR`` in its environment. Exit status 0 means healthy; anything else
is unhealthy, and the detail the fleet sees is the check's last non-empty stderr
line (else its exit status). A check that runs past ``timeout`` is killed and
counts as unhealthy; one that cannot start (missing, not executable, a path out of
the version) is unhealthy with the reason.

When it runs: after an install, before the node reports the install finished (the
model is ``loading`` meanwhile), every ``settle_every`` seconds until it passes or
``settle_window`` ends -- ``operational`` if it passed, ``degraded`` if not; then
every ``interval`` seconds while the version is the one that runs, so a model that
degrades later (or recovers) is reported too. No check: today's behaviour, the
model is ``operational`` once its files are switched.

A model that runs as a service may instead say ``health_check = "grpc"``: the agent
asks the standard ``grpc.health.v1.Health/Check`` (service ``""``) at the variant's
``migrator_address`` -- the same address, and the same loopback-only policy, as its
gRPC migrator. ``SERVING`` is healthy; any other status, or a failed call (refused,
deadline, unimplemented), is unhealthy with that as the detail.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import trio

from agent._storage.install import Installer
from agent._storage.paths import confine
from protocol import (
    GRPC_HEALTH_CHECK,
    HostilePath,
    InvalidValue,
    Manifest,
    validate_relative_path,
)

__all__ = ["HealthMonitor", "HealthSettings", "HealthTarget", "check_argv", "check_once",
           "run_check", "run_grpc_check", "settle"]

log = logging.getLogger("shoal.daemon")

_DETAIL_MAX = 300        # characters of the detail kept (it travels in the node's record)


@dataclass(frozen=True, slots=True)
class HealthSettings:
    settle_window: float = 30.0   # seconds after an install the check may take to pass
    settle_every: float = 2.0     # seconds between tries within the window
    interval: float = 30.0        # seconds between checks of the running version
    timeout: float = 10.0         # seconds one check may run

    def __post_init__(self) -> None:
        for name in ("settle_window", "settle_every", "interval", "timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")


@dataclass(frozen=True, slots=True)
class HealthTarget:
    """What to check: a file of the version (``check``), or, when ``check`` is
    ``"grpc"``, the Health service at ``address``."""

    version_dir: Path
    check: str
    address: str | None = None
    allow_remote: bool = False


def check_argv(version_dir: Path, check: str) -> list[str] | str:
    """The argv that runs ``check`` (a file of the version), or why it cannot run."""
    try:
        validate_relative_path(check)
        path = confine(version_dir, check)
    except (HostilePath, InvalidValue) as exc:
        return f"health check {check!r} refused: {exc}"
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"health check {check!r} cannot be started: {exc.strerror or exc}"
    if not stat.S_ISREG(st.st_mode):
        return f"health check {check!r} is not a regular file"
    if check.endswith(".py"):
        return [sys.executable, str(path)]
    if not st.st_mode & 0o100:
        return f"health check {check!r} is not executable"
    return [str(path)]


def _last_line(stderr: bytes) -> str:
    lines = [ln.strip() for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:_DETAIL_MAX] if lines else ""


async def run_check(version_dir: Path, check: str, env: Mapping[str, str],
                    timeout: float) -> str | None:
    """Run the check once: None when healthy, else the detail."""
    argv = check_argv(version_dir, check)
    if isinstance(argv, str):
        return argv
    with trio.move_on_after(timeout) as scope:
        try:
            proc = await trio.run_process(argv, cwd=str(version_dir),
                                          env={**os.environ, **env}, check=False,
                                          capture_stdout=True, capture_stderr=True,
                                          stdin=b"")
        except OSError as exc:
            return f"health check {check!r} cannot be started: {exc.strerror or exc}"
    if scope.cancelled_caught:
        return f"health check timed out after {timeout:g} s"
    if proc.returncode == 0:
        return None
    return _last_line(proc.stderr) or f"health check exited with status {proc.returncode}"


def _grpc_check_sync(address: str, timeout: float) -> str | None:
    import grpc

    from agent._grpc import health_pb2, health_pb2_grpc

    serving = health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
        try:
            resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout,
                              wait_for_ready=False)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            name = code.name if code is not None else "ERROR"
            details = exc.details() if hasattr(exc, "details") else str(exc)
            return f"health service at {address}: {name}: {details}"[:_DETAIL_MAX]
    if resp.status == serving:
        return None
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    return f"health service at {address} says {status}"


async def run_grpc_check(address: str, timeout: float, *, allow_remote: bool = False
                         ) -> str | None:
    """``grpc.health.v1.Health/Check`` at ``address``: None when SERVING, else why not."""
    from agent._daemon.migrator import MigratorRefused, check_migrator_address
    try:
        check_migrator_address(address, allow_remote=allow_remote)
    except MigratorRefused as exc:
        return str(exc).replace("migrator address", "health address")
    return await trio.to_thread.run_sync(_grpc_check_sync, address, timeout)


async def check_once(target: HealthTarget, env: Mapping[str, str], timeout: float
                     ) -> str | None:
    """One check of ``target``: None when healthy, else the detail."""
    if target.check == GRPC_HEALTH_CHECK:
        if target.address is None:
            return "health_check = \"grpc\" needs the variant's migrator_address"
        return await run_grpc_check(target.address, timeout,
                                    allow_remote=target.allow_remote)
    return await run_check(target.version_dir, target.check, env, timeout)


async def settle(target: HealthTarget, env: Mapping[str, str],
                 settings: HealthSettings) -> tuple[str | None, int]:
    """Run the check until it passes or the settling window ends: (None, tries) when
    it passed, else (the last detail, tries)."""
    deadline = trio.current_time() + settings.settle_window
    tries = 0
    while True:
        tries += 1
        detail = await check_once(target, env, settings.timeout)
        if detail is None or trio.current_time() + settings.settle_every >= deadline:
            return detail, tries
        await trio.sleep(settings.settle_every)


class HealthMonitor:
    """A daemon's health checks: through the settling window after each install
    (:meth:`after_install`), and of every running version that has one, every interval
    (:meth:`run`). ``manifest_of(manifest_id)`` and ``running(model_id)`` (the active
    version the node machine reports) come from the node machine; ``report(model_id,
    version, unhealthy)`` hands each periodic result back to it."""

    def __init__(self, settings: HealthSettings, data_root: Path, installer: Installer, *,
                 allow_remote: bool, manifest_of: Callable[[str], Manifest | None],
                 running: Callable[[str], str | None],
                 report: Callable[[str, str, str | None], None]) -> None:
        self.settings = settings
        self._data_root = data_root
        self._installer = installer
        self._allow_remote = allow_remote
        self._manifest_of = manifest_of
        self._running = running
        self._report = report
        self.checks = 0       # health checks run
        self.failures = 0     # ... that failed

    def _target(self, manifest: Manifest, variant_id: str,
                version_dir: str) -> HealthTarget | None:
        v = next((v for v in manifest.variants if v.variant_id == variant_id), None)
        if v is None or v.health_check is None:
            return None
        return HealthTarget(Path(version_dir), v.health_check, v.migrator_address,
                            self._allow_remote)

    def _env(self, manifest: Manifest, variant_id: str) -> dict[str, str]:
        return {"SHOAL_MODEL_ID": manifest.model_id, "SHOAL_VERSION": manifest.version,
                "SHOAL_VARIANT": variant_id, "SHOAL_DATA_DIR": str(self._data_root)}

    def _count(self, unhealthy: str | None, tries: int = 1) -> None:
        self.checks += tries
        self.failures += tries - 1 + (unhealthy is not None)

    async def after_install(self, manifest: Manifest, variant_id: str) -> str | None:
        """Run the variant's check through its settling window; None when it passed or
        there is none, else why it failed."""
        iv = self._installer.active(manifest.model_id)
        if iv is None or iv.version != manifest.version:
            return None
        target = self._target(manifest, variant_id, iv.path)
        if target is None:
            return None
        unhealthy, tries = await settle(target, self._env(manifest, variant_id),
                                        self.settings)
        self._count(unhealthy, tries)
        if unhealthy is not None:
            log.warning("%s %s is degraded: its health check failed for %g s: %s",
                        manifest.model_id, manifest.version, self.settings.settle_window,
                        unhealthy, extra={"model_id": manifest.model_id,
                                          "version": manifest.version})
        return unhealthy

    async def run(self) -> None:
        """Check every running version that has a health check, every interval."""
        while True:
            await trio.sleep(self.settings.interval)
            for iv in await trio.to_thread.run_sync(self._installer.installed):
                if not iv.active:
                    continue
                manifest = self._manifest_of(iv.manifest_id)
                target = None if manifest is None else self._target(
                    manifest, iv.variant_id, iv.path)
                if manifest is None or target is None \
                        or self._running(iv.model_id) != iv.version:
                    continue
                unhealthy = await check_once(target, self._env(manifest, iv.variant_id),
                                             self.settings.timeout)
                self._count(unhealthy)
                self._report(iv.model_id, iv.version, unhealthy)
