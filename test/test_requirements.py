"""The requirement files and setup.py's ranges: every line pinned, and every lane's pins inside the ranges."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

pytestmark = pytest.mark.runtime

REPO = Path(__file__).resolve().parents[1]
REQS = REPO / "requirements"
#: Files whose pins must fall inside setup.py's install_requires ranges (the tiers a robot runs).
RUNTIME_PINS = ("runtime", "py310", "jetson")
#: install_requires names that a file may install under another distribution name.
ALIASES = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu")}


def _setup_call() -> dict[str, ast.expr]:
    """The keyword arguments of setup() in setup.py, unevaluated."""
    tree = ast.parse((REPO / "setup.py").read_text())
    call = next(
        n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "setup"
    )
    return {k.arg: k.value for k in call.keywords if k.arg}


def _pins(name: str) -> dict[str, str]:
    """``{distribution: version}`` of a requirements file (its ``-r`` includes not followed)."""
    out = {}
    for line in (REQS / f"{name}.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            dist, _, version = line.partition("==")
            out[dist.lower()] = version
    return out


def test_every_requirement_line_is_an_exact_pin() -> None:
    files = sorted(REQS.glob("*.txt"))
    assert {p.stem for p in files} >= {
        "runtime",
        "export",
        "dev",
        "ros",
        "ros-jazzy",
        "bootstrap",
        *RUNTIME_PINS,
    }
    for path in files:
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if not line or line.startswith(("-r ", "--extra-index-url ")):
                continue
            pinned = re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[A-Za-z0-9_.+\-]+", line)
            assert pinned, f"{path.name}: unpinned {line!r}"


@pytest.mark.parametrize("name", RUNTIME_PINS)
def test_runtime_pins_lie_in_the_declared_ranges(name: str) -> None:
    """Each robot-side file installs versions that setup.py's install_requires admit."""
    pins = _pins(name)
    requirements = [Requirement(r) for r in ast.literal_eval(_setup_call()["install_requires"])]
    for req in requirements:
        dists = ALIASES.get(req.name.lower(), (req.name.lower(),))
        found = [(d, pins[d]) for d in dists if d in pins]
        assert found, f"{name}.txt does not pin {req.name}"
        for dist, version in found:
            assert req.specifier.contains(version, prereleases=True), (
                f"{name}.txt: {dist}=={version} vs {req}"
            )


def test_python_requires_admits_the_tested_pythons() -> None:
    spec = SpecifierSet(ast.literal_eval(_setup_call()["python_requires"]))
    for version in ("3.10", "3.11", "3.12"):
        assert spec.contains(version), version
