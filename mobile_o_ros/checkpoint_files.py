"""A checkpoint folder's files and their digest, without torch (the runtime tier reads caches keyed by it)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded as given; the message names the offending files or keys."""


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder (single file or the shards of an index)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {path}")
    if (path / SINGLE_FILE).is_file():
        return [path / SINGLE_FILE]
    index = path / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as err:
            raise CheckpointError(f"corrupt {INDEX_FILE} in {path}: {err}") from err
        files = sorted({path / f for f in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"shards listed in {INDEX_FILE} are missing: {', '.join(missing)}")
        return files
    raise CheckpointError(f"no {SINGLE_FILE} or {INDEX_FILE} in {path}")


def checkpoint_sha256(path: Path) -> str:
    """sha256 over the weight files and config.json, in name order."""
    h = hashlib.sha256()
    for f in [Path(path) / "config.json", *weight_files(path)]:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
