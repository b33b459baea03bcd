"""The engine cache: what an engine was built from, recorded in ``ENGINE_DIR/engines.json``, and checked.

An engine is reusable only on the same TensorRT, GPU and JetPack (no hardware-compatible engines on
Jetson), for the same ONNX bytes, precision, precision policy, profiles and builder settings. The key:

* ``onnx_sha256``: sha256 over the graph's files (``<graph>.onnx`` + external data), from the export
  manifest (the builder re-hashes the bytes it parses);
* ``tensorrt``, ``gpu``, ``compute_capability``, ``l4t`` (``/etc/nv_tegra_release``, ``none`` off Jetson);
* ``precision``, ``precision_policy`` (rules digest), ``profiles``, ``opt_level``, ``workspace_bytes``.

:func:`check` returns fresh / stale (naming each changed field) / missing. Engines are never cached under
/tmp by default: ``$MOBILE_O_ENGINE_DIR``, else the repository's ``engines/`` in a source checkout, else
``~/.cache/mobile_o_ros/engines``; one sub-folder per model name.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENGINES_JSON = "engines.json"
FORMAT = "mobile_o_ros.engines"
VERSION = 1
KEY_VERSION = 1
KEY_FIELDS = (
    "key_version",
    "onnx_sha256",
    "tensorrt",
    "gpu",
    "compute_capability",
    "l4t",
    "precision",
    "precision_policy",
    "profiles",
    "opt_level",
    "workspace_bytes",
)
ENV_VAR = "MOBILE_O_ENGINE_DIR"
L4T_RELEASE_FILE = Path("/etc/nv_tegra_release")


class EngineCacheError(RuntimeError):
    """Engines that cannot be used or built; the message says what to run."""


@dataclass(frozen=True)
class Environment:
    """The machine-side part of the key."""

    tensorrt: str
    gpu: str
    compute_capability: str
    l4t: str


@dataclass(frozen=True)
class CacheStatus:
    """The outcome of :func:`check`: ``fresh``, ``stale`` (with the reason) or ``missing``."""

    state: str
    reason: str = ""
    changed: tuple[str, ...] = field(default_factory=tuple)

    @property
    def fresh(self) -> bool:
        """Whether the engine can be used as is."""
        return self.state == "fresh"


# --------------------------------------------------------------------------------------------- environment
def parse_l4t_release(text: str) -> str:
    """``# R36 (release), REVISION: 4.3, ...`` → ``R36.4.3``; ``unknown`` when unparsable."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"R{m.group(1)}.{m.group(2)}" if m else "unknown"


def read_l4t_release(path: Path = L4T_RELEASE_FILE) -> str:
    """The L4T release of this Jetson, or ``none`` on other machines."""
    try:
        return parse_l4t_release(Path(path).read_text())
    except OSError:
        return "none"


def gpu_identity(device: int = 0) -> tuple[str, str]:
    """(name, compute capability ``major.minor``) of a CUDA device, via the driver API (no pycuda needed)."""
    lib = None
    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        raise EngineCacheError("no CUDA driver (libcuda.so.1) here: TensorRT engines need an NVIDIA GPU")

    def call(fn: str, *args: Any) -> None:
        rc = getattr(lib, fn)(*args)
        if rc != 0:
            raise EngineCacheError(f"CUDA driver call {fn} failed with error {rc}: is a GPU visible?")

    call("cuInit", 0)
    dev = ctypes.c_int()
    call("cuDeviceGet", ctypes.byref(dev), device)
    buf = ctypes.create_string_buffer(256)
    call("cuDeviceGetName", buf, 256, dev)
    major, minor = ctypes.c_int(), ctypes.c_int()
    call("cuDeviceGetAttribute", ctypes.byref(major), 75, dev)  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
    call("cuDeviceGetAttribute", ctypes.byref(minor), 76, dev)  # ..._MINOR
    return buf.value.decode(errors="replace").strip(), f"{major.value}.{minor.value}"


def detect_environment() -> Environment:
    """TensorRT version, GPU and L4T release of this machine (imports ``tensorrt``)."""
    try:
        import tensorrt as trt
    except ImportError as err:
        raise EngineCacheError(
            f"TensorRT is not available ({err}); engines are built and run on the target GPU machine "
            "(Jetson: JetPack 6 ships TensorRT 10.3)"
        ) from err
    name, cc = gpu_identity()
    return Environment(tensorrt=trt.__version__, gpu=name, compute_capability=cc, l4t=read_l4t_release())


# --------------------------------------------------------------------------------------------- keys
def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def graph_sha256(export_dir: str | Path, manifest: dict[str, Any], graph: str, verify: bool = False) -> str:
    """sha256 over a graph's ONNX + external-data files (name and digest of each, in order).

    Uses the digests recorded in the manifest unless ``verify`` (then the bytes are hashed and must match).
    """
    export_dir = Path(export_dir)
    recorded = manifest.get("files", {})
    h = hashlib.sha256()
    for name in manifest["graphs"][graph]["files"]:
        digest = recorded.get(name)
        if verify or digest is None:
            actual = sha256_file(export_dir / name)
            if digest is not None and actual != digest:
                raise EngineCacheError(
                    f"{export_dir / name} changed since export (sha256 differs from manifest.json); re-export"
                )
            digest = actual
        h.update(f"{name}:{digest}\n".encode())
    return h.hexdigest()


def engine_key(
    onnx_sha256: str,
    env: Environment,
    precision: str,
    precision_policy: str,
    profiles: list[Any],
    opt_level: int,
    workspace_bytes: int,
) -> dict[str, Any]:
    """The cache key of one engine (a JSON-able dict with exactly :data:`KEY_FIELDS`)."""
    return {
        "key_version": KEY_VERSION,
        "onnx_sha256": onnx_sha256,
        "tensorrt": env.tensorrt,
        "gpu": env.gpu,
        "compute_capability": env.compute_capability,
        "l4t": env.l4t,
        "precision": precision,
        "precision_policy": precision_policy,
        "profiles": profiles,
        "opt_level": int(opt_level),
        "workspace_bytes": int(workspace_bytes),
    }


def engine_filename(graph: str, precision: str) -> str:
    """``<graph>.<precision>.engine``."""
    return f"{graph}.{precision}.engine"


def _short(value: Any) -> str:
    if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value):
        return value[:12]
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def diff_keys(expected: dict[str, Any], recorded: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, "old -> new") for every key field that differs."""
    out = []
    for name in KEY_FIELDS:
        old, new = recorded.get(name), expected.get(name)
        if old != new:
            out.append((name, f"{_short(old)} -> {_short(new)}"))
    return out


# --------------------------------------------------------------------------------------------- engines.json
def load_engine_manifest(engine_dir: str | Path) -> dict[str, Any]:
    """``engines.json`` of ``engine_dir`` (an empty one when absent)."""
    path = Path(engine_dir) / ENGINES_JSON
    if not path.is_file():
        return {"format": FORMAT, "version": VERSION, "engines": {}}
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise EngineCacheError(f"corrupt {path}: {err}; delete it and rebuild the engines") from err
    if data.get("format") != FORMAT or data.get("version") != VERSION:
        raise EngineCacheError(f"{path} is not a version-{VERSION} engine manifest; delete it and rebuild")
    return data


def _atomic_write(path: Path, data: Any) -> None:
    """Write a bytes-like object (``bytes``, ``memoryview``, TensorRT ``IHostMemory``) without copying it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(memoryview(data))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_engine_manifest(engine_dir: str | Path, data: dict[str, Any]) -> None:
    """Write ``engines.json`` atomically."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    _atomic_write(Path(engine_dir) / ENGINES_JSON, text.encode())


def write_engine(engine_dir: str | Path, filename: str, blob: Any) -> tuple[int, str]:
    """Write engine bytes (any buffer, e.g. ``IHostMemory``) atomically; returns (size, sha256)."""
    view = memoryview(blob).cast("B")
    _atomic_write(Path(engine_dir) / filename, view)
    return view.nbytes, hashlib.sha256(view).hexdigest()


def record_engine(
    engine_dir: str | Path,
    graph: str,
    precision: str,
    key: dict[str, Any],
    size: int,
    sha256: str,
    **extra: Any,
) -> dict[str, Any]:
    """Add or replace the entry of ``<graph>.<precision>.engine`` in ``engines.json``; returns the entry."""
    data = load_engine_manifest(engine_dir)
    entry = {
        "graph": graph,
        "precision": precision,
        "key": key,
        "size_bytes": int(size),
        "sha256": sha256,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }
    data["engines"][engine_filename(graph, precision)] = entry
    save_engine_manifest(engine_dir, data)
    return entry


def check(
    engine_dir: str | Path,
    graph: str,
    precision: str,
    expected_key: dict[str, Any],
    verify_file: bool = False,
    manifest: dict[str, Any] | None = None,
) -> CacheStatus:
    """Is ``<graph>.<precision>.engine`` in ``engine_dir`` usable for ``expected_key``?"""
    engine_dir = Path(engine_dir)
    name = engine_filename(graph, precision)
    data = manifest if manifest is not None else load_engine_manifest(engine_dir)
    entry = data.get("engines", {}).get(name)
    path = engine_dir / name
    if entry is None:
        return CacheStatus("missing", f"{name} is not in {engine_dir / ENGINES_JSON}")
    if not path.is_file():
        return CacheStatus("missing", f"{path} does not exist")
    changes = diff_keys(expected_key, entry.get("key", {}))
    if changes:
        reason = "; ".join(f"{f} changed: {d}" for f, d in changes)
        return CacheStatus("stale", reason, tuple(f for f, _ in changes))
    changed_file = verify_file and sha256_file(path) != entry.get("sha256")
    if path.stat().st_size != entry.get("size_bytes") or changed_file:
        return CacheStatus("stale", f"{path} changed since it was built", ("engine_file",))
    return CacheStatus("fresh")


# --------------------------------------------------------------------------------------------- locations
def repo_engine_root() -> Path | None:
    """``engines/`` of the source checkout this package runs from, if any."""
    root = Path(__file__).resolve().parents[2]
    return root / "engines" if (root / "package.xml").is_file() and (root / "engines").is_dir() else None


def default_engine_dir(model_name: str | None = None) -> Path:
    """Default engine folder (never /tmp): $MOBILE_O_ENGINE_DIR, the repo's engines/, or the user cache."""
    env = os.environ.get(ENV_VAR)
    if env:
        root = Path(env).expanduser()
    else:
        root = repo_engine_root() or Path.home() / ".cache" / "mobile_o_ros" / "engines"
    return root / model_name if model_name else root
