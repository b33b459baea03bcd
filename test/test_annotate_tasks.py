"""The tasks file: the schema's one-line errors naming the bad key, and the typed readings of answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from mobile_o_ros.annotate import tasks as T

pytestmark = pytest.mark.runtime

GOOD = """\
caption: true
questions:
  - id: path_blocked
    question: is the path blocked?
    type: bool
  - id: crate_colour
    question: what colour is the crate?
    type: enum
    options: [red, green, blue]
  - id: people
    question: how many people are there?
    type: number
    max_new_tokens: 4
  - id: notes
    question: what is on the left?
edits:
  - id: night
    instruction: make it night
    every_n: 10
"""


def test_a_good_file(tmp_path: Path) -> None:
    path = tmp_path / "tasks.yaml"
    path.write_text(GOOD)
    tasks = T.load_tasks(path)
    assert tasks.ids == ("caption", "path_blocked", "crate_colour", "people", "notes", "night")
    assert tasks.questions[0] == T.Question("caption", T.DEFAULT_CAPTION_PROMPT, "text", (), 48)
    assert tasks.questions[2].options == ("red", "green", "blue")
    assert tasks.questions[3].max_new_tokens == 4 and tasks.questions[4].type == "text"
    assert tasks.edits == (T.Edit("night", "make it night", 10, None, 0),)
    assert len(tasks.sha256) == 64 and tasks.kind("night") == "edit" and tasks.kind("people") == "number"
    custom = T.parse_tasks({"caption": "what is in front of the robot?"})
    assert custom.questions == (T.Question("caption", "what is in front of the robot?", "text", (), 48),)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("questions: [", "t.yaml: not valid YAML: .* at line 1"),
        ("", "t.yaml: empty tasks file"),
        ("- a\n- b\n", r"t.yaml: must be a mapping with keys caption, questions"),
        ("captions: true\n", r"t.yaml: unknown key 'captions' \(expected: caption, questions, edits"),
        ("caption: false\n", "t.yaml: no tasks: give caption, questions or edits"),
        ("caption: ''\n", r"t.yaml: caption: must be a non-empty string, got ''"),
        ("questions: {id: a}\n", "t.yaml: questions: must be a list"),
        ("questions:\n  - question: what is it\n", r"t.yaml: questions\[0\]: missing key 'id'"),
        ("questions:\n  - id: a\n", r"t.yaml: questions\[0\]: missing key 'question'"),
        (
            "questions:\n  - {id: a, question: what is it, typ: bool}\n",
            r"t.yaml: questions\[0\]: unknown key 'typ' \(expected: id, question, type, options, "
            r"max_new_tokens\)",
        ),
        (
            "questions:\n  - {id: a, question: what is it, type: boolean}\n",
            r"t.yaml: questions\[0\].type: must be one of bool, enum, number, text, got 'boolean'",
        ),
        (
            "questions:\n  - {id: a, question: what is it, type: enum}\n",
            r"t.yaml: questions\[0\].options: an enum question needs a non-empty list, got None",
        ),
        (
            "questions:\n  - {id: a, question: what is it, type: enum, options: [red, Red]}\n",
            r"t.yaml: questions\[0\].options: repeats an option",
        ),
        (
            "questions:\n  - {id: a, question: what is it, type: bool, options: [x]}\n",
            r"t.yaml: questions\[0\].options: only enum questions take options \(type is bool\)",
        ),
        (
            "questions:\n  - {id: a, question: what is it}\n  - {id: a, question: and this}\n",
            r"t.yaml: questions\[1\].id: 'a' is used twice",
        ),
        (
            "caption: true\nquestions:\n  - {id: caption, question: what is it}\n",
            r"questions\[0\].id: 'caption' is used",
        ),
        (
            "questions:\n  - {id: 1st, question: what is it}\n",
            r"questions\[0\].id: must be a name of letters",
        ),
        (
            "questions:\n  - {id: a, question: what is it, max_new_tokens: 0}\n",
            r"max_new_tokens: must be in \[1, 512\]",
        ),
        ("questions:\n  - {id: a, question: '  '}\n", r"questions\[0\].question: must be a non-empty string"),
        ("edits:\n  - {id: e, instruction: x, every_n: 0}\n", r"t.yaml: edits\[0\].every_n: must be in"),
        ("edits:\n  - {id: e, instruction: x, every_n: two}\n", r"edits\[0\].every_n: must be an integer"),
        ("edits:\n  - {id: e}\n", r"t.yaml: edits\[0\]: missing key 'instruction'"),
        ("seed: -1\ncaption: true\n", r"t.yaml: seed: must be in \[0, "),
    ],
)
def test_bad_files_get_one_line_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(text)
    with pytest.raises(T.TasksError, match=message) as info:
        T.load_tasks(path)
    assert "\n" not in str(info.value)


def test_missing_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(T.TasksError, match=r"tasks file not found: .*nope\.yaml"):
        T.load_tasks(tmp_path / "nope.yaml")
    with pytest.raises(T.TasksError, match="not a file"):
        T.load_tasks(tmp_path)
    (tmp_path / "b.yaml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(T.TasksError, match=r"b\.yaml: not UTF-8 text"):
        T.load_tasks(tmp_path / "b.yaml")


@pytest.mark.parametrize(
    ("answer", "value"),
    [
        ("yes", True),
        ("Yes.", True),
        ("no", False),
        ("No, it is clear", False),
        ("true", True),
        ("maybe", None),
        ("", None),
        ("nothing", None),
    ],
)
def test_bool_readings(answer: str, value: bool | None) -> None:
    assert T.read_value(T.Question("q", "q?", "bool"), answer) is value


@pytest.mark.parametrize(
    ("answer", "value"),
    [
        ("red", "red"),
        ("Red.", "red"),
        ("it is blue", "blue"),
        ("light green", "green"),
        ("purple", None),
        ("red and blue", None),
        ("", None),
        ("reddish", None),
    ],
)
def test_enum_readings(answer: str, value: str | None) -> None:
    question = T.Question("q", "q?", "enum", ("red", "green", "blue"))
    assert T.read_value(question, answer) == value


def test_enum_options_of_several_words_and_numbers() -> None:
    question = T.parse_tasks(
        {
            "questions": [
                {"id": "q", "question": "q?", "type": "enum", "options": ["traffic cone", "pallet", 3]}
            ]
        }
    ).questions[0]
    assert question.options == ("traffic cone", "pallet", "3")
    assert T.read_value(question, "a traffic cone") == "traffic cone"
    assert T.read_value(question, "3") == "3"


@pytest.mark.parametrize(
    ("answer", "value"),
    [
        ("3", 3),
        ("three", 3),
        ("there are 12 people", 12),
        ("twenty-one", 21),
        ("ninety", 90),
        ("2.5 m", 2.5),
        ("none", 0),
        ("zero", 0),
        ("many", None),
        ("", None),
        ("-4", -4),
    ],
)
def test_number_readings(answer: str, value: float | None) -> None:
    got = T.read_value(T.Question("q", "q?", "number"), answer)
    assert got == value and type(got) is type(value)


def test_text_readings_and_value_strings() -> None:
    assert T.read_value(T.Question("q", "q?"), "  a red crate ") == "a red crate"
    assert T.read_value(T.Question("q", "q?"), " ") is None
    assert [T.value_text(v) for v in (True, False, None, "red", 3, 2.5)] == [
        "true",
        "false",
        "",
        "red",
        "3",
        "2.5",
    ]
