"""``mobile-o serve`` / ``mobile-o ros`` argument handling (the verbs against a live node are in
test_ros_integration.py)."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest
import yaml
from ros_support import serve_command

from mobile_o_ros.ros import cli as ros_cli

pytestmark = pytest.mark.runtime


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mobile-o")
    ros_cli.add_parsers(parser.add_subparsers(dest="verb", required=True))
    return parser.parse_args(list(argv))


def test_serve_arguments_and_rclpy_argv(tmp_path: Path) -> None:
    params = tmp_path / "p.yaml"
    params.write_text("/**:\n  ros__parameters:\n    max_queue: 2\n")
    args = _parse(
        "serve",
        "--model-dir",
        str(tmp_path),
        "--backend",
        "onnxruntime",
        "--params",
        str(params),
        "--namespace",
        "robot1/mo",
        "--camera-topics",
        "/a/image",
        "/b/image",
        "--use-compressed",
        "--ros-args",
        "-p",
        "max_queue:=3",
        "--log-level",
        "debug",
    )
    assert args.func is ros_cli.cmd_serve
    assert ros_cli.serve_overrides(args) == {
        "model_dir": str(tmp_path.resolve()),
        "backend": "onnxruntime",
        "camera_topics": ["/a/image", "/b/image"],
        "use_compressed": True,
    }
    argv = ros_cli.serve_argv(args, "/tmp/overrides.yaml")
    # user ros-args first (the first __ns remap wins in rcl), then our namespace, params file, then the
    # flag overrides (later params files win, like launch's parameters=[file, {overrides}])
    assert argv == [
        "mobile-o",
        "--ros-args",
        "-p",
        "max_queue:=3",
        "--log-level",
        "debug",
        "-r",
        "__ns:=/robot1/mo",
        "--params-file",
        str(params.resolve()),
        "--params-file",
        "/tmp/overrides.yaml",
    ]


def test_serve_defaults_add_no_overrides() -> None:
    args = _parse("serve", "--params", "x.yaml")
    assert ros_cli.serve_overrides(args) == {}
    assert ros_cli.serve_argv(args, None)[:4] == ["mobile-o", "--ros-args", "-r", "__ns:=/mobile_o"]


def test_namespace_normalisation() -> None:
    assert ros_cli.normalize_namespace("mobile_o") == "/mobile_o"
    assert ros_cli.normalize_namespace("/a/b/") == "/a/b"
    assert ros_cli.normalize_namespace("") == "/"


def test_params_file_model_dir_detection(tmp_path: Path) -> None:
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"model_dir": "/models/x"}}}))
    assert ros_cli._params_file_has_model_dir(p)
    p.write_text(yaml.safe_dump({"/robot/mobile_o": {"ros__parameters": {"model_dir": ""}}}))
    assert not ros_cli._params_file_has_model_dir(p)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve"], "no model: give --model-dir DIR or set model_dir in the --params file"),
        (
            ["serve", "--model-dir", "/nonexistent/export"],
            "is not a Mobile-O export folder (no manifest.json)",
        ),
        (["serve", "--params", "/nonexistent.yaml"], "params file not found: /nonexistent.yaml"),
        (["ros"], "choose a sub-command: ask, generate or edit"),
    ],
)
def test_errors_are_one_line(argv: list[str], message: str) -> None:
    r = subprocess.run([*serve_command(), *argv], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"mobile-o: error: {r.stderr.split('error: ', 1)[1].strip()}"]
    assert message in r.stderr


def test_serve_runs_a_checkpoint_through_the_model_store(
    tiny_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--model-dir`` takes an export folder as it is, and a checkpoint as its export in the store."""
    import json
    import shutil

    from mobile_o_ros.checkpoint_files import checkpoint_sha256

    assert ros_cli._export_dir(str(tiny_export)) == tiny_export
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    sha = checkpoint_sha256(checkpoint)
    cached = tmp_path / "cache" / "exports" / sha[:16]
    shutil.copytree(tiny_export, cached)
    manifest = json.loads((cached / "manifest.json").read_text())
    manifest["source_checkpoint"] = {"path": str(checkpoint), "sha256": sha}
    (cached / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("MOBILE_O_CACHE", str(tmp_path / "cache"))
    assert ros_cli._export_dir(str(checkpoint)) == cached


def test_ros_verbs_parse() -> None:
    args = _parse("ros", "ask", "what is this?", "--camera", "/front/image_raw", "--stream", "--json")
    assert (args.func, args.question, args.camera, args.stream, args.namespace) == (
        ros_cli.cmd_ros_ask,
        "what is this?",
        "/front/image_raw",
        True,
        "/mobile_o",
    )
    args = _parse(
        "ros",
        "generate",
        "a cube",
        "--out",
        "x.png",
        "--steps",
        "4",
        "--guidance",
        "2",
        "--seed",
        "7",
        "--progress",
        "--namespace",
        "/r",
    )
    assert (args.func, args.steps, args.guidance, args.seed, args.progress) == (
        ros_cli.cmd_ros_generate,
        4,
        2.0,
        7,
        True,
    )
    args = _parse("ros", "edit", "make it red", "--image", "in.png", "--out", "o.png")
    assert args.func is ros_cli.cmd_ros_edit and args.image == "in.png"
    with pytest.raises(SystemExit):
        _parse("ros", "generate", "a cube")  # --out is required


@pytest.mark.ros
def test_spin_ends_quietly_when_the_context_goes_down_between_its_checks() -> None:
    """A SIGTERM between rclpy's ok() check and its wait set makes spin_once raise (a fresh-clone run
    exited 1 so); the node's spin loop takes that for the shutdown it is."""
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from ros_support import domain_id

    from mobile_o_ros.ros.main import spin_until_shutdown

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id(5))
    node = rclpy.create_node("spin_probe", context=context)
    executor = MultiThreadedExecutor(num_threads=2, context=context)
    executor.add_node(node)
    try:
        context.shutdown()
        with pytest.raises(Exception, match="context is not valid"):
            executor.spin_once()  # what rclpy's own spin() would raise at that moment
        spin_until_shutdown(executor)  # returns
    finally:
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown(context=context)
