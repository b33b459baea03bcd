"""Every package path the README names exists (the architecture section draws the real layout)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.runtime

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "mobile_o_ros"


def _named_paths(text: str) -> set[str]:
    """`x.py` and `dir/` cells of the architecture section and ``mobile_o_ros/...`` paths anywhere."""
    arch = text[text.index("## Architecture") : text.index("## Exactness to the reference")]
    names = set(re.findall(r"`([a-z_]+(?:/[a-z_]+)*(?:\.py|/))`", arch))
    names |= set(re.findall(r"`mobile_o_ros/([a-z_/]+\.(?:py|json|md))`", text))
    return names


def test_every_path_the_readme_names_exists() -> None:
    names = _named_paths((REPO / "README.md").read_text())
    assert len(names) > 30
    files = {f.relative_to(PACKAGE).as_posix() for f in PACKAGE.rglob("*") if "__pycache__" not in f.parts}
    # a name in the architecture table is relative to its row's folder (`engine.py` in the runtime row)
    missing = sorted(
        n for n in names if not any(f == n.rstrip("/") or f.endswith("/" + n.rstrip("/")) for f in files)
    )
    assert not missing, f"README names files that do not exist under mobile_o_ros/: {missing}"
