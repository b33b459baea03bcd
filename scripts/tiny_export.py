"""Write the tests' tiny ONNX export to a folder, for the test lanes that have no torch.

    python scripts/tiny_export.py OUT_DIR        (in the main .venv: `. scripts/env.sh`; `make tiny-export`)

It is the export that test/conftest.py's ``tiny_export`` fixture builds (the tiny checkpoint of seed 0,
the LM head split in two), built once with torch, and beside it in OUT_DIR-int8 the int8 copy that the
``tiny_int8_export`` fixture builds (every graph forced to QDQ). `make test-py310` and `make test-jazzy`
hand OUT_DIR to their tests through ``MOBILE_O_TINY_EXPORT``. OUT_DIR/.stamp holds a hash of everything
the exports are made from (the package's sources and data, this script, test/int8_support.py, the
requirement pins); when it is unchanged the script returns at once, without importing torch.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The same recipe as test/conftest.py's tiny_checkpoint / tiny_export fixtures.
SEED = 0
LM_HEAD_CHUNKS = 2


def inputs_hash() -> str:
    """sha256 over the files the export depends on (paths and contents, in a fixed order)."""
    files = sorted(
        p for p in (REPO / "mobile_o_ros").rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    files += [Path(__file__).resolve(), REPO / "test" / "int8_support.py"]
    files += sorted((REPO / "requirements").glob("*.txt"))
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(REPO).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def int8_dir(out: Path) -> Path:
    """Where the int8 copy of the export in ``out`` goes."""
    return out.with_name(out.name + "-int8")


def build(out: Path) -> None:
    """Build the tiny checkpoint, export it into ``out`` and its int8 copy into :func:`int8_dir` (both
    replaced whole)."""
    from mobile_o_ros.export.onnx_export import export_model
    from mobile_o_ros.reference.checkpoint import load_checkpoint
    from mobile_o_ros.reference.tiny import make_tiny_checkpoint

    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        ckpt = make_tiny_checkpoint(Path(tmp) / "ckpt", seed=SEED)
        staged = Path(tmp) / "export"
        staged.mkdir()
        export_model(load_checkpoint(ckpt), staged, lm_head_chunks=LM_HEAD_CHUNKS)
        sys.path.insert(0, str(REPO / "test"))
        from int8_support import GRAPHS, quantized_copy

        quantized_copy(staged, Path(tmp) / "int8", force=list(GRAPHS), modes=("int8-qdq",))
        for src, dst in ((staged, out), (Path(tmp) / "int8", int8_dir(out))):
            if dst.exists():
                shutil.rmtree(dst)
            src.rename(dst)


def main(argv: list[str] | None = None) -> int:
    """Entry point: (re)build OUT_DIR unless its stamp matches."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write the export to")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    digest = inputs_hash()
    stamp = out / ".stamp"
    built = all((d / "manifest.json").is_file() for d in (out, int8_dir(out)))
    if stamp.is_file() and stamp.read_text().strip() == digest and built:
        print(f"tiny export: up to date in {out}")
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    build(out)
    stamp.write_text(digest + "\n")
    print(f"tiny export: written to {out} and {int8_dir(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
