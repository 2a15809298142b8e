"""Numbers the research found, for the report's charts: read from the verified quotes (text the agent was
shown), grouped by unit, with the chart's derived figures (range, ratio, mean) computed by the code tool —
the agent's own sandboxed Python — rather than by sleuth's process.
"""

from __future__ import annotations

import json
import re
from typing import Any

_UNITS = {
    "m": r"metres|meters|metre|meter|m", "km": r"kilometres|kilometers|kilometre|kilometer|km",
    "ft": r"feet|foot|ft", "mi": r"miles|mile", "kg": r"kilograms|kilogram|kg", "t": r"tonnes|tons|tonne|ton",
    "people": r"people|inhabitants|residents|visitors|speakers|employees|students",
    "km²": r"square kilometres|square kilometers|km2|km²", "%": r"%|percent|per cent",
    "years": r"years", "°C": r"°C|degrees Celsius",
}
_SCALE = {"thousand": 1e3, "million": 1e6, "billion": 1e9, "trillion": 1e12}
_NUMBER = r"(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)"
_FACT = re.compile(_NUMBER + r"\s*(thousand|million|billion|trillion)?\s*(" +
                   "|".join(f"(?:{v})" for v in _UNITS.values()) + r")(?![\w])", re.I)
_YEAR = re.compile(r"\b(1[0-9]{3}|20[0-9]{2})\b")


def _unit(word: str) -> str:
    for unit, rx in _UNITS.items():
        if re.fullmatch(rx, word, re.I):
            return unit
    return word


def extract(refs: list[dict[str, Any]], per_source: int = 3) -> list[dict[str, Any]]:
    """Facts {label, value, unit, n, quote} from what the agent was shown at each cited source (``ref["text"]``,
    else its verified quotes); label: the source's title, quote: the shown sentence holding the number."""
    from sleuth.citations import sentences

    facts, seen = [], set()
    for ref in refs:
        count = 0
        body = ref.get("text") or "\n".join(ref["quotes"])
        for quote in sentences(body):
            found = [(float(m.group(1).replace(",", "")) * _SCALE.get((m.group(2) or "").lower(), 1), _unit(m.group(3)))
                     for m in _FACT.finditer(quote)]
            found += [(float(m.group(1)), "year") for m in _YEAR.finditer(quote)]
            for value, unit in found:
                key = (ref["title"], unit, value)
                if key in seen or count >= per_source:
                    continue
                seen.add(key)
                count += 1
                facts.append({"label": ref["title"], "value": value, "unit": unit, "n": ref["n"], "quote": quote})
    return facts


_DERIVE = """
import json
values = {values}
labels = {labels}
hi = max(range(len(values)), key=lambda i: values[i])
lo = min(range(len(values)), key=lambda i: values[i])
out = {{"max": values[hi], "max_label": labels[hi], "min": values[lo], "min_label": labels[lo],
       "range": values[hi] - values[lo], "mean": round(sum(values) / len(values), 3),
       "ratio": round(values[hi] / values[lo], 3) if values[lo] else None}}
print(json.dumps(out))
"""


def charts(facts: list[dict[str, Any]], max_charts: int = 2, sandbox_config: Any = None) -> list[dict[str, Any]]:
    """Up to ``max_charts`` charts, the units with most subjects first (years as a timeline); each with the
    figures the code tool computed, or the reason it could not."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for f in facts:
        groups.setdefault(f["unit"], []).append(f)
    # a chart compares: a unit with one number stays in the table only
    order = sorted((u for u in groups if len(groups[u]) >= 2), key=lambda u: (-len(groups[u]), u == "year"))
    out = []
    code = None
    try:
        for unit in order[:max_charts]:
            rows = groups[unit][:12]
            chart = {"unit": unit, "kind": "timeline" if unit == "year" else "bar",
                     "labels": [r["label"] for r in rows], "values": [r["value"] for r in rows],
                     "refs": [r["n"] for r in rows], "derived": None, "derived_error": ""}
            if code is None:
                from sleuth.tools.code import CodeTool
                code = CodeTool(sandbox_config)
            res = code.run(_DERIVE.format(values=json.dumps(chart["values"]),
                                          labels=json.dumps(chart["labels"], ensure_ascii=False)))
            try:
                chart["derived"] = json.loads(res.data["output"].strip().splitlines()[-1]) if res.ok else None
            except (ValueError, IndexError, KeyError, TypeError):
                chart["derived"] = None
            if chart["derived"] is None:
                chart["derived_error"] = f"the code tool could not compute it: {res.text[:200]}"
            out.append(chart)
    finally:
        if code is not None:
            code.close()
    return out
