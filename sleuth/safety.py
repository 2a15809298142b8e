"""Safety interceptor: actions that leave the research world are blocked before any tool runs.

The research world is: search an index/the web, read pages, run offline Python, answer. Everything that
acts on the outside world — e-mail, posting, contacting people, spending money, code reaching the network
or spawning programs — is refused with an observation that says why, and logged on the trajectory.
The sandbox enforces isolation at the OS level as well; this layer makes the refusal explicit and countable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sleuth.protocol import Action

RESEARCH_TOOLS = {"search", "browse", "code", "finish"}

# Action names a model invents for outside-world effects (any unknown tool is blocked, these get a clear label).
_OUTSIDE_TOOLS = re.compile(r"^(e-?mail|mail|send|post|tweet|publish|contact|call|phone|sms|message|dm|"
                            r"buy|purchase|pay|order|book|transfer|donate|login|signup|submit|upload|delete)", re.I)
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


def check(action: Action) -> Verdict:
    tool = action.tool
    if tool not in RESEARCH_TOOLS:
        what = "acts outside the research world" if _OUTSIDE_TOOLS.match(tool) else "is not an available tool"
        return Verdict(False, f"<{tool}> {what}; only search, browse, code and answer are allowed.")
    if tool == "code":
        code = str(action.args.get("code", ""))
        for pat, why in _CODE_RULES:
            m = pat.search(code)
            if m:
                return Verdict(False, f"code that {why} ({m.group(0)}) is not allowed; the sandbox is offline.")
    if tool == "browse":
        url = str(action.args.get("url", ""))
        for pat, why in _URL_RULES:
            if pat.search(url):
                return Verdict(False, f"{url[:80]} {why}; only reading pages is allowed.")
    return Verdict(True)
