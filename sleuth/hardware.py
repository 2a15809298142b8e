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
