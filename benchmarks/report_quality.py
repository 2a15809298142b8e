"""Report quality: sleuth's staged report (plan → research → write, every citation verified) side by side with a
one-shot retrieve-then-write report from the same model, on use-case requests and on dev multi-hop questions
phrased as report requests.

Per report: words, sections, citations, citation precision (the report's kept citations re-checked against the
text the agent was shown, by an independent audit: target 1.0), the writer's own precision (its [n] markers
verified as written / written), unique sources, whether the report contains a gold answer (dev questions),
time and tokens. The one-shot baseline pastes the top-k search results for the request into one prompt and
asks for the whole report with [n] citations; its citations are checked by the same verifier against those
passages (what it was shown) and nothing is removed, so its precision is the model's own.

    SLEUTH_THREADS=1 nice -n 5 .venv/bin/python benchmarks/report_quality.py            # ~15-30 min here
    .venv/bin/python benchmarks/report_quality.py --dev 2 --words 120 --index passages  # the defaults

Report runs resume from runs/report_quality/<id> (a killed benchmark continues where it stopped).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

USE_CASES = [
    ("field", "Give me an overview of photosynthesis for someone new to biology."),
    ("compare", "Compare the Amazon River and the Nile."),
]


def contains(text: str, answers: list[str]) -> bool | None:
    from sleuth.tasks.normalize import normalize_answer

    if not answers:
        return None
    body = f" {normalize_answer(text)} "
    return any(f" {normalize_answer(a)} " in body for a in answers if normalize_answer(a))


def audit_precision(report, run_dir: Path) -> tuple[int, int]:
    """(citations whose quote occurs in what the agent was shown at that URL, citations) over the report."""
    from sleuth import citations

    seen: dict[str, str] = {}
    for line in (run_dir / "research.jsonl").read_text().splitlines():
        for url, t in json.loads(line)["seen"].items():
            seen[url] = seen.get(url, "") + "\n" + t
    ok = total = 0
    for sec in report.sections:
        for s in sec["sentences"]:
            for c in s["cites"]:
                total += 1
                kept, _ = citations.verify([c], seen)
                ok += bool(kept)
    return ok, total


def body_text(report) -> str:
    return " ".join(s["text"] for sec in report.sections for s in sec["sentences"])


def sleuth_report(request, policy, env, cfg, run_dir: Path) -> dict:
    from sleuth.report import run_report

    t0 = time.time()
    rep = run_report(request, policy=policy, env=env, cfg=cfg, run_dir=run_dir)
    ok, total = audit_precision(rep, run_dir)
    st = rep.stats
    return {"words": st["words"], "sections": st["sections"], "sections_failed": st["sections_failed"],
            "sections_extractive": st["sections_extractive"], "plan_source": st["plan_source"],
            "citations": total, "citation_precision": round(ok / total, 4) if total else None,
            "writer_citations_written": st["citations_written"], "writer_citations_verified": st["citations_verified"],
            "writer_precision": (round(st["citations_verified"] / st["citations_written"], 4)
                                 if st["citations_written"] else None),
            "unverified_sentences": st["unverified_sentences"], "unique_sources": st["unique_sources"],
            "search_queries": st["search_queries"], "tokens": st["tokens"]["total_tokens"],
            "seconds": st["seconds"], "wall_seconds_this_run": round(time.time() - t0, 1),
            "text": body_text(rep), "run_dir": str(run_dir)}


def one_shot(request, policy, env, cfg, k: int) -> dict:
    """Retrieve the top-k passages for the request, write the whole report in one call, verify its citations."""
    from sleuth.baselines import rag_contexts
    from sleuth.report.lang import name
    from sleuth.report.llm import Usage, complete
    from sleuth.report.research import Passage
    from sleuth.report.write import check_draft, parse_draft

    t0 = time.time()
    docs = next(iter(env.docstores.values()), None)
    ctxs, urls = rag_contexts([request], env.search_engine, docs, k, cfg.passage_chars)
    sources = [Passage(u, title, f"{title}\n{text}") for (title, text), u in zip(ctxs[0], urls[0])]
    seen = {p.url: p.text for p in sources}
    listing = "\n".join(f"[{i}] {p.title}: {p.text.split(chr(10), 1)[-1]}" for i, p in enumerate(sources, 1))
    usage = Usage()
    budget = int(cfg.words * 1.8) + 48
    text = complete(policy, [{"role": "system", "content": f"You write research reports in {name('en')}. Use only "
                              "facts from the numbered sources and end every sentence with its source number "
                              "like [2]."},
                             {"role": "user", "content": f"Sources:\n{listing}\n\nWrite a report: {request}"}],
                    max_new_tokens=min(budget, cfg.max_new_tokens * cfg.max_sections if cfg.max_new_tokens else budget),
                    usage=usage)
    from sleuth.report.config import ReportConfig

    kept, written, verified, _ = check_draft(parse_draft(text), sources, seen, ReportConfig(unverified="mark"))
    model_cited = [c for s in kept if s.how == "model" for c in s.cites]
    return {"words": len(text.split()), "sections": 1, "citations": written,
            "citation_precision": round(verified / written, 4) if written else None,
            "writer_citations_written": written, "writer_citations_verified": verified,
            "unverified_sentences": sum(s.status == "unverified" for s in kept),
            "unique_sources": len({c["url"] for c in model_cited}), "search_queries": 1,
            "tokens": usage.prompt_tokens + usage.completion_tokens, "seconds": round(time.time() - t0, 1),
            "text": text}


def summarise(rows: list[dict], system: str) -> dict:
    vals = [r[system] for r in rows]

    def mean(key):
        xs = [v[key] for v in vals if v.get(key) is not None]
        return round(sum(xs) / len(xs), 4) if xs else None

    cited = sum(v["citations"] for v in vals)
    gold = [r[system]["contains_gold"] for r in rows if r[system].get("contains_gold") is not None]
    return {"reports": len(vals), "words": mean("words"), "sections": mean("sections"), "citations": mean("citations"),
            "citation_precision_pooled": (round(sum((v["citation_precision"] or 0) * v["citations"] for v in vals)
                                                / cited, 4) if cited else None),
            "unique_sources": mean("unique_sources"), "contains_gold": f"{sum(gold)}/{len(gold)}" if gold else None,
            "seconds": mean("seconds"), "tokens": mean("tokens")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dev", type=int, default=2, help="dev multi-hop questions (seed-0 shuffle of dev)")
    ap.add_argument("--index", default="passages")
    ap.add_argument("--model", default=None, help="default: the shipped trained policy")
    ap.add_argument("--base-url", default=None)
    ap.add_argument("--words", type=int, default=120)
    ap.add_argument("--sections", type=int, default=2)
    ap.add_argument("--questions", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=96, help="cap per plan / section generation")
    ap.add_argument("--k", type=int, default=5, help="passages the one-shot baseline is given")
    ap.add_argument("--work", default="runs/report_quality")
    ap.add_argument("--out", default="benchmarks/results/report_quality.json")
    args = ap.parse_args()

    import torch

    from sleuth.agent import Environment
    from sleuth.policy.loader import load_policy
    from sleuth.report import ReportConfig
    from sleuth.tasks.loaders import load_tasks

    torch.set_num_threads(int(os.environ.get("SLEUTH_THREADS", "1")))
    load0 = os.getloadavg()
    policy = load_policy(args.model, args.base_url)
    env = Environment.from_index(args.index, tools=("search", "browse", "code"))
    cfg = ReportConfig(words=args.words, max_sections=args.sections, min_sections=min(2, args.sections),
                       questions_per_section=args.questions, max_steps=args.max_steps, plan_retries=1,
                       section_retries=1, max_new_tokens=args.max_new_tokens, clarify=False)
    items = [(f"usecase-{k}", req, []) for k, req in USE_CASES]
    for t in load_tasks("dev", limit=args.dev, seed=0):
        items.append((f"dev-{t.id}", f"Write a short report answering: {t.question}", list(t.answers)))
    rows = []
    t_all = time.time()
    for rid, request, gold in items:
        print(f"== {rid}: {request}", flush=True)
        row = {"id": rid, "request": request, "gold": gold}
        row["sleuth"] = sleuth_report(request, policy, env, cfg, Path(args.work) / rid.replace("/", "_"))
        row["one_shot"] = one_shot(request, policy, env, cfg, args.k)
        for system in ("sleuth", "one_shot"):
            row[system]["contains_gold"] = contains(row[system]["text"], gold)
        print(json.dumps({s: {k: v for k, v in row[s].items() if k != "text"} for s in ("sleuth", "one_shot")}),
              flush=True)
        rows.append(row)
        out = {"benchmark": "report_quality", "policy": getattr(policy, "name", ""), "index": args.index,
               "config": cfg.to_dict(), "one_shot_k": args.k, "complete": len(rows) == len(items),
               "summary": {"sleuth": summarise(rows, "sleuth"), "one_shot": summarise(rows, "one_shot")},
               "rows": rows, "wall_seconds": round(time.time() - t_all, 1),
               "loadavg_start": [round(x, 2) for x in load0], "loadavg_end": [round(x, 2) for x in os.getloadavg()],
               "cpu_count": os.cpu_count(), "command": " ".join(["benchmarks/report_quality.py", *sys.argv[1:]])}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, ensure_ascii=False, indent=1))   # after each item: partial results
    print(json.dumps(out["summary"], indent=1))


if __name__ == "__main__":
    main()
