"""Reading and checking an export folder's ``manifest.json``.

A torch-free leaf module: the runtime, the engine builder and the CLI all read exports through it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

SUPPORTED_VERSIONS = (2,)
REQUIRED_GRAPHS = ("vision", "llm", "mcp", "dit", "vae_decoder")


class ManifestError(RuntimeError):
    """An export folder that cannot be used; the message says what is wrong and how to fix it."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(export_dir: str | Path, verify_hashes: bool = False) -> dict[str, Any]:
    """Load ``manifest.json``; check version, graphs and files (and their sha256 when asked)."""
    export_dir = Path(export_dir)
    path = export_dir / "manifest.json"
    if not path.is_file():
        raise ManifestError(f"no manifest.json in {export_dir}: export a checkpoint with `mobile-o export`")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as err:
        raise ManifestError(f"corrupt manifest.json in {export_dir}: {err}") from err
    if manifest.get("version") not in SUPPORTED_VERSIONS:
        raise ManifestError(
            f"manifest version {manifest.get('version')} in {export_dir} is not supported (supported: "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))}); re-export the checkpoint with `mobile-o export`"
        )
    missing_graphs = [g for g in REQUIRED_GRAPHS if g not in manifest.get("graphs", {})]
    if missing_graphs:
        raise ManifestError(f"export in {export_dir} lacks graphs: {', '.join(missing_graphs)}; re-export it")
    missing = [f for f in manifest.get("files", {}) if not (export_dir / f).is_file()]
    if missing:
        raise ManifestError(f"export in {export_dir} is missing files: {', '.join(missing)}")
    if verify_hashes:
        bad = [f for f, digest in manifest["files"].items() if _sha256(export_dir / f) != digest]
        if bad:
            raise ManifestError(f"files changed since export (sha256 mismatch): {', '.join(bad)}")
    return manifest


def is_current(export_dir: str | Path) -> bool:
    """Whether ``export_dir`` holds a complete export this runtime reads (for caches of exports)."""
    try:
        load_manifest(export_dir)
    except ManifestError:
        return False
    return True


def int8_graphs(manifest: dict[str, Any]) -> list[str]:
    """The graphs of an export whose file is an int8 variant (``mobile-o export --quantize int8``)."""
    decisions = manifest.get("quantization", {}).get("graphs", {})
    return [g for g, d in decisions.items() if str(d.get("mode", "")).startswith("int8")]
