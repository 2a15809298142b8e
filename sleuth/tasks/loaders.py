"""Loaders for the published benchmarks in shared/data/benchmarks, the dev set, and the user's own files.

``load_tasks`` is the single entry point for getting tasks: a registered benchmark name (``BENCHMARKS``),
several names joined by commas, or the path of a JSONL / JSON / CSV / TSV file of question-answer pairs.

Every loader turns one file into ``Task`` objects with the same shape: question, list of accepted answers,
``dataset`` = the registered name, and the file's other useful fields in ``metadata``. Two benchmarks ship
encrypted with their canary scheme (xbench-DeepSearch, BrowseComp-ZH); they are decrypted in memory only,
and their tasks keep the canary string in ``metadata["canary"]`` so any record written from them carries it.

``data_dir`` everywhere is the shared data root (the folder holding ``benchmarks/`` and ``qa/``);
it defaults to ``sleuth.paths.shared_data()``.
"""

from __future__ import annotations

import ast
import base64
import csv
import hashlib
import json
import random
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable

from sleuth.tasks.task import Task, in_datasets

QA_FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")
ANSWER_SPLIT = "<|answer_split|>"   # how verl-format files (DeepResearcher) join answer aliases

# Pins used when these optional readers are missing (parquet: sealqa, deepresearcher, deepsearchqa;
# xlsx: browsecomp-zh).
PYARROW_PIN = "pyarrow==26.0.1"
OPENPYXL_PIN = "openpyxl==3.1.5"


class BenchmarkError(ValueError):
    """A benchmark or task file could not be loaded; the message says why and what to do."""


# ----------------------------------------------------------------------------------------- file readers
def _read_csv(path: Path, encoding: str = "utf-8", delimiter: str = ",") -> list[dict[str, str]]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))   # some cells (URL lists) exceed the 128 KiB default
    with open(path, encoding=encoding, newline="") as f:
        return list(csv.DictReader(f, delimiter=delimiter))


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise BenchmarkError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise BenchmarkError(f"{path}:{n}: each line must be a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def _read_json(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise BenchmarkError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if isinstance(data, dict):   # {"data": [...]} and similar wrappers
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise BenchmarkError(f"{path}: expected a JSON list of objects (or an object holding one list)")
        data = lists[0]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise BenchmarkError(f"{path}: expected a JSON list of objects")
    return data


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise BenchmarkError(f"reading {path.name} needs pyarrow: pip install {PYARROW_PIN}") from None
    return pq.read_table(path).to_pylist()


def _read_xlsx(path: Path) -> list[dict[str, Any]]:
    try:
        import openpyxl
    except ImportError:
        raise BenchmarkError(f"reading {path.name} needs openpyxl: pip install {OPENPYXL_PIN}") from None
    wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        rows = list(wb.worksheets[0].iter_rows(values_only=True))
    finally:
        wb.close()
    if not rows:
        return []
    header = [str(h) if h is not None else "" for h in rows[0]]
    return [dict(zip(header, r)) for r in rows[1:] if any(v is not None for v in r)]


# ------------------------------------------------------------------------------------------ decryption
def decrypt_browsecomp(ciphertext_b64: str, password: str) -> str:
    """BrowseComp scheme: base64(plaintext XOR sha256(password) repeated to the text's length)."""
    data = base64.b64decode(ciphertext_b64)
    digest = hashlib.sha256(password.encode()).digest()
    key = digest * (len(data) // len(digest) + 1)
    return bytes(a ^ b for a, b in zip(data, key)).decode("utf-8")


def decrypt_xbench(ciphertext_b64: str, key: str) -> str:
    """xbench scheme: base64(plaintext XOR the canary's own UTF-8 bytes repeated) — no hashing."""
    data = base64.b64decode(ciphertext_b64)
    k = key.encode("utf-8")
    return bytes(b ^ k[i % len(k)] for i, b in enumerate(data)).decode("utf-8")


def _decrypt(fn: Callable[[str, str], str], value: Any, key: str, where: str) -> str:
    try:
        return fn(str(value), key)
    except (ValueError, UnicodeDecodeError) as e:   # binascii.Error is a ValueError
        raise BenchmarkError(f"{where}: could not decrypt ({type(e).__name__}: {e}); "
                             "is this the official encrypted file?") from None


# ------------------------------------------------------------------------------------- shared helpers
def _clean(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _literal_list(value: Any) -> list[Any]:
    """Cells such as "['a', 'b']" (Python repr, as in the FRAMES/SimpleQA CSVs) → list; '' → []."""
    if isinstance(value, list):
        return value
    text = _clean(value)
    if not text:
        return []
    try:
        out = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return [text]
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _literal_dict(value: Any) -> dict[str, Any]:
    try:
        out = ast.literal_eval(_clean(value))
    except (ValueError, SyntaxError):
        return {}
    return out if isinstance(out, dict) else {}


def _task(tid: str, question: Any, answers: list[Any], dataset: str, **metadata: Any) -> Task:
    return Task(id=tid, question=_clean(question), answers=[_clean(a) for a in answers if _clean(a)],
                dataset=dataset, metadata={k: v for k, v in metadata.items() if v not in (None, "", [])})


def take(tasks: list[Task], limit: int | None = None, seed: int | None = None) -> list[Task]:
    """Optionally shuffle (deterministic for a seed), then keep the first ``limit`` tasks."""
    if limit is not None and limit < 0:
        raise BenchmarkError(f"limit must be >= 0, got {limit}")
    if seed is not None:
        tasks = list(tasks)
        random.Random(seed).shuffle(tasks)
    return tasks if limit is None else tasks[:limit]


# ------------------------------------------------------------------------------------ benchmark loaders
def _bench(root: Path, *parts: str) -> Path:
    return root.joinpath("benchmarks", *parts)


def _simpleqa(root: Path) -> list[Task]:
    out = []
    for i, r in enumerate(_read_csv(_bench(root, "simpleqa", "simple_qa_test_set.csv"))):
        meta = _literal_dict(r.get("metadata"))
        out.append(_task(f"simpleqa-{i}", r["question"], [r["true_answer"]], "simpleqa",
                         topic=meta.get("topic"), answer_type=meta.get("answer_type"), urls=meta.get("urls")))
    return out


def _frames(root: Path) -> list[Task]:
    out = []
    for i, r in enumerate(_read_csv(_bench(root, "frames", "frames_test_set.csv"))):
        kinds = [k.strip() for k in _clean(r.get("reasoning_types")).split("|") if k.strip()]
        out.append(_task(f"frames-{i}", r["question"], [r["true_answer"]], "frames",
                         reasoning_types=kinds, wiki_links=_literal_list(r.get("wiki_links"))))
    return out


def _xbench(root: Path, release: str) -> list[Task]:
    name = f"xbench-deepsearch-{release}"
    path = _bench(root, "xbench_deepsearch", f"DeepSearch-{release}.csv")
    out = []
    for r in _read_csv(path, encoding="utf-8-sig"):   # the official CSVs start with a BOM
        canary = r["canary"]
        where = f"{path.name} id {r['id']}"
        out.append(_task(f"{name}-{r['id']}", _decrypt(decrypt_xbench, r["prompt"], canary, where),
                         [_decrypt(decrypt_xbench, r["answer"], canary, where)], name,
                         canary=canary, encrypted_source=True))
    return out


def _sealqa(root: Path, part: str) -> list[Task]:
    name = {"seal_0": "seal-0", "seal_hard": "seal-hard"}[part]
    out = []
    for i, r in enumerate(_read_parquet(_bench(root, "sealqa", f"{part}.parquet"))):
        out.append(_task(f"{name}-{i}", r["question"], [r["answer"]], name,
                         topic=r.get("topic"), freshness=r.get("freshness"),
                         question_types=r.get("question_types"), effective_year=r.get("effective_year"),
                         search_results=r.get("search_results"), urls=r.get("urls"), canary=r.get("canary")))
    return out


def _has_image(r: dict[str, Any]) -> bool:
    return bool(_clean(r.get("image")) or _clean(r.get("image_preview")))


def _hle(root: Path) -> list[Task]:
    out = []
    for r in _read_json(_bench(root, "hle", "hle_text_500.json")):
        if _has_image(r):   # the agent reads text only
            continue
        out.append(_task(f"hle-{r['id']}", r["Question"], [r["answer"]], "hle",
                         category=r.get("category"), raw_subject=r.get("raw_subject"),
                         answer_type=r.get("answer_type"), rationale=r.get("rationale")))
    return out


def _hle_full(root: Path) -> list[Task]:
    out, seen = [], set()
    for r in _read_jsonl(_bench(root, "hle_text_only_full", "hle_text_only_2159.jsonl")):
        q, a = _clean(r.get("question")), _clean(r.get("answer"))
        if _has_image(r) or (q, a) in seen:   # the file holds one exact duplicate line
            continue
        seen.add((q, a))
        # No ids in this file: a hash of the question is stable across re-orderings.
        tid = "hle-full-" + hashlib.sha1(q.encode()).hexdigest()[:12]
        kind = "multipleChoice" if "Answer Choices:" in q else "exactMatch"
        out.append(_task(tid, q, [a], "hle-full", answer_type=kind))
    return out


R1S_FILES = {"hotpotqa": "hotpotqa_500.jsonl", "2wiki": "2wiki_500.jsonl",
             "musique": "musique_500.jsonl", "bamboogle": "bamboogle.jsonl"}


def _r1searcher(root: Path, sub: str) -> list[Task]:
    name = f"r1s-{sub}"
    return [_task(f"{name}-{r['idx']}", r["question"], [r["answer"]], name, source_dataset=sub)
            for r in _read_jsonl(_bench(root, "r1searcher_eval", R1S_FILES[sub]))]


# data_source values in the DeepResearcher parquet → our subset names
DR_SOURCES = {"nq": "nq", "tq": "triviaqa", "popqa": "popqa", "hotpotqa": "hotpotqa", "2wiki": "2wiki",
              "musique": "musique", "Bamboogle": "bamboogle"}


def _deepresearcher(root: Path, sub: str, split: str = "test") -> list[Task]:
    name = f"dr-{sub}"
    out = []
    for r in _read_parquet(_bench(root, "deepresearcher_eval", f"{split}.parquet")):
        if DR_SOURCES.get(r["data_source"]) != sub:
            continue
        user = [m["content"] for m in r["prompt"] if m.get("role") == "user"]
        answers = _clean(r["reward_model"]["ground_truth"]).split(ANSWER_SPLIT)
        out.append(_task(f"dr-{r['extra_info']['index']}", user[-1] if user else "", answers, name,
                         source_dataset=sub, split=split))
    return out


def _browsecomp_zh(root: Path) -> list[Task]:
    path = _bench(root, "browsecomp_zh", "browsecomp-zh-encrypted.xlsx")
    out = []
    for i, r in enumerate(_read_xlsx(path)):
        canary = _clean(r.get("canary"))
        where = f"{path.name} row {i + 2}"
        out.append(_task(f"browsecomp-zh-{i}", _decrypt(decrypt_browsecomp, r["Question"], canary, where),
                         [_decrypt(decrypt_browsecomp, r["Answer"], canary, where)], "browsecomp-zh",
                         topic=_decrypt(decrypt_browsecomp, r["Topic"], canary, where),
                         canary=canary, encrypted_source=True))
    return out


def _webwalkerqa(root: Path) -> list[Task]:
    keys = ("domain", "type", "difficulty_level", "lang", "root_url", "source_website", "golden_path")
    return [_task(f"webwalkerqa-{i}", r["Question"], [r["answer"]], "webwalkerqa", **{k: r.get(k) for k in keys})
            for i, r in enumerate(_read_json(_bench(root, "webwalkerqa", "webwalkerqa_test_680.json")))]


def _deepsearchqa(root: Path) -> list[Task]:
    out = []
    for i, r in enumerate(_read_parquet(_bench(root, "deepsearchqa", "deepsearchqa.parquet"))):
        if not _clean(r.get("answer")):   # 4 of the 900 rows have no gold answer: nothing to grade against
            continue
        out.append(_task(f"deepsearchqa-{i}", r["problem"], [r["answer"]], "deepsearchqa",
                         answer_type=r.get("answer_type"), category=r.get("problem_category")))
    return out


# dev.jsonl dataset names → our short subset names
DEV_SOURCES = {"hotpotqa": "hotpotqa", "musique": "musique", "2wikimultihopqa": "2wiki", "nq": "nq"}


def _dev(root: Path, sub: str | None = None) -> list[Task]:
    out = []
    for r in _read_jsonl(root / "qa" / "dev.jsonl"):
        short = DEV_SOURCES.get(r["dataset"], r["dataset"])
        if sub is not None and short != sub:
            continue
        # some HotpotQA rows store their gold as a Python list literal inside the string ("['October 1922']")
        answers = [a for raw in r["answers"] for a in
                   (_literal_list(raw) if str(raw).strip().startswith("[") else [raw])]
        t = _task(r["id"], r["question"], answers, f"dev-{short}", source_dataset=r["dataset"])
        t.metadata["supporting_titles"] = list(r.get("supporting_titles") or [])   # kept even when empty
        out.append(t)
    return out


# ------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Loader:
    """A registered benchmark: ``loader(data_dir) -> list[Task]``, after checking its files exist."""
    fn: Callable[[Path], list[Task]]
    description: str
    files: tuple[str, ...]          # relative to the shared data root
    encrypted: bool = False

    def __call__(self, data_dir: Path) -> list[Task]:
        missing = [f for f in self.files if not (data_dir / f).is_file()]
        if missing:
            raise BenchmarkError(
                f"missing benchmark file(s) {', '.join(str(data_dir / f) for f in missing)}; "
                "pass data_dir=<shared data root> or set SLEUTH_SHARED_DATA")
        return self.fn(data_dir)


def _registry() -> dict[str, Loader]:
    reg = {
        "simpleqa": Loader(_simpleqa, "SimpleQA (OpenAI) short factual questions",
                           ("benchmarks/simpleqa/simple_qa_test_set.csv",)),
        "frames": Loader(_frames, "FRAMES multi-hop questions with gold Wikipedia links",
                         ("benchmarks/frames/frames_test_set.csv",)),
    }
    for rel in ("2505", "2510"):
        reg[f"xbench-deepsearch-{rel}"] = Loader(
            partial(_xbench, release=rel), f"xbench-DeepSearch {rel} (Chinese; canary-encrypted file)",
            (f"benchmarks/xbench_deepsearch/DeepSearch-{rel}.csv",), encrypted=True)
    reg["seal-0"] = Loader(partial(_sealqa, part="seal_0"), "SealQA Seal-0 (search results conflict)",
                           ("benchmarks/sealqa/seal_0.parquet",))
    reg["seal-hard"] = Loader(partial(_sealqa, part="seal_hard"), "SealQA Seal-Hard",
                              ("benchmarks/sealqa/seal_hard.parquet",))
    reg["hle"] = Loader(_hle, "Humanity's Last Exam, 500 text-only (WebThinker subset)",
                        ("benchmarks/hle/hle_text_500.json",))
    reg["hle-full"] = Loader(_hle_full, "Humanity's Last Exam, all text-only questions (deduplicated)",
                             ("benchmarks/hle_text_only_full/hle_text_only_2159.jsonl",))
    for sub, fname in R1S_FILES.items():
        reg[f"r1s-{sub}"] = Loader(partial(_r1searcher, sub=sub), f"R1-Searcher eval set: {sub}",
                                   (f"benchmarks/r1searcher_eval/{fname}",))
    for sub in DR_SOURCES.values():
        reg[f"dr-{sub}"] = Loader(partial(_deepresearcher, sub=sub), f"DeepResearcher test set: {sub}",
                                  ("benchmarks/deepresearcher_eval/test.parquet",))
    reg["browsecomp-zh"] = Loader(_browsecomp_zh, "BrowseComp-ZH (Chinese; canary-encrypted file)",
                                  ("benchmarks/browsecomp_zh/browsecomp-zh-encrypted.xlsx",), encrypted=True)
    reg["webwalkerqa"] = Loader(_webwalkerqa, "WebWalkerQA test (long-form answers, live websites)",
                                ("benchmarks/webwalkerqa/webwalkerqa_test_680.json",))
    reg["deepsearchqa"] = Loader(_deepsearchqa, "DeepSearchQA (single and set answers)",
                                 ("benchmarks/deepsearchqa/deepsearchqa.parquet",))
    reg["dev"] = Loader(_dev, "dev questions answerable from the offline corpus", ("qa/dev.jsonl",))
    for short in DEV_SOURCES.values():
        reg[f"dev-{short}"] = Loader(partial(_dev, sub=short), f"dev questions from {short}", ("qa/dev.jsonl",))
    return reg


BENCHMARKS: dict[str, Loader] = _registry()


def load_benchmark(name: str, limit: int | None = None, data_dir: str | Path | None = None, *,
                   seed: int | None = None) -> list[Task]:
    """Tasks of one registered benchmark; ``seed`` shuffles deterministically before ``limit``."""
    if name not in BENCHMARKS:
        raise BenchmarkError(f"unknown benchmark {name!r}; valid names: {', '.join(BENCHMARKS)}")
    if data_dir is None:
        from sleuth.paths import shared_data
        data_dir = shared_data()
    return take(BENCHMARKS[name](Path(data_dir)), limit, seed)


# ------------------------------------------------------------------------------- the user's own files
QUESTION_KEYS = ("question", "query", "problem", "prompt")
ANSWER_KEYS = ("answers", "answer", "gold", "golden_answers", "gold_answers", "true_answer", "ground_truth")
ID_KEYS = ("id", "qid", "_id", "idx")
DATASET_KEYS = ("dataset", "data_source")


def _pick(row: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    lower = {str(k).lower(): k for k in row}
    for k in keys:
        if k in lower:
            return lower[k]
    return None


def _question_text(value: Any) -> str:
    if isinstance(value, list):   # chat-style prompt: the last user message is the question
        users = [m.get("content", "") for m in value if isinstance(m, dict) and m.get("role", "user") == "user"]
        return _clean(users[-1]) if users else ""
    return _clean(value)


def _answer_list(value: Any) -> list[str]:
    if isinstance(value, dict):   # e.g. {"ground_truth": ...} or {"target": [...]}
        inner = [v for v in value.values() if isinstance(v, (str, list))]
        value = inner[0] if len(inner) == 1 else None
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value if _clean(v)]
    text = _clean(value)
    if text.startswith("[") and text.endswith("]"):   # a list serialised into a CSV cell
        for parse in (json.loads, ast.literal_eval):
            try:
                parsed = parse(text)
            except (ValueError, SyntaxError):
                continue
            if isinstance(parsed, list):
                return [_clean(v) for v in parsed if _clean(v)]
    if ANSWER_SPLIT in text:
        return [a.strip() for a in text.split(ANSWER_SPLIT) if a.strip()]
    return [text] if text else []


def load_qa_file(path: str | Path, dataset: str | None = None) -> list[Task]:
    """Question/answer pairs from a JSONL, JSON, CSV or TSV file.

    Columns are matched case-insensitively: question from question/query/problem/prompt, answers from
    answers/answer/gold/golden_answers (a list, a JSON/Python list in a string, or one string).
    Other columns go to metadata. Rows without a question or an answer are an error (with the row number).
    """
    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(f"task file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = _read_jsonl(path)
    elif suffix == ".json":
        rows = _read_json(path)
    elif suffix in (".csv", ".tsv"):
        rows = _read_csv(path, encoding="utf-8-sig", delimiter="\t" if suffix == ".tsv" else ",")
    else:
        raise BenchmarkError(f"{path.name}: unsupported file type {suffix!r}; use one of {QA_FILE_SUFFIXES}")
    if not rows:
        raise BenchmarkError(f"{path}: no rows")
    dataset = dataset or path.stem
    out = []
    for i, row in enumerate(rows):
        where = f"{path.name} row {i + 1}"
        qk, ak = _pick(row, QUESTION_KEYS), _pick(row, ANSWER_KEYS)
        if qk is None or ak is None:
            raise BenchmarkError(
                f"{where}: need a question column ({'/'.join(QUESTION_KEYS)}) and an answer column "
                f"({'/'.join(ANSWER_KEYS)}); found columns {sorted(map(str, row))}")
        question, answers = _question_text(row[qk]), _answer_list(row[ak])
        if not question:
            raise BenchmarkError(f"{where}: empty question")
        if not answers:
            raise BenchmarkError(f"{where}: no answer for question {question[:80]!r}")
        idk, dk = _pick(row, ID_KEYS), _pick(row, DATASET_KEYS)
        tid = _clean(row[idk]) if idk is not None and _clean(row[idk]) else f"{path.stem}-{i}"
        # a task file written by sleuth (Task.to_dict) keeps its metadata as a table of its own
        nested = row.get("metadata") if isinstance(row.get("metadata"), dict) else {}
        used = {qk, ak, idk, dk, *(["metadata"] if nested else [])}
        meta = {**nested, **{k: v for k, v in row.items() if k not in used and v not in (None, "")}}
        ds = _clean(row[dk]) if dk is not None and _clean(row[dk]) else dataset
        out.append(Task(id=tid, question=question, answers=answers, dataset=ds, metadata=meta))
    dup = len(out) - len({t.id for t in out})
    if dup:
        raise BenchmarkError(f"{path}: {dup} duplicate task id(s); ids must be unique")
    return out


def load_tasks(path_or_name: str | Path, limit: int | None = None,
               datasets: Iterable[str] | None = None, *, seed: int | None = None,
               data_dir: str | Path | None = None) -> list[Task]:
    """Tasks from a benchmark name ("simpleqa", "dev", "r1s-hotpotqa,r1s-2wiki") or a JSONL/JSON/CSV path.

    ``datasets`` keeps tasks whose ``dataset`` (e.g. "dev-hotpotqa") or original source dataset
    (``metadata["source_dataset"]``, e.g. "hotpotqa") is listed; it applies before ``limit``.
    ``seed`` shuffles deterministically before ``limit`` (the files are often sorted by dataset, so the
    first N rows of a mixed set are not a fair sample).
    """
    spec = str(path_or_name).strip()
    path = Path(spec).expanduser()
    if path.is_file():
        tasks = load_qa_file(path)
    elif all(part.strip() in BENCHMARKS for part in spec.split(",")) and spec:
        tasks = []
        for part in spec.split(","):
            tasks += load_benchmark(part.strip(), data_dir=data_dir)
    elif path.suffix.lower() in QA_FILE_SUFFIXES or "/" in spec:
        raise BenchmarkError(f"task file {spec!r} does not exist")
    else:
        unknown = [p.strip() for p in spec.split(",") if p.strip() not in BENCHMARKS]
        raise BenchmarkError(
            f"unknown benchmark {', '.join(map(repr, unknown)) or repr(spec)}; valid names: "
            f"{', '.join(BENCHMARKS)} (or give the path of a .jsonl/.json/.csv/.tsv file)")

    if datasets is not None:
        wanted = {datasets} if isinstance(datasets, str) else set(datasets)
        kept = [t for t in tasks if in_datasets(t, wanted)]
        if not kept:
            have = {t.dataset for t in tasks} | {t.metadata.get("source_dataset", "") for t in tasks}
            have = sorted(have - {""})
            raise BenchmarkError(
                f"no task of {spec!r} belongs to datasets {sorted(wanted)}; available: {', '.join(have)}")
        tasks = kept
    return take(tasks, limit, seed)
