"""Shared fixtures: one tiny checkpoint and its ONNX export per test session (built, not downloaded)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs TensorRT and a CUDA GPU (make test-gpu)")
    config.addinivalue_line("markers", "ros: starts ROS 2 nodes over DDS on loopback")


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
def tiny_export(tiny_loaded, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint exported to ONNX (LM head split in two to exercise the chunked path)."""
    from mobile_o_ros.export.onnx_export import export_model

    out = tmp_path_factory.mktemp("tiny_export")
    export_model(tiny_loaded, out, lm_head_chunks=2)
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
