"""What CPU a benchmark ran on: model name and the instruction sets that decide which kernels are fast; and
writing a benchmark's result file.

Speed ratios between precisions depend on them (int8 products with and without VNNI, bfloat16 with and
without AVX512-BF16/AMX), so every speed result records them beside its numbers.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from sleuth.hardware import cpu_flags, cpu_model

FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu() -> dict:
    """Model name, logical cores and which of FLAGS the CPU has (empty flags where /proc/cpuinfo is missing)."""
    flags = cpu_flags()
    return {"model": cpu_model() or platform.processor() or platform.machine(), "logical_cores": os.cpu_count(),
            "platform": platform.platform(), "flags": {f: f in flags for f in FLAGS}}


def write_result(path: str | Path, result: dict, show: tuple[str, ...]) -> Path:
    """Write ``result`` as indented JSON at ``path`` (its folder made if missing), print the ``show`` keys and
    where it went."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in show}, indent=2))
    print(f"wrote {out}")
    return out
