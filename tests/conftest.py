import contextlib
import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # must be set before torch is imported
# Tests point SLEUTH_HOME at temporary directories; the converted embedded model is shared, not redone.
os.environ.setdefault("SLEUTH_MODELS", os.path.join(os.environ.get("SLEUTH_HOME", os.path.expanduser(
    "~/.cache/sleuth")), "models"))

from sleuth.search.corpus import Passage  # noqa: E402


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


@pytest.fixture
def chat_server(monkeypatch):
    """A scripted OpenAI-format server on loopback (tests/replay_servers.py), with no API settings in the env."""
    from replay_servers import ChatReplayServer

    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "SLEUTH_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    srv = ChatReplayServer()
    yield srv
    srv.close()


# A three-passage corpus for the agent tests (tests/test_agent.py, tests/test_openai_chat.py).
PASSAGES = [
    Passage("p1", "Jane Austen", "Jane Austen (16 December 1775 – 18 July 1817) was an English novelist "
            "known for six novels. She was born in Steventon, Hampshire.", "test"),
    Passage("p2", "Pride and Prejudice", "Pride and Prejudice is an 1813 novel of manners by Jane Austen.", "test"),
    Passage("p3", "Steventon", "Steventon is a village and civil parish in Hampshire, England. " * 40, "test"),
]


@contextlib.contextmanager
def lexical_index(home, passages=PASSAGES, name: str = "t"):
    """A real lexical (bm25s) index over ``passages`` built under ``home`` as SLEUTH_HOME (restored after)."""
    from sleuth.search.index import build_index, open_index

    src = home / f"{name}.jsonl"
    src.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in passages))
    old = os.environ.get("SLEUTH_HOME")
    os.environ["SLEUTH_HOME"] = str(home)
    try:
        build_index(src, name, dense=False, progress=False)
        yield open_index(name)
    finally:
        if old is None:
            os.environ.pop("SLEUTH_HOME")
        else:
            os.environ["SLEUTH_HOME"] = old


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A real lexical (bm25s) index over three passages, built under a temporary SLEUTH_HOME."""
    from sleuth.agent import Environment

    with lexical_index(tmp_path_factory.mktemp("home")) as index:
        yield Environment(index.engine("lexical"), {"t": index.docs}, tools=("search", "browse"))


CHROMIUM = os.environ.get("SLEUTH_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium (Debian's package, driven by Playwright) for tests that look at a page as a person does.
    .ci/run installs the package when it is missing; no browser is ever downloaded."""
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium) or set SLEUTH_CHROMIUM")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def run_async(fn, *args):
    """Run an async function to completion on a fresh event loop in its own thread: the Playwright sync API
    (the ``browser`` fixture) keeps an event loop running in the main thread, where anyio.run/asyncio.run fail."""
    import anyio
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(anyio.run, fn, *args).result()


def agent_steps(policy, prompts, obs_tokens, steps=3):
    """Greedy multi-step continuation as the agent does it: prompt + generated ids + an observation."""
    from sleuth.policy.base import SamplingParams

    seqs, out = [list(p) for p in prompts], []
    for step in range(steps):
        live = seqs if step % 2 == 0 else seqs[:2]   # ragged: not every row continues every step
        gens = policy.generate(live, SamplingParams(max_new_tokens=12, temperature=0))
        for i, g in enumerate(gens):
            out.append((g.token_ids, g.logprobs))
            live[i] += g.token_ids + obs_tokens * (i + 1)
    return out


def sampled_gap(policy, prompts, engine: str, precision: str, tokens: int):
    """Sample at T = 0.7 with a decode engine, then the gap |trainer log-prob − recorded log-prob| on every
    sampled token (the trainer's from the reference forward). Returns (generations, gaps)."""
    from sleuth.policy.base import SamplingParams

    saved = policy.engine, policy.precision
    try:
        policy.engine, policy.precision = engine, precision
        gens = policy.generate(prompts, SamplingParams(max_new_tokens=tokens, temperature=0.7))
    finally:
        policy.engine, policy.precision = saved
    return gens, [abs(d) for d in policy.logprob_gap(prompts, gens, 0.7)]
