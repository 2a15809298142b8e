"""What CPU a benchmark ran on: model name and the instruction sets that decide which kernels are fast.

Speed ratios between precisions depend on them (int8 products with and without VNNI, bfloat16 with and
without AVX512-BF16/AMX), so every speed result records them beside its numbers.
"""

from __future__ import annotations

import os
import platform

from sleuth.hardware import cpu_flags, cpu_model

FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu() -> dict:
    """Model name, logical cores and which of FLAGS the CPU has (empty flags where /proc/cpuinfo is missing)."""
    flags = cpu_flags()
    return {"model": cpu_model() or platform.processor() or platform.machine(), "logical_cores": os.cpu_count(),
            "platform": platform.platform(), "flags": {f: f in flags for f in FLAGS}}
