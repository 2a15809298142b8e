"""What the CPU can do: its model name and instruction-set flags (Linux /proc/cpuinfo).

Which kernels are fast depends on them — int8 products with and without VNNI, bfloat16 with and without
AVX512-BF16/AMX — so the decode engine reads them to pick its int8 settings and benchmarks record them beside
their numbers. Elsewhere (no /proc/cpuinfo) the flags are empty and callers take their safe defaults.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str | None, frozenset[str]]:
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
    except OSError:
        return None, frozenset()
    model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), None)
    flags = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), [])
    return model, frozenset(flags)


def cpu_model() -> str | None:
    return _cpuinfo()[0]


def cpu_flags() -> frozenset[str]:
    return _cpuinfo()[1]


def has_vnni() -> bool:
    """VNNI int8 dot products (AVX512-VNNI or AVX-VNNI)."""
    return bool({"avx512_vnni", "avx_vnni"} & cpu_flags())


def has_native_bf16() -> bool:
    """bfloat16 dot products in hardware (AVX512-BF16 or AMX). With them oneDNN's bfloat16 products run ~2x
    float32's; without them PyTorch emulates bfloat16 on the CPU, several times slower than float32."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def auto_bf16(device: str = "cpu") -> bool:
    """What ``"auto"`` precision settings resolve to: bfloat16 on a CPU with native bfloat16, float32 elsewhere
    — on CPUs without it bfloat16 is slower, and on a GPU (an H200) the 135M policy's update and decoding are
    bound by kernel launches, where bfloat16 measured no faster (``benchmarks/results/gpu_check_h200.json``)."""
    return str(device).startswith("cpu") and has_native_bf16()
