"""Clarify and plan: questions back to the user when a request is vague, then an outline of sections, each
with research questions.

A small model often breaks structured output, so the system guarantees the structure: the outline is
parsed leniently (markdown headings, numbered lines, bullets), checked, and on failure the model is asked
again with what was wrong; after ``plan_retries`` re-asks sleuth builds the outline from the request
itself (an overview, then the request's own subjects and aspects) and says so in the report.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from sleuth.report.config import ReportConfig
from sleuth.report.lang import name as lang_name
from sleuth.report.llm import Usage, complete

_STOP = set("a an the of and or to in on for with about what which who how why is are was were be do does did "
            "report write me please give tell on into its it this that these those vs versus compare between "
            "short brief detailed an overview".split())


def content_words(text: str) -> list[str]:
    return [w for w in re.findall(r"[^\W_]+", text.lower()) if w not in _STOP and len(w) > 1]


# ------------------------------------------------------------------------------------------ clarify

CLARIFY_SYSTEM = ("You help a researcher understand a request before research starts. If the request is vague, "
                  "ask up to {n} short questions, one per line, each ending with '?'. If it is specific, reply "
                  "exactly: SPECIFIC")


def is_specific(request: str) -> bool:
    """A request with a named subject (a capitalised word after the first, or a number) and a few content
    words is specific enough to research without asking; the model is consulted only otherwise."""
    words = content_words(request)
    named = any(w[:1].isupper() for w in request.split()[1:]) or bool(re.search(r"\d", request))
    return len(words) >= 4 or (named and len(words) >= 2)


def parse_questions(text: str, n: int) -> list[str]:
    out = []
    for line in text.splitlines():
        line = re.sub(r"^\s*(?:[-*•]|\d+[.)]|Q\d*:|Question\s*\d*:)\s*", "", line).strip()
        if line.endswith("?") and 2 <= len(line.split()) <= 30 and line not in out:
            out.append(line)
    return out[:n]


def clarify(request: str, policy: Any, cfg: ReportConfig, usage: Usage | None = None) -> list[str]:
    """0 questions when the request is specific; else 1–``max_clarify_questions`` questions (the model's, or,
    if it asks none that parse, sleuth's standard ones about focus, audience and scope)."""
    if not cfg.clarify or is_specific(request):
        return []
    n = max(1, cfg.max_clarify_questions)
    text = complete(policy, [{"role": "system", "content": CLARIFY_SYSTEM.format(n=n)},
                             {"role": "user", "content": f"Request: {request}"}],
                    max_new_tokens=min(96, cfg.max_new_tokens or 96), temperature=cfg.temperature, usage=usage)
    qs = parse_questions(text, n)
    if qs or text.strip().upper().startswith("SPECIFIC"):
        return qs
    topic = topic_of(request) or request.strip()
    return [f"Which aspect of {topic} should the report focus on?",
            "Who is the report for: a newcomer's overview or expert detail?",
            "Is there a period, place or comparison the report should cover?"][:n]


def with_answers(request: str, questions: list[str], answers: list[str] | None) -> str:
    """The request as researched: the user's clarifications appended."""
    pairs = [(q, a) for q, a in zip(questions or [""] * len(answers or []), answers or []) if a and a.strip()]
    if not pairs:
        return request
    return request + "\n" + "\n".join(f"- {q + ' ' if q else ''}{a.strip()}" for q, a in pairs)


# ------------------------------------------------------------------------------------------ plan


@dataclass
class SectionPlan:
    title: str
    questions: list[str]


@dataclass
class Plan:
    title: str
    sections: list[SectionPlan]
    source: str = "model"          # "model" | "repaired" (the model's sections topped up) | "fallback" (sleuth's)
    attempts: int = 1
    problems: list[str] = field(default_factory=list)   # why earlier outlines were rejected

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Plan":
        return cls(d["title"], [SectionPlan(**s) for s in d["sections"]], d.get("source", "model"),
                   d.get("attempts", 1), list(d.get("problems", [])))


PLAN_SYSTEM = ("You plan research reports. Reply with an outline only, in {language}, in exactly this format:\n"
               "# Report title\n## Section title\n- research question?\n- research question?\n"
               "## Section title\n- research question?\n"
               "Write {min}-{max} sections, each with {q} research questions that a web search can answer.")

PLAN_EXAMPLE_USER = "Request: Write a report on the Great Wall of China."
PLAN_EXAMPLE = ("# The Great Wall of China\n## History\n- When was the Great Wall of China built?\n"
                "- Which dynasty built most of the Great Wall?\n## Structure\n- How long is the Great Wall of China?\n"
                "- What materials was the Great Wall built from?")


class PlanError(ValueError):
    """An outline that cannot be used; the message is what the model is told on the re-ask. ``usable``: the
    well-formed sections it did have (too few of them), which a repaired outline keeps."""

    def __init__(self, message: str, usable: list[SectionPlan] | None = None, title: str = ""):
        super().__init__(message)
        self.usable = usable or []
        self.title = title


def parse_plan(text: str, cfg: ReportConfig, request: str) -> Plan:
    title, sections = "", []
    for raw in text.splitlines():
        line = raw.strip().strip("*").strip()
        if not line:
            continue
        m = re.match(r"^(#{1,6})\s*(.+)$", line)
        bullet = re.match(r"^(?:[-*•+]|\d+[.)]|[a-z][.)])\s+(.+)$", line)
        if m and len(m.group(1)) == 1 and not title and not sections:
            title = m.group(2).strip()
        elif m or (not bullet and not line.endswith("?") and len(line.split()) <= 10 and not line.endswith(".")):
            heading = (m.group(2) if m else line).strip().rstrip(":")
            heading = re.sub(r"^(?:section\s*)?\d+[.):]?\s*", "", heading, flags=re.I).strip()
            if heading:
                sections.append(SectionPlan(heading, []))
        elif (bullet or line.endswith("?")) and sections:
            q = (bullet.group(1) if bullet else line).strip()
            if not q.endswith("?"):
                q = q.rstrip(".") + "?"
            sections[-1].questions.append(q)
    problems = []
    seen: set[str] = set()
    good = []
    for s in sections:
        key = s.title.lower()
        qs = list(dict.fromkeys(q for q in s.questions if 3 <= len(q.split()) <= 40))
        if key in seen or not qs or len(s.title.split()) > 14:
            continue
        seen.add(key)
        good.append(SectionPlan(s.title, qs[:cfg.questions_per_section]))
    if not good:
        problems.append("the outline had no section with research questions ('## Section' lines, each "
                        "followed by '- question?' lines)")
    elif len(good) < cfg.min_sections:
        problems.append(f"the outline had {len(good)} usable section(s); write at least {cfg.min_sections}, "
                        "each with its own research questions")
    if problems:
        raise PlanError("; ".join(problems), good, title)
    return Plan(title or topic_of(request).capitalize() or request[:80], good[:cfg.max_sections])


def make_plan(request: str, policy: Any, cfg: ReportConfig, language: str, usage: Usage | None = None,
              on_attempt: Callable[[int, str], None] | None = None) -> Plan:
    """The model's outline, re-asked with the problem after each malformed one; sleuth's own outline after
    ``plan_retries`` re-asks — topped up with the model's own well-formed sections when it wrote too few
    (``source="repaired"``). Server errors that outlast the policy's retries also lead to the fallback."""
    messages = [{"role": "system", "content": PLAN_SYSTEM.format(language=lang_name(language), min=cfg.min_sections,
                                                               max=cfg.max_sections, q=cfg.questions_per_section)},
                {"role": "user", "content": PLAN_EXAMPLE_USER}, {"role": "assistant", "content": PLAN_EXAMPLE},
                {"role": "user", "content": f"Request: {request}"}]
    problems: list[str] = []
    partial: PlanError | None = None
    for attempt in range(1, cfg.plan_retries + 2):
        try:
            budget = 64 + 48 * cfg.max_sections * cfg.questions_per_section
            text = complete(policy, messages, max_new_tokens=min(budget, cfg.max_new_tokens or budget),
                            temperature=cfg.temperature, usage=usage)
        except Exception as e:   # the policy already retried; what is left is the fallback outline
            problems.append(f"attempt {attempt}: the model could not be reached ({type(e).__name__}: {e})")
            if on_attempt:
                on_attempt(attempt, problems[-1])
            break
        try:
            plan = parse_plan(text, cfg, request)
            plan.attempts, plan.problems = attempt, problems
            return plan
        except PlanError as e:
            if e.usable and (partial is None or len(e.usable) > len(partial.usable)):
                partial = e
            problems.append(f"attempt {attempt}: {e} (the model wrote: {text.strip()[:160]!r})")
            if on_attempt:
                on_attempt(attempt, str(e))
            messages = messages + [{"role": "assistant", "content": text.strip() or "(empty)"},
                                   {"role": "user", "content": f"That outline cannot be used: {e}. Reply with the "
                                    "outline only, in the format shown."}]
    plan = fallback_plan(request, cfg)
    if partial is not None:   # keep the model's good sections, topped up with sleuth's (a repaired outline)
        titles = {s.title.lower() for s in partial.usable}
        extra = [s for s in plan.sections if s.title.lower() not in titles]
        plan = Plan(partial.title or plan.title, (partial.usable + extra)[:cfg.max_sections], source="repaired")
    plan.attempts, plan.problems = len(problems), problems
    return plan


# ------------------------------------------------------------------------------------------ fallback

_LEAD = re.compile(r"^\s*(?:please\s+)?(?:write|give|make|produce|prepare|create)?\s*(?:me\s+)?(?:an?\s+)?"
                   r"(?:short\s+|brief\s+|detailed\s+|in-depth\s+)?(?:report|overview|review|summary|analysis)?"
                   r"\s*(?:on|about|of|into|covering)?\s*", re.I)


def topic_of(request: str) -> str:
    """The request's subject: its first line without 'write a report on' and the like."""
    first = request.strip().splitlines()[0] if request.strip() else ""
    t = _LEAD.sub("", first, count=1).strip().rstrip("?.!")
    return t or first.strip().rstrip("?.!")


def subjects_of(topic: str) -> list[str]:
    """The things a comparison request names: 'compare A, B and C' / 'A vs B' -> [A, B, C]."""
    t = re.sub(r"^(?:compare|comparing|comparison of|the differences? between)\s+", "", topic, flags=re.I)
    parts = re.split(r"\s*(?:,|\bvs\.?\b|\bversus\b|\band\b|\bwith\b)\s*", t)
    parts = [p.strip() for p in parts if p.strip() and len(p.split()) <= 6]
    return parts if len(parts) >= 2 else []


def fallback_plan(request: str, cfg: ReportConfig) -> Plan:
    """An outline made without the model: a question as asked gets its own section; a comparison a section per
    subject and one comparing them; any other topic overview / history / key facts."""
    topic = topic_of(request)
    q = cfg.questions_per_section
    sections: list[SectionPlan] = []
    if request.strip().splitlines()[0].rstrip().endswith("?"):
        sections.append(SectionPlan(topic[:1].upper() + topic[1:80],
                                    [request.strip().splitlines()[0].strip()]))
        topic = " ".join(content_words(topic)[:6]) or topic
    subjects = subjects_of(topic)
    if subjects:
        for s in subjects[:max(1, cfg.max_sections - 1)]:
            sections.append(SectionPlan(s[:1].upper() + s[1:], [f"What is {s}?", f"What are the key facts about {s}?",
                                                                  f"What is the history of {s}?"][:q]))
        sections.append(SectionPlan("Comparison", [f"How do {' and '.join(subjects[:3])} differ?",
                                                   f"What do {' and '.join(subjects[:3])} have in common?"][:q]))
    else:
        for title, qs in (("Overview", [f"What is {topic}?", f"Why is {topic} notable?"]),
                          ("History", [f"What is the history of {topic}?", f"When did {topic} begin?"]),
                          ("Key facts", [f"What are the key facts about {topic}?", f"Where is {topic}?"])):
            sections.append(SectionPlan(title, qs[:q]))
    return Plan(topic[:1].upper() + topic[1:120], sections[:max(cfg.min_sections, cfg.max_sections)][:cfg.max_sections],
                source="fallback")
