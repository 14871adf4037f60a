"""What a timing depends on besides the code: the device, its clocks, the library versions.

Recorded with every bench run (``details`` of the report check, the benchmark JSON) so that two
runs are compared only when they ran on the same kind of machine (``device_name``), and so that
a surprising number can be traced to a clock or a version.  Nothing here is a verdict; anything
that cannot be read is left out (with the reason in ``unavailable``).
"""

from __future__ import annotations

import os
import platform
import subprocess
from typing import Any

import torch


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``'s ``model name``), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: str) -> str:
    """A name that identifies the hardware: the GPU's, or the CPU model's with ``cpu:``."""
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return str(torch.cuda.get_device_name(dev))
    return f"cpu: {cpu_name()}"


def _nvidia_smi(device_index: int) -> dict[str, Any]:
    fields = ("name", "driver_version", "clocks.sm", "clocks.mem", "clocks.max.sm", "clocks.max.mem",
              "temperature.gpu", "power.draw", "clocks_throttle_reasons.active", "persistence_mode")
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--id={device_index}", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return {"unavailable": f"nvidia-smi: {type(exc).__name__}"}
    if out.returncode != 0:
        return {"unavailable": f"nvidia-smi exited {out.returncode}"}
    values = [v.strip() for v in out.stdout.strip().splitlines()[0].split(",")] if out.stdout.strip() else []
    return {f"nvidia_smi_{k.replace('.', '_')}": v for k, v in zip(fields, values)}


def clocks(device: str) -> dict[str, Any]:
    """Current and maximum clocks, temperature and throttle reasons of a GPU (nvidia-smi); {} on a CPU."""
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return {}
    return _nvidia_smi(dev.index if dev.index is not None else torch.cuda.current_device())


def load() -> dict[str, Any]:
    """The 1-minute load average and the cores: a busier machine than its cores times unreliably."""
    try:
        avg = os.getloadavg()[0]
    except (OSError, AttributeError):
        return {"cpu_count": os.cpu_count()}
    return {"load_average": round(avg, 2), "cpu_count": os.cpu_count()}


def details(device: str) -> dict[str, Any]:
    """Device, versions and settings a timing depends on."""
    import numpy

    d: dict[str, Any] = {
        "device": device, "device_name": device_name(device),
        "torch": torch.__version__, "numpy": numpy.__version__, "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
        "host": platform.node(), **load(),
    }
    try:
        import pytest_benchmark

        d["pytest_benchmark"] = getattr(pytest_benchmark, "__version__", "?")
    except ImportError:
        pass
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(dev)
        d.update({
            "cuda_runtime": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "cudnn_enabled": torch.backends.cudnn.enabled, "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "compute_capability": f"{props.major}.{props.minor}", "sm_count": props.multi_processor_count,
            "memory_bytes": props.total_memory, "l2_cache_bytes": int(getattr(props, "L2_cache_size", 0) or 0),
        })
        d.update(clocks(device))
    else:
        from bnverify.bench.timers import cpu_cache_sizes

        d.update({f"cache_{k}_bytes": v for k, v in cpu_cache_sizes().items()})
        d["mkldnn_enabled"] = torch.backends.mkldnn.is_available()
    try:
        import triton

        d["triton"] = triton.__version__
    except Exception:  # noqa: BLE001 - optional
        pass
    return d
