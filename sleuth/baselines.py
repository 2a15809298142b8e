"""Non-agent baselines on the same model and tasks: closed-book and retrieve-then-read RAG.

Both are one generation per sample. RAG pastes the top-k passages the search engine returns for the
question into the prompt. The agent must beat RAG for the RL claims to mean anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from sleuth.policy.base import SamplingParams

CLOSED_BOOK_SYSTEM = "Answer the question with a short answer only: a name, date, number or short phrase."
RAG_SYSTEM = ("Answer the question using the passages. Reply with a short answer only: a name, date, number "
              "or short phrase.")


@dataclass
class BaselineAnswer:
    text: str
    prompt_tokens: int
    generated_tokens: int
    passages: list[str]          # URLs pasted into the prompt (RAG)


def _messages(question: str, passages: list[tuple[str, str]] | None) -> list[dict[str, str]]:
    if passages is None:
        return [{"role": "system", "content": CLOSED_BOOK_SYSTEM}, {"role": "user", "content": question}]
    ctx = "\n".join(f"[{i}] {title}: {text}" for i, (title, text) in enumerate(passages, 1))
    return [{"role": "system", "content": RAG_SYSTEM},
            {"role": "user", "content": f"Passages:\n{ctx}\n\nQuestion: {question}"}]


def rag_contexts(questions: list[str], engine, docs=None, k: int = 5, passage_chars: int = 600
                 ) -> tuple[list[list[tuple[str, str]]], list[list[str]]]:
    """The (title, text) passages RAG pastes for each question — the top-k results for the question, each
    the passage's text when the docstore has it, cut to ``passage_chars`` — and their URLs."""
    if engine is None:
        raise ValueError("RAG needs a search engine (an index)")
    ctxs, urls = [], []
    for resp in engine.search_batch(questions, k):
        rows, u = [], []
        for r in resp.results[:k]:
            text = r.snippet
            if docs is not None and r.passage_id:
                p = docs.get(r.passage_id)
                text = p.text if p else text
            rows.append((r.title, text[:passage_chars]))
            u.append(r.url)
        ctxs.append(rows)
        urls.append(u)
    return ctxs, urls


def answer_batch(policy, questions: list[str], *, mode: str, engine=None, docs=None, k: int = 5,
                 passage_chars: int = 600, params: SamplingParams | None = None) -> list[BaselineAnswer]:
    """mode 'closed-book' or 'rag'. Token policies generate the whole batch together."""
    params = params or SamplingParams(max_new_tokens=48, temperature=0.0)
    if mode not in ("closed-book", "rag"):
        raise ValueError(f"unknown baseline mode {mode!r}")
    ctxs: list[list[tuple[str, str]] | None] = [None] * len(questions)
    urls: list[list[str]] = [[] for _ in questions]
    if mode == "rag":
        ctxs, urls = rag_contexts(questions, engine, docs, k, passage_chars)
    msgs = [_messages(q, c) for q, c in zip(questions, ctxs)]
    if hasattr(policy, "generate") and hasattr(policy, "tokenizer"):
        tok = policy.tokenizer
        prompts = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in msgs]
        ids = [tok.encode(p, add_special_tokens=False) for p in prompts]
        gens = policy.generate(ids, params)
        return [BaselineAnswer(g.text.strip(), len(i), len(g.token_ids), u) for g, i, u in zip(gens, ids, urls)]
    out = []
    for m, u in zip(msgs, urls):
        reply = policy.chat(m, None, params)
        out.append(BaselineAnswer(reply.text.strip(), reply.prompt_tokens, reply.completion_tokens, u))
    return out
