"""The strict JSON reader on its own: what RFC 8259 allows is read, with each value's text where it
was written; anything else is refused with what was wrong and where."""

from __future__ import annotations

import pytest

from logmesh.common.strict_json import MAX_DEPTH, JsonError, Number, members


def test_members_come_in_order_with_the_text_of_each_value() -> None:
    text = ' {"n" : 18446744073709551616,"f":-0.0, "s":"\\ud800\\u0000","o":{"a":1,"a":2},"l":[1E5]}\n'
    found = members(text)
    assert [m.name for m in found] == ["n", "f", "s", "o", "l"]
    assert [text[m.start : m.end] for m in found] == [
        "18446744073709551616",
        "-0.0",
        '"\\ud800\\u0000"',
        '{"a":1,"a":2}',  # a repeated name inside a value is left to the caller
        "[1E5]",
    ]
    assert found[0].value == Number("18446744073709551616") and isinstance(found[0].value, Number)
    assert found[2].value == "\ud800\x00"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"a":[1,2,]}', "trailing comma (not allowed in JSON) at line 1 column 11"),
        ('{"a":1,}', "trailing comma (not allowed in JSON) at line 1 column 8"),
        ('{"a":1 /* c */}', "comment (not allowed in JSON) at line 1 column 8"),
        ('{"a":\n// c\n1}', "comment (not allowed in JSON) at line 2 column 1"),
        ("{'a':1}", "single quotes (JSON strings take double quotes) at line 1 column 2"),
        (
            '{"a":NaN}',
            "NaN is not a JSON value (RFC 8259 has no NaN or Infinity) in the value starting at line 1 column 6",
        ),
        ('{"a":[-Infinity]}', "-Infinity is not a JSON value"),
        ('{"a":1e999}', "number 1e999 is beyond the range of a 64-bit float in the value starting at line 1 column 6"),
        ('{"a":01}', "number with a leading zero (not allowed in JSON) at line 1 column 7"),
        ('{"a":+1}', "expected a value at line 1 column 6"),
        ('{"a":.5}', "expected a value at line 1 column 6"),
        ('{"a":\u0661}', "expected a value at line 1 column 6"),
        ('{"a":"x\ty"}', "invalid control character at line 1 column 8"),
        ('{"a":"\\x41"}', "invalid \\escape at line 1 column 7"),
        ('{"a":"\\u12"}', "invalid \\uXXXX escape at line 1 column 8"),
        ('{"a":"abc', "unterminated string starting at line 1 column 6"),
        ('{"a":[1,2', "the text ends before the JSON value does at line 1 column 10"),
        ('{"a":1}{}', "unexpected text after the JSON value at line 1 column 8"),
        ('\ufeff{"a":1}', "expected an object at line 1 column 1"),
        ('{\x0c"a":1}', "expected a name in double quotes at line 1 column 2"),
        ('{"a":1,"a":2}', "name 'a' appears twice"),
        ("[1]", "expected an object at line 1 column 1"),
        ('{"a":' + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "}", f"nested deeper than {MAX_DEPTH} levels"),
    ],
)
def test_what_rfc_8259_does_not_allow_is_refused_with_what_and_where(text: str, reason: str) -> None:
    with pytest.raises(JsonError) as caught:
        members(text)
    assert reason in caught.value.reason


def test_repeated_names_at_every_level_are_refused_when_asked() -> None:
    assert len(members('{"o":{"a":1,"a":2}}')) == 1
    with pytest.raises(JsonError, match="name 'a' appears twice in one object"):
        members('{"o":{"a":1,"a":2}}', unique_names=True)


def test_nesting_to_the_limit_is_read_and_brackets_in_strings_do_not_count() -> None:
    deepest = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    assert members('{"a":' + deepest + "}")[0].end == 5 + len(deepest)
    assert len(members('{"s":"' + "[" * 1000 + '"}')) == 1
