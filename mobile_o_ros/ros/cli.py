"""``mobile-o serve`` and ``mobile-o ros ask|generate|edit``: the ROS 2 node and its services from a shell.

``add_parsers(subparsers)`` registers both verbs on the ``mobile-o`` argparse tree. Nothing here imports
rclpy until a verb runs. Also runnable alone: ``python -m mobile_o_ros.ros.cli serve ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from mobile_o_ros.errors import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_INTERRUPTED, CliError

DEFAULT_NAMESPACE = "/mobile_o"


def _cli_error(message: str, code: int = EXIT_BAD_INPUT) -> Exception:
    return CliError(message, code)


def _require_rclpy() -> None:
    try:
        import rclpy  # noqa: F401

        from mobile_o_ros.srv import AskScene  # noqa: F401
    except ImportError as err:
        raise _cli_error(
            f"ROS 2 is not importable ({err}): source scripts/env.sh (or your ROS 2 setup.bash "
            "and the colcon install of mobile_o_ros) first",
            EXIT_FAILURE,
        ) from err


def normalize_namespace(ns: str) -> str:
    """``mobile_o`` → ``/mobile_o``; ``/`` or empty → ``/``."""
    ns = ns.strip()
    return "/" + ns.strip("/") if ns.strip("/") else "/"


# =========================================================================================== serve
def _params_file_has_model_dir(path: Path) -> bool:
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise _cli_error(f"cannot read params file {path}: {err}") from err

    def walk(node: Any) -> bool:
        if isinstance(node, dict):
            rp = node.get("ros__parameters")
            if isinstance(rp, dict) and str(rp.get("model_dir", "") or "").strip():
                return True
            return any(walk(v) for k, v in node.items() if k != "ros__parameters")
        return False

    return walk(data)


def serve_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Parameters given as ``serve`` flags (they win over ``--params``, like launch arguments do)."""
    out: dict[str, Any] = {}
    if args.model_dir:
        out["model_dir"] = str(Path(args.model_dir).resolve())
    if args.backend:
        out["backend"] = args.backend
    if args.camera_topics:
        out["camera_topics"] = list(args.camera_topics)
    if args.use_compressed is not None:
        out["use_compressed"] = bool(args.use_compressed)
    return out


def serve_argv(args: argparse.Namespace, overrides_file: str | None) -> list[str]:
    """The argv handed to ``rclpy.init``: user ``--ros-args`` first (first remap rule wins), then ours."""
    user = list(args.ros_args or [])
    if user and user[0] == "--ros-args":
        user = user[1:]
    argv = ["mobile-o", "--ros-args", *user, "-r", f"__ns:={normalize_namespace(args.namespace)}"]
    if args.params:
        argv += ["--params-file", str(Path(args.params).resolve())]
    if overrides_file:
        argv += ["--params-file", overrides_file]
    return argv


def _export_dir(model: str) -> Path:
    """The export folder ``--model-dir`` names: itself, or the model store's export of a checkpoint folder
    (or of ``embedded`` / ``tiny-random``), made once and cached (making it needs torch)."""
    from mobile_o_ros import model_store
    from mobile_o_ros.checkpoint_files import CheckpointError

    try:
        ref = model_store.resolve(model)
    except model_store.ModelError as err:
        raise _cli_error(
            f"--model-dir {model} is not a Mobile-O export folder (no manifest.json) or checkpoint (no "
            f"config.json); create an export with `mobile-o export CHECKPOINT OUT_DIR` ({err})"
        ) from err
    try:
        return model_store.export_of(
            ref, progress=lambda m: print(f"mobile-o: {m}", file=sys.stderr, flush=True)
        )
    except (model_store.ModelError, CheckpointError) as err:
        raise _cli_error(str(err)) from err


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the lifecycle node (autostart configures and activates it) until SIGINT/SIGTERM."""
    if args.params and not Path(args.params).is_file():
        raise _cli_error(f"params file not found: {args.params}")
    if args.model_dir:
        args.model_dir = str(_export_dir(args.model_dir))
    elif not (args.params and _params_file_has_model_dir(Path(args.params))):
        raise _cli_error("no model: give --model-dir DIR or set model_dir in the --params file")
    _require_rclpy()
    import yaml

    from mobile_o_ros.ros.main import main as node_main

    overrides = serve_overrides(args)
    if not overrides:
        return int(node_main(serve_argv(args, None)) or 0)
    # The flags go to a second params file, as launch_ros does with a parameters=[file, {dict}] list.
    with tempfile.TemporaryDirectory(prefix="mobile_o_serve_") as tmp:
        path = Path(tmp) / "overrides.yaml"
        path.write_text(yaml.safe_dump({"/**": {"ros__parameters": overrides}}))
        return int(node_main(serve_argv(args, str(path))) or 0)


# =========================================================================================== ros verbs
def _client(args: argparse.Namespace) -> Any:
    _require_rclpy()
    from mobile_o_ros.ros.client import MobileOClient

    return MobileOClient(normalize_namespace(args.namespace), wait_timeout=args.wait)


def _read_rgb(path: str) -> Any:
    import cv2

    if not Path(path).is_file():
        raise _cli_error(f"image not found: {path}")
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise _cli_error(f"cannot read image: {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _write_rgb(path: str, rgb: Any) -> None:
    import cv2

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise _cli_error(f"cannot write image: {path}", EXIT_FAILURE)


def _header_dict(h: Any) -> dict[str, Any]:
    return {"stamp": {"sec": int(h.stamp.sec), "nanosec": int(h.stamp.nanosec)}, "frame_id": h.frame_id}


def _check(resp: Any) -> None:
    """Raise unless the status is OK; warn on stderr when the node says the model never saw some words."""
    from mobile_o_ros.ros.outcomes import Status

    if resp.status != Status.OK:
        raise _cli_error(resp.message or f"request failed ({Status(resp.status)})", EXIT_FAILURE)
    _, sep, unknown = resp.message.partition("; the model never saw: ")
    if sep:
        print(f"mobile-o: warning: the model never saw: {unknown}", file=sys.stderr)


def cmd_ros_ask(args: argparse.Namespace) -> int:
    """Ask a question about the latest camera frame (or --image) through the ask service/action."""
    from mobile_o_ros.ros.client import AskRequest, ClientError

    request = AskRequest(
        args.question,
        image=_read_rgb(args.image) if args.image else None,
        camera=args.camera,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
    )
    client = _client(args)
    try:
        if args.stream:
            call = client.ask_action(request)
            printed = 0
            for fb in call.feedback(timeout=args.timeout):
                if not args.json:
                    sys.stdout.write(fb.text[printed:])
                    sys.stdout.flush()
                printed = len(fb.text)
            resp, _status = call.result(timeout=args.timeout)
            if not args.json and printed:
                sys.stdout.write("\n")
        else:
            resp = client.ask(request, timeout=args.timeout)
        _check(resp)
        if args.json:
            print(
                json.dumps(
                    {
                        "answer": resp.answer,
                        "num_tokens": int(resp.num_tokens),
                        "latency_ms": round(float(resp.latency_ms), 1),
                        "time_to_first_token_ms": round(float(resp.time_to_first_token_ms), 1),
                        "warm_frame": bool(resp.warm_frame),
                        "image_header": _header_dict(resp.image_header),
                    },
                    indent=2,
                )
            )
        elif not args.stream:
            print(resp.answer)
        return 0
    except ClientError as err:
        raise _cli_error(str(err), EXIT_FAILURE) from err
    finally:
        client.close()


def _image_verb(args: argparse.Namespace, kind: str) -> int:
    from mobile_o_ros.ros.client import ClientError, EditRequest, GenerateRequest

    opts = {"steps": args.steps, "guidance_scale": args.guidance, "seed": args.seed}
    request: GenerateRequest | EditRequest
    if kind == "generate":
        request = GenerateRequest(args.prompt, **opts)
    else:
        image = _read_rgb(args.image) if args.image else None
        request = EditRequest(args.instruction, image=image, camera=args.camera, **opts)
    client = _client(args)
    try:
        if args.progress:
            call = client.start_goal(request)
            for fb in call.feedback(timeout=args.timeout):
                print(f"step {fb.step}/{fb.total}", file=sys.stderr)
            resp, _status = call.result(timeout=args.timeout)
        else:
            resp = client.call_service(request, timeout=args.timeout)
        _check(resp)
        _write_rgb(args.out, client.image_array(resp.image))
        info = {
            "out": args.out,
            "seed": int(resp.seed),
            "latency_ms": round(float(resp.latency_ms), 1),
            "width": int(resp.image.width),
            "height": int(resp.image.height),
            "header": _header_dict(resp.image.header),
        }
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            print(
                f"wrote {args.out} ({info['width']}x{info['height']}, seed {info['seed']}, "
                f"{info['latency_ms']:.0f} ms)"
            )
        return 0
    except ClientError as err:
        raise _cli_error(str(err), EXIT_FAILURE) from err
    finally:
        client.close()


def cmd_ros_generate(args: argparse.Namespace) -> int:
    """Generate an image through the generate_image service (or action with --progress)."""
    return _image_verb(args, "generate")


def cmd_ros_edit(args: argparse.Namespace) -> int:
    """Edit the latest camera frame (or --image) through the edit_image service (or action)."""
    return _image_verb(args, "edit")


def cmd_ros(args: argparse.Namespace) -> int:
    """``mobile-o ros`` without a sub-verb."""
    raise _cli_error("choose a sub-command: ask, generate or edit (mobile-o ros -h)")


# =========================================================================================== parsers
def _add_client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--namespace", default=DEFAULT_NAMESPACE, help="namespace of the node (default /mobile_o)")
    p.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the service to appear")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the result")
    p.add_argument("--json", action="store_true", help="print a JSON result")


def _add_gen_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output image file (PNG/JPEG by extension)")
    p.add_argument("--steps", type=int, default=0, help="denoising steps (0 = the node's default)")
    p.add_argument("--guidance", type=float, default=0.0, help="guidance scale (0 = the node's default)")
    p.add_argument("--seed", type=int, default=-1, help="-1 = random")
    p.add_argument("--progress", action="store_true", help="use the action and print each denoising step")


def add_parsers(subparsers: Any) -> None:
    """Register ``serve`` and ``ros`` (with ``ask``, ``generate``, ``edit``) on the ``mobile-o`` parser."""
    p = subparsers.add_parser(
        "serve",
        help="run the Mobile-O ROS 2 lifecycle node (launch-free; same params as the launch file)",
        description="Start the Mobile-O node in namespace --namespace. Flags override --params (a ROS 2 "
        "params file, e.g. config/mobile_o.yaml); everything after --ros-args goes to rclpy.",
    )
    p.add_argument(
        "--model-dir",
        default=None,
        help="Mobile-O export folder (parameter model_dir); a checkpoint folder, embedded or tiny-random is "
        "exported once into the model store's cache",
    )
    p.add_argument("--backend", choices=("onnxruntime", "tensorrt"), default=None, help="parameter backend")
    p.add_argument("--params", default=None, help="ROS 2 params file (/**: ros__parameters: ...)")
    p.add_argument("--namespace", default=DEFAULT_NAMESPACE, help="node namespace (default /mobile_o)")
    p.add_argument(
        "--camera-topics", nargs="+", default=None, metavar="TOPIC", help="parameter camera_topics"
    )
    p.add_argument(
        "--use-compressed",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="parameter use_compressed",
    )
    p.add_argument(
        "--ros-args",
        dest="ros_args",
        nargs=argparse.REMAINDER,
        default=[],
        help="arguments for rclpy (remaps, -p name:=value, --log-level ...)",
    )
    p.set_defaults(func=cmd_serve)

    ros = subparsers.add_parser("ros", help="call a running Mobile-O node's services: ask, generate, edit")
    ros.set_defaults(func=cmd_ros)
    sub = ros.add_subparsers(dest="ros_verb")

    q = sub.add_parser("ask", help="ask a question about the latest camera frame (or --image)")
    q.add_argument("question")
    q.add_argument("--camera", default="", help="camera topic (default: the node's first camera)")
    q.add_argument("--image", default=None, help="send this image file instead of using a camera frame")
    q.add_argument("--max-new-tokens", type=int, default=0, help="answer tokens (0 = the node's default)")
    q.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    q.add_argument("--seed", type=int, default=-1, help="-1 = random")
    q.add_argument("--stream", action="store_true", help="use the action and print tokens as they come")
    _add_client_options(q)
    q.set_defaults(func=cmd_ros_ask)

    g = sub.add_parser("generate", help="generate an image from a prompt")
    g.add_argument("prompt")
    _add_gen_options(g)
    _add_client_options(g)
    g.set_defaults(func=cmd_ros_generate)

    e = sub.add_parser("edit", help="edit the latest camera frame (or --image) following an instruction")
    e.add_argument("instruction")
    e.add_argument("--image", default=None, help="source image file (default: the camera's latest frame)")
    e.add_argument("--camera", default="", help="camera topic (default: the node's first camera)")
    _add_gen_options(e)
    _add_client_options(e)
    e.set_defaults(func=cmd_ros_edit)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point (``python -m mobile_o_ros.ros.cli``), with mobile-o's error handling."""
    parser = argparse.ArgumentParser(prog="mobile-o")
    add_parsers(parser.add_subparsers(dest="verb", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as err:
        print(f"mobile-o: error: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
