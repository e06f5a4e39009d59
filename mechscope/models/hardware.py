"""Which dtype runs fast on this machine: the one place mechscope chooses a bf16 default.

bf16 is only faster than fp32 where the hardware computes in it natively: on x86 CPUs the
``avx512_bf16`` or ``amx_bf16`` instructions, on CUDA GPUs ``torch.cuda.is_bf16_supported()``.
Elsewhere (an AVX2-only CPU, for instance) PyTorch emulates bf16 and it runs several times
slower than fp32, so the defaults fall back to fp32. ``torch.backends.cpu.get_cpu_capability()``
names the vector width (AVX2, AVX512) but not bf16 support, hence the cpuinfo flags.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where there is none, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def _device_type(device: str | torch.device | None) -> str:
    return torch.device(device).type if device is not None else "cpu"


def native_bf16(device: str | torch.device | None = None) -> bool:
    """Whether ``device`` (default: the CPU) computes in bf16 natively."""
    kind = _device_type(device)
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind == "cpu":
        return any(flag in cpu_flags() for flag in _BF16_CPU_FLAGS)
    return False


def default_dtype(device: str | torch.device | None = None) -> torch.dtype:
    """The fast dtype for throughput work (harvesting, bf16 matmuls): bf16 where ``device``
    has native bf16, else fp32. Pass an explicit ``dtype=`` to override it."""
    return torch.bfloat16 if native_bf16(device) else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def describe(device: str | torch.device | None = None) -> str:
    """One line for logs and benchmarks, e.g. ``"CPU capability AVX512, native bf16 yes
    (avx512_bf16), default dtype bfloat16"``."""
    kind = _device_type(device)
    if kind == "cuda":
        name = torch.cuda.get_device_name(device) if torch.cuda.is_available() else "unavailable"
        where = f"CUDA {name}"
    elif kind == "cpu":
        where = f"CPU capability {torch.backends.cpu.get_cpu_capability()}"
    else:
        where = kind
    flags = [flag for flag in _BF16_CPU_FLAGS if flag in cpu_flags()] if kind == "cpu" else []
    native = ("yes" if native_bf16(device) else "no") + (f" ({', '.join(flags)})" if flags else "")
    return f"{where}, native bf16 {native}, default dtype {dtype_name(default_dtype(device))}"


def run_settings(*dtypes: torch.dtype | str, device: str | torch.device | None = None) -> str:
    """The line every benchmark prints about how it ran, e.g. ``"2 threads, CPU capability
    AVX512, native bf16 yes (avx512_bf16), default dtype bfloat16; ran in float32, bfloat16"``."""
    ran = ", ".join(d if isinstance(d, str) else dtype_name(d) for d in dtypes)
    return f"{torch.get_num_threads()} threads, {describe(device)}; ran in {ran}"
