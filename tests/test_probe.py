"""The hardware probe on this machine, its NVML branch, and overrides
(agent/_daemon/probe.py; recorded machines: tests/test_probe_hardware.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from agent._daemon.probe import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    Backends,
    ProbeOverrides,
    normalise_arch,
    overrides_from_mapping,
    probe,
    usable_providers,
)
from agent._errors import ConfigError
from agent._hardware import probe_nvml
from protocol._capabilities import Capabilities, GpuInfo


def _nvml_available() -> str | None:
    """None when NVML initialises here, else the reason it does not."""
    try:
        import pynvml
    except ImportError:
        return "pynvml (nvidia-ml-py) is not installed"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return f"nvmlInit failed: {exc}"
    pynvml.nvmlShutdown()
    return None


NO_NVML = _nvml_available()


def test_real_probe_on_this_machine(tmp_path: Path) -> None:
    caps = probe(str(tmp_path))
    assert isinstance(caps, Capabilities)
    assert caps.cpu_cores >= 1 and caps.ram_mb > 0 and caps.storage_free_mb >= 0
    assert caps.cpu_arch in {"x86_64", "aarch64", "armv7l", "x86", "riscv64", "ppc64le",
                             "s390x"}
    assert caps.execution_providers[-1] == CPU_PROVIDER
    if NO_NVML is not None:
        assert caps.gpus == ()
        if importlib.util.find_spec("onnxruntime") is None:
            assert caps.execution_providers == (CPU_PROVIDER,)
    else:
        assert caps.gpus and CUDA_PROVIDER in caps.execution_providers


def test_gpu_probe_without_gpu_is_a_normal_result() -> None:
    if NO_NVML is None:
        pytest.skip("this machine has a working NVML; covered by the GPU test")
    result = probe_nvml()
    assert result.devices == ()
    assert result.status.startswith("absent")


@pytest.mark.skipif(NO_NVML is not None, reason=f"no GPU here: {NO_NVML}")
def test_gpu_probe_reads_real_gpus() -> None:
    result = probe_nvml()
    assert result.status == "ok", result.status
    assert result.devices and result.details[0].startswith("driver ")
    for gpu in result.devices:
        assert gpu.name and gpu.total_memory_mb > 0 and gpu.kind == "cuda"
        assert 0 <= gpu.free_memory_mb <= gpu.total_memory_mb
        assert gpu.compute_capability == "" or "." in gpu.compute_capability
    # a second probe works too: nvmlShutdown left NVML re-initialisable
    assert len(probe_nvml().devices) == len(result.devices)


def test_arch_normalisation() -> None:
    assert normalise_arch("AMD64") == "x86_64"
    assert normalise_arch("x86_64") == "x86_64"
    assert normalise_arch("arm64") == "aarch64"
    assert normalise_arch("aarch64") == "aarch64"
    assert normalise_arch("armv7l") == "armv7l"
    assert normalise_arch("mips") == "mips"


def test_providers() -> None:
    none, _ = usable_providers(None, frozenset(), (), False)
    assert none == (CPU_PROVIDER,)
    with_gpu, _ = usable_providers((CPU_PROVIDER, "Foo"), frozenset({"cuda"}), (), False)
    assert with_gpu == (CUDA_PROVIDER, "Foo", CPU_PROVIDER)
    assert len(set(with_gpu)) == len(with_gpu)


def test_overrides_apply(tmp_path: Path) -> None:
    fake = GpuInfo("Jetson Orin", 32768, 30000, "36.2", "8.7")
    caps = probe(str(tmp_path), ProbeOverrides(cpu_arch="arm64", ram_mb=8192, cpu_cores=12,
                                               storage_free_mb=100, gpus=(fake,)))
    assert caps.cpu_arch == "aarch64" and caps.ram_mb == 8192 and caps.cpu_cores == 12
    assert caps.storage_free_mb == 100 and caps.gpus == (fake,)
    assert caps.execution_providers[0] == CUDA_PROVIDER  # a (fake) GPU brings CUDA
    assert caps.max_gpu_memory_gb == 32.0
    caps = probe(str(tmp_path), ProbeOverrides(gpus=(), execution_providers=("Foo", "Bar")))
    assert caps.gpus == () and caps.execution_providers == ("Foo", "Bar")
    # an override of gpus replaces what the back-ends saw
    assert probe(str(tmp_path), ProbeOverrides(gpus=(fake,)),
                 backends=Backends()).gpus == (fake,)


def test_probe_of_missing_data_dir_names_it(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    with pytest.raises(ConfigError, match="data_dir"):
        probe(missing)


def test_overrides_from_config_table() -> None:
    ov = overrides_from_mapping({
        "cpu_arch": "amd64", "cpu_cores": 4, "ram_mb": 2048, "storage_free_mb": 0,
        "execution_providers": ["TensorrtExecutionProvider", "CPUExecutionProvider"],
        "gpus": [{"name": "A2", "total_memory_mb": 16384, "compute_capability": "8.6"},
                 {"name": "NPU", "total_memory_mb": 1, "kind": "npu"}],
    })
    assert ov.cpu_arch == "amd64" and ov.cpu_cores == 4 and ov.storage_free_mb == 0
    assert ov.gpus == (GpuInfo("A2", 16384, 16384, "", "8.6"),
                       GpuInfo("NPU", 1, 1, "", "", "npu"))
    cases: list[tuple[dict[str, Any], str]] = [
                    ({"ram": 1}, "probe.ram"), ({"cpu_cores": 0}, "probe.cpu_cores"),
                     ({"ram_mb": True}, "probe.ram_mb"), ({"cpu_arch": ""}, "probe.cpu_arch"),
                     ({"execution_providers": "CPU"}, "probe.execution_providers"),
                     ({"gpus": {"name": "x"}}, "probe.gpus"),
                     ({"gpus": [{"name": "x"}]}, "probe.gpus[0]"),
                     ({"gpus": [{"name": "x", "total_memory_mb": 1, "vram": 2}]},
                      "probe.gpus[0].vram"),
                     ({"gpus": [{"name": "x", "total_memory_mb": 1, "free_memory_mb": 2}]},
                      "probe.gpus[0].free_memory_mb"),
                     ({"gpus": [{"name": "x", "total_memory_mb": 1, "kind": "tpu"}]},
                      "probe.gpus[0].kind"),
                     ({"gpus": [{"name": "x", "total_memory_mb": 1, "unified_memory": 1}]},
                      "probe.gpus[0].unified_memory")]
    for bad, key in cases:
        with pytest.raises(ConfigError) as info:
            overrides_from_mapping(bad)
        assert str(info.value).startswith(key), (bad, str(info.value))
