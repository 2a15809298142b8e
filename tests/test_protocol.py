"""The action protocol is strict: malformed replies are errors, never repaired."""

import pytest

from sleuth import protocol
from sleuth.protocol import Action, ParseError, parse


def test_search_batch_and_thought():
    a = parse("<think>need two facts</think>\n<search>Eiffel Tower height\nEiffel Tower architect</search>")
    assert a.tool == "search"
    assert a.args == {"queries": ["Eiffel Tower height", "Eiffel Tower architect"]}
    assert a.thought == "need two facts"


def test_search_semicolons_and_untagged_thought():
    a = parse("I should look this up.\n<search>a; b ;c</search>")
    assert a.args["queries"] == ["a", "b", "c"]
    assert a.thought == "I should look this up."


def test_browse_options():
    a = parse("<browse>corpus://wiki/w00012\npage: 2\nfind: born in</browse>")
    assert a.args == {"url": "corpus://wiki/w00012", "page": 2, "find": "born in"}
    with pytest.raises(ParseError, match="page must be a positive integer"):
        parse("<browse>corpus://wiki/w1\npage: two</browse>")
    with pytest.raises(ParseError, match="option lines"):
        parse("<browse>corpus://wiki/w1\nscroll down</browse>")


def test_code_keeps_markup_inside():
    a = parse('<code>print("<b>" + str(2 + 2))</code>')
    assert a.args["code"] == 'print("<b>" + str(2 + 2))'


def test_answer_with_citations():
    a = parse('<answer>1817\n<cite url="corpus://wiki/a">died 18 July  1817</cite></answer>')
    assert a.tool == "finish"
    assert a.args["answer"] == "1817"
    assert a.args["citations"] == [{"url": "corpus://wiki/a", "quote": "died 18 July 1817"}]


@pytest.mark.parametrize("text,msg", [
    ("The answer is Paris.", "no action found"),
    ("<search>unclosed query", "is not closed"),
    ("<search>a</search><answer>b</answer>", "one action per reply"),
    ("<search>  \n </search>", "at least one query"),
    ("<answer></answer>", "empty"),
    ("<code>\n</code>", "empty"),
    ("<browse></browse>", "needs a URL"),
])
def test_malformed_actions_raise(text, msg):
    with pytest.raises(ParseError, match=msg):
        parse(text)


def test_unknown_tags_are_returned_for_the_interceptor():
    a = parse("<email>to: author@example.org</email>")
    assert a.tool == "email" and "author@example.org" in a.args["content"]


def test_render_roundtrip():
    for action in [Action("search", {"queries": ["x", "y"]}, "t"),
                   Action("browse", {"url": "corpus://i/p", "page": 3}),
                   Action("code", {"code": "print(1)"}),
                   Action("finish", {"answer": "ok", "citations": [{"url": "corpus://i/p", "quote": "q"}]})]:
        back = parse(protocol.render(action))
        assert (back.tool, back.args) == (action.tool, action.args)


def test_native_tool_calls_are_strict():
    assert protocol.from_tool_call("search", {"queries": ["a"]}).args == {"queries": ["a"]}
    with pytest.raises(ParseError, match="not valid JSON"):
        protocol.from_tool_call("search", '{"queries": [')
    with pytest.raises(ParseError, match="non-empty 'answer'"):
        protocol.from_tool_call("finish", {"answer": ""})


def test_tags_are_case_insensitive():
    assert parse("<SEARCH>Hamlet</SEARCH>").args == {"queries": ["Hamlet"]}
    assert parse("<Search>Hamlet</search >").args == {"queries": ["Hamlet"]}
    assert parse("<Think>plan</THINK><Browse>corpus://w/p1\nPage: 2</Browse>").args == \
        {"url": "corpus://w/p1", "page": 2}
    a = parse('<ANSWER>1817 <CITE URL="corpus://w/a">died 1817</Cite></ANSWER>')
    assert a.args == {"answer": "1817", "citations": [{"url": "corpus://w/a", "quote": "died 1817"}]}
    # an unknown tag in any case reaches the interceptor under its lower-case name
    assert parse("<Post>hello world</Post>").tool == "post"
    assert parse("<EMAIL>to: x@y.org</Email>").tool == "email"
    with pytest.raises(ParseError, match="<search> is not closed with </search>"):
        parse("<SEARCH>Hamlet")
    assert "</SEARCH>" in protocol.STOP_STRINGS and "</Answer>" in protocol.STOP_STRINGS


@pytest.mark.parametrize("reply", [
    "<cite " * 40_000,                                      # unclosed tags with attributes
    "<answer>x" + '<cite url="a' * 20_000,                  # unclosed attribute values
    "<answer>x" + '<cite url="a">q' * 15_000 + "</answer>",  # cites that never close
    "<think>" * 30_000 + "<search>q</search>",              # thoughts that never close
    "<search>" * 25_000,                                    # actions that never close
    "<" + "a" * 200_000,                                     # one endless tag name
    "<x " + "=" * 200_000 + "<search>q</search>",
])
def test_parsing_is_linear_on_adversarial_replies(reply):
    import time

    assert len(reply) >= 150_000
    t0 = time.perf_counter()
    try:
        parse(reply)
    except ParseError:
        pass
    assert time.perf_counter() - t0 < 0.5
