"""NVIDIA Jetson (Tegra) modules, from files alone.

Theory of operation
-------------------
NVML does not exist on Jetson Nano, Xavier and Orin, and on Thor it names the GPU
but answers memory queries with NOT_SUPPORTED, so a Jetson is recognised from its
device tree: ``/proc/device-tree/compatible`` names the SoC (``nvidia,tegra234``
for Orin), ``/proc/device-tree/model`` the module. The SoC gives the GPU's CUDA
compute capability (a fixed property of the silicon: :data:`SOC`), and
``/etc/nv_tegra_release`` the L4T release (mapped to its JetPack release where
known). The GPU has no memory of its own: it uses the system RAM, so its memory is
counted as ``MemTotal`` / ``MemAvailable`` of ``/proc/meminfo`` and the device is
marked ``unified_memory`` (the same bytes are the node's RAM). CUDA and TensorRT are
usable when their libraries are on disk (``libcudart``, ``libnvinfer``).

``jetson-stats`` (jtop) reads the same files but only through a root service it
installs and a socket to it; reading the few files directly keeps the probe a pure
function of a tree, which is what lets tests run it against recorded machines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from protocol import GpuInfo

from ._report import BackendReport
from ._tree import SystemTree

__all__ = ["JETPACK", "SOC", "JetsonInfo", "probe_jetson"]

#: SoC compatible string -> (name, CUDA compute capability)
SOC = {
    "nvidia,tegra210": ("Tegra X1 (Nano, TX1)", "5.3"),
    "nvidia,tegra186": ("Tegra X2 (TX2)", "6.2"),
    "nvidia,tegra194": ("Xavier (AGX, NX)", "7.2"),
    "nvidia,tegra234": ("Orin (AGX, NX, Nano)", "8.7"),
    "nvidia,tegra264": ("Thor", "11.0"),
}
#: L4T release (major, minor, patch) -> JetPack release
JETPACK = {
    (32, 6, 1): "4.6", (32, 7, 1): "4.6.1", (32, 7, 2): "4.6.2", (32, 7, 3): "4.6.3",
    (32, 7, 4): "4.6.4", (32, 7, 5): "4.6.5", (32, 7, 6): "4.6.6",
    (35, 1, 0): "5.0.2", (35, 2, 1): "5.1", (35, 3, 1): "5.1.1", (35, 4, 1): "5.1.2",
    (35, 5, 0): "5.1.3", (35, 6, 0): "5.1.4", (35, 6, 1): "5.1.5",
    (36, 2, 0): "6.0 DP", (36, 3, 0): "6.0", (36, 4, 0): "6.1", (36, 4, 3): "6.2",
    (36, 4, 4): "6.2.1", (38, 2, 0): "7.0",
}
_RELEASE = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)(?:\.(\d+))?")
CUDART = ("usr/local/cuda*/lib64/libcudart.so*",
          "usr/local/cuda*/targets/aarch64-linux/lib/libcudart.so*",
          "usr/lib/aarch64-linux-gnu/libcudart.so*")
NVINFER = ("usr/lib/aarch64-linux-gnu/libnvinfer.so*",
           "usr/lib/aarch64-linux-gnu/nvidia/libnvinfer.so*")


@dataclass(frozen=True, slots=True)
class JetsonInfo:
    model: str                 # "NVIDIA Jetson AGX Orin Developer Kit"
    soc: str                   # "nvidia,tegra234"
    soc_name: str
    compute_capability: str
    l4t: str                   # "35.4.1"; "" when /etc/nv_tegra_release is missing
    jetpack: str               # "5.1.2"; "" when unknown


def _release(tree: SystemTree) -> tuple[str, str]:
    text = tree.read_text("etc/nv_tegra_release") or ""
    m = _RELEASE.search(text)
    if m is None:
        return "", ""
    key = (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))
    return ".".join(map(str, key)), JETPACK.get(key, "")


def jetson_info(tree: SystemTree) -> JetsonInfo | None:
    """The module, when ``tree`` is a Jetson's (its device tree names a Tegra SoC)."""
    compatible = tree.strings("proc/device-tree/compatible")
    soc = next((c for c in compatible if c in SOC), None)
    if soc is None:
        return None
    model = " ".join(tree.strings("proc/device-tree/model")) or "NVIDIA Jetson"
    name, cc = SOC[soc]
    l4t, jetpack = _release(tree)
    return JetsonInfo(model, soc, name, cc, l4t, jetpack)


def probe_jetson(tree: SystemTree) -> tuple[BackendReport, JetsonInfo | None]:
    info = jetson_info(tree)
    if info is None:
        return BackendReport("jetson", "absent: not a Jetson (no Tegra SoC in the "
                             "device tree)"), None
    total = tree.meminfo_mb("MemTotal") or 0
    free = tree.meminfo_mb("MemAvailable")
    gpu = GpuInfo(name=f"{info.model} GPU", total_memory_mb=total,
                  free_memory_mb=min(total, free if free is not None else total),
                  driver=f"L4T {info.l4t}" if info.l4t else "",
                  compute_capability=info.compute_capability, kind="cuda",
                  unified_memory=True)
    cuda = any(tree.glob(p) for p in CUDART)
    trt = cuda and any(tree.glob(p) for p in NVINFER)
    providers = (("TensorrtExecutionProvider",) if trt else ()) + (
        ("CUDAExecutionProvider",) if cuda else ())
    details = [f"{info.soc_name}, L4T {info.l4t or 'unknown'}, JetPack "
               f"{info.jetpack or 'unknown'}",
               "GPU memory = system RAM (unified): MemTotal / MemAvailable",
               "CUDA runtime " + ("found" if cuda else "not found"),
               "TensorRT " + ("found" if trt else "not found")]
    return BackendReport("jetson", "ok", (gpu,), providers, tuple(details)), info
