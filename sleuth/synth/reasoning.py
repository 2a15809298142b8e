"""Reasoning-intensive tasks: facts retrieved from passages, then arithmetic the code tool should do.

Kinds: ``age`` (age at death from two full dates), ``years-between`` (two events in two linked passages),
``difference`` (two population figures), ``conversion`` (a length/area/height in other units).

Ground truth is never computed in this process: each task gets a small Python program that states its
facts (with the passage they came from) and prints the answer; the program runs in a separate isolated
interpreter (``python -I``) under a timeout and its output is the gold answer. The program is stored in
the task metadata so anyone can re-run it.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import defaultdict
from typing import Any

from sleuth.synth.generate import BridgeBuilder, Fact, GenStats, LinkGraph, _evidence, surface_of, task_id
from sleuth.tasks.task import Task

KINDS = ("age", "years-between", "difference", "conversion")

EVENT = {"birth_year": "the birth of {x}", "death_year": "the death of {x}"}
VERB_NOUN = {"released": "release", "published": "publication", "founded": "founding",
             "established": "establishment", "formed": "formation", "incorporated": "incorporation",
             "opened": "opening", "built": "construction", "completed": "completion",
             "constructed": "construction", "launched": "launch", "created": "creation"}
YEAR_FACTS = ("birth_year", "death_year", "release_year", "founded_year")
# source unit -> (target unit, factor, words used in the question)
CONVERSIONS = {"km": ("mi", 0.621371192237334, "miles"), "mi": ("km", 1.609344, "kilometres"),
               "m": ("ft", 1 / 0.3048, "feet"), "ft": ("m", 0.3048, "metres"),
               "km2": ("sqmi", 0.386102158542446, "square miles"), "sqmi": ("km2", 2.589988110336,
                                                                           "square kilometres")}

# Runs a JSON list of programs, each in a fresh namespace with its stdout captured; prints a JSON list.
_RUNNER = r"""
import contextlib, io, json, sys
out = []
for src in json.load(sys.stdin):
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            exec(compile(src, "<task>", "exec"), {"__name__": "__main__"})
        out.append({"ok": True, "stdout": buf.getvalue()})
    except BaseException as e:
        out.append({"ok": False, "stdout": buf.getvalue(), "error": f"{type(e).__name__}: {e}"})
sys.stdout.write(json.dumps(out))
"""


def run_program(src: str, timeout: float = 5.0) -> str | None:
    """stdout (stripped) of one program run in ``python -I``; None on error or timeout."""
    try:
        r = subprocess.run([sys.executable, "-I", "-c", src], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def run_programs(srcs: list[str], timeout: float = 5.0) -> list[str | None]:
    """Run many programs in one isolated interpreter (start-up paid once); a batch that crashes or times
    out is retried one program per interpreter so one bad program cannot cost the others their answer."""
    if not srcs:
        return []
    try:
        r = subprocess.run([sys.executable, "-I", "-c", _RUNNER], input=json.dumps(srcs), capture_output=True,
                           text=True, timeout=timeout * len(srcs))
        rows = json.loads(r.stdout) if r.returncode == 0 else None
    except (subprocess.TimeoutExpired, json.JSONDecodeError):
        rows = None
    if rows is None or len(rows) != len(srcs):
        return [run_program(s, timeout) for s in srcs]
    return [row["stdout"].strip() if row["ok"] else None for row in rows]


# ------------------------------------------------------------------------------------------- helpers
def _q(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def _fact_line(var: str, value: str, f: Fact, g: LinkGraph, pid: str) -> str:
    return f"{var} = {value}  # {f.name} of {_q(g.passages[pid].title)} ({pid}): {_q(f.value)}"


def _numeric_answers(out: str) -> list[str]:
    answers = [out]
    try:
        n = int(out)
        if abs(n) >= 1000:
            answers.append(f"{n:,}")
    except ValueError:
        pass
    return answers


class _Ref:
    """How the question names an entity: by title, or by a one-hop description from a linking passage."""

    def __init__(self, g: LinkGraph, builder: BridgeBuilder, pid: str, bridge: bool):
        self.pid, self.text, self.pattern, self.chain = pid, "", None, [pid]
        title = g.passages[pid].title
        if bridge:
            chain = builder.walk_back(pid, 2)
            hop = builder.hop(chain[0], pid) if chain else None
            if chain and hop and not any(f.value in g.passages[chain[0]].text
                                         for f in g.profiles[pid].facts.values()):
                clue = f' (in the words "{hop["cloze"]}")' if hop["cloze"] else ""
                self.text = f"the {hop['type']} mentioned in the article on {g.passages[chain[0]].title}{clue}"
                self.pattern = {"start": g.passages[chain[0]].title, "hops": [hop]}
                self.chain = chain
        if not self.pattern:
            self.text = title
            self.pattern = {"start": title, "hops": []}


def _hidden_titles(g: LinkGraph, ref: _Ref) -> list[str]:
    if len(ref.chain) == 1:
        return []
    t = g.passages[ref.pid].title
    return sorted({t, surface_of(t)})


def _make(g: LinkGraph, kind: str, question: str, program: str, refs: list[_Ref], facts: list[tuple[str, Fact]],
          extra: dict[str, Any]) -> Task:
    chains = [r.chain for r in refs]
    pids: list[str] = []
    for c in chains:
        for p in c:
            if p not in pids:
                pids.append(p)
    evidence = [e for c in chains for e in _evidence(g, c)]
    evidence += [{"pid": pid, "span": f.value, "role": "fact"} for pid, f in facts]
    hidden = sorted({h for r in refs for h in _hidden_titles(g, r)} | {f.value for _, f in facts})
    return Task(
        id=task_id("synth", kind, question), question=question, answers=[], dataset=f"synth-reasoning-{kind}",
        metadata={"generator": "sleuth.synth.reasoning", "type": "reasoning", "kind": kind, "hops": len(pids),
                  "supporting_ids": pids, "supporting_titles": [g.passages[p].title for p in pids],
                  "facts": [{"pid": pid, "title": g.passages[pid].title, "fact": f.name, "value": f.value}
                            for pid, f in facts],
                  "evidence": evidence, "hidden": hidden, "program": program,
                  "pattern": {"refs": [r.pattern for r in refs], "facts": [f.name for _, f in facts]}, **extra})


# ---------------------------------------------------------------------------------------- generators
def _age(g: LinkGraph, rng: random.Random, builder: BridgeBuilder, pool: list[str]) -> Task | None:
    pid = rng.choice(pool)
    pr = g.profiles[pid]
    b, d = pr.facts["birth_date"], pr.facts["death_date"]
    if d.parsed <= b.parsed:
        return None
    ref = _Ref(g, builder, pid, bridge=rng.random() < 0.5)
    q = f"How old was {ref.text} at the time of death?"
    program = "\n".join([
        "from datetime import date",
        _fact_line("born", f"date{b.parsed}", b, g, pid),
        _fact_line("died", f"date{d.parsed}", d, g, pid),
        "# a birthday not yet reached in the year of death does not count",
        "print(died.year - born.year - ((died.month, died.day) < (born.month, born.day)))"])
    return _make(g, "age", q[0].upper() + q[1:], program, [ref, ref], [(pid, b), (pid, d)], {})


def _event(f: Fact, x: str) -> str:
    if f.name in EVENT:
        return EVENT[f.name].format(x=x)
    return f"the {VERB_NOUN.get(f.verb, 'founding')} of {x}"


def _year_fact(pr) -> Fact | None:
    fs = [pr.facts[n] for n in YEAR_FACTS if n in pr.facts]
    return fs[0] if fs else None


def _years_between(g: LinkGraph, rng: random.Random, builder: BridgeBuilder, pool: list[str]) -> Task | None:
    a = rng.choice(pool)
    fa = _year_fact(g.profiles[a])
    targets = sorted({c for m in g.linked(a) for c in g.by_title.get(m.title, [])
                      if _year_fact(g.profiles[c]) and g.profiles[c].type_phrase})
    if not targets:
        return None
    b = rng.choice(targets)
    fb = _year_fact(g.profiles[b])
    if fa.parsed == fb.parsed:
        return None
    ref_a = _Ref(g, builder, a, bridge=False)
    hop = builder.hop(a, b)
    if hop is None:
        return None
    ref_b = _Ref(g, builder, b, bridge=False)
    if rng.random() < 0.5:  # describe b through a's article: a two-hop lookup before the arithmetic
        clue = f' (in the words "{hop["cloze"]}")' if hop["cloze"] else ""
        ref_b.text = f"the {hop['type']} mentioned in the article on {g.passages[a].title}{clue}"
        ref_b.pattern = {"start": g.passages[a].title, "hops": [hop]}
        ref_b.chain = [a, b]
    q = f"How many years passed between {_event(fa, ref_a.text)} and {_event(fb, ref_b.text)}?"
    program = "\n".join([_fact_line("year_a", str(fa.parsed), fa, g, a),
                         _fact_line("year_b", str(fb.parsed), fb, g, b),
                         "print(abs(year_b - year_a))"])
    return _make(g, "years-between", q, program, [ref_a, ref_b], [(a, fa), (b, fb)], {})


def _difference(g: LinkGraph, rng: random.Random, builder: BridgeBuilder, groups: dict[str, list[str]]) -> Task | None:
    head = rng.choice(sorted(groups))
    a, b = rng.sample(groups[head], 2)
    fa, fb = g.profiles[a].facts["population"], g.profiles[b].facts["population"]
    if fa.parsed == fb.parsed or g.profiles[a].surface == g.profiles[b].surface:
        return None
    ra, rb = _Ref(g, builder, a, False), _Ref(g, builder, b, False)
    q = (f"By how many people does the population of {ra.text} differ from that of {rb.text}, "
         f"using the figures their articles give?")
    program = "\n".join([_fact_line("pop_a", str(fa.parsed), fa, g, a), _fact_line("pop_b", str(fb.parsed), fb, g, b),
                         "print(abs(pop_a - pop_b))"])
    return _make(g, "difference", q, program, [ra, rb], [(a, fa), (b, fb)], {})


def _conversion(g: LinkGraph, rng: random.Random, builder: BridgeBuilder, pool: list[tuple[str, str]]) -> Task | None:
    pid, name = rng.choice(pool)
    f = g.profiles[pid].facts[name]
    unit = f.extra["unit"]
    if unit not in CONVERSIONS or f.parsed < 5:
        return None
    target, factor, words = CONVERSIONS[unit]
    measure = name
    if name == "height":
        measure = next((w for w in ("elevation", "altitude") if w in f.extra.get("phrase", "")), "height")
    ref = _Ref(g, builder, pid, bridge=rng.random() < 0.3)
    q = f"What is the {measure} of {ref.text} in {words}, rounded to the nearest whole number?"
    program = "\n".join([
        "import math",
        _fact_line("value", repr(float(f.parsed)), f, g, pid) + f" [{unit}]",
        f"factor = {factor!r}  # {target} per {unit}",
        "print(math.floor(value * factor + 0.5))  # round half up"])
    return _make(g, "conversion", q[0].upper() + q[1:], program, [ref], [(pid, f)],
                 {"unit": unit, "target_unit": target})


def generate_reasoning(g: LinkGraph, n: int, rng: random.Random, stats: GenStats, kinds: tuple[str, ...] = KINDS,
                       cloze_mode: str = "auto", timeout: float = 5.0, max_attempts: int | None = None) -> list[Task]:
    """Up to n reasoning tasks spread over kinds; each answer is the output of its program."""
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"unknown reasoning kind(s) {bad}; choose from {', '.join(KINDS)}")
    builder = BridgeBuilder(g, rng, cloze_mode)
    unique_title = {pid for pid in g.order if len(g.by_title.get(g.passages[pid].title, [])) == 1}
    ages = [p for p in g.order if {"birth_date", "death_date"} <= set(g.profiles[p].facts) and p in unique_title]
    years = [p for p in g.order if _year_fact(g.profiles[p]) and p in unique_title]
    pops: dict[str, list[str]] = defaultdict(list)
    for p in g.order:
        if "population" in g.profiles[p].facts and p in unique_title:
            pops[g.profiles[p].head].append(p)
    pops = {h: v for h, v in pops.items() if len(v) >= 2}
    quants = [(p, nm) for p in g.order if p in unique_title
              for nm in ("length", "area", "height") if nm in g.profiles[p].facts]
    makers = {"age": (lambda: _age(g, rng, builder, ages), bool(ages)),
              "years-between": (lambda: _years_between(g, rng, builder, years), bool(years)),
              "difference": (lambda: _difference(g, rng, builder, pops), bool(pops)),
              "conversion": (lambda: _conversion(g, rng, builder, quants), bool(quants))}
    live = [k for k in kinds if makers[k][1]]
    tasks: list[Task] = []
    seen: set[str] = set()
    per_kind = {k: 0 for k in live}
    quota = {k: n // max(1, len(live)) + (1 if i < n % max(1, len(live)) else 0) for i, k in enumerate(live)}
    for _ in range(max_attempts or n * 40):
        open_kinds = [k for k in live if per_kind[k] < quota[k]]
        if not open_kinds:
            break
        kind = rng.choice(open_kinds)
        stats.attempts[f"reasoning-{kind}"] += 1
        t = makers[kind][0]()
        if t is None or t.question in seen:
            stats.rejected[f"reasoning-{kind}:{'duplicate' if t else 'no_candidate'}"] += 1
            continue
        seen.add(t.question)
        per_kind[kind] += 1
        tasks.append(t)
    # Ground truth: run every program in an isolated interpreter.
    outputs = run_programs([t.metadata["program"] for t in tasks], timeout)
    kept = []
    for t, out in zip(tasks, outputs):
        kind = t.metadata["kind"]
        if not out:
            stats.rejected[f"reasoning-{kind}:program_failed"] += 1
            continue
        t.metadata["program_output"] = out
        t.answers = _numeric_answers(out)
        # A passage that already states the computed value (e.g. "1,234 km (767 mi)") needs no reasoning.
        if kind == "conversion" and any(a in g.passages[t.metadata["supporting_ids"][-1]].text for a in t.answers):
            stats.rejected[f"reasoning-{kind}:stated_in_passage"] += 1
            continue
        stats.produced[f"reasoning-{kind}"] += 1
        kept.append(t)
    return kept
