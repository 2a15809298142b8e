"""The typed settings of a report run (one dataclass; every default works on the embedded model)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ReportConfig:
    words: int = 600
    """Target length of the report body in words, spread over the sections (each section is written in
    its own call, so no single generation has to hold the whole report)."""
    max_sections: int = 4
    """Most sections in the outline (the plan is cut to this many)."""
    min_sections: int = 2
    questions_per_section: int = 2
    """Research questions per section; each is one agent run."""
    max_steps: int | None = None
    """Agent step budget per research question (None: what the policy was trained with, else 10)."""
    search_k: int | None = None
    """Search results per query (None: the environment's / the trained policy's setting)."""
    prompt: str | None = None
    """Agent prompt variant (None: the policy's training prompt, else short-fewshot)."""
    agent_max_new_tokens: int | None = None
    """Tokens per agent reply (None: the policy's training setting, else 256)."""
    language: str | None = None
    """Language code of the report ("en", "fr", ...). None: detected from the request."""
    clarify: bool = True
    """Ask clarifying questions when the request is vague (the API's caller passes ``answers``)."""
    max_clarify_questions: int = 3
    plan_retries: int = 2
    """Re-asks after a malformed outline; then sleuth builds the outline from the request itself (said so
    visibly in the report)."""
    section_retries: int = 1
    """Re-asks when a section draft has no sentence the sources support; then the section is written
    extractively from the sources (said so visibly)."""
    unverified: str = "mark"
    """What happens to a sentence no source supports: "mark" (kept, visibly marked) or "remove"."""
    passages_per_section: int = 6
    """Sources shown to the writer for one section (ranked by overlap with the section's questions)."""
    passage_chars: int = 500
    max_new_tokens: int | None = None
    """Cap on the tokens of any one clarify / plan / section generation (None: sized from the targets)."""
    temperature: float = 0.0
    """Sampling temperature for clarify, plan and write (0 = greedy); research uses ``agent_temperature``."""
    agent_temperature: float = 0.0
    research_batch: int = 4
    """Questions researched together (one batched generation per step for a local model); the unit of
    resume within the research stage."""
    context_window: int = 8192
    charts: bool = True
    """Extract numbers from the verified text and compute the chart's derived figures with the code tool."""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.unverified not in ("mark", "remove"):
            raise ValueError(f"unverified must be 'mark' or 'remove', not {self.unverified!r}")
        if self.words < 50:
            raise ValueError("words must be at least 50")
        if not 1 <= self.min_sections <= self.max_sections:
            raise ValueError("need 1 <= min_sections <= max_sections")
        if self.questions_per_section < 1:
            raise ValueError("questions_per_section must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ReportConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)
