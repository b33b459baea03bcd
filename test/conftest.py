"""Shared fixtures: one tiny checkpoint and its ONNX export per test session (built, not downloaded).

Test lanes (``MOBILE_O_TEST_LANE``):

- unset: the main suite (`make test`): everything, torch and ROS 2 Kilted included.
- ``runtime`` (`make test-py310`): the tests marked ``runtime``, less those marked ``ros`` or ``torch``.
- ``ros`` (`make test-jazzy`): the tests marked ``runtime`` or ``ros``, less those marked ``torch``.

`make test-fast` runs the main suite's unit tests: ``not ros and not gpu and not slow`` (no ROS 2 node or
DDS server, no GPU, no training, self-test or worker processes).

A module that needs neither torch nor ROS carries ``pytestmark = pytest.mark.runtime``; one that needs
ROS (rclpy, messages) but no torch carries ``pytest.mark.ros``; a test in such a module that compares
with torch / transformers / diffusers carries ``pytest.mark.torch`` (and imports them inside the test).
In a lane, a test module is collected only when its source names one of the lane's marks (on its
``pytestmark`` or on a test); the others import torch at module level and are not opened. torch,
transformers and diffusers cannot be imported in a lane: an import raises, and any attempt (a skipped
``importorskip`` included) fails the run at its end. The tiny export comes from ``MOBILE_O_TINY_EXPORT``
(``scripts/tiny_export.py``, built by the main venv).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import re
import shutil
import sys
import traceback
from pathlib import Path

import pytest

LANE = os.environ.get("MOBILE_O_TEST_LANE", "")
#: Per lane: the marks whose modules it opens, and the mark expression it runs.
LANE_MARKS = {"runtime": ("runtime",), "ros": ("runtime", "ros")}
LANE_SELECT = {"runtime": "runtime and not ros and not torch", "ros": "(runtime or ros) and not torch"}
#: What no lane may import.
HEAVY = ("torch", "transformers", "diffusers")


class _HeavyImportBlocker(importlib.abc.MetaPathFinder):
    """Refuses torch/transformers/diffusers in a lane and remembers who asked."""

    def __init__(self) -> None:
        self.attempts: list[str] = []

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname.split(".", 1)[0] not in HEAVY:
            return None
        skip = ("importlib", f"{os.sep}_pytest{os.sep}", f"{os.sep}pluggy{os.sep}")
        frames = [f for f in traceback.extract_stack()[:-1] if not any(s in f.filename for s in skip)]
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
        self.attempts.append(f"{fullname} (from {where})")
        raise ModuleNotFoundError(f"{fullname} must not be imported in the {LANE!r} test lane", name=fullname)


_BLOCKER = _HeavyImportBlocker()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs TensorRT and a CUDA GPU (make test-gpu)")
    config.addinivalue_line(
        "markers", "torch: compares with torch, transformers or diffusers (main suite only)"
    )
    config.addinivalue_line(
        "markers", "ros: needs rclpy or ROS 2 messages, no torch (make test-jazzy runs it)"
    )
    config.addinivalue_line(
        "markers",
        "runtime: needs neither torch nor ROS 2 (make test-py310 runs it on Python 3.10, numpy 1.x)",
    )
    config.addinivalue_line(
        "markers",
        "slow: trains, runs the self-test, exports or builds more than the shared tiny export, or starts "
        "worker processes (make test-fast leaves it out)",
    )
    if not LANE:
        return
    if LANE not in LANE_MARKS:
        raise pytest.UsageError(f"MOBILE_O_TEST_LANE={LANE!r}: expected one of {', '.join(LANE_MARKS)}")
    loaded = sorted(m for m in HEAVY if m in sys.modules)
    if loaded:
        raise pytest.UsageError(f"{', '.join(loaded)} imported before the {LANE!r} lane started")
    sys.meta_path.insert(0, _BLOCKER)
    if not config.option.markexpr:
        config.option.markexpr = LANE_SELECT[LANE]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Outside the lanes, tests marked torch are skipped with the reason when torch is not installed."""
    if LANE or importlib.util.find_spec("torch") is not None:
        return
    skip = pytest.mark.skip(reason="torch is not installed (requirements/export.txt)")
    for item in items:
        if item.get_closest_marker("torch"):
            item.add_marker(skip)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """In a lane, skip test modules that name none of the lane's marks (they import torch)."""
    if not LANE or collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    marks = "|".join(LANE_MARKS.get(LANE, ()))
    text = collection_path.read_text(encoding="utf-8")
    return None if re.search(rf"\bmark\.(?:{marks})\b", text) else True


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A lane fails when anything tried to import torch, transformers or diffusers."""
    if LANE and _BLOCKER.attempts:
        writer = session.config.get_terminal_writer()
        writer.line()
        writer.line(
            f"error: the {LANE!r} lane must not import {'/'.join(HEAVY)}; attempts:\n  "
            + "\n  ".join(dict.fromkeys(_BLOCKER.attempts)),
            red=True,
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item):
    """A failed test that used a ``server`` (a ServerProcess) gets the server log's tail in its report."""
    report = yield
    server = getattr(item, "funcargs", {}).get("server")
    if report.failed and hasattr(server, "log"):
        report.sections.append(("server log (last 6000 characters)", server.log()[-6000:]))
    return report


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Mobile-O checkpoint folder in the released key layout (seed 0)."""
    pytest.importorskip("torch")
    from mobile_o_ros.reference.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_ckpt"), seed=0)


@pytest.fixture(scope="session")
def tiny_loaded(tiny_checkpoint: Path):
    """The tiny checkpoint loaded into the reference model (fp32)."""
    from mobile_o_ros.reference.checkpoint import load_checkpoint

    return load_checkpoint(tiny_checkpoint)


@pytest.fixture(scope="session")
def tiny_export(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint exported to ONNX (LM head split in two to exercise the chunked path).

    With ``MOBILE_O_TINY_EXPORT`` set (the lanes without torch), a copy of that prebuilt export.
    """
    out = tmp_path_factory.mktemp("tiny_export")
    cached = os.environ.get("MOBILE_O_TINY_EXPORT")
    if cached:
        if not (Path(cached) / "manifest.json").is_file():
            pytest.fail(f"MOBILE_O_TINY_EXPORT={cached} holds no export (make tiny-export)")
        shutil.copytree(cached, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".stamp"))
        return out
    if LANE:
        pytest.fail(f"the {LANE!r} lane has no torch to build the tiny export: set MOBILE_O_TINY_EXPORT")
    from mobile_o_ros.export.onnx_export import export_model

    # The same recipe as scripts/tiny_export.py.
    export_model(request.getfixturevalue("tiny_loaded"), out, lm_head_chunks=2)
    return out


@pytest.fixture(scope="session")
def tiny_int8_export(tiny_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny export with every graph forced to its QDQ int8 candidate.

    With ``MOBILE_O_TINY_EXPORT`` set (the lanes without torch), a copy of the prebuilt one beside it.
    """
    from int8_support import GRAPHS, quantized_copy

    out = tmp_path_factory.mktemp("int8") / "qdq"
    cached = os.environ.get("MOBILE_O_TINY_EXPORT")
    if cached:
        prebuilt = Path(cached).with_name(Path(cached).name + "-int8")
        if not (prebuilt / "manifest.json").is_file():
            pytest.fail(f"{prebuilt} holds no int8 export (make tiny-export)")
        shutil.copytree(prebuilt, out)
        return out
    quantized_copy(tiny_export, out, force=list(GRAPHS), modes=("int8-qdq",))
    return out


@pytest.fixture(scope="session")
def vocab_export(tiny_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny export (links to its files) that ships the shapes world's vocabulary."""
    from mobile_o_ros.shapes.vocabulary import write_vocabulary

    out = tmp_path_factory.mktemp("vocab_export")
    for f in tiny_export.iterdir():
        (out / f.name).symlink_to(f)
    write_vocabulary(out)
    return out


@pytest.fixture(scope="session")
def tiny_runtime(tiny_export: Path):
    """The onnxruntime CPU runtime over the tiny export."""
    from mobile_o_ros.runtime.engine import MobileORuntime

    return MobileORuntime.load(tiny_export, backend="onnxruntime")


@pytest.fixture
def repo_root() -> Path:
    """The repository root."""
    return Path(__file__).resolve().parents[1]


os.environ.setdefault("PYTHONHASHSEED", "0")
