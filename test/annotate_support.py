"""Shared by the annotation tests: the embedded model's export, without ever importing torch in a lane."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mobile_o_ros import model_store


def embedded_export() -> Path:
    """The embedded shapes model's ONNX export (made once by the model store), or a skip with the reason.

    In a test lane without torch only an export already in the store's cache is used: making one would
    import torch."""
    if not model_store.embedded_is_trained():
        pytest.skip("the embedded model is not trained in this tree")
    cached = model_store.cached_export_dir(model_store.embedded_model_dir())
    if os.environ.get("MOBILE_O_TEST_LANE") and not (cached / "manifest.json").is_file():
        pytest.skip(f"no cached export of the embedded model at {cached} (the main venv makes it)")
    try:
        return model_store.export_of(None)
    except model_store.ModelError as err:
        pytest.skip(f"the embedded model's export is not available here: {err}")
