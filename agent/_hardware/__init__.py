"""What the hardware of this node is, read through a root path and optional libraries.

The probe's back-ends, each a module of one concern: :mod:`._tree` (files under a
root path: ``/`` on a live node, a recorded tree in tests), :mod:`._jetson` (NVIDIA
Jetson from its device tree), :mod:`._nvidia` (discrete NVIDIA GPUs and MIG
instances through NVML), :mod:`._openvino` (Intel CPU/GPU/NPU through OpenVINO),
:mod:`._amd` (AMD GPUs through amdsmi). Each answers a :class:`BackendReport`;
a missing library or device is a normal answer (``status`` says which), never an
error. ``agent._daemon.probe`` combines them into the node's capabilities.
"""

from ._amd import probe_amdsmi
from ._jetson import JetsonInfo, probe_jetson
from ._nvidia import probe_nvml
from ._openvino import probe_openvino
from ._report import BackendReport
from ._tree import SystemTree

__all__ = ["BackendReport", "JetsonInfo", "SystemTree", "probe_amdsmi", "probe_jetson",
           "probe_nvml", "probe_openvino"]
