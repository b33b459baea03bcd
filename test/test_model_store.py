"""The model store: model arguments by name or path, one cached export per checkpoint digest, pipelines."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mobile_o_ros import model_store
from mobile_o_ros.checkpoint_files import checkpoint_sha256
from mobile_o_ros.model_config import Defaults

pytestmark = pytest.mark.runtime


def _as_cached_export_of(export: Path, checkpoint: Path, cache: Path) -> Path:
    """Copy ``export`` to where the store keeps ``checkpoint``'s export, recorded as made from it."""
    sha = checkpoint_sha256(checkpoint)
    cached = cache / "exports" / sha[: model_store.KEY_LENGTH]
    shutil.copytree(export, cached)
    manifest = json.loads((cached / "manifest.json").read_text())
    manifest["source_checkpoint"] = {"path": str(checkpoint), "sha256": sha}
    (cached / "manifest.json").write_text(json.dumps(manifest))
    return cached


def test_model_arguments_by_name_and_path(tiny_export: Path, tmp_path: Path) -> None:
    model = model_store.resolve(tiny_export)
    assert (model.kind, model.path, model.is_export) == ("export", tiny_export, True)
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    assert model_store.resolve(str(checkpoint)).kind == "checkpoint"
    with pytest.raises(model_store.ModelError, match=r"model not found: .*embedded, tiny-random"):
        model_store.resolve(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(model_store.ModelError, match="neither a checkpoint"):
        model_store.resolve(tmp_path / "empty")
    with pytest.raises(model_store.ModelError, match="must be a checkpoint or export folder"):
        model_store.resolve(checkpoint / "config.json")
    if model_store.embedded_is_trained():
        embedded = model_store.resolve(None)
        assert embedded == model_store.resolve("embedded") and embedded.kind == "checkpoint"
        assert embedded.path == model_store.embedded_model_dir()


def test_the_cache_folder_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOBILE_O_CACHE", str(tmp_path))
    assert model_store.cache_dir() == tmp_path
    monkeypatch.delenv("MOBILE_O_CACHE")
    assert model_store.cache_dir() == Path.home() / ".cache" / "mobile_o_ros"


def test_a_cached_export_is_found_without_torch(
    tiny_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A robot without torch runs a checkpoint from the export a workstation cached under its digest."""
    checkpoint = model_store.embedded_model_dir()
    if not model_store.embedded_is_trained():
        checkpoint = tmp_path / "ckpt"
        checkpoint.mkdir()
        (checkpoint / "config.json").write_text("{}")
        (checkpoint / "model.safetensors").write_bytes(b"weights")
    monkeypatch.setenv("MOBILE_O_CACHE", str(tmp_path / "cache"))
    cached = _as_cached_export_of(tiny_export, checkpoint, tmp_path / "cache")
    assert model_store.cached_export_dir(checkpoint) == cached
    assert model_store.export_of(checkpoint) == cached
    pipeline = model_store.load_pipeline(checkpoint, "onnxruntime")
    assert pipeline.name == "onnxruntime" and pipeline.export_dir == cached


def test_pipelines_open_by_backend(tiny_export: Path) -> None:
    pipeline = model_store.load_pipeline(tiny_export)  # auto: onnxruntime for an export folder
    assert pipeline.name == "onnxruntime"
    assert pipeline.defaults == Defaults(max_new_tokens=16)  # the tiny config's, through the manifest
    with pytest.raises(model_store.ModelError, match="is an export folder"):
        model_store.load_pipeline(tiny_export, "torch")
    with pytest.raises(model_store.ModelError, match="unknown backend 'cuda'"):
        model_store.load_pipeline(tiny_export, "cuda")


@pytest.mark.slow
@pytest.mark.torch
def test_a_checkpoint_is_exported_once_under_its_digest(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOBILE_O_CACHE", str(tmp_path))
    out = model_store.export_of(tiny_checkpoint)
    assert out == tmp_path / "exports" / checkpoint_sha256(tiny_checkpoint)[:16]
    made = (out / "manifest.json").stat().st_mtime_ns
    said: list[str] = []
    pipeline = model_store.load_pipeline(tiny_checkpoint, "onnxruntime", progress=said.append)
    assert pipeline.export_dir == out and said == []  # the same export, not made again
    assert (out / "manifest.json").stat().st_mtime_ns == made
    assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == [out.name]
