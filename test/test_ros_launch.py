"""Static checks of launch/mobile_o.launch.py (launch/launch_ros are not installed here, so it is parsed)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.runtime

LAUNCH = Path(__file__).resolve().parents[1] / "launch" / "mobile_o.launch.py"
EXPECTED = {"namespace", "params_file", "model_dir", "backend", "camera_topics", "use_compressed"}


def _declared() -> dict[str, dict[str, ast.expr]]:
    tree = ast.parse(LAUNCH.read_text(), str(LAUNCH))
    out: dict[str, dict[str, ast.expr]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "DeclareLaunchArgument":
            name = ast.literal_eval(node.args[0])
            out[name] = {kw.arg: kw.value for kw in node.keywords if kw.arg}
    return out


def test_launch_file_compiles() -> None:
    compile(LAUNCH.read_text(), str(LAUNCH), "exec")


def test_launch_arguments_have_descriptions_and_defaults() -> None:
    args = _declared()
    assert set(args) == EXPECTED
    for name, kw in args.items():
        assert "description" in kw and len(ast.literal_eval(kw["description"])) > 20, name
        assert "default_value" in kw, name
    assert ast.literal_eval(args["namespace"]["default_value"]) == "/mobile_o"
    assert "onnxruntime" in ast.literal_eval(args["backend"]["choices"])


def test_launch_starts_the_installed_lifecycle_node() -> None:
    text = LAUNCH.read_text()
    assert (
        "LifecycleNode(" in text and 'executable="mobile_o_node"' in text and 'package="mobile_o_ros"' in text
    )
    nodes = Path(__file__).resolve().parents[1] / "scripts" / "nodes" / "mobile_o_node"
    assert nodes.is_file(), "the mobile_o_node executable the launch file starts"


def test_camera_list_parsing() -> None:
    namespace: dict[str, object] = {}
    source = LAUNCH.read_text()
    tree = ast.parse(source)
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_camera_list")
    module = ast.fix_missing_locations(
        ast.Module(body=[ast.Import(names=[ast.alias(name="yaml")]), fn], type_ignores=[])
    )
    exec(compile(module, str(LAUNCH), "exec"), namespace)
    parse = namespace["_camera_list"]
    assert parse("['/a/image', '/b/image']") == ["/a/image", "/b/image"]
    assert parse("/a/image,/b/image") == ["/a/image", "/b/image"]
    assert parse("/front/image_raw") == ["/front/image_raw"]
