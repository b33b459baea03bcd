#!/usr/bin/env bash
# Run launch/mobile_o.launch.py through launch.LaunchService against each ROS 2 distro's venv, with every
# launch argument, and check the node it starts (scripts/check_launch.py says what is checked).
#
#   scripts/check_launch.sh SRC_DIR [DISTRO ...]       DISTRO: kilted (.venv, install/), jazzy
#                                                     (.venv-jazzy, install-jazzy/); default: both
#
# SRC_DIR/<distro>/ holds the pure-Python sources that have no wheels, one folder per repository, outside
# this repository:  launch/ (ros2/launch), launch_ros/ (ros2/launch_ros), osrf_pycommon/ (osrf/osrf_pycommon),
# each a checkout of the branch matching the distro (e.g. `git archive jazzy | tar x -C SRC_DIR/jazzy/launch`).
# composition_interfaces, the one import of launch_ros without a wheel, gets a stand-in (the launch file
# loads no composable node). Needs the venvs (make setup, make setup-jazzy) and the tiny export
# (make tiny-export). Not part of CI: CI cannot obtain those sources. Run it when the launch file changes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ $# -ge 1 && -d "$1" ]] || { echo "usage: $0 SRC_DIR [kilted|jazzy ...]" >&2; exit 2; }
SRC="$(cd "$1" && pwd)"; shift
DISTROS=("$@"); [[ ${#DISTROS[@]} -gt 0 ]] || DISTROS=(kilted jazzy)
EXPORT="$ROOT/.cache/tiny-export"
[[ -f "$EXPORT/manifest.json" ]] || { echo "$0: no $EXPORT: run 'make tiny-export'" >&2; exit 2; }

STUB="$(mktemp -d)"
trap 'rm -rf "$STUB"' EXIT
mkdir -p "$STUB/composition_interfaces"
: > "$STUB/composition_interfaces/__init__.py"
cat > "$STUB/composition_interfaces/srv.py" <<'PY'
"""Stand-in for composition_interfaces.srv (no wheel): launch_ros imports LoadNode; nothing here loads one."""


class LoadNode:
    class Request:
        pass
PY

rc=0
for distro in "${DISTROS[@]}"; do
  case "$distro" in
    kilted) venv=.venv; install=install ;;
    jazzy) venv=.venv-jazzy; install=install-jazzy ;;
    *) echo "$0: unknown distro $distro (kilted, jazzy)" >&2; exit 2 ;;
  esac
  for d in launch/launch launch_ros/launch_ros osrf_pycommon; do
    [[ -d "$SRC/$distro/$d" ]] || { echo "$0: missing $SRC/$distro/$d" >&2; exit 2; }
  done
  echo "=== launch check: $distro ($venv, $install; sources in $SRC/$distro)"
  (
    unset VIRTUAL_ENV PYTHONPATH AMENT_PREFIX_PATH CMAKE_PREFIX_PATH LD_LIBRARY_PATH _ROS_WHEELS_BOOTSTRAP_COMPLETE
    export MOBILE_O_VENV="$venv" MOBILE_O_INSTALL="$install"
    # shellcheck disable=SC1091
    . "$ROOT/scripts/env.sh"
    export PYTHONPATH="$SRC/$distro/launch/launch:$SRC/$distro/launch_ros/launch_ros:$SRC/$distro/osrf_pycommon:$STUB:$PYTHONPATH"
    export ROS_DOMAIN_ID=$(( 150 + RANDOM % 60 )) ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
    python "$ROOT/scripts/lane_check.py"
    python -c "import launch, launch_ros; print('launch', launch.__file__); print('launch_ros', launch_ros.__file__)"
    python "$ROOT/scripts/check_launch.py" check --model-dir "$EXPORT"
  ) || rc=1
done
exit "$rc"
