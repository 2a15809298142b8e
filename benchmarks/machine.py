"""What CPU a benchmark ran on: model name and the instruction sets that decide which kernels are fast.

Speed ratios between precisions depend on them (int8 products with and without VNNI, bfloat16 with and
without AVX512-BF16/AMX), so every speed result records them beside its numbers.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu() -> dict:
    """Model name, logical cores and which of FLAGS the CPU has (Linux /proc/cpuinfo; else what platform says)."""
    info = {"model": platform.processor() or platform.machine(), "logical_cores": os.cpu_count(),
            "platform": platform.platform()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), None)
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    if model:
        info["model"] = model
    info["flags"] = {f: f in flags for f in FLAGS}
    return info
