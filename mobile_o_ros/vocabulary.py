"""The words a model saw in training, and the words of a prompt it never saw (torch-free).

A model folder (checkpoint or export) may ship ``vocabulary.json``: the words of its training language, a
one-line summary of what it knows, and example phrasings. :func:`load` reads it from either kind of folder;
:meth:`Vocabulary.unknown` lists the words of a prompt, question or instruction outside it, so the CLI and the
node can say so instead of silently answering out of distribution. A folder without the file has no
vocabulary and nothing is ever reported unknown.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FILE_NAME = "vocabulary.json"
FORMAT = "mobile_o_ros.vocabulary"
_WORD = re.compile(r"[^\W_]+")


def words_of(text: str) -> list[str]:
    """The lower-case words of ``text`` (runs of letters and digits), in order."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class Vocabulary:
    """A model's known words, a short summary of what it knows, and example phrasings."""

    words: frozenset[str]
    summary: str = ""
    examples: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Vocabulary:
        """From the parsed ``vocabulary.json``; ``ValueError`` when it is not one."""
        if data.get("format") != FORMAT or not isinstance(data.get("words"), list):
            raise ValueError(f"not a {FORMAT} file (needs format {FORMAT!r} and a list of words)")
        return cls(
            frozenset(str(w).lower() for w in data["words"]),
            str(data.get("summary", "")),
            {str(k): str(v) for k, v in data.get("examples", {}).items()},
        )

    def unknown(self, text: str) -> list[str]:
        """The words of ``text`` the model never saw, each once, in the order they appear."""
        return list(dict.fromkeys(w for w in words_of(text) if w not in self.words))

    def warning(self, unknown: list[str]) -> str:
        """``"the model never saw: dog, beach; it knows: ..."`` (one line)."""
        knows = f"; it knows: {self.summary}" if self.summary else ""
        return f"the model never saw: {', '.join(unknown)}{knows}"


def load(folder: str | Path) -> Vocabulary | None:
    """The vocabulary of a checkpoint or export folder, or None when it ships none (or an unreadable one)."""
    path = Path(folder) / FILE_NAME
    if not path.is_file():
        return None
    try:
        return Vocabulary.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def unknown_words(folder: str | Path, text: str) -> list[str]:
    """The words of ``text`` outside the vocabulary of ``folder`` ([] when it ships none)."""
    vocab = load(folder)
    return [] if vocab is None else vocab.unknown(text)


def add_to_export(checkpoint: str | Path, export_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Copy the checkpoint's ``vocabulary.json`` into an export and record it in ``manifest`` (as
    ``manifest["vocabulary"]`` and among its hashed ``files``); nothing when the checkpoint has none."""
    src = Path(checkpoint) / FILE_NAME
    if not src.is_file():
        return
    dst = Path(export_dir) / FILE_NAME
    shutil.copyfile(src, dst)
    manifest["vocabulary"] = FILE_NAME
    manifest.setdefault("files", {})[FILE_NAME] = hashlib.sha256(dst.read_bytes()).hexdigest()
