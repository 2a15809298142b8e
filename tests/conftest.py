import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # must be set before torch is imported
# Tests point SLEUTH_HOME at temporary directories; the converted embedded model is shared, not redone.
os.environ.setdefault("SLEUTH_MODELS", os.path.join(os.environ.get("SLEUTH_HOME", os.path.expanduser(
    "~/.cache/sleuth")), "models"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest (and reproducibly) on one torch thread, especially on a busy machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def smol_tokenizer():
    """The embedded SmolLM2 tokenizer (from the cached safetensors copy; converted once if missing)."""
    from transformers import AutoTokenizer

    from sleuth.policy.hf import ensure_embedded_checkpoint

    return AutoTokenizer.from_pretrained(ensure_embedded_checkpoint())


@pytest.fixture(scope="session")
def smol_policy():
    from sleuth.policy.hf import HFPolicy

    return HFPolicy.load()
