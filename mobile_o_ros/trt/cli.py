"""The ``build-engines`` verb; :func:`add_build_engines_parser` is wired into :mod:`mobile_o_ros.cli`."""

from __future__ import annotations

import argparse
from pathlib import Path

from mobile_o_ros.trt.precision import PRECISIONS
from mobile_o_ros.trt.profiles import TARGETS


def cmd_build_engines(args: argparse.Namespace) -> int:
    """Build or check the TensorRT engines of an export folder; one-line errors via ``CliError``."""
    from mobile_o_ros.errors import EXIT_FAILURE, CliError
    from mobile_o_ros.manifest import ManifestError, load_manifest
    from mobile_o_ros.trt.builder import build_engines
    from mobile_o_ros.trt.cache import EngineCacheError, default_engine_dir

    export_dir = Path(args.export_dir)
    if not export_dir.is_dir():
        raise CliError(f"export folder not found: {export_dir}")
    try:
        manifest = load_manifest(export_dir)
    except ManifestError as err:
        raise CliError(str(err)) from err
    model_name = manifest["model"].get("name")
    engine_dir = Path(args.engine_dir) if args.engine_dir else default_engine_dir(model_name)
    if engine_dir.exists() and not engine_dir.is_dir():
        raise CliError(f"engine folder is a file: {engine_dir}")
    if args.force and args.no_build:
        raise CliError("--force and --no-build contradict each other")
    try:
        results = build_engines(
            export_dir,
            engine_dir,
            precision=args.precision,
            target=args.target,
            force=args.force,
            no_build=args.no_build,
            graphs=args.only,
            strongly_typed=args.strongly_typed,
        )
    except EngineCacheError as err:
        raise CliError(str(err), EXIT_FAILURE) from err
    built = sum(r.status == "built" for r in results)
    print(f"{len(results)} engine(s) in {engine_dir}: {built} built, {len(results) - built} up to date")
    return 0


def add_build_engines_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``build-engines EXPORT_DIR [ENGINE_DIR] [--precision] [--target] [--force] [--no-build]``."""
    p = subparsers.add_parser(
        "build-engines",
        help="build (or check) TensorRT engines for an export folder on this GPU",
        description="Build one TensorRT engine per exported graph, reusing cached engines whose key (ONNX "
        "sha256, TensorRT, GPU, L4T, precision, profiles, builder settings) still matches.",
    )
    p.add_argument("export_dir", metavar="EXPORT_DIR", help="folder written by `mobile-o export`")
    p.add_argument(
        "engine_dir",
        metavar="ENGINE_DIR",
        nargs="?",
        default=None,
        help="where engines and engines.json go (default: $MOBILE_O_ENGINE_DIR, the repo's "
        "engines/, or ~/.cache/mobile_o_ros/engines; one sub-folder per model)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp16",
        help="fp16 (default; sensitive layers kept fp32), bf16, or fp32",
    )
    p.add_argument(
        "--target",
        choices=tuple(TARGETS),
        default="orin-nano",
        help="shape ranges and builder resources (default orin-nano)",
    )
    p.add_argument("--force", action="store_true", help="rebuild even engines that are up to date")
    p.add_argument(
        "--no-build",
        action="store_true",
        help="only check: fail with the reason if any engine is missing or stale",
    )
    p.add_argument("--only", nargs="+", default=None, metavar="GRAPH", help="only these graphs")
    p.add_argument(
        "--strongly-typed",
        action="store_true",
        help="build STRONGLY_TYPED networks from an fp16 copy of each graph whose fp32 layers are explicit "
        "Casts (instead of the FP16/BF16 flag with layers pinned to fp32)",
    )
    p.set_defaults(func=cmd_build_engines)
    return p
