import base64
import hashlib
import json
import re
from collections import Counter

import pytest

from sleuth.paths import shared_data
from sleuth.tasks.loaders import (ANSWER_SPLIT, BENCHMARKS, BenchmarkError, _decrypt, decrypt_browsecomp,
                                  decrypt_xbench, load_benchmark, load_qa_file, load_tasks)
from sleuth.tasks.task import Task

pytestmark = pytest.mark.skipif(not (shared_data() / "benchmarks").is_dir(),
                                reason="shared benchmark data not present")

# Counts read from the files themselves (see each README.txt).
EXPECTED = {
    "simpleqa": 4326, "frames": 824,
    "xbench-deepsearch-2505": 100, "xbench-deepsearch-2510": 100,
    "seal-0": 111, "seal-hard": 254,
    "hle": 500,                 # the WebThinker text-only subset
    "hle-full": 2158,           # 2159 lines, one exact duplicate
    "r1s-hotpotqa": 500, "r1s-2wiki": 500, "r1s-musique": 500, "r1s-bamboogle": 125,
    "dr-nq": 512, "dr-triviaqa": 512, "dr-popqa": 512, "dr-hotpotqa": 512, "dr-2wiki": 512,
    "dr-musique": 512, "dr-bamboogle": 125,
    "browsecomp-zh": 289, "webwalkerqa": 680,
    "deepsearchqa": 896,        # 900 rows, 4 without a gold answer
    "dev": 584, "dev-hotpotqa": 296, "dev-musique": 150, "dev-2wiki": 82, "dev-nq": 56,
}
CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def loaded():
    return {name: load_benchmark(name) for name in BENCHMARKS}


def test_every_registered_benchmark_has_an_expected_count():
    assert set(BENCHMARKS) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_counts_and_shape(loaded, name):
    tasks = loaded[name]
    assert len(tasks) == EXPECTED[name]
    assert len({t.id for t in tasks}) == len(tasks), "ids must be unique"
    for t in tasks:
        assert isinstance(t, Task) and t.question.strip() and t.answers and all(a.strip() for a in t.answers)
        assert t.dataset == name or (name == "dev" and t.dataset.startswith("dev-"))


def test_encrypted_benchmarks_decrypt_to_readable_chinese(loaded):
    for name in ("xbench-deepsearch-2505", "xbench-deepsearch-2510", "browsecomp-zh"):
        tasks = loaded[name]
        # Every question is mostly Chinese text (wrong keys give invalid UTF-8 or noise, not CJK prose).
        assert min(len(CJK.findall(t.question)) / len(t.question) for t in tasks) > 0.2, name
        assert all(t.metadata["canary"] and t.metadata["encrypted_source"] for t in tasks)
        assert not any("canary" in t.question.lower() for t in tasks)
    topics = Counter(t.metadata["topic"] for t in loaded["browsecomp-zh"])
    assert all(CJK.search(topic) for topic in topics)


def test_decryption_schemes_round_trip_and_wrong_keys_fail():
    text = "北京大学 1898"

    def xor(data: bytes, key: bytes) -> str:
        return base64.b64encode(bytes(b ^ key[i % len(key)] for i, b in enumerate(data))).decode()

    assert decrypt_xbench(xor(text.encode(), b"canary-key"), "canary-key") == text
    assert decrypt_browsecomp(xor(text.encode(), hashlib.sha256(b"pw").digest()), "pw") == text
    with pytest.raises(BenchmarkError, match="could not decrypt"):
        _decrypt(decrypt_xbench, xor(text.encode(), b"canary-key"), "another key!", "test row")


def test_metadata_kept(loaded):
    hle = loaded["hle"]
    assert Counter(t.metadata["category"] for t in hle)["Math"] == 215
    assert Counter(t.metadata["answer_type"] for t in hle) == {"exactMatch": 381, "multipleChoice": 119}
    full = loaded["hle-full"]
    assert sum(t.metadata["answer_type"] == "multipleChoice" for t in full) == 514
    assert all(t.metadata["wiki_links"] for t in loaded["frames"])
    assert all(t.metadata["urls"] for t in loaded["simpleqa"])
    dev = loaded["dev"]
    assert all(isinstance(t.metadata["supporting_titles"], list) for t in dev)
    assert sum(bool(t.metadata["supporting_titles"]) for t in dev) == 439   # empty for some HotpotQA rows
    assert all(t.metadata["supporting_titles"] for t in dev if t.dataset != "dev-hotpotqa")
    assert {t.metadata["source_dataset"] for t in dev} == {"hotpotqa", "musique", "2wikimultihopqa", "nq"}
    assert Counter(t.metadata["answer_type"] for t in loaded["deepsearchqa"])["Single Answer"] == 316


def test_deepresearcher_aliases_are_split(loaded):
    tq = loaded["dr-triviaqa"]
    assert sum(len(t.answers) > 1 for t in tq) > 400
    assert not any(ANSWER_SPLIT in a for name in EXPECTED if name.startswith("dr-") for t in loaded[name]
                   for a in t.answers)
    first = loaded["dr-2wiki"][0]
    assert first.question == "What is the date of birth of Millicent Leveson-Gower, Duchess Of Sutherland's husband?"
    assert first.answers == ["20 July 1851"] and first.metadata["split"] == "test"


def test_limit_seed_and_dataset_filter():
    first = load_benchmark("dev", limit=10)
    assert [t.id for t in first] == [t.id for t in load_benchmark("dev")[:10]]
    a, b = load_benchmark("dev", limit=10, seed=1), load_benchmark("dev", limit=10, seed=1)
    assert [t.id for t in a] == [t.id for t in b] != [t.id for t in first]
    assert len(load_tasks("dev", datasets=["hotpotqa"])) == 296            # by source dataset
    assert len(load_tasks("dev", datasets=["dev-nq", "dev-2wiki"])) == 138  # by subset name
    assert len(load_tasks("r1s-bamboogle,dr-bamboogle", limit=200)) == 200
    with pytest.raises(BenchmarkError, match="available: .*dev-hotpotqa"):
        load_tasks("dev", datasets=["triviaqa"])


def test_unknown_and_missing_benchmarks_give_clear_errors(tmp_path):
    with pytest.raises(BenchmarkError, match="unknown benchmark 'simpleqaa'.*simpleqa, frames"):
        load_benchmark("simpleqaa")
    with pytest.raises(BenchmarkError, match="unknown benchmark 'nope'.*valid names"):
        load_tasks("dev,nope")
    with pytest.raises(BenchmarkError, match="missing benchmark file.*simple_qa_test_set.csv"):
        load_benchmark("simpleqa", data_dir=tmp_path)
    with pytest.raises(BenchmarkError, match="does not exist"):
        load_tasks(str(tmp_path / "mine.jsonl"))
    with pytest.raises(BenchmarkError, match="limit must be"):
        load_benchmark("dev", limit=-1)


# ------------------------------------------------------------------------------ the user's own files
def test_user_jsonl_with_flexible_columns(tmp_path):
    p = tmp_path / "mine.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in [
        {"query": "Capital of France?", "golden_answers": ["Paris", "paris, france"], "qid": "q1", "level": 2},
        {"Problem": "2+2?", "Answer": 4},
        {"prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Largest ocean?"}],
         "gold": "Pacific<|answer_split|>Pacific Ocean", "data_source": "geo"},
    ]) + "\n\n")
    tasks = load_tasks(str(p))
    assert [t.id for t in tasks] == ["q1", "mine-1", "mine-2"]
    assert tasks[0].answers == ["Paris", "paris, france"] and tasks[0].metadata == {"level": 2}
    assert tasks[1].question == "2+2?" and tasks[1].answers == ["4"] and tasks[1].dataset == "mine"
    assert tasks[2].question == "Largest ocean?" and tasks[2].answers == ["Pacific", "Pacific Ocean"]
    assert tasks[2].dataset == "geo"


def test_user_csv_tsv_and_json(tmp_path):
    csv_path = tmp_path / "qa.csv"
    csv_path.write_text('Question,answers,notes\n"Who wrote Dracula, the novel?","[""Bram Stoker"", ""Stoker""]",x\n'
                        "Boiling point of water in C?,100,\n", encoding="utf-8")
    tasks = load_qa_file(csv_path)
    assert tasks[0].question == "Who wrote Dracula, the novel?" and tasks[0].answers == ["Bram Stoker", "Stoker"]
    assert tasks[0].metadata == {"notes": "x"} and tasks[1].answers == ["100"]
    tsv = tmp_path / "qa.tsv"
    tsv.write_text("problem\tanswer\nWhat is 3x3?\t9\n")
    assert load_qa_file(tsv)[0].answers == ["9"]
    js = tmp_path / "qa.json"
    js.write_text(json.dumps({"data": [{"question": "Q?", "answer": ["A"]}]}))
    assert load_qa_file(js)[0].answers == ["A"]


def test_user_file_errors_point_at_the_row(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"question": "q1", "answer": "a"}\n{"question": "q2", "answer": "a"\n')
    with pytest.raises(BenchmarkError, match=r"bad.jsonl:2: not valid JSON"):
        load_qa_file(p)
    p.write_text('{"question": "q1", "answer": "a"}\n{"question": "q2", "answer": ""}\n')
    with pytest.raises(BenchmarkError, match="row 2: no answer"):
        load_qa_file(p)
    p.write_text('{"text": "q1", "label": "a"}\n')
    with pytest.raises(BenchmarkError, match=r"need a question column.*found columns \['label', 'text'\]"):
        load_qa_file(p)
    p.write_text('{"id": 1, "question": "q", "answer": "a"}\n{"id": 1, "question": "q", "answer": "b"}\n')
    with pytest.raises(BenchmarkError, match="duplicate task id"):
        load_qa_file(p)
    x = tmp_path / "qa.xml"
    x.write_text("<q/>")
    with pytest.raises(BenchmarkError, match="unsupported file type"):
        load_qa_file(x)


def test_task_round_trip_and_validation():
    t = Task(id="x", question="Q?", answers=["A", "B"], dataset="d", metadata={"k": [1]})
    assert Task.from_dict(json.loads(json.dumps(t.to_dict()))) == t
    assert Task.from_dict({"id": 1, "question": "Q?", "answers": "A"}).answers == ["A"]
    with pytest.raises(ValueError, match="missing field"):
        Task.from_dict({"id": "x", "question": "Q?"})
    with pytest.raises(ValueError, match="non-empty"):
        Task.from_dict({"id": "x", "question": " ", "answers": ["A"]})


def test_dev_answers_stored_as_list_literals_are_unpacked():
    # 143 HotpotQA rows of dev.jsonl keep their gold as "['October 1922']" inside the string
    dev = {t.id: t for t in load_benchmark("dev")}
    assert dev["hotpotqa-dev300-35"].answers == ["October 1922"]
    assert not any(a.startswith("[") for t in dev.values() for a in t.answers)


def test_a_task_file_written_by_sleuth_keeps_its_metadata_flat(tmp_path):
    """Task.to_dict rows load back with the same metadata (hops, search path), not nested under "metadata"."""
    t = Task(id="s1", question="When was the director of X born?", answers=["1918"], dataset="synth-bridge-2hop",
             metadata={"hops": 2, "search_path": ["When was the director of X born?", "Pedro Lazaga"]})
    f = tmp_path / "tasks.jsonl"
    f.write_text(json.dumps(t.to_dict()) + "\n")
    back = load_tasks(str(f))[0]
    assert back.dataset == "synth-bridge-2hop" and back.metadata == t.metadata
