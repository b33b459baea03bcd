"""The tasks file: what to ask about every frame, validated with one-line errors, and typed readings.

```yaml
caption: true                 # or a prompt string; false or absent: no caption
questions:
  - id: path_blocked
    question: is the path blocked?
    type: bool                # bool | enum | number | text (default text)
  - id: crate_colour
    question: what colour is the crate?
    type: enum
    options: [red, green, blue]
edits:                        # optional: edited copies of every n-th annotated frame
  - id: night
    instruction: make it night
    every_n: 10
seed: 0                       # optional; decoding is greedy, so answers repeat run after run
max_new_tokens: 16            # optional; per question too
```

Every error names the file and the key (``tasks.yaml: questions[1].type: must be one of bool, enum,
number, text, got 'boolean'``). :func:`read_value` turns an answer into its typed value: a bool, one of
the options, a number (digits or number words), the text, or None when the answer does not say.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

TYPES = ("bool", "enum", "number", "text")
#: The prompt of ``caption: true``.
DEFAULT_CAPTION_PROMPT = "describe the image."
#: The task id of the caption.
CAPTION_ID = "caption"
DEFAULT_MAX_NEW_TOKENS = 16
CAPTION_MAX_NEW_TOKENS = 48
_ID = re.compile(r"[A-Za-z][A-Za-z0-9_\-]{0,63}")
_TOP_KEYS = ("caption", "questions", "edits", "seed", "max_new_tokens")
_QUESTION_KEYS = ("id", "question", "type", "options", "max_new_tokens")
_EDIT_KEYS = ("id", "instruction", "every_n", "steps", "seed")


class TasksError(ValueError):
    """A tasks file that cannot be used; one line naming the file and the key."""


@dataclass(frozen=True)
class Question:
    """One question asked about every frame (the caption is a text question with id ``caption``)."""

    id: str
    question: str
    type: str = "text"
    options: tuple[str, ...] = ()
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS


@dataclass(frozen=True)
class Edit:
    """An edit of every ``every_n``-th annotated frame of each camera."""

    id: str
    instruction: str
    every_n: int = 1
    steps: int | None = None
    seed: int = 0


@dataclass(frozen=True)
class Tasks:
    """A validated tasks file."""

    questions: tuple[Question, ...]
    edits: tuple[Edit, ...] = ()
    seed: int = 0
    #: sha256 of the file's bytes.
    sha256: str = ""
    source: str = ""

    @property
    def ids(self) -> tuple[str, ...]:
        """Every task id in order: questions (caption first), then edits."""
        return tuple(q.id for q in self.questions) + tuple(e.id for e in self.edits)

    def kind(self, task_id: str) -> str:
        """The value type of a task (``edit`` for an edit)."""
        for q in self.questions:
            if q.id == task_id:
                return q.type
        return "edit"


def _int(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TasksError(f"{where}: must be an integer, got {value!r}")
    if not low <= value <= high:
        raise TasksError(f"{where}: must be in [{low}, {high}], got {value}")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise TasksError(f"{where}: must be a non-empty string, got {value!r}")
    return " ".join(value.split())


def _mapping(value: Any, where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TasksError(f"{where}: must be a mapping with keys {', '.join(allowed)}, got {value!r}")
    for key in value:
        if key not in allowed:
            raise TasksError(f"{where}: unknown key {key!r} (expected: {', '.join(allowed)})")
    return value


def _id(value: Any, where: str, seen: set[str]) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise TasksError(
            f"{where}: must be a name of letters, digits, '_' or '-' starting with a letter, got {value!r}"
        )
    if value in seen:
        raise TasksError(f"{where}: {value!r} is used twice (ids name the CSV columns and must differ)")
    seen.add(value)
    return value


def parse_tasks(data: Any, source: str = "tasks", sha256: str = "") -> Tasks:
    """Validate a loaded tasks document; raises :class:`TasksError` naming ``source`` and the key."""
    top = _mapping(data, source, _TOP_KEYS)
    seed = _int(top.get("seed", 0), f"{source}: seed", 0, 2**31 - 1)
    default_tokens = _int(
        top.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS), f"{source}: max_new_tokens", 1, 512
    )
    seen: set[str] = set()
    questions: list[Question] = []
    caption = top.get("caption", False)
    if caption is True:
        caption = DEFAULT_CAPTION_PROMPT
    if caption is not False and caption is not None:
        seen.add(CAPTION_ID)
        questions.append(
            Question(CAPTION_ID, _text(caption, f"{source}: caption"), "text", (), CAPTION_MAX_NEW_TOKENS)
        )
    raw_questions = top.get("questions") or []
    if not isinstance(raw_questions, list):
        raise TasksError(f"{source}: questions: must be a list, got {raw_questions!r}")
    for i, item in enumerate(raw_questions):
        where = f"{source}: questions[{i}]"
        q = _mapping(item, where, _QUESTION_KEYS)
        for key in ("id", "question"):
            if key not in q:
                raise TasksError(f"{where}: missing key {key!r}")
        qid = _id(q["id"], f"{where}.id", seen)
        kind = q.get("type", "text")
        if kind not in TYPES:
            raise TasksError(f"{where}.type: must be one of {', '.join(TYPES)}, got {kind!r}")
        options: tuple[str, ...] = ()
        if kind == "enum":
            raw = q.get("options")
            if not isinstance(raw, list) or not raw:
                raise TasksError(f"{where}.options: an enum question needs a non-empty list, got {raw!r}")
            options = tuple(
                _text(str(o) if isinstance(o, (int, float)) else o, f"{where}.options") for o in raw
            )
            if len({o.lower() for o in options}) != len(options):
                raise TasksError(f"{where}.options: repeats an option ({', '.join(options)})")
        elif "options" in q:
            raise TasksError(f"{where}.options: only enum questions take options (type is {kind})")
        tokens = _int(q.get("max_new_tokens", default_tokens), f"{where}.max_new_tokens", 1, 512)
        questions.append(Question(qid, _text(q["question"], f"{where}.question"), kind, options, tokens))
    raw_edits = top.get("edits") or []
    if not isinstance(raw_edits, list):
        raise TasksError(f"{source}: edits: must be a list, got {raw_edits!r}")
    edits: list[Edit] = []
    for i, item in enumerate(raw_edits):
        where = f"{source}: edits[{i}]"
        e = _mapping(item, where, _EDIT_KEYS)
        for key in ("id", "instruction"):
            if key not in e:
                raise TasksError(f"{where}: missing key {key!r}")
        steps = e.get("steps")
        edits.append(
            Edit(
                _id(e["id"], f"{where}.id", seen),
                _text(e["instruction"], f"{where}.instruction"),
                _int(e.get("every_n", 1), f"{where}.every_n", 1, 10**9),
                None if steps is None else _int(steps, f"{where}.steps", 1, 1000),
                _int(e.get("seed", seed), f"{where}.seed", 0, 2**31 - 1),
            )
        )
    if not questions and not edits:
        raise TasksError(f"{source}: no tasks: give caption, questions or edits")
    return Tasks(tuple(questions), tuple(edits), seed, sha256, source)


def load_tasks(path: str | Path) -> Tasks:
    """Read and validate a tasks file (YAML); raises :class:`TasksError`."""
    path = Path(path)
    if not path.is_file():
        raise TasksError(f"tasks file not found: {path}" if not path.exists() else f"not a file: {path}")
    raw = path.read_bytes()
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise TasksError(f"{path.name}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise TasksError(f"{path.name}: not valid YAML: {problem}{where}") from err
    if data is None:
        raise TasksError(f"{path.name}: empty tasks file")
    return parse_tasks(data, path.name, hashlib.sha256(raw).hexdigest())


# ------------------------------------------------------------------------------------------- readings
_TRUE = {"yes", "true", "y", "yeah", "yep", "correct", "affirmative"}
_FALSE = {"no", "false", "n", "nope", "negative"}
_UNITS = {
    w: i
    for i, w in enumerate(
        [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
        ]
    )
}
_TENS = {
    w: 10 * (i + 2)
    for i, w in enumerate(["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"])
}
_NUMBER = re.compile(r"[-+]?\d+(?:[.,]\d+)?(?:e[-+]?\d+)?")


def _words(answer: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:[.,'][a-z0-9]+)*", answer.lower())


def _bool(answer: str) -> bool | None:
    words = _words(answer)
    if not words:
        return None
    if words[0] in _TRUE:
        return True
    if words[0] in _FALSE:
        return False
    return None


def _enum(answer: str, options: tuple[str, ...]) -> str | None:
    text = " ".join(_words(answer))
    by_text = {" ".join(_words(o)): o for o in options}
    if text in by_text:
        return by_text[text]
    found = [o for key, o in by_text.items() if key and re.search(rf"\b{re.escape(key)}\b", text)]
    return found[0] if len(found) == 1 else None


def _number(answer: str) -> int | float | None:
    match = _NUMBER.search(answer.lower())
    if match:
        value = float(match.group().replace(",", "."))
        if not math.isfinite(value):
            return None
        return int(value) if value.is_integer() and "." not in match.group() else value
    words = _words(answer.replace("-", " "))
    for i, w in enumerate(words):
        if w in _TENS:
            unit = _UNITS.get(words[i + 1], 0) if i + 1 < len(words) and words[i + 1] in _UNITS else 0
            return _TENS[w] + (unit if unit < 10 else 0)
        if w in _UNITS:
            return _UNITS[w]
        if w == "none":
            return 0
    return None


def read_value(question: Question, answer: str) -> bool | str | int | float | None:
    """The typed reading of ``answer``: bool (yes/no and the like), an enum option (the answer itself, or
    the one option it names), a number (the first number, in digits or words), or the text; None when the
    answer does not say."""
    if question.type == "bool":
        return _bool(answer)
    if question.type == "enum":
        return _enum(answer, question.options)
    if question.type == "number":
        return _number(answer)
    text = answer.strip()
    return text if text else None


def value_text(value: Any) -> str:
    """A typed value as the bag's ``value`` string: ``true``/``false``, the option or number, the text; ``""``
    for none."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
