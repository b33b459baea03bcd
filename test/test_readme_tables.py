"""The documented ROS interface tables must match the code.

Reads the Topics / Services / Actions / Parameters tables of :data:`README_PATH` and checks that every
documented parameter is declared with that type, default, constraints and timing (and every declared
parameter is documented), and that every topic, service and action exists with that type on a live node
(real rclpy, in this process, on its own domain).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from mobile_o_ros.ros import params

# The parameter table needs neither torch nor ROS; the live-node test is marked ros.
pytestmark = pytest.mark.runtime

REPO = Path(__file__).resolve().parents[1]
#: The file holding the tables.
README_PATH = REPO / "README.md"
NAMESPACE = params.DEFAULT_NAMESPACE


def _tables(text: str) -> dict[str, list[dict[str, str]]]:
    """``{section heading: rows as {column: cell}}`` for the first table under each ``##``/``###`` heading."""
    out: dict[str, list[dict[str, str]]] = {}
    section = None
    header: list[str] | None = None
    for line in text.splitlines():
        if line.startswith(("## ", "### ")):
            section, header = line.lstrip("#").strip(), None
            continue
        if section is None or not line.startswith("|"):
            if header is not None and section in out:
                section = None  # only the first table of a section
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]  # `\|` is a literal pipe
        if header is None:
            header = cells
            out[section] = []
        elif not set("".join(cells)) <= set("-: "):
            out[section].append(dict(zip(header, cells, strict=True)))
    return out


def _code(cell: str) -> str:
    """The first `backticked` text of a cell."""
    m = re.search(r"`([^`]*)`", cell)
    assert m, f"no `code` in cell {cell!r}"
    return m.group(1)


@pytest.fixture(scope="module")
def tables() -> dict[str, list[dict[str, str]]]:
    found = _tables(README_PATH.read_text())
    for section in ("Topics", "Services", "Actions", "Parameters"):
        assert found.get(section), f"{README_PATH.name}: no table under '## {section}'"
    return found


def test_parameter_table_matches_the_declarations(tables) -> None:
    rows = {_code(r["Parameter"]): r for r in tables["Parameters"]}
    assert set(rows) == {p.name for p in params.PARAMETERS}, "documented vs declared parameters differ"
    for spec in params.PARAMETERS:
        row = rows[spec.name]
        assert row["Type"] == spec.type_name, spec.name
        assert yaml.safe_load(_code(row["Default"])) == spec.default, spec.name
        assert row["Constraints"] == (spec.constraints() or "—"), spec.name
        assert row["Applies"] == spec.applies, spec.name


def _relative_to_ns(name: str) -> str:
    return name if name.startswith("/") else f"{NAMESPACE}/{name}"


@pytest.mark.ros
def test_topics_services_and_actions_exist_with_their_types(tables, tiny_export: Path) -> None:
    rclpy = pytest.importorskip("rclpy")
    from rclpy.action import get_action_server_names_and_types_by_node
    from rclpy.parameter import Parameter
    from ros_support import domain_id, wait_until

    from mobile_o_ros.ros.mobile_o_node import MobileONode

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id(3))
    node = MobileONode(context=context)
    try:
        # parameters as declared on a live node: value and descriptor range
        for spec in params.PARAMETERS:
            assert node.get_parameter(spec.name).value == spec.default, spec.name
            d = node.describe_parameter(spec.name)
            if spec.range is not None:
                r = (d.integer_range or d.floating_point_range)[0]
                assert (r.from_value, r.to_value) == spec.range, spec.name

        name, ns = node.get_name(), node.get_namespace()
        assert ns == NAMESPACE
        from mobile_o_ros.ros.main import autostart

        assert node.set_parameters([Parameter("model_dir", value=str(tiny_export))])[0].successful

        assert autostart(node)

        def graph() -> dict[str, dict[str, list[str]]]:
            return {
                "publish": dict(node.get_publisher_names_and_types_by_node(name, ns)),
                "subscribe": dict(node.get_subscriber_names_and_types_by_node(name, ns)),
                "service": dict(node.get_service_names_and_types_by_node(name, ns)),
                "action": dict(get_action_server_names_and_types_by_node(node, name, ns)),
            }

        def check(compressed: bool) -> list[str]:
            g = graph()
            missing = []
            for row in tables["Topics"]:
                direction = row["Direction"]
                if direction.startswith("subscribe") and ("use_compressed" in direction) != compressed:
                    continue
                kind = "subscribe" if direction.startswith("subscribe") else "publish"
                topic, typ = _relative_to_ns(_code(row["Topic"])), _code(row["Type"])
                if g[kind].get(topic) != [typ]:
                    missing.append(f"{kind} {topic} {typ}: {g[kind].get(topic)}")
            for section, kind in (("Services", "service"), ("Actions", "action")):
                for row in tables[section]:
                    key = "Service" if kind == "service" else "Action"
                    n, typ = _relative_to_ns(_code(row[key])), _code(row["Type"])
                    if g[kind].get(n) != [typ]:
                        missing.append(f"{kind} {n} {typ}: {g[kind].get(n)}")
            return missing

        assert wait_until(lambda: not check(False), 10.0), check(False)

        # the compressed variant: configure-time parameter, applied by a deactivate/cleanup/configure cycle
        node.set_parameters([Parameter("use_compressed", value=True)])
        assert node.trigger_deactivate() and node.trigger_cleanup()
        assert autostart(node)
        assert wait_until(lambda: not check(True), 10.0), check(True)
    finally:
        node.release()
        node.destroy_node()
        context.try_shutdown()


def test_benchmark_tables_are_the_measured_run_and_it_ran_unloaded() -> None:
    import json

    from mobile_o_ros.bench_tables import markdown

    measured = REPO / "docs" / "measurements" / "bench_real_0.5b_cpu.json"
    report = json.loads(measured.read_text())
    text = README_PATH.read_text()
    start = f"<!-- bench tables: generated from {measured.relative_to(REPO).as_posix()} by "
    assert start in text, "the README's Benchmarks section lost its generated-tables marker"
    block = text.split(start, 1)[1].split("\n", 1)[1].split("<!-- end bench tables -->", 1)[0]
    assert block == markdown(report), "regenerate the tables with mobile_o_ros.bench_tables.markdown"
    assert report["config"] == "real-0.5b" and not report["load_check"]["allow_loaded"]
    assert report["machine"]["load_average"][0] <= report["machine"]["cpu_count"] / 2
    assert set(report["sections"]) == {"components", "int8", "annotate", "ttft"}
