"""Issue 22: the probe on machine trees (tests/data/hw) — Jetsons, discrete and MIG
NVIDIA GPUs, an Intel box with OpenVINO devices, a Raspberry Pi, this machine as
recorded — each with the capabilities it must report and the variant of the reference
package (examples/reference_variants) it must pick; AMD through an amdsmi stand-in;
missing and broken back-ends; and a capable-scope rollout over such machines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent._daemon.probe import Backends, probe_machine
from agent._hardware import BackendReport, probe_amdsmi, probe_nvml, probe_openvino
from agent._storage.publish import load_package
from protocol import Capabilities, Scope, unmet_requirements
from protocol._intents import scope_matches

from ._fleet import InProcessFleet, intent, model_files
from ._helpers import shoal_cli

ROOT = Path(__file__).resolve().parent.parent
TREES = ROOT / "tests" / "data" / "hw"
PACKAGE = ROOT / "examples" / "reference_variants"

# machine -> (arch, cores, accelerators as (kind, MiB, unified), providers, variant)
EXPECTED: dict[str, tuple[str, int, list[tuple[str, int, bool]], tuple[str, ...], str]] = {
    "jetson-agx-orin-32gb": ("aarch64", 12, [("cuda", 29820, True)],
                             ("TensorrtExecutionProvider", "CUDAExecutionProvider",
                              "CPUExecutionProvider"), "fp16_cuda"),
    "jetson-nano-2gb": ("aarch64", 4, [("cuda", 1980, True)],
                        ("CUDAExecutionProvider", "CPUExecutionProvider"), "fp32_cuda"),
    "jetson-thor": ("aarch64", 14, [("cuda", 125384, True)],
                    ("CUDAExecutionProvider", "CPUExecutionProvider"), "fp16_cuda"),
    "x86-rtx4090": ("x86_64", 32, [("cuda", 24564, False)],
                    ("TensorrtExecutionProvider", "CUDAExecutionProvider",
                     "CPUExecutionProvider"), "fp16_cuda"),
    "x86-a100-mig": ("x86_64", 256, [("cuda", 4864, False), ("cuda", 19968, False),
                                     ("cuda", 40960, False)],
                     ("CUDAExecutionProvider", "CPUExecutionProvider"), "fp16_cuda"),
    "intel-nuc-openvino": ("x86_64", 18, [("intel-gpu", 28441, True), ("npu", 0, False)],
                           ("OpenVINOExecutionProvider", "CPUExecutionProvider"),
                           "int8_openvino"),
    "raspberry-pi-4": ("aarch64", 4, [], ("CPUExecutionProvider",), "int8_cpu"),
    "local-x86": ("x86_64", 2, [], ("CPUExecutionProvider",), "int8_cpu"),
}


def pick(caps: Capabilities) -> str | None:
    for spec in load_package(PACKAGE):
        if not unmet_requirements(spec.requirements, caps):
            return spec.variant_id
    return None


@pytest.mark.parametrize("machine", sorted(EXPECTED))
def test_each_recorded_machine_reports_its_hardware_and_picks_the_reference_variant(
        machine: str, tmp_path: Path) -> None:
    arch, cores, accels, providers, variant = EXPECTED[machine]
    report = probe_machine(str(tmp_path), root=TREES / machine)
    c = report.capabilities
    assert (c.cpu_arch, c.cpu_cores) == (arch, cores)
    assert [(g.kind, g.total_memory_mb, g.unified_memory) for g in c.gpus] == accels
    assert c.execution_providers == providers
    assert pick(c) == variant
    # every back-end answered (absent is an answer), none raised
    assert {b.name for b in report.backends} == {"jetson", "nvml", "openvino", "amdsmi"}


def test_jetson_details_come_from_the_device_tree(tmp_path: Path) -> None:
    report = probe_machine(str(tmp_path), root=TREES / "jetson-agx-orin-32gb")
    j = report.jetson
    assert j is not None and j.soc == "nvidia,tegra234" and j.compute_capability == "8.7"
    assert (j.l4t, j.jetpack) == ("35.4.1", "5.1.2")
    gpu = report.capabilities.gpus[0]
    assert gpu.compute_capability == "8.7" and gpu.driver == "L4T 35.4.1"
    # the GPU's memory is the system RAM, counted once as each
    assert gpu.total_memory_mb == report.capabilities.ram_mb
    nano = probe_machine(str(tmp_path), root=TREES / "jetson-nano-2gb").jetson
    assert nano is not None and (nano.l4t, nano.jetpack) == ("32.7.1", "4.6.1")


def test_thor_nvml_gpu_without_memory_gives_way_to_the_jetson_one(tmp_path: Path) -> None:
    report = probe_machine(str(tmp_path), root=TREES / "jetson-thor")
    nvml = next(b for b in report.backends if b.name == "nvml")
    assert nvml.ok and nvml.devices[0].total_memory_mb == 0
    assert any("memory not reported" in d for d in nvml.details)
    assert [g.name for g in report.capabilities.gpus] == [
        "NVIDIA Jetson AGX Thor Developer Kit GPU"]


def test_mig_instances_are_devices_with_their_own_memory(tmp_path: Path) -> None:
    gpus = probe_machine(str(tmp_path), root=TREES / "x86-a100-mig").capabilities.gpus
    assert [g.name for g in gpus] == ["NVIDIA A100-SXM4-40GB MIG 1g.5gb",
                                      "NVIDIA A100-SXM4-40GB MIG 3g.20gb",
                                      "NVIDIA A100-SXM4-40GB"]


def test_a_provider_onnxruntime_lists_without_its_device_is_dropped(tmp_path: Path) -> None:
    report = probe_machine(str(tmp_path), root=TREES / "intel-nuc-openvino")
    assert "CUDAExecutionProvider" not in report.capabilities.execution_providers
    assert any("no cuda device" in n for n in report.notes)
    # OpenVINO's provider only where the OpenVINO runtime loads: recorded tree minus it
    no_ov = probe_machine(str(tmp_path), root=TREES / "intel-nuc-openvino",
                          backends=Backends(onnxruntime=("OpenVINOExecutionProvider",
                                                         "CPUExecutionProvider")))
    assert no_ov.capabilities.execution_providers == ("CPUExecutionProvider",)
    assert pick(no_ov.capabilities) == "int8_cpu"


class _Amdsmi:
    """amdsmi as a machine with one MI210 answers it (hardware edge stand-in)."""

    class AmdSmiMemoryType:
        VRAM = 0

    def amdsmi_init(self) -> None:
        pass

    def amdsmi_shut_down(self) -> None:
        pass

    def amdsmi_get_processor_handles(self) -> list[str]:
        return ["gpu0"]

    def amdsmi_get_gpu_asic_info(self, h: str) -> dict[str, str]:
        return {"market_name": "AMD Instinct MI210", "target_graphics_version": "gfx90a"}

    def amdsmi_get_gpu_memory_total(self, h: str, kind: int) -> int:
        return 64 << 30

    def amdsmi_get_gpu_memory_usage(self, h: str, kind: int) -> int:
        return 1 << 30

    def amdsmi_get_gpu_driver_info(self, h: str) -> dict[str, str]:
        return {"driver_version": "6.7.0"}


def test_amd_gpus_through_amdsmi(tmp_path: Path) -> None:
    report = probe_machine(str(tmp_path), root=TREES / "local-x86", backends=Backends(
        amdsmi=_Amdsmi(), onnxruntime=("ROCMExecutionProvider", "CUDAExecutionProvider",
                                       "CPUExecutionProvider")))
    c = report.capabilities
    assert [(g.name, g.kind, g.total_memory_mb, g.free_memory_mb, g.compute_capability)
            for g in c.gpus] == [("AMD Instinct MI210", "rocm", 65536, 64512, "gfx90a")]
    assert c.execution_providers == ("ROCMExecutionProvider", "CPUExecutionProvider")
    assert pick(c) == "int8_cpu"      # the reference rule has no ROCm build


class _Broken:
    """A library that fails at every call."""

    class NVMLError(Exception):
        pass

    def __getattr__(self, name: str) -> Any:
        def fail(*a: object) -> None:
            raise RuntimeError(f"{name} exploded")
        return fail


def test_missing_or_broken_back_ends_never_break_the_probe(tmp_path: Path) -> None:
    empty = tmp_path / "empty-tree"
    empty.mkdir()
    report = probe_machine(str(tmp_path), root=empty,
                           backends=Backends(nvml=_Broken(), openvino=_Broken(),
                                             amdsmi=_Broken()))
    assert report.capabilities.gpus == ()
    assert report.capabilities.execution_providers == ("CPUExecutionProvider",)
    assert report.capabilities.cpu_cores == 1
    status = {b.name: b.status for b in report.backends}
    assert status["jetson"].startswith("absent")
    for name in ("openvino", "amdsmi"):
        assert status[name].startswith(("error", "absent")), status
    # NVML: initialised, then failed listing
    nv = probe_nvml(_Nvml(fail_at="nvmlDeviceGetCount"))
    assert nv.status.startswith("error") and nv.devices == ()
    assert _Nvml.shutdowns == 1          # shut down after a successful init, even so
    assert probe_openvino(_Broken()).status.startswith("error")
    assert probe_amdsmi(_Broken()).status.startswith("absent")


class _Nvml:
    shutdowns = 0

    class NVMLError(Exception):
        pass

    def __init__(self, fail_at: str) -> None:
        self.fail_at = fail_at

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        type(self).shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550"

    def nvmlDeviceGetCount(self) -> int:
        raise self.NVMLError("GPU is lost")


def test_capable_scope_targets_exactly_the_machines_that_meet_it(tmp_path: Path) -> None:
    machines = sorted(EXPECTED)
    caps = [probe_machine(str(tmp_path), root=TREES / m).capabilities for m in machines]
    fleet = InProcessFleet(len(machines), capabilities=caps)
    f, data = model_files("hw", 200_000)
    from protocol import Variant
    variants = [(Variant(spec.variant_id, spec.requirements, (f,)), data)
                for spec in load_package(PACKAGE)]
    fleet.publish_variants("1.0.0", variants)
    scope = Scope.capable(min_gpu_mem_gb=16)
    fleet.issue(0, intent("1.0.0", scope=scope, wall=2))
    fleet.advance(30)
    want = {i for i, c in enumerate(caps) if c.max_gpu_memory_gb >= 16}
    assert {machines[i] for i in want} == {"jetson-agx-orin-32gb", "jetson-thor",
                                           "x86-rtx4090", "x86-a100-mig",
                                           "intel-nuc-openvino"}
    for i, m in enumerate(machines):
        st = fleet.m(i).model_state("m")
        if i in want:
            assert st is not None and st.version == "1.0.0", (m, st)
            assert st.variant_id == EXPECTED[m][4], (m, st.variant_id)
        else:
            assert st is None or st.version != "1.0.0", (m, st)
        assert scope_matches(scope, fleet.nodes[i].node_id,
                             fleet.m(0).ledger.record(fleet.nodes[i].node_id)) == (i in want)
    rep = fleet.m(3).convergence("m", "1.0.0", fleet.now)
    assert rep.total_platforms == len(want) and rep.is_success


def test_shoal_probe_on_a_recorded_machine_and_a_recording_of_this_one(
        tmp_path: Path) -> None:
    r = shoal_cli("probe", "--data-dir", str(tmp_path), "--root",
                  str(TREES / "jetson-nano-2gb"), "--package", str(PACKAGE), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["package"]["variant"] == "fp32_cuda"
    assert out["jetson"]["jetpack"] == "4.6.1"
    assert out["capabilities"]["gpus"][0]["unified_memory"] is True
    # record this machine, then probe the recording: the same hardware
    rec = tmp_path / "rec"
    r = shoal_cli("probe", "--data-dir", str(tmp_path), "--record", str(rec), "--json")
    assert r.returncode == 0, r.stderr
    live = json.loads(r.stdout)["capabilities"]
    r = shoal_cli("probe", "--data-dir", str(tmp_path), "--root", str(rec), "--json")
    replayed = json.loads(r.stdout)["capabilities"]
    for key in ("cpu_arch", "cpu_cores", "ram_mb", "gpus", "execution_providers"):
        assert replayed[key] == live[key], key
    r = shoal_cli("probe", "--data-dir", str(tmp_path), "--root", str(tmp_path / "nope"))
    assert r.returncode != 0 and "not a directory" in r.stderr


def test_backend_report_summary_names_its_devices() -> None:
    assert BackendReport("nvml", "absent: x").summary() == "nvml: absent: x"


def test_a_daemon_picks_its_variant_from_its_probe_and_status_shows_it(
        tmp_path: Path) -> None:
    """End to end through `shoal`: a daemon whose probe sees a 2 GB-class Jetson GPU
    (the config's [probe] table: no such GPU here) installs fp32_cuda of the reference
    package, and `shoal status` shows its hardware and the probe's back-ends."""
    import os

    from agent._admin.fleet import provision
    from protocol._identity import SigningIdentity

    from .test_operator_cli import Daemon, shoal, wait_status

    node = provision(tmp_path / "n1", root=SigningIdentity.generate(),
                     fleet_id=f"hw-{os.getpid()}", name="n1", operator=True,
                     mdns_interface="")
    node.config_path.write_text(node.config_path.read_text() + '''
[probe]
cpu_arch = "aarch64"
[[probe.gpus]]
name = "Jetson Nano 2GB GPU"
total_memory_mb = 1980
unified_memory = true
compute_capability = "5.3"
''')
    d = Daemon(node.config_path, tmp_path / "daemon.log")
    try:
        wait_status(node.config_path)
        cfg = ("--config", str(node.config_path))
        r = shoal("publish", str(PACKAGE), "--model", "det", "--version", "1.0.0", *cfg)
        assert r.returncode == 0, r.stderr
        r = shoal("distribute", "det", "1.0.0", *cfg)
        assert r.returncode == 0, r.stderr
        for _ in range(150):
            st = wait_status(node.config_path)
            models = st["record"]["models"]                     # type: ignore[index]
            if models and models[0]["status"] == "operational":
                break
            import time
            time.sleep(0.2)
        assert models[0]["variant_id"] == "fp32_cuda", models
        text = shoal("status", *cfg).stdout
        assert "hardware: aarch64" in text and "Jetson Nano 2GB GPU (cuda, 1980 MiB)" in text
        assert "jetson absent" in text and "nvml" in text, text
    finally:
        d.stop()
