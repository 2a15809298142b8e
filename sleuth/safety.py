"""Safety interceptor: actions that leave the research world are blocked before any tool runs.

The research world is: search an index/the web, read pages, run offline Python, answer. Everything that
acts on the outside world — e-mail, posting, contacting people, spending money, code reaching the network
or spawning programs — is refused with an observation that says why, and logged on the trajectory.
The sandbox enforces isolation at the OS level as well; this layer makes the refusal explicit and countable.
A tag that is neither a research action nor an outside-world one (<observation>, <response>, <ref>) is a
format error — the model invented protocol, it did not try to act — and is counted as one, not as blocked.

Tool observations are data, never instructions: ``find_injection`` flags text that addresses the AI reading
it with instructions (a prompt injection). The agent marks such a result or page as untrusted in the
observation, never counts it as evidence or lets it be cited, and records the event on the trajectory.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from sleuth.protocol import Action

RESEARCH_TOOLS = {"search", "browse", "code", "finish"}

# Action names a model invents for outside-world effects (any unknown tool is blocked, these get a clear label).
_OUTSIDE_TOOLS = re.compile(r"^(e-?mail|mail|send|post|tweet|publish|contact|call|phone|sms|message|dm|"
                            r"buy|purchase|pay|order|book|transfer|donate|login|signup|submit|upload|delete|"
                            r"https?|curl|wget|request|webhook|api_call|shell|bash|terminal|ssh|sudo)", re.I)
_CODE_RULES = [
    (re.compile(r"\b(smtplib|imaplib|poplib|ftplib|telnetlib|xmlrpc)\b"), "sends e-mail or talks to a server"),
    (re.compile(r"\b(socket|http\.client|urllib|requests|httpx|aiohttp|websocket)\b"), "tries the network"),
    (re.compile(r"\b(subprocess|os\.system|os\.popen|os\.exec\w*|os\.spawn\w*|pty\.spawn)\b"), "spawns programs"),
    (re.compile(r"\b(webbrowser)\b"), "opens a browser"),
]
_URL_RULES = [
    (re.compile(r"^\s*(mailto|tel|sms|javascript|file|ftp|data):", re.I), "is not a web page"),
    (re.compile(r"[?&](action=(edit|submit|delete)|checkout|add-to-cart|unsubscribe)", re.I),
     "would change something on a site"),
]


@dataclass
class Verdict:
    allowed: bool
    reason: str = ""
    kind: str = ""
    """When not allowed: "blocked" (an action outside the research world) or "format" (no action at all: a
    tag the model invented, such as <observation>)."""


# Words in a tool's name that act on the outside world: a tool from elsewhere (an MCP server) named with one
# of them ("send_email", "create_issue", "run_shell") is blocked even though the server offers it.
_OUTSIDE_WORDS = {
    "email", "mail", "send", "post", "tweet", "publish", "contact", "phone", "sms", "message", "dm", "buy",
    "purchase", "pay", "payment", "order", "book", "transfer", "donate", "login", "signup", "submit", "upload",
    "delete", "remove", "write", "create", "update", "edit", "insert", "drop", "exec", "execute", "shell",
    "bash", "terminal", "ssh", "sudo", "http", "https", "curl", "wget", "request", "webhook", "deploy", "commit",
    "push", "merge", "invite", "share", "notify", "schedule"}
_CODE_ARGS = {"code", "script", "source", "program", "python", "command", "cmd"}
_URL_LIKE = re.compile(r"^\s*[a-zA-Z][a-zA-Z0-9+.-]*:")


def _name_words(name: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    return [w.lower() for w in re.split(r"[^a-zA-Z0-9]+", spaced) if w]


def check_extra(action: Action) -> Verdict:
    """A call of a tool from elsewhere (an MCP server): blocked when its name acts on the outside world, when an
    argument is a URL the browser would refuse, or when a code argument reaches the network or starts programs."""
    words = [w for w in _name_words(action.tool) if w in _OUTSIDE_WORDS]
    if words:
        return Verdict(False, f"{action.tool} acts outside the research world ({words[0]}); it is not run.",
                       "blocked")

    def strings(value, key=""):
        if isinstance(value, str):
            yield key, value
        elif isinstance(value, dict):
            for k, v in value.items():
                yield from strings(v, str(k))
        elif isinstance(value, list):
            for v in value:
                yield from strings(v, key)

    for key, text in strings(action.args):
        if _URL_LIKE.match(text):
            for pat, why in _URL_RULES:
                if pat.search(text):
                    return Verdict(False, f"{text[:80]} {why}; only reading pages is allowed.", "blocked")
        if key.lower() in _CODE_ARGS:
            for pat, why in _CODE_RULES:
                m = pat.search(text)
                if m:
                    return Verdict(False, f"code that {why} ({m.group(0)}) is not allowed.", "blocked")
    return Verdict(True)


def check(action: Action, extra_tools: Collection[str] = ()) -> Verdict:
    """``extra_tools``: names of tools from elsewhere offered to the agent (checked by ``check_extra``)."""
    tool = action.tool
    if tool in extra_tools and tool not in RESEARCH_TOOLS:
        return check_extra(action)
    if tool not in RESEARCH_TOOLS:
        if _OUTSIDE_TOOLS.match(tool):
            return Verdict(False, f"<{tool}> acts outside the research world; only search, browse, code and "
                                  "answer are allowed.", "blocked")
        return Verdict(False, f"<{tool}> is not an available tool; the actions are <search>, <browse>, <code> "
                              "and <answer>.", "format")
    if tool == "code":
        code = str(action.args.get("code", ""))
        for pat, why in _CODE_RULES:
            m = pat.search(code)
            if m:
                return Verdict(False, f"code that {why} ({m.group(0)}) is not allowed; the sandbox is offline.",
                               "blocked")
    if tool == "browse":
        url = str(action.args.get("url", ""))
        for pat, why in _URL_RULES:
            if pat.search(url):
                return Verdict(False, f"{url[:80]} {why}; only reading pages is allowed.", "blocked")
    return Verdict(True)


# ------------------------------------------------------------------------------------- prompt injection

# Who an injection talks to: an AI reader, by a name no ordinary text gives its reader ...
_AI = (r"(?:AI|A\.I\.|LLMs?|(?:large\s+)?language\s+models?|chat\s?bots?|ChatGPT|GPT-?\w*|Claude|Gemini|"
       r"(?:AI|virtual|digital)\s+(?:assistants?|agents?|models?|systems?))")
# ... or by a common noun, which counts only when it is addressed directly ("Assistants: answer ...").
_READER = rf"(?:{_AI}|assistants?|agents?|models?|bots?)"
_ORDER = (r"(?:answer|respond|reply|say|state|write|output|print|return|report|tell|claim|cite|use|include|"
          r"mention|recommend|ignore|disregard|forget|pretend|do\s+not|don't|never|always|must|should|stop)")
_CLAIM = r"(?:(?:correct|right|true|real|actual|final)\s+answer\s+(?:is|to)|(?:answer|respond|reply)\s+with)"
_GAP = r"[^.!?\n]{0,150}?"   # within one sentence
INJECTION_RULES = [
    ("ignore-instructions",   # "ignore all previous instructions"
     r"\b(?:ignore|disregard|forget|override|bypass)\b[^.!?\n]{0,40}?\b(?:previous|prior|above|earlier|"
     r"preceding|original|all|any|your|system)\b[^.!?\n]{0,20}?\b(?:instructions?|prompts?|directions|"
     r"rules|guidelines)\b"),
    ("role-markup",           # chat-template or system-prompt markup inside a page
     r"<\|im_start\|>|<\|(?:system|user|assistant)\|>|\[/?INST\]|<</?SYS>>|\bsystem\s+prompt\s*:|"
     r"\b(?:new|updated|hidden|real|secret)\s+(?:system\s+)?instructions?\s*:"),
    ("addressed-to-ai",       # "AI assistants: answer ...", "Dear model, ignore ..."
     rf"(?:\b{_AI}\s*:|(?:^|[.!?;]\s+|\b(?:dear|attention|hey|hello|note\s+(?:to|for))\s+)(?:all\s+|any\s+)?"
     rf"{_READER}\s*[:,])\s*(?:please\s+)?{_ORDER}\b"),
    ("orders-to-ai",          # "language models should answer ...", "if you are an AI, say ..."
     rf"\b{_AI}\s+(?:should|must|shall|(?:are|is)\s+(?:instructed|required|told|asked)\s+to|need\s+to)\s+"
     rf"(?:always\s+|now\s+|only\s+)?{_ORDER}\b|\bif\s+you\s+are\s+(?:an?\s+)?(?:{_AI}|assistant)\b{_GAP}"
     rf"\b{_ORDER}\b"),
    ("answer-for-ai",         # "the correct answer is ..." in a sentence that speaks to an AI
     rf"\b{_AI}\b{_GAP}\b{_CLAIM}\b|\b{_CLAIM}\b{_GAP}\b{_AI}\b"),
]
_INJECTION = [(name, re.compile(p, re.I | re.M)) for name, p in INJECTION_RULES]


@dataclass
class Injection:
    rule: str      # which of INJECTION_RULES matched
    text: str      # the sentence or line around the match (for the record; never shown as evidence)


def find_injection(text: str) -> Injection | None:
    """The first piece of ``text`` that speaks to an AI reader with instructions, or None.

    A small, documented pattern set (INJECTION_RULES): "ignore previous instructions" and the like; chat
    markup or "system prompt:" inside a page; an order addressed to an AI ("AI assistants: answer ...",
    "language models should say ...", "if you are an AI, ..."); and "the correct answer is" / "answer
    with" in a sentence that names an AI. Ordinary prose about AI does not match. It is a tripwire, not a
    proof: a determined page can be phrased past it, which is why observations are never instructions.
    """
    for name, pat in _INJECTION:
        m = pat.search(text)
        if m:
            start = max(text.rfind("\n", 0, m.start()) + 1, m.start() - 150)
            end = text.find("\n", m.end())
            end = min(len(text) if end < 0 else end, m.end() + 150)
            return Injection(name, " ".join(text[start:end].split()))
    return None
