"""Rule-based, tool-centric multi-hop questions from any corpus of passages.

The corpus becomes a *link graph*: passage A links to passage B when A's text mentions B's title (exact,
case-sensitive, on word boundaries; titles too short or too common are skipped). Each passage is *profiled*:
its definition sentence ("X is/was a <type> ...") gives a type phrase, and simple patterns give facts
(birth/death dates, founding and release years, "directed by", "located in", population, quantities).

Questions:
* bridge (2-4 hops): walk A -> B -> ... -> Z backwards from a fact of Z. Only A is named; every later entity
  is referred to by its type and the passage that mentions it ("the American actor mentioned in the article
  on A"), plus a cloze of the linking sentence when the type alone would be ambiguous. With
  ``phrasing="relation"`` a two-hop bridge names it by the role its linking sentence states instead ("the
  director of A", from "a film directed by ___").
* comparison: two passages with comparable facts ("Who was born first, X or Y?").

Every question carries a ``pattern`` (the start title, the hop descriptions, the fact asked for) so the
validator can execute it over the graph and see every answer it admits, not only the intended one.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Callable, Iterable, Iterator

from sleuth.search.corpus import Passage, surface_of
from sleuth.tasks.normalize import normalize_answer
from sleuth.tasks.task import Task


# ------------------------------------------------------------------------------------------- text basics
TOKEN_RE = re.compile(r"\w+|[^\w\s]")
# Sentence ends before whitespace + an opening capital/quote, unless the period ends an initial or abbreviation.
_ABBREV = {"Mr", "Mrs", "Ms", "Dr", "St", "Jr", "Sr", "Prof", "Gen", "Col", "Lt", "Capt", "Rev", "Mt", "No",
           "vs", "c", "ca", "e.g", "i.e", "U.S", "U.K", "Inc", "Ltd", "Co", "Corp", "Bros", "Ft", "Sgt", "fl"}
_SENT_END = re.compile(r"[.!?](?=\s+[\"'(\[A-Z0-9])")
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
_MONTH = "(" + "|".join(MONTHS) + ")"
DATE_DMY = re.compile(r"\b(\d{1,2})\s+" + _MONTH + r",?\s+(\d{3,4})\b")
DATE_MDY = re.compile(r"\b" + _MONTH + r"\s+(\d{1,2}),?\s+(\d{3,4})\b")
YEAR_RE = re.compile(r"(?<![\d,.])\b(\d{3,4})\b(?![\d,]|\s*(?:BC|BCE|B\.C))")
_UNCERTAIN = re.compile(r"\b(c\.|ca\.|circa|about|around|fl\.|or|before|after|BC|BCE|B\.C\.|\?)", re.I)
_NAME_WORD = r"(?:[A-Z]\.|[A-Z][\w'’\-]*)"  # "Allan", "D." (an initial) — no sentence-ending period
NAME_RE = (_NAME_WORD + r"(?:\s+(?:" + _NAME_WORD + r"|(?:de|da|di|del|der|van|von|le|la|du|bin|ibn)\b)){0,4}")


_WORD = re.compile(r"\w+")
_LAST_WORD = re.compile(r"([\w.]+)$")


def sentences(text: str, limit: int | None = None) -> list[tuple[int, int]]:
    """(start, end) character spans of the sentences of text (simple rules, good enough for leads);
    stops after ``limit`` sentences."""
    spans, start = [], 0
    for m in _SENT_END.finditer(text):
        word = _LAST_WORD.search(text, max(start, m.start() - 24), m.start())
        if word and (word.group(1) in _ABBREV or (len(word.group(1)) == 1 and word.group(1).isupper())):
            continue
        spans.append((start, m.end()))
        if limit is not None and len(spans) >= limit:
            return spans
        start = m.end()
        while start < len(text) and text[start].isspace():
            start += 1
    if start < len(text):
        spans.append((start, len(text)))
    return spans


def a_an(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def find_dates(s: str) -> list[tuple[int, int, tuple[int, int | None, int | None]]]:
    """(start, end, (year, month, day)) of every date or bare year in s, in order; invalid dates dropped."""
    found: list[tuple[int, int, tuple[int, int | None, int | None]]] = []
    taken: list[tuple[int, int]] = []
    for rx, order in ((DATE_DMY, "dmy"), (DATE_MDY, "mdy")):
        for m in rx.finditer(s):
            if order == "dmy":
                d, mo, y = int(m.group(1)), MONTHS.index(m.group(2)) + 1, int(m.group(3))
            else:
                mo, d, y = MONTHS.index(m.group(1)) + 1, int(m.group(2)), int(m.group(3))
            try:
                date(y, mo, d)
            except ValueError:
                continue
            found.append((m.start(), m.end(), (y, mo, d)))
            taken.append((m.start(), m.end()))
    for m in YEAR_RE.finditer(s):
        if any(a <= m.start() < b for a, b in taken):
            continue
        y = int(m.group(1))
        if 100 <= y <= 2030:
            found.append((m.start(), m.end(), (y, None, None)))
    return sorted(found)


# -------------------------------------------------------------------------------------------- profiles
@dataclass
class Fact:
    """One extracted attribute. ``value`` is the exact span of the passage text starting at ``start``."""
    name: str            # birth_date, birth_year, death_date, death_year, release_year, founded_year,
                         # creator, location, population, length, area, height
    value: str
    start: int
    kind: str            # date | year | entity | place | number | quantity
    parsed: Any = None   # (y, m, d) for dates, int for years/numbers, float for quantities
    verb: str = ""       # released/published/founded/directed ... for question wording
    extra: dict[str, Any] = field(default_factory=dict)   # census year, unit, alternative answers


@dataclass
class Profile:
    pid: str
    title: str
    surface: str
    type_phrase: str = ""        # "American actor" — years and ordinals removed so it cannot leak a date
    head: str = ""               # last word of the type phrase, lower-cased: "actor"
    is_person: bool = False
    facts: dict[str, Fact] = field(default_factory=dict)


_DEF_VERB = re.compile(r"\b(?:is|was|are|were)\s+(an?|the)\s+")
_TYPE_STOP = {"who", "which", "that", "whose", "where", "when", "from", "in", "of", "by", "based", "directed",
              "written", "located", "born", "founded", "for", "on", "with", "at", "to", "as", "produced",
              "released", "published", "created", "developed", "starring", "between", "during", "since",
              "known", "whom", "situated", "near", "about", "featuring", "under", "after", "before", "than",
              "into", "set", "composed", "designed", "consisting", "named", "making", "recorded", "first",
              "formed", "established", "one", "part", "within", "serving", "operated", "owned", "there", "native",
              "associated", "responsible", "belonging", "consisting", "made", "featured", "appearing", "used",
              "best", "active", "primarily", "mainly", "mostly", "often", "also", "currently"}
_GENERIC_HEADS = {"list", "one", "member", "part", "name", "term", "word", "type", "kind", "form", "number",
                  "set", "collection", "article", "outline", "index", "overview", "history", "timeline", "variety",
                  "way", "title", "example", "case", "thing", "subject", "topic", "area", "field", "form",
                  "lot", "series", "version", "piece", "work", "unit", "sort", "means", "method", "process",
                  # kinship words name a relation to someone else, not what the entity is
                  "son", "daughter", "wife", "husband", "brother", "sister", "father", "mother", "child",
                  "grandson", "granddaughter", "nephew", "niece", "cousin", "widow", "consort", "heir",
                  "sibling", "parent", "spouse", "descendant", "uncle", "aunt", "grandfather", "grandmother"}
_EST_NOUNS = {"forest", "contest", "interest", "priest", "conquest", "request", "guest", "quest", "protest", "test",
              "west", "nest", "chest", "crest", "arrest", "harvest", "manifest", "inquest", "tempest", "behest",
              "midwest", "southwest", "northwest", "pest", "rest", "vest", "zest", "digest", "bequest"}
_CONJ_STOP = {"the", "a", "an", "his", "her", "its", "their", "is", "was", "has", "had", "he", "she", "it"}
_TYPE_DROP = {"former", "retired", "late", "current", "famous", "notable", "well-known", "prominent"}
RELEASE_VERB = {"film": "released", "movie": "released", "documentary": "released", "album": "released",
                "single": "released", "song": "released", "EP": "released", "game": "released",
                "sitcom": "released", "novel": "published", "book": "published", "novella": "published",
                "memoir": "published", "poem": "published", "manga": "published", "comic": "published"}
NON_PERSON_HEADS = {
    "war", "movement", "revolution", "period", "era", "age", "dynasty", "empire", "kingdom", "state", "republic",
    "battle", "conflict", "campaign", "siege", "reign", "festival", "exhibition", "expedition", "event",
    "election", "crisis", "rebellion", "uprising", "show", "program", "programme", "film", "album", "band",
    "group", "company", "party", "organization", "organisation", "government", "regime", "union", "league",
    "team", "club", "newspaper", "magazine", "journal", "station", "building", "church", "bridge", "ship",
    "railway", "line", "route", "game", "season", "tournament", "championship", "competition", "treaty",
    "conference", "council", "court", "school", "university", "college", "institute", "museum",
    "administration", "cabinet", "parliament", "ministry", "colony", "province", "territory", "county", "city",
    "town", "village", "country", "mission", "project", "plan", "policy", "act", "law", "pandemic", "epidemic",
    "famine", "flood", "earthquake", "occupation", "invasion", "genocide", "massacre", "persecution",
    "reformation", "renaissance", "enlightenment", "culture", "civilization", "civilisation", "style", "house",
    "family", "clan", "order", "society", "association", "federation", "confederation", "alliance", "caliphate",
    "sultanate", "emirate", "principality", "duchy", "county", "shogunate", "protectorate", "mandate",
    # venues and businesses open and close: "(1977 – 2003)" after a nightclub is not a lifespan
    "nightclub", "venue", "bar", "pub", "restaurant", "hotel", "theatre", "theater", "cinema", "store", "shop",
    "brand", "label", "studio", "airline", "bank", "firm", "business", "franchise", "arena", "stadium"}
PLACE_HEADS = {"town", "city", "village", "municipality", "commune", "suburb", "neighborhood", "neighbourhood",
               "district", "county", "parish", "hamlet", "borough", "community", "township", "settlement",
               "locality", "place", "island", "capital", "port", "region", "province", "area", "resort",
               "department", "state", "territory", "river", "lake", "mountain", "peak"}
_FOUNDED = re.compile(r"\b(?:was|were|is|been)\s+(?:\w+\s+)?(founded|established|formed|incorporated|opened|"
                      r"built|completed|constructed|launched|created)\s+in\s+(\d{4})\b")
_FOUNDED_WORDS = ("founded", "established", "formed", "incorporated", "opened", "built", "completed",
                  "constructed", "launched", "created")
_CREATOR = re.compile(r"\b(directed|written|produced|founded|created|developed|designed|composed|painted|"
                      r"authored|sculpted)\s+by\s+(" + NAME_RE + r")")
_POP = re.compile(r"\bpopulation\s+(?:of|was|is|was estimated at|stood at|numbered)?\s*(\d{1,3}(?:,\d{3})+|\d{3,})"
                  r"(?![\d.,]\d)(?:[^.]{0,40}?\b((?:1[89]|20)\d{2})\s+census)?")
_POP_APPROX = re.compile(r"(?:about|approximately|around|roughly|over|nearly|almost|some|more than|"
                         r"less than|estimated)\s*$")
_NUM = r"(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)"
_QUANTITIES = [  # (fact name, regex, unit group, cheap gate) — quantity patterns that say what was measured
    ("length", re.compile(_NUM + r"\s*(?:-\s*)?(km|kilometres|kilometers|mi|miles)\s+(?:long|in length)\b"), 2,
     ("long", "in length")),
    ("length", re.compile(r"\blength of\s+(?:about\s+)?" + _NUM + r"\s*(km|kilometres|kilometers|mi|miles)\b"), 2,
     ("length of",)),
    ("area", re.compile(r"\barea of\s+" + _NUM + r"\s*(km2|km²|square kilometres|square kilometers|sq mi|"
                        r"square miles)"), 2, ("area of",)),
    ("height", re.compile(r"\b(?:elevation|height|altitude) of\s+" + _NUM + r"\s*(m|metres|meters|ft|feet)\b"), 2,
     ("elevation of", "height of", "altitude of")),
    ("height", re.compile(_NUM + r"\s*(m|metres|meters|ft|feet)\s+(?:tall|high)\b"), 2,
     ("tall", "high")),
]
_LINEAR = {"river", "road", "highway", "canal", "bridge", "tunnel", "railway", "line", "trail", "range", "mountains",
           "chain", "island", "peninsula", "lake", "glacier", "wall", "street", "route", "motorway", "runway",
           "beach", "coast", "valley", "stream", "creek", "tributary", "waterway", "aqueduct", "pipeline", "border",
           "causeway", "expressway", "freeway", "parkway", "avenue", "boulevard", "fjord", "gorge", "canyon",
           "strait", "channel", "reef", "archipelago"}
_AREAL = PLACE_HEADS | {"country", "nation", "island", "park", "lake", "forest", "reserve", "desert", "sea", "bay",
                        "peninsula", "archipelago", "basin", "plateau", "wilderness", "sanctuary", "refuge",
                        "gulf", "ocean", "continent", "subcontinent", "reservoir", "wetland", "estate"}
_TALL = PLACE_HEADS | {"mountain", "peak", "volcano", "tower", "building", "skyscraper", "hill", "waterfall",
                       "falls", "dam", "statue", "monument", "summit", "massif", "spire", "lighthouse", "mast",
                       "obelisk", "pyramid", "cathedral", "church", "bridge", "pass", "plateau", "glacier"}
MEASURED_HEADS = {"length": _LINEAR, "area": _AREAL, "height": _TALL}
UNIT_CANON = {"km": "km", "kilometres": "km", "kilometers": "km", "mi": "mi", "miles": "mi", "m": "m",
              "metres": "m", "meters": "m", "ft": "ft", "feet": "ft", "km2": "km2", "km²": "km2",
              "square kilometres": "km2", "square kilometers": "km2", "sq mi": "sqmi", "square miles": "sqmi"}


def _type_phrase(after: str) -> str:
    """The noun phrase after "is a": "1935 German historical film directed by" -> "German historical film"."""
    toks = after.split()
    words: list[str] = []
    for i, w in enumerate(toks):
        core = w.strip("\"'“”")
        word = re.split(r"[,;:.()\[\]]", core)[0]
        if not word:
            break
        low = word.lower()
        if low in _TYPE_STOP:
            break
        if low in ("and", "or") and i + 1 < len(toks) and toks[i + 1].lower() in _CONJ_STOP:
            break
        # A participle that opens a clause ("athlete specializing in", "director working in") ends it.
        if words and low.endswith(("ing", "ed")) and i + 1 < len(toks) and \
                toks[i + 1].lower() in _TYPE_STOP | _CONJ_STOP:
            break
        if not re.search(r"\d", word) and low not in _TYPE_DROP:
            words.append(word)
        if word != core or len(words) >= 6:   # punctuation after the word ends the phrase
            break
    while words and words[-1].lower() in {"and", "or", "the", "a", "an"}:
        words.pop()
    phrase = re.sub(r"(\w)- (?=\w)", r"\1-", " ".join(words))   # "black- and- white" (spacing quirk)
    if not phrase or not re.fullmatch(r"[^\W\d_][\w'’\- ]*", phrase) or not words[-1][:1].islower():
        return ""  # the head noun must be a common noun ("film"), not a name
    head = phrase.split()[-1].lower()
    if head in _GENERIC_HEADS or head.endswith("most") or (head.endswith("est") and head not in _EST_NOUNS):
        return ""  # "a list", "a largest": says nothing about what the entity is
    return phrase


def _lifespan(paren: str) -> dict[str, tuple[int, int, tuple]]:
    """birth/death (start, end, date) inside a lifespan parenthetical, offsets relative to paren."""
    out: dict[str, tuple[int, int, tuple]] = {}
    parts = re.split(r"\s*[–—]\s*|\s+-\s+|(?<=\d)-(?=\d)|\s+to\s+", paren, maxsplit=1)
    if len(parts) == 2:
        left_end = paren.find(parts[1], len(parts[0]))
        sides = [("birth", parts[0], 0), ("death", parts[1], left_end)]
    else:
        low = paren.lower()
        if re.search(r"\bborn\b", low):
            sides = [("birth", paren, 0)]
        elif re.search(r"\b(?:died|d\.)\s", low):
            sides = [("death", paren, 0)]
        else:
            return out
    for name, part, off in sides:
        if _UNCERTAIN.search(part):
            continue
        ds = find_dates(part)
        if ds:
            s, e, d = ds[0]
            out[name] = (off + s, off + e, d)
    return out


def profile(p: Passage) -> Profile:
    """Type phrase and facts of one passage (empty profile when nothing is recognised)."""
    text = p.text
    prof = Profile(p.id, p.title, surface_of(p.title))
    sents = sentences(text, limit=2)
    if not sents:
        return prof
    s0, e0 = sents[0]
    first = text[s0:e0]
    m = _DEF_VERB.search(first[:400])
    subj = first[: m.start()] if m else ""
    title_words = [w for w in TOKEN_RE.findall(prof.surface) if w[0].isalnum()]
    subj_ok = bool(m) and bool(title_words) and (prof.surface in subj or title_words[0] in subj
                                                 or title_words[-1] in subj)
    if subj_ok:
        prof.type_phrase = _type_phrase(first[m.end():])
        prof.head = prof.type_phrase.split()[-1].lower() if prof.type_phrase else ""
    # Lifespan: the first parenthetical of the subject (or of the sentence when there is no definition).
    zone_end = m.start() if m else min(len(first), 250)
    pm = re.search(r"\(([^()]*)\)", first[:zone_end])
    # Wars, dynasties and movements have date ranges too: lifespans only for things that can be people.
    if pm and subj_ok and prof.head and prof.head not in NON_PERSON_HEADS:
        for name, (s, e, d) in _lifespan(pm.group(1)).items():
            start = s0 + pm.start(1) + s
            span = text[start: s0 + pm.start(1) + e]
            if d[1] is not None:
                prof.facts[f"{name}_date"] = Fact(f"{name}_date", span, start, "date", d)
            ym = re.search(r"\d{3,4}$", span)
            if ym:
                prof.facts[f"{name}_year"] = Fact(f"{name}_year", ym.group(0), start + ym.start(), "year", d[0])
        prof.is_person = "birth_year" in prof.facts
    if not prof.type_phrase:
        return prof
    after = first[m.end():]
    # Release/publication year: "is a 1995 American film".
    verb = RELEASE_VERB.get(prof.type_phrase.split()[-1]) or RELEASE_VERB.get(prof.head)
    ym = re.match(r"(\d{4})\s", after)
    if verb and ym and not prof.is_person:
        start = s0 + m.end()
        prof.facts["release_year"] = Fact("release_year", ym.group(1), start, "year", int(ym.group(1)), verb)
    lead = text[s0: sents[1][1]] if len(sents) > 1 else first
    # Founding year: passive voice in the first two sentences, all mentions agreeing.
    fm = list(_FOUNDED.finditer(lead)) if any(v in lead for v in _FOUNDED_WORDS) else []
    if fm and not prof.is_person and len({x.group(2) for x in fm}) == 1:
        x = fm[0]
        prof.facts["founded_year"] = Fact("founded_year", x.group(2), s0 + x.start(2), "year", int(x.group(2)),
                                          x.group(1))
    # Creator: "directed by Allan Dwan" — a single name, not a list.
    cm = _CREATOR.search(lead) if " by " in lead else None
    if cm and not prof.is_person:
        name = cm.group(2).rstrip(".")
        rest = lead[cm.start(2) + len(name):]
        if len(name.split()) >= 2 and not re.match(r"\s*(?:,\s*[A-Z]|and\s+[A-Z]|'s|’s)", rest):
            prof.facts["creator"] = Fact("creator", name, s0 + cm.start(2), "entity", name, cm.group(1))
    # Location: "is a town in Los Angeles County, California".
    if prof.head in PLACE_HEADS:
        lm = re.search(r"\b(?:located\s+|situated\s+)?in\s+(?:the\s+)?(" + NAME_RE + r")", after)
        loc = lm.group(1).rstrip(".") if lm else ""
        adjective = lm and re.match(r"\s+[a-z]", after[lm.start(1) + len(loc):])   # "in the Canadian province"
        if lm and not adjective and loc not in (prof.surface, p.title) and re.search(r"[^\W\d_]{3}", loc):
            start = s0 + m.end() + lm.start(1)
            tail = re.match(r"((?:,\s*" + NAME_RE + r")+)", after[lm.start(1) + len(loc):])
            alts = []
            if tail:
                full = loc + tail.group(1).rstrip(".")
                alts = [full] + [x.strip() for x in full.split(",")[1:] if x.strip()]
            prof.facts["location"] = Fact("location", loc, start, "place", loc, extra={"alternatives": alts})
    # Population: one exact figure (all mentions agree; "about 5,000" is not exact).
    pms = [] if "population" not in text else [x for x in _POP.finditer(text) if not _POP_APPROX.search(text[max(0, x.start(1) - 25): x.start(1)])]
    if pms and len({x.group(1) for x in pms}) == 1 and prof.head in PLACE_HEADS | {"country", "nation"}:
        x = pms[0]
        prof.facts["population"] = Fact("population", x.group(1), x.start(1), "number",
                                        int(x.group(1).replace(",", "")), extra={"census": x.group(2) or ""})
    # Quantities (for unit conversion): the first match of each kind, only if unambiguous.
    for name, rx, ug, gate in _QUANTITIES:
        if name in prof.facts or prof.head not in MEASURED_HEADS[name] or not any(w in text for w in gate):
            continue
        qs = list(rx.finditer(text))
        if qs and len({(q.group(1), q.group(ug)) for q in qs}) == 1:
            q = qs[0]
            num = float(q.group(1).replace(",", ""))
            if num > 0:
                prof.facts[name] = Fact(name, q.group(1), q.start(1), "quantity", num,
                                        extra={"unit": UNIT_CANON[q.group(ug)], "unit_text": q.group(ug),
                                               "phrase": q.group(0)})
    return prof


# -------------------------------------------------------------------------------------------- link graph
@dataclass
class Mention:
    title: str       # the target passage's title
    start: int
    end: int


_START = re.compile(r"(?<!\w)[A-Z0-9]")
_NEXT_TOKEN = re.compile(r"\s*(\w+|[^\w\s])")


class TitleMatcher:
    """Token trie over title surfaces; walks start only at capitalised words (or digits), leftmost-longest,
    each match verified against the raw characters (same spacing and punctuation as the title)."""

    END = "\x00"

    def __init__(self, surfaces: dict[str, str]):
        """surfaces: surface string -> title it names. Surfaces must start with a capital or a digit."""
        self.trie: dict = {}
        for surf in surfaces:
            node = self.trie
            for tok in TOKEN_RE.findall(surf):
                node = node.setdefault(tok, {})
            node[self.END] = surf

    def find(self, text: str) -> list[tuple[int, int, str]]:
        """Non-overlapping (start, end, surface) matches."""
        out: list[tuple[int, int, str]] = []
        done = 0
        for m in _START.finditer(text):
            s = m.start()
            if s < done:
                continue
            node, p, best = self.trie, s, None
            while True:
                tm = _NEXT_TOKEN.match(text, p)
                if tm is None:
                    break
                node = node.get(tm.group(1))
                if node is None:
                    break
                p = tm.end()
                surf = node.get(self.END)
                if surf is not None and text[s:p] == surf:
                    best = (s, p, surf)
            if best:
                out.append(best)
                done = best[1]
        return out


_NEXT_CAP = re.compile(r" [A-Z][\w'’\-]*")
_PREV_CAP = re.compile(r"(?:^|(?<=[\s(\"“]))[A-Z][\w'’\-]* $")


def inside_longer_name(text: str, s: int, e: int) -> bool:
    """True when the match is glued to another capitalised word: "Port Alden" in "Port Alden Harbour",
    "Farewell" in "A Farewell to Arms". A capitalised word that merely starts the sentence does not count."""
    if _NEXT_CAP.match(text, e):
        return True
    m = _PREV_CAP.search(text, max(0, s - 40), s)
    if m is None:
        return False
    before = text[:m.start()].rstrip()
    return not (before == "" or before.endswith((".", "!", "?", ":", '"', "”")))


@dataclass
class GraphConfig:
    min_title_chars: int = 4
    """Surfaces shorter than this ("Q", "UK") are not linked."""
    common_ratio: float = 0.5
    """A one-word surface is a common word (skip it) when its lower-case form occurs more than this
    fraction of its capitalised count in the corpus ("Water", "Rose")."""
    max_df: float = 0.01
    """Surfaces mentioned by more than this fraction of passages are hubs ("United States"), not links."""


class LinkGraph:
    """Passages, their profiles, and who mentions whom."""

    def __init__(self, passages: list[Passage], cfg: GraphConfig | None = None,
                 progress: Callable[[int], None] | None = None):
        self.cfg = cfg or GraphConfig()
        self.passages = {p.id: p for p in passages}
        self.order = [p.id for p in passages]
        self.by_title: dict[str, list[str]] = defaultdict(list)
        for p in passages:
            self.by_title[p.title].append(p.id)
        self.profiles = {p.id: profile(p) for p in passages}
        self.stats: dict[str, int] = {}
        self.surfaces = self._choose_surfaces(passages)
        self.matcher = TitleMatcher(self.surfaces)
        self.out: dict[str, list[Mention]] = {}
        self.inbound: dict[str, list[str]] = defaultdict(list)
        inside = 0
        for i, p in enumerate(passages):
            own = {p.title, surface_of(p.title)}
            seen: dict[str, Mention] = {}
            for s, e, surf in self.matcher.find(p.text):
                t = self.surfaces[surf]
                if t in own or t in seen:
                    continue
                if inside_longer_name(p.text, s, e):
                    inside += 1
                    continue
                seen[t] = Mention(t, s, e)
            self.out[p.id] = list(seen.values())
            for t in seen:
                self.inbound[t].append(p.id)
            if progress and i % 500 == 499:
                progress(500)
        # Hubs: drop links to titles mentioned by too many passages.
        limit = max(20, int(self.cfg.max_df * len(passages)))   # small corpora have no hubs
        hubs = {t for t, src in self.inbound.items() if len(src) > limit}
        if hubs:
            for pid in self.out:
                self.out[pid] = [m for m in self.out[pid] if m.title not in hubs]
            for t in hubs:
                del self.inbound[t]
        self.stats.update(mentions_inside_longer_names=inside, hub_titles=len(hubs), links=sum(len(v) for v in self.out.values()),
                          linked_titles=len(self.inbound),
                          typed_passages=sum(1 for pr in self.profiles.values() if pr.type_phrase),
                          passages_with_facts=sum(1 for pr in self.profiles.values() if pr.facts))

    def _choose_surfaces(self, passages: list[Passage]) -> dict[str, str]:
        cfg = self.cfg
        by_surface: dict[str, set[str]] = defaultdict(set)
        for t in self.by_title:
            by_surface[surface_of(t)].add(t)
        singles = {s for s in by_surface if len(TOKEN_RE.findall(s)) == 1}
        counts: Counter[str] = Counter()
        for p in passages:  # word counts decide whether a one-word title is a common word
            counts.update(_WORD.findall(p.text))
        out: dict[str, str] = {}
        rejected = Counter()
        for surf, titles in by_surface.items():
            if surf in titles:
                title = surf                      # "Mercury" is primary over "Mercury (planet)"
            elif len(titles) == 1:
                title = next(iter(titles))
            else:
                rejected["ambiguous"] += 1
                continue
            toks = TOKEN_RE.findall(surf)
            if title != surf and len(toks) == 1:
                rejected["ambiguous"] += 1        # "Farewell (2009 film)": a bare word names many things
            elif len(surf) < cfg.min_title_chars or not re.search(r"[A-Za-z]", surf):
                rejected["short"] += 1
            elif not _START.match(surf):
                rejected["unmatchable"] += 1      # links are only looked for at capitalised words
            elif not re.search(r"[A-Z]", surf) or all(t.lower() in {"the", "of", "and", "a", "in", "on"}
                                                       for t in toks if t.isalpha()):
                rejected["common"] += 1
            elif surf in singles and counts[surf.lower()] > cfg.common_ratio * max(1, counts[surf]):
                rejected["common"] += 1
            else:
                out[surf] = title
        self.stats.update({f"titles_rejected_{k}": v for k, v in rejected.items()}, titles_linkable=len(out))
        return out

    # --- pattern execution: every passage a description can point to
    def linked(self, pid: str) -> list[Mention]:
        return self.out.get(pid, [])

    def resolve(self, ref: dict[str, Any]) -> set[str]:
        """Passages a reference ({"start": title, "hops": [{"type", "cloze", "relation"}...]}) can denote: a hop
        with a relation follows only links in that role; a hop whose type is None follows any type."""
        current = set(self.by_title.get(ref["start"], []))
        for hop in ref.get("hops", []):
            nxt: set[str] = set()
            for pid in current:
                text = self.passages[pid].text
                for men in self.linked(pid):
                    if hop.get("relation") and relation_of(text, men) != hop["relation"]:
                        continue
                    for cand in self.by_title.get(men.title, []):
                        if hop.get("type") is not None and self.profiles[cand].type_phrase != hop["type"]:
                            continue
                        cloze = hop.get("cloze")
                        if cloze and cloze.replace("___", text[men.start:men.end]) not in text:
                            continue
                        nxt.add(cand)
            current = nxt
        return current

    def fact_values(self, ref: dict[str, Any], fact: str) -> set[Any]:
        """Distinct values of a fact over every passage the reference can denote. Dates, years and numbers
        compare by value ("9 October 1808" == "October 9, 1808"), names by their normalised text."""
        vals: set[Any] = set()
        for pid in self.resolve(ref):
            f = self.profiles[pid].facts.get(fact)
            if f is None:
                continue
            if f.kind in ("date", "year", "number"):
                vals.add(f.parsed)
            elif f.kind == "quantity":
                vals.add((f.parsed, f.extra.get("unit")))
            else:
                vals.add(normalize_answer(f.value))
        return vals


# -------------------------------------------------------------------------------------------- questions
ASK = {
    "birth_date": "When was {ref} born?",
    "birth_year": "In what year was {ref} born?",
    "death_date": "When did {ref} die?",
    "death_year": "In what year did {ref} die?",
    "release_year": "In what year was {ref} {verb}?",
    "founded_year": "In what year was {ref} {verb}?",
    "creator": "Who {verb} {ref}?",
    "location": "Where is {ref} located?",
    "population": "What was the population of {ref} at the {census} census?",
    "population_nocensus": "What population figure does the corpus give for {ref}?",
}
BRIDGE_FACTS = ("birth_date", "birth_year", "death_date", "death_year", "release_year", "founded_year",
                "creator", "location", "population")


def task_id(prefix: str, *parts: str) -> str:
    return f"{prefix}-" + hashlib.sha1("\x00".join(parts).encode()).hexdigest()[:12]


def date_variants(d: tuple[int, int | None, int | None]) -> list[str]:
    """Other spellings of a full date, so "9 October 1808" also accepts "October 9, 1808"."""
    y, m, dd = d
    if m is None or dd is None:
        return [str(y)]
    mon = MONTHS[m - 1]
    return [f"{dd} {mon} {y}", f"{mon} {dd}, {y}"]


def fact_answers(f: Fact) -> list[str]:
    """Accepted answers for a fact: its span first, then formatting variants and broader places."""
    out = [f.value]
    if f.kind == "date":
        out += date_variants(f.parsed)
    elif f.kind == "number":
        n = int(f.parsed)
        out += [str(n), f"{n:,}"]
    elif f.kind == "place":
        out += f.extra.get("alternatives", [])
    seen, uniq = set(), []
    for a in out:
        if a and a not in seen:
            seen.add(a)
            uniq.append(a)
    return uniq


def ask(fact: Fact, ref: str) -> str:
    key = fact.name
    if key == "population" and not fact.extra.get("census"):
        key = "population_nocensus"
    verb = fact.verb
    if key == "creator":
        verb = {"written": "wrote"}.get(verb, verb)   # "Who wrote X?", not "Who written X?"
    return ASK[key].format(ref=ref, verb=verb, census=fact.extra.get("census", ""))


def _sentence_at(text: str, pos: int) -> tuple[int, int]:
    """(start, end) of the sentence holding character pos (the whole text when none does)."""
    return next(((s, e) for s, e in sentences(text) if s <= pos < e), (0, len(text)))


def cloze(text: str, men: Mention, width: int = 5) -> str:
    """The linking sentence around a mention, the mention blanked: 'was the son of ___ and'.

    Built from the exact characters of the text, so substituting the title back gives a substring."""
    sent = _sentence_at(text, men.start)
    left = list(re.finditer(r"\S+", text[sent[0]:men.start]))[-width:]
    right = list(re.finditer(r"\S+", text[men.end:sent[1]]))[:width]
    if len(left) + len(right) < 2:
        return ""
    a = sent[0] + left[0].start() if left else men.start
    b = men.end + right[-1].end() if right else men.end
    s = text[a:men.start] + "___" + text[men.end:b]
    return s.rstrip(".,;:").strip()


# What the linking sentence says the hidden entity is to the start passage's subject: "a 1983 film directed by
# ___" makes ___ "the director of" the film. Only "<verb> by ___" (and "<work> by ___") is read: it names one
# role of one entity, which is how natural multi-hop questions refer to it ("Where was the author of Killing
# Pablo born?"). Lists ("by A and B") are skipped: the role would not name one entity.
ROLE_BY_VERB = {"directed": "director", "written": "writer", "produced": "producer", "composed": "composer",
                "founded": "founder", "created": "creator", "developed": "developer", "published": "publisher",
                "designed": "designer", "edited": "editor", "illustrated": "illustrator",
                "narrated": "narrator", "hosted": "host", "painted": "painter", "sculpted": "sculptor",
                "invented": "inventor", "discovered": "discoverer", "built": "builder", "owned": "owner",
                "coached": "coach", "managed": "manager", "led": "leader", "sung": "singer",
                "performed": "performer", "authored": "author", "co-written": "co-writer"}
ROLE_BY_WORK = {"novel": "author", "book": "author", "poem": "author", "play": "author", "story": "author",
                "memoir": "author", "album": "performer", "single": "performer", "song": "performer",
                "EP": "performer", "painting": "painter", "film": "director", "opera": "composer",
                "symphony": "composer", "sculpture": "sculptor"}
_BY_BEFORE = re.compile(r"\b(?:(" + "|".join(map(re.escape, ROLE_BY_VERB)) + r")|("
                        + "|".join(map(re.escape, ROLE_BY_WORK)) + r"))\s+by\s+(?:the\s+)?$")
_LIST_AFTER = re.compile(r"^\s*(?:,|and\b|&)")


def relation_of(text: str, men: "Mention") -> str | None:
    """The role the mention at men plays for the passage's subject, read from '<verb> by ___' right before it
    in its sentence ("director", "author"...), or None."""
    sent = _sentence_at(text, men.start)
    before = text[max(sent[0], men.start - 60):men.start]
    m = _BY_BEFORE.search(before)
    if not m or _LIST_AFTER.match(text[men.end:men.end + 6]) or " and " in before[m.start():]:
        return None
    return ROLE_BY_VERB[m.group(1)] if m.group(1) else ROLE_BY_WORK[m.group(2)]


# Natural phrasings of a two-hop bridge by role, several per fact so the question's form does not give away
# that a second search is needed ({ref} = "the director of Lone Wolf McQuade").
ASK_NATURAL = {
    "birth_date": ["When was {ref} born?", "What is the date of birth of {ref}?", "On what date was {ref} born?"],
    "birth_year": ["In what year was {ref} born?", "What year was {ref} born in?"],
    "death_date": ["When did {ref} die?", "What is the date of death of {ref}?"],
    "death_year": ["In what year did {ref} die?", "What year did {ref} die in?"],
    "founded_year": ["In what year was {ref} {verb}?", "When was {ref} {verb}?"],
}


@dataclass
class GenStats:
    """Why walks were abandoned while generating (reported in the funnel summary)."""
    attempts: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    produced: Counter = field(default_factory=Counter)


PHRASINGS = ("type", "relation")
"""How a two-hop bridge names its hidden entity: "type" — "the American film director mentioned in the article
on X"; "relation" — by its role, read from the linking sentence: "the director of X" (chains whose link has no
readable role are skipped)."""


class BridgeBuilder:
    """Backward walks: pick a fact of the last passage, then predecessors that mention the current title."""

    def __init__(self, graph: LinkGraph, rng: random.Random, cloze_mode: str = "auto", phrasing: str = "type"):
        if cloze_mode not in ("auto", "always", "never"):
            raise ValueError(f"cloze_mode must be 'auto', 'always' or 'never', got {cloze_mode!r}")
        if phrasing not in PHRASINGS:
            raise ValueError(f"phrasing must be one of {', '.join(PHRASINGS)}, got {phrasing!r}")
        self.g, self.rng, self.cloze_mode, self.phrasing = graph, rng, cloze_mode, phrasing

    def walk_back(self, last: str, hops: int) -> list[str] | None:
        """pid chain [p1 .. p_hops] ending at last; intermediates need a type phrase; titles distinct."""
        chain = [last]
        titles = {self.g.passages[last].title}
        for _ in range(hops - 1):
            cur_title = self.g.passages[chain[0]].title
            preds = [p for p in self.g.inbound.get(cur_title, []) if self.g.passages[p].title not in titles]
            if len(chain) < hops - 1:   # the new node will be an intermediate: it must be describable
                preds = [p for p in preds if self.g.profiles[p].type_phrase]
            else:                       # the new node starts the question: its title must be searchable
                preds = [p for p in preds
                         if len(surface_of(self.g.passages[p].title)) >= self.g.cfg.min_title_chars]
                if self.phrasing == "relation" and hops == 2:   # ... and its link must name a role
                    preds = [p for p in preds if self.role(p, cur_title)]
            if not preds:
                return None
            prev = self.rng.choice(sorted(preds))
            chain.insert(0, prev)
            titles.add(self.g.passages[prev].title)
        return chain

    def role(self, prev: str, title: str) -> str | None:
        """The role of the entity titled ``title`` in passage prev's first mention of it (relation_of)."""
        men = next((m for m in self.g.linked(prev) if m.title == title), None)
        return relation_of(self.g.passages[prev].text, men) if men else None

    def hop(self, prev: str, nxt: str) -> dict[str, Any] | None:
        """Description of nxt as reached from prev: its type, plus a cloze when the type is ambiguous."""
        g = self.g
        t = g.profiles[nxt].type_phrase
        men = next((m for m in g.linked(prev) if m.title == g.passages[nxt].title), None)
        if not t or men is None:
            return None
        same_type = {m.title for m in g.linked(prev) for c in g.by_title.get(m.title, [])
                     if g.profiles[c].type_phrase == t}
        need = self.cloze_mode == "always" or (self.cloze_mode == "auto" and len(same_type) > 1)
        cz = cloze(g.passages[prev].text, men) if need else ""
        hop = {"type": t, "cloze": cz or None}
        if self.phrasing != "type":
            rel = relation_of(g.passages[prev].text, men)
            if rel:
                hop["relation"] = rel
        return hop

    def build(self, chain: list[str], fact: Fact) -> tuple[str, dict[str, Any]] | None:
        g = self.g
        hops = [self.hop(a, b) for a, b in zip(chain, chain[1:])]
        if any(h is None for h in hops):
            return None
        start = g.passages[chain[0]].title
        ref0 = start   # the full title, disambiguation included: it is what a search should look for

        def clue(h: dict[str, Any]) -> str:
            return f' (in the words "{h["cloze"]}")' if h["cloze"] else ""

        if len(chain) == 2 and self.phrasing == "relation":
            if "relation" not in hops[0] or fact.name not in ASK_NATURAL:
                return None
            hops = [{"type": None, "cloze": None, "relation": hops[0]["relation"]}]
            question = self.rng.choice(ASK_NATURAL[fact.name]).format(ref=f"the {hops[0]['relation']} of {ref0}",
                                                                        verb=fact.verb)
        elif len(chain) == 2:
            ref = f"the {hops[0]['type']} mentioned in the article on {ref0}{clue(hops[0])}"
            question = ask(fact, ref)
        else:
            parts = [f"The article on {ref0} mentions {a_an(hops[0]['type'])}{clue(hops[0])}."]
            for prev_h, h in zip(hops, hops[1:]):
                what = f"another {h['type']}" if h["type"] == prev_h["type"] else a_an(h["type"])
                parts.append(f"The article on that {prev_h['type']} mentions {what}{clue(h)}.")
            parts.append(ask(fact, f"that {hops[-1]['type']}"))
            question = " ".join(parts)
        question = question[0].upper() + question[1:]
        return question, {"refs": [{"start": start, "hops": hops}], "facts": [fact.name]}


def _evidence(g: LinkGraph, chain: list[str]) -> list[dict[str, str]]:
    """The link spans that justify each hop: passage i mentions passage i+1's title."""
    out = []
    for a, b in zip(chain, chain[1:]):
        men = next(m for m in g.linked(a) if m.title == g.passages[b].title)
        out.append({"pid": a, "span": g.passages[a].text[men.start:men.end], "role": "link"})
    return out


def _supporting(g: LinkGraph, pids: Iterable[str]) -> tuple[list[str], list[str]]:
    pids = list(pids)
    return pids, [g.passages[p].title for p in pids]


def _askable_facts(prof: Profile) -> list[Fact]:
    """The profile's facts a question can ask for — a date rather than its bare year when both exist."""
    facts = [prof.facts[f] for f in BRIDGE_FACTS if f in prof.facts]
    return [f for f in facts if not (f.name.endswith("_year") and f.name.replace("_year", "_date") in prof.facts)]


def generate_bridges(g: LinkGraph, n: int, hops: int, rng: random.Random, stats: GenStats,
                     cloze_mode: str = "auto", max_attempts: int | None = None,
                     phrasing: str = "type") -> Iterator[Task]:
    """Up to n bridge questions of the given hop count (``phrasing``: see PHRASINGS)."""
    builder = BridgeBuilder(g, rng, cloze_mode, phrasing)
    askable = ASK_NATURAL if phrasing == "relation" and hops == 2 else BRIDGE_FACTS
    finals = [pid for pid in g.order
              if g.profiles[pid].type_phrase and any(f in g.profiles[pid].facts for f in askable)
              and g.inbound.get(g.passages[pid].title)]
    if not finals:
        return
    key = f"bridge-{hops}hop"
    made, seen = 0, set()
    for _ in range(max_attempts or n * 60):
        if made >= n:
            break
        stats.attempts[key] += 1
        last = rng.choice(finals)
        facts = [f for f in _askable_facts(g.profiles[last]) if f.name in askable]
        if not facts:
            stats.rejected[f"{key}:no_fact"] += 1
            continue
        fact = rng.choice(facts)
        chain = builder.walk_back(last, hops)
        if chain is None:
            stats.rejected[f"{key}:no_path"] += 1
            continue
        if tuple(chain) + (fact.name,) in seen:
            stats.rejected[f"{key}:duplicate"] += 1
            continue
        # A shortcut: an earlier passage already states the answer, so fewer hops would do.
        if any(fact.value in g.passages[p].text for p in chain[:-1]):
            stats.rejected[f"{key}:shortcut"] += 1
            continue
        built = builder.build(chain, fact)
        if built is None:
            stats.rejected[f"{key}:undescribable"] += 1
            continue
        question, pattern = built
        seen.add(tuple(chain) + (fact.name,))
        hidden_titles = [g.passages[p].title for p in chain[1:]]
        hidden_titles += [surface_of(t) for t in hidden_titles]
        pids, titles = _supporting(g, chain)
        made += 1
        stats.produced[key] += 1
        yield Task(
            id=task_id("synth", key, question), question=question, answers=fact_answers(fact),
            dataset=f"synth-bridge-{hops}hop",
            metadata={"generator": "sleuth.synth.generate.bridge", "type": "bridge", "hops": hops,
                      "fact": fact.name, "supporting_ids": pids, "supporting_titles": titles,
                      "answer_pid": chain[-1],
                      "evidence": _evidence(g, chain) + [{"pid": chain[-1], "span": fact.value, "role": "answer"}],
                      "hidden": sorted(set(hidden_titles)), "pattern": pattern})


# What a lookup asks for, coarsely: most passages state a date, so a uniform pick over passages is mostly
# dates, and a policy trained on them learns to answer any question with a date.
FACT_KINDS = {"birth_date": "date", "birth_year": "date", "death_date": "date", "death_year": "date",
              "release_year": "date", "founded_year": "date", "creator": "creator", "location": "location",
              "population": "population"}


def generate_lookups(g: LinkGraph, n: int, rng: random.Random, stats: GenStats,
                     max_attempts: int | None = None, balance: bool = False) -> Iterator[Task]:
    """Up to n single-hop questions: one fact of a passage, asked about its title ("When was X born?").

    The easy end of a curriculum: searching the named entity finds the passage that states the answer, so
    a policy that searches and reads can solve it, one that guesses cannot. With ``balance`` the kind of
    fact asked (date, creator, location, population) is drawn uniformly first, then a passage stating one."""
    pool = [pid for pid in g.order
            if g.profiles[pid].type_phrase and len(g.by_title.get(g.passages[pid].title, [])) == 1
            and len(surface_of(g.passages[pid].title)) >= g.cfg.min_title_chars
            and any(f in g.profiles[pid].facts for f in BRIDGE_FACTS)]
    if not pool:
        return
    by_kind: dict[str, list[int]] = {}
    if balance:
        for pid in pool:
            for kind in {FACT_KINDS[f.name] for f in _askable_facts(g.profiles[pid])}:
                by_kind.setdefault(kind, []).append(pid)
    kinds = sorted(by_kind)
    made, seen = 0, set()
    for _ in range(max_attempts or n * 10):
        if made >= n:
            break
        stats.attempts["lookup"] += 1
        kind = rng.choice(kinds) if balance else None
        pid = rng.choice(by_kind[kind] if kind else pool)
        pr = g.profiles[pid]
        fact = rng.choice([f for f in _askable_facts(pr) if kind is None or FACT_KINDS[f.name] == kind])
        if (pid, fact.name) in seen:
            stats.rejected["lookup:duplicate"] += 1
            continue
        if fact.name in ("birth_date", "birth_year", "death_date", "death_year") and not pr.is_person:
            stats.rejected["lookup:lifespan_of_non_person"] += 1   # "When did that nightclub die?"
            continue
        seen.add((pid, fact.name))
        title = g.passages[pid].title
        question = ask(fact, title)
        question = question[0].upper() + question[1:]
        made += 1
        stats.produced["lookup"] += 1
        yield Task(
            id=task_id("synth", "lookup", question), question=question, answers=fact_answers(fact),
            dataset="synth-lookup",
            metadata={"generator": "sleuth.synth.generate.lookup", "type": "lookup", "hops": 1,
                      "fact": fact.name, "supporting_ids": [pid], "supporting_titles": [title],
                      "answer_pid": pid, "evidence": [{"pid": pid, "span": fact.value, "role": "answer"}],
                      "hidden": [], "pattern": {"refs": [{"start": title, "hops": []}], "facts": [fact.name]}})


COMPARE = {  # fact -> (question template, whether the earlier/smaller value wins for "first"/"smaller")
    "birth": ("Who was born {word}, {x} or {y}?", {"first": "min", "later": "max"}),
    "death": ("Who died {word}, {x} or {y}?", {"first": "min", "later": "max"}),
    "release_year": ("Which {head} was {verb} {word}, {x} or {y}?", {"first": "min", "later": "max"}),
    "founded_year": ("Which was {verb} {word}, {x} or {y}?", {"first": "min", "later": "max"}),
    "population": ("Which has the {word} population, {x} or {y}?", {"smaller": "min", "larger": "max"}),
}


def _compare_value(prof: Profile, what: str) -> tuple[Any, Fact] | None:
    """A sortable value: a full date when known (y, m, d), else the year; population is an int."""
    if what in ("birth", "death"):
        f = prof.facts.get(f"{what}_date") or prof.facts.get(f"{what}_year")
        if f is None:
            return None
        return (f.parsed if f.kind == "date" else (f.parsed, None, None)), f
    f = prof.facts.get(what)
    return (f.parsed, f) if f is not None else None


def _strictly_ordered(a: Any, b: Any) -> int:
    """-1/1 when a is before/after b, 0 when the values cannot be ordered (same year, one lacks a day)."""
    if isinstance(a, tuple):
        if a[0] != b[0]:
            return -1 if a[0] < b[0] else 1
        if None in a or None in b or a == b:
            return 0
        return -1 if a < b else 1
    return 0 if a == b else (-1 if a < b else 1)


def generate_comparisons(g: LinkGraph, n: int, rng: random.Random, stats: GenStats,
                         max_attempts: int | None = None) -> Iterator[Task]:
    """Up to n "which was first / larger" questions over two passages of the same kind."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for pid in g.order:
        pr = g.profiles[pid]
        if not pr.type_phrase or len(g.by_title.get(pr.title, [])) != 1:
            continue  # a title held by two passages cannot be compared unambiguously
        for what in COMPARE:
            if _compare_value(pr, what) is None:
                continue
            kind = "person" if what in ("birth", "death") else pr.head
            if what in ("birth", "death") and not pr.is_person:
                continue
            groups[(what, kind)].append(pid)
    keys = sorted(k for k, v in groups.items() if len(v) >= 2)
    if not keys:
        return
    made, seen = 0, set()
    for _ in range(max_attempts or n * 30):
        if made >= n:
            break
        stats.attempts["comparison"] += 1
        what, kind = rng.choice(keys)
        a, b = rng.sample(groups[(what, kind)], 2)
        pa, pb = g.profiles[a], g.profiles[b]
        if pa.surface == pb.surface or frozenset((a, b, what)) in seen:
            stats.rejected["comparison:duplicate"] += 1
            continue
        (va, fa), (vb, fb) = _compare_value(pa, what), _compare_value(pb, what)
        order = _strictly_ordered(va, vb)
        if order == 0:
            stats.rejected["comparison:tie"] += 1
            continue
        template, words = COMPARE[what]
        word = rng.choice(sorted(words))
        want_min = words[word] == "min"
        winner = a if (order < 0) == want_min else b
        x, y = (a, b) if rng.random() < 0.5 else (b, a)
        q = template.format(word=word, x=g.profiles[x].surface, y=g.profiles[y].surface, head=kind,
                            verb=fa.verb or "founded")
        seen.add(frozenset((a, b, what)))
        wp = g.profiles[winner]
        answers = [wp.surface] + ([wp.title] if wp.title != wp.surface else [])
        pids, titles = _supporting(g, (x, y))
        made += 1
        stats.produced["comparison"] += 1
        yield Task(
            id=task_id("synth", "comparison", q), question=q, answers=answers, dataset="synth-comparison",
            metadata={"generator": "sleuth.synth.generate.comparison", "type": "comparison", "hops": 2,
                      "fact": what, "supporting_ids": pids, "supporting_titles": titles, "answer_pid": winner,
                      "evidence": [{"pid": a, "span": fa.value, "role": "fact"},
                                   {"pid": b, "span": fb.value, "role": "fact"},
                                   {"pid": winner, "span": wp.surface, "role": "answer"}],
                      "values": {g.passages[a].title: fa.value, g.passages[b].title: fb.value},
                      "hidden": [fa.value, fb.value],
                      "pattern": {"refs": [{"start": g.passages[a].title, "hops": []},
                                           {"start": g.passages[b].title, "hops": []}],
                                  "facts": [fa.name, fb.name]}})


# ---------------------------------------------------------------------------------- optional rewriting
REWRITE_PROMPT = ("Rewrite the question so it reads naturally. Keep every constraint and entity description; "
                  "do not add facts, names or the answer. Reply with the rewritten question only.")


def policy_rewriter(policy: Any, max_new_tokens: int = 96) -> Callable[[Task], str | None]:
    """Wrap a ChatPolicy as a question rewriter. The pipeline re-runs the leak check on every rewrite."""
    from sleuth.policy.base import SamplingParams

    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)

    def rewrite(task: Task) -> str | None:
        reply = policy.chat([{"role": "system", "content": REWRITE_PROMPT},
                             {"role": "user", "content": task.question}], None, params)
        text = (reply.text or "").strip().strip('"').strip()
        return text if text.endswith("?") and len(text) > 10 else None

    return rewrite
