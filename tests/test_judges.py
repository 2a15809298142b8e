from dataclasses import dataclass, field

import pytest

from replay_servers import chat_server
from sleuth.policy.base import ChatPolicy, ChatReply
from sleuth.tasks.judges import (JUDGE_SYSTEM, CoverConfig, Judge, LLMJudge, MatchJudge, cover_check, cover_match,
                                 exact_match, f1, make_judge, parse_verdict)
from sleuth.tasks.normalize import answer_tokens, normalize_answer
from sleuth.tasks.task import question_candidates


@pytest.mark.parametrize("raw,norm", [
    ("The Eiffel Tower", "eiffel tower"),
    ("  an   Apple, a day!  ", "apple day"),
    ("Mr. Fix-It", "mr fixit"),                    # SQuAD drops punctuation without a space
    ("Theatre of the Absurd", "theatre of absurd"),  # only whole-word articles go
    ("1,000,000", "1000000"),
    ("«Bonjour» — dit-il…", "bonjour ditil"),        # non-ASCII punctuation goes too
    ("", ""),
    (None, ""),
])
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


def test_cjk_characters_are_tokens():
    assert answer_tokens("北京 大学，好") == ["北", "京", "大", "学", "好"]
    assert answer_tokens("GPT-4 模型") == ["gpt4", "模", "型"]
    assert exact_match("北京大学", ["北京 大学"]) == 1.0


def test_exact_match():
    assert exact_match("the Beatles!", ["Beatles"]) == 1.0
    assert exact_match("Beatles", "The Beatles") == 1.0           # a single gold string is accepted
    assert exact_match("The Rolling Stones", ["Beatles", "the rolling stones"]) == 1.0
    assert exact_match("Beatles band", ["Beatles"]) == 0.0
    assert exact_match("", ["Beatles"]) == 0.0
    assert exact_match(None, ["Beatles"]) == 0.0


def test_f1():
    assert f1("the cat sat", ["a cat sat down"]) == pytest.approx(0.8)   # p=2/2, r=2/3
    assert f1("cat", ["dog", "cat"]) == 1.0                              # max over golds
    assert f1("dog", ["cat"]) == 0.0
    # HotpotQA's rule: a yes/no answer or gold gets no partial credit.
    assert f1("yes it is", ["yes"]) == 0.0
    assert f1("no", ["no way"]) == 0.0
    assert f1("yes", ["Yes."]) == 1.0
    assert f1("", ["cat"]) == 0.0


def test_question_candidates():
    assert question_candidates("Which film came out earlier, Mr. Fix-It or People Not As Bad As They Seem?") \
        == ["Mr. Fix-It", "People Not As Bad As They Seem"]
    assert question_candidates("Which is oldest, A, B, or C?") == ["A", "B", "C"]
    assert question_candidates("In 2010, which is older, the Eiffel Tower or Big Ben?") == ["the Eiffel Tower",
                                                                                           "Big Ben"]
    assert question_candidates("Are both Dave Grohl and Kurt Cobain American?") == []
    assert question_candidates("Who was born first out of Heng Pov and Rajesh Bhola?") == ["Heng Pov",
                                                                                         "Rajesh Bhola"]
    assert question_candidates("Which is older, between the Louvre and the Prado?") == ["the Louvre", "the Prado"]
    assert question_candidates("Who founded the company that makes the iPhone?") == []
    assert question_candidates("Which fast food restaurant opened first, McDonald's, Wendy's or In-and-Out?") \
        == ["McDonald's", "Wendy's", "In-and-Out"]
    assert question_candidates("What lasted longer: the reign of Elizabeth II or the life of Julius Caesar?") \
        == ["the reign of Elizabeth II", "the life of Julius Caesar"]
    assert question_candidates("Which is larger, in 2020 or 2021?") == ["in 2020", "2021"]
    # Not option lists: quantity comparators, lists inside statements, clauses after the "or".
    assert question_candidates("How many stadiums have a seating capacity of 85,000 or more?") == []
    assert question_candidates("Name the states with a rate (35% or less) in 2023?") == []
    assert question_candidates("List the firms based in Germany or in Austria.") == []
    assert question_candidates("In what city, town, or village did Ciara perform on July 10, 2009?") == []
    assert question_candidates("Which condition is violated?\n\nAnswer Choices:\nA. Dominance\nB. Non-Elitism\n"
                               "C. Weak Non-Sadism") == ["A", "B", "C"]


# Real dev questions on which the bare "or" rule and the option parser used to disagree.
CANDIDATE_QUESTIONS = [
    # options the parser cannot split (a comma or a question mark inside an option, no question mark)
    "Which film has the director born first, S Durga or Sweet Emma, Dear Böbe?",
    "Which film has the director who died later, What Will You Do When You Catch Me? or School On Fire?",
    "Which museum was established first, Balzekas Museum Of Lithuanian Culture or Peace Museum, Bradford?",
    "Who was born first, Erika Jayne or Marco Da Silva",
    # options without an "or"
    "Who was born first out of Heng Pov and Rajesh Bhola?",
]
OPEN_QUESTIONS = [
    "What football club plays in the area between the old tool gates: Brook Bar and Trafford bar?",
    "Who founded the company that makes the iPhone?",
]


def test_one_definition_of_a_candidate_question():
    from sleuth.tasks.task import Task, is_candidate_question, question_kind

    for q in CANDIDATE_QUESTIONS:
        assert is_candidate_question(q), q
        assert question_kind(Task("t", q, ["x"], "dev")) == "comparison", q
    for q in OPEN_QUESTIONS:
        assert not is_candidate_question(q) and question_candidates(q) == [], q
        assert question_kind(Task("t", q, ["x"], "dev")) == "open", q
    # the judge reads the same options: naming the other candidate is a hedge, naming a place in an
    # apposition is not
    assert cover_match("Heng Pov and Rajesh Bhola", ["Heng Pov"], CANDIDATE_QUESTIONS[-1]) == 0.0
    assert cover_match("Manchester United, by Trafford Bar", ["Manchester United"], OPEN_QUESTIONS[0]) == 1.0


def test_candidate_questions_on_the_dev_set():
    from sleuth.paths import shared_data
    from sleuth.tasks.loaders import load_tasks
    from sleuth.tasks.task import is_candidate_question

    if not (shared_data() / "qa").is_dir():
        pytest.skip("shared dev data not present")
    questions = [t.question for t in load_tasks("dev")]
    assert all(is_candidate_question(q) for q in questions if question_candidates(q))
    assert sum(map(is_candidate_question, questions)) == 82


Q_FILMS = "Which film came out earlier, Mr. Fix-It or People Not As Bad As They Seem?"
G_FILMS = ["People Not As Bad As They Seem"]


def test_cover_accepts_short_answers_containing_the_gold():
    assert cover_match("It was released in 1999.", ["1999"], "When was The Matrix released?") == 1.0
    assert cover_match("People Not As Bad As They Seem", G_FILMS, Q_FILMS) == 1.0
    assert cover_match("People not as bad as they seem came out earlier.", G_FILMS, Q_FILMS) == 1.0
    assert cover_match("Yes, both are American.", ["yes"], "Are both Dave Grohl and Kurt Cobain American?") == 1.0
    assert cover_match("答案是北京大学", ["北京大学"]) == 1.0
    assert cover_match("War or Peace", ["War or Peace"]) == 1.0       # an 'or' inside the gold is no hedge


def test_cover_rejects_answers_naming_several_candidates():
    assert cover_match("Mr. Fix-It or People Not As Bad As They Seem", G_FILMS, Q_FILMS) == 0.0
    assert cover_match("People Not As Bad As They Seem, not Mr. Fix-It", G_FILMS, Q_FILMS) == 0.0
    assert cover_match(Q_FILMS, G_FILMS, Q_FILMS) == 0.0             # repeating the question names both
    assert cover_match("yes and no", ["yes"], "Are both Dave Grohl and Kurt Cobain American?") == 0.0
    assert cover_match("Yes, it was Paris.", ["Paris"], "Can you name the capital of France?") == 1.0
    assert cover_match("1999 or 2000", ["1999"], "When was The Matrix released?") == 0.0
    q = "Who was born first out of Heng Pov and Rajesh Bhola?"   # a choice without "or"
    assert cover_match("born first out of Heng Pov and Rajesh Bhola", ["Heng Pov"], q) == 0.0
    assert cover_match("Heng Pov", ["Heng Pov"], q) == 1.0
    score, why = cover_check("Mr. Fix-It or People Not As Bad As They Seem", G_FILMS, Q_FILMS)
    assert score == 0.0 and "Mr. Fix-It" in why


def test_cover_with_choice_letters():
    q = "Which condition is violated?\n\nAnswer Choices:\nA. Dominance\nB. Non-Elitism\nC. Weak Non-Sadism"
    assert cover_match("A", ["A"], q) == 1.0
    assert cover_match("The answer is A.", ["A"], q) == 1.0     # "A" survives although it looks like an article
    assert cover_match("A or B", ["A"], q) == 0.0
    assert cover_match("A, B", ["A"], q) == 0.0
    assert cover_match("The answer is B.", ["A"], q) == 0.0
    assert cover_match("B. Non-Elitism", ["B"], q) == 1.0
    assert exact_match("a", ["A"]) == 1.0 and exact_match("....-", ["....-"]) == 1.0   # nothing normalises away


def test_cover_never_rejects_the_gold_itself_on_real_questions():
    from sleuth.tasks.loaders import load_benchmark
    from sleuth.paths import shared_data
    if not (shared_data() / "benchmarks").is_dir():
        pytest.skip("shared benchmark data not present")
    tasks = [t for n in ("dev", "r1s-2wiki", "dr-hotpotqa", "hle", "frames") for t in load_benchmark(n)]
    for t in tasks:
        assert cover_match(t.answers[0], t.answers, t.question) == 1.0, t.id
        assert cover_match(f"The answer is {t.answers[0]}", t.answers, t.question) == 1.0, t.id
    comparisons = [t for t in tasks if len(question_candidates(t.question)) == 2
                   and normalize_answer(t.answers[0]) in map(normalize_answer, question_candidates(t.question))]
    assert len(comparisons) > 200
    for t in comparisons:   # naming both options is always refused
        a, b = question_candidates(t.question)
        assert cover_match(f"{a} or {b}", t.answers, t.question) == 0.0, t.id
        assert cover_match(f"{b}, {a}", t.answers, t.question) == 0.0, t.id


def test_cover_candidate_inside_gold_is_not_a_hedge():
    q = "Which came first, Star Wars or Star Wars: The Force Awakens?"
    assert cover_match("Star Wars: The Force Awakens", ["Star Wars: The Force Awakens"], q) == 1.0
    # ...but a longer candidate that merely contains the gold is a different answer.
    assert cover_match("Star Wars: The Force Awakens", ["Star Wars"], q) == 0.0


def test_cover_rejects_overlong_answers():
    long = "It could be several years, but my best guess among the candidates is perhaps 1999 overall"
    assert len(answer_tokens(long)) > 12
    assert cover_match(long, ["1999"]) == 0.0
    assert cover_match(long, ["1999"], length_floor=30) == 1.0       # the threshold is a parameter
    score, why = cover_check(long, ["1999"])
    assert "too long" in why
    # A long gold allows a proportionally long answer: 2 x 8 tokens.
    gold = "the treaty of peace and friendship between both nations"
    assert CoverConfig().max_tokens([gold]) == 16
    assert cover_match(f"It was {gold} signed in 1850", [gold]) == 1.0


def test_cover_requires_whole_tokens():
    assert cover_match("19999", ["1999"]) == 0.0
    assert cover_match("start", ["art"]) == 0.0
    assert cover_match("", ["art"]) == 0.0
    assert cover_match("art", []) == 0.0


def test_match_judge_modes_and_records_config():
    j = MatchJudge("cover")
    v = j.judge(Q_FILMS, "It was People Not As Bad As They Seem.", G_FILMS)
    assert v.correct and v.cover == 1.0 and v.em == 0.0 and 0 < v.f1 < 1
    assert v.judge_name == "match:cover" and v.judge_config["length_floor"] == 12
    assert not MatchJudge("em").judge(Q_FILMS, "It was People Not As Bad As They Seem.", G_FILMS).correct
    half = MatchJudge("f1>=0.5")
    assert half.name == "match:f1>=0.5"
    assert half.judge("q", "the cat sat", ["a cat sat down"]).correct          # F1 0.8
    assert not MatchJudge("f1>=0.9").judge("q", "the cat sat", ["a cat sat down"]).correct
    with pytest.raises(ValueError, match="unknown match mode"):
        MatchJudge("fuzzy")
    with pytest.raises(ValueError):
        MatchJudge("f1>=1.5")
    no_gold = j.judge("q", "anything", [])
    assert not no_gold.correct and no_gold.error == "no gold answer"
    assert isinstance(j, Judge)


# --------------------------------------------------------------------------------------- LLM judge
@dataclass
class FixedPolicy:
    """A ChatPolicy that answers every request with the same text and records the requests."""
    text: str
    name: str = "fixed-judge"
    calls: list = field(default_factory=list)

    def chat(self, messages, tools, params):
        self.calls.append(messages)
        return ChatReply(text=self.text)


class BrokenPolicy:
    name = "broken"

    def chat(self, messages, tools, params):
        raise ConnectionError("server unreachable")


def test_judge_prompt_holds_the_refusal_rules():
    policy = FixedPolicy("REASON: ok\nVERDICT: CORRECT")
    assert isinstance(policy, ChatPolicy)
    msgs = LLMJudge(policy).messages("Who wrote Dracula?", "Bram Stoker", ["Bram Stoker", "Abraham Stoker"])
    system, user = msgs[0]["content"], msgs[1]["content"]
    for rule in ("hedges", "multiple guesses", "cannot be determined", "repeats or rephrases the question",
                 "not instructions", "VERDICT: CORRECT", "VERDICT: INCORRECT"):
        assert rule in system, rule
    assert "Who wrote Dracula?" in user and "- Abraham Stoker" in user and "<<<\nBram Stoker\n>>>" in user


@pytest.mark.parametrize("reply,expected", [
    ("REASON: same person\nVERDICT: CORRECT", True),
    ("REASON: hedged between two names\nVERDICT: INCORRECT", False),
    ("VERDICT: CORRECT", True),
    ("  VERDICT:   INCORRECT  \n", False),
    ("<think>maybe VERDICT: INCORRECT</think>\nREASON: fine\nVERDICT: CORRECT", True),
])
def test_parse_verdict_accepts_the_strict_format(reply, expected):
    assert parse_verdict(reply).correct is expected


@pytest.mark.parametrize("reply,error", [
    ("The answer is correct.", "no 'VERDICT:' line"),
    ("VERDICT: correct", "expected CORRECT or INCORRECT"),
    ("VERDICT: CORRECT.", "expected CORRECT or INCORRECT"),
    ("**VERDICT: CORRECT**", "no 'VERDICT:' line"),
    ("VERDICT: CORRECT\nVERDICT: INCORRECT", "2 'VERDICT:' lines"),
    ("VERDICT: PARTIALLY CORRECT", "expected CORRECT or INCORRECT"),
    ("", "no 'VERDICT:' line"),
])
def test_parse_verdict_flags_malformed_replies(reply, error):
    parsed = parse_verdict(reply)
    assert parsed.correct is None and error in parsed.error


def test_llm_judge_verdicts_record_reason_and_config():
    j = LLMJudge(FixedPolicy("REASON: names the same person\nVERDICT: CORRECT"))
    v = j.judge("Who wrote Dracula?", "It was written by Bram Stoker.", ["Bram Stoker"])
    assert v.correct and v.score == 1.0 and v.explanation == "names the same person" and not v.error
    assert v.judge_name == "llm:fixed-judge" and v.judge_config["policy"] == "fixed-judge"
    assert v.judge_config["temperature"] == 0.0 and len(v.judge_config["prompt_sha1"]) == 12
    assert v.cover == 1.0 and v.em == 0.0                     # string matches are recorded alongside
    assert "VERDICT: CORRECT" in v.raw


def test_llm_judge_malformed_reply_counts_as_incorrect():
    v = LLMJudge(FixedPolicy("I think this is right.")).judge("Who wrote Dracula?", "Bram Stoker", ["Bram Stoker"])
    assert not v.correct and v.score == 0.0
    assert v.error.startswith("malformed verdict") and v.explanation == v.error and v.raw == "I think this is right."


def test_llm_judge_failures_and_empty_answers_do_not_raise():
    v = LLMJudge(BrokenPolicy()).judge("Who wrote Dracula?", "Bram Stoker", ["Bram Stoker"])
    assert not v.correct and "server unreachable" in v.error
    policy = FixedPolicy("VERDICT: CORRECT")
    v = LLMJudge(policy).judge("Who wrote Dracula?", "   ", ["Bram Stoker"])
    assert not v.correct and v.explanation == "empty answer" and policy.calls == []   # no call wasted


def test_make_judge():
    assert make_judge("em").name == "match:em"
    assert make_judge("llm", FixedPolicy("VERDICT: CORRECT")).name == "llm:fixed-judge"


def test_make_judge_without_a_model_says_what_to_set(monkeypatch):
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "SLEUTH_API_KEY", "JUDGE_KEY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match="judge_model"):
        make_judge("llm")
    with pytest.raises(ValueError, match="JUDGE_KEY"):
        make_judge("llm", model="gpt-x", api_key_env="JUDGE_KEY")
    with pytest.raises(ValueError, match="API key"):                     # the OpenAI API needs a key
        make_judge("llm", model="gpt-x")
    monkeypatch.setenv("JUDGE_KEY", "k")
    assert make_judge("llm", model="gpt-x", api_key_env="JUDGE_KEY").name == "llm:gpt-x"
    assert make_judge("llm", base_url="http://127.0.0.1:9/v1").name == "llm:default"   # local: no key


def test_llm_judge_over_an_openai_compatible_server(monkeypatch):
    openai_policy = pytest.importorskip("sleuth.policy.openai_policy")
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "SLEUTH_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    httpd, url, requests = chat_server([
        (200, "REASON: Hedges between the two films.\nVERDICT: INCORRECT"),
        (200, "Sure! The verdict is: correct"),
        (500, "model overloaded"),
    ])
    try:
        judge = LLMJudge(openai_policy.OpenAIPolicy("judge-model", base_url=url, max_retries=0))
        v = judge.judge(Q_FILMS, "Mr. Fix-It or People Not As Bad As They Seem", G_FILMS)
        assert not v.correct and v.explanation == "Hedges between the two films." and not v.error
        body = requests[0]
        assert body["model"] == "judge-model" and body["temperature"] == 0.0
        assert body["messages"][0]["content"] == JUDGE_SYSTEM and Q_FILMS in body["messages"][1]["content"]
        v = judge.judge(Q_FILMS, "People Not As Bad As They Seem", G_FILMS)
        assert not v.correct and "malformed verdict" in v.error and v.judge_name == "llm:judge-model"
        v = judge.judge(Q_FILMS, "People Not As Bad As They Seem", G_FILMS)
        assert not v.correct and "judge call failed" in v.error and "500" in v.error
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_mentions_needs_whole_normalised_words():
    from sleuth.tasks.judges import mentions

    shown = "[1] Paris: Paris is the capital of France, on the Seine. Population 2,102,650."
    assert mentions(shown, ["the Seine"]) and mentions(shown, ["nothing", "2,102,650"])
    assert not mentions(shown, ["Sein"])            # a prefix of a word is not the answer
    assert not mentions(shown, ["Berlin", ""]) and not mentions("", ["Paris"])
