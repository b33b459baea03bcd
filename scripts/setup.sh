#!/usr/bin/env bash
# Build the development environment of mobile_o_ros in the repository:
#   .venv/     Python 3.11 venv with requirements/{export,dev,ros}.txt and our package (non-editable)
#   build/     colcon build tree of the ament_cmake package (generated msg/srv/action code)
#   install/   colcon install tree (--merge-install --symlink-install); scripts/env.sh puts it first
# plus the two /opt/python/cp311-cp311 include links that the ROS wheels' CMake files hard-code.
#
# Every step is skipped when its inputs are unchanged (hash stamps under the venv), so a second run takes
# a few seconds. Environment knobs:
#   MOBILE_O_TIERS="export dev ros"   requirement files to install (e.g. "runtime dev ros" skips torch,
#                              "runtime dev ros-jazzy" takes ROS 2 Jazzy); with a ros* tier the script
#                              also links the include dirs and colcon-builds the interfaces
#   MOBILE_O_PYTHON_VERSION=3.11  the venv's Python: 3.11 with a ros* tier (the ROS wheels are cp311),
#                              3.10-3.12 without
#   PYTHON=...                 interpreter for the venv (default: pythonX.Y on PATH, else pyenv's X.Y.*)
#   MOBILE_O_VENV=.venv        the venv; MOBILE_O_BUILD=build, MOBILE_O_INSTALL=install, MOBILE_O_LOG=log
#                              colcon's build, install and log bases (relative paths: to the repository)
#   MOBILE_O_FORCE=1           ignore the stamps and redo every step
# `make test-py310` and `make test-jazzy` build their own venvs this way (see the Makefile).
# See DEVELOPERS.md for the why of each step.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TIERS="${MOBILE_O_TIERS:-export dev ros}"
abs_path() { case "$1" in /*) printf '%s' "$1" ;; *) printf '%s' "$ROOT/$1" ;; esac; }
VENV="$(abs_path "${MOBILE_O_VENV:-.venv}")"
BUILD_BASE="$(abs_path "${MOBILE_O_BUILD:-build}")"
INSTALL_BASE="$(abs_path "${MOBILE_O_INSTALL:-install}")"
LOG_BASE="$(abs_path "${MOBILE_O_LOG:-log}")"
VPY="$VENV/bin/python"
VNAME="$(basename "$VENV")"
FORCE="${MOBILE_O_FORCE:-0}"
WITH_ROS=0
for tier in $TIERS; do [[ "$tier" == ros || "$tier" == ros-* ]] && WITH_ROS=1; done
WANT_PY="${MOBILE_O_PYTHON_VERSION:-3.11}"

log() { printf '[setup %s] %s\n' "$VNAME" "$*"; }
die() { printf '[setup %s] error: %s\n' "$VNAME" "$*" >&2; exit 1; }
now() { date +%s; }
T0=$(now)

# Hash of the given files' contents (missing files hash as absent).
hash_files() {
  local f
  for f in "$@"; do
    if [[ -f "$f" ]]; then printf '%s\n' "$f"; cat "$f"; else printf 'absent %s\n' "$f"; fi
  done | sha256sum | cut -d' ' -f1
}
# Hash of the names (not contents) of the files under the given directories.
hash_names() {
  local d
  for d in "$@"; do
    [[ -d "$d" ]] || { printf 'absent %s\n' "$d"; continue; }
    find "$d" -path '*/__pycache__' -prune -o \( -type f -o -type l \) -print | LC_ALL=C sort
  done | sha256sum | cut -d' ' -f1
}
# pip, with its output kept in the venv's pip.log and shown (minus local-index noise) only on failure.
pip_quiet() {
  "$VPY" -m pip "$@" > "$VENV/pip.log" 2>&1 \
    || { grep -v "is ignored: it is neither a file nor a directory" "$VENV/pip.log" | tail -n 40 >&2
         die "pip $* failed (full log: $VENV/pip.log)"; }
}
stamp_ok() { [[ "$FORCE" != 1 && -f "$1" && "$(cat "$1")" == "$2" ]]; }

# ------------------------------------------------------------------------------------------- 1. venv
case "$WANT_PY" in
  3.11) ;;
  3.10|3.12) [[ "$WITH_ROS" == 0 ]] || die "the ROS 2 wheels need CPython 3.11 (MOBILE_O_PYTHON_VERSION=$WANT_PY, tiers: $TIERS)" ;;
  *) die "MOBILE_O_PYTHON_VERSION=$WANT_PY: the package supports Python 3.10 to 3.12" ;;
esac
# The interpreter: $PYTHON, else pythonX.Y on PATH, else the newest X.Y.* that pyenv has installed.
find_python() {
  local cand
  if command -v "python$WANT_PY" >/dev/null && "python$WANT_PY" -c pass 2>/dev/null; then
    command -v "python$WANT_PY"; return 0
  fi
  if command -v pyenv >/dev/null; then
    cand="$(ls -d "$(pyenv root)"/versions/"$WANT_PY".*/bin/python"$WANT_PY" 2>/dev/null | sort -V | tail -n 1)"
    [[ -n "$cand" ]] && { printf '%s\n' "$cand"; return 0; }
  fi
  if [[ "$WANT_PY" == 3.11 ]] && command -v python3 >/dev/null; then command -v python3; return 0; fi
  return 1
}
PYTHON="${PYTHON:-$(find_python || true)}"
[[ -n "$PYTHON" ]] && command -v "$PYTHON" >/dev/null || die "no Python $WANT_PY found (set PYTHON=...)"
PYVER="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[[ "$PYVER" == "$WANT_PY" ]] || die "$PYTHON is Python $PYVER, not $WANT_PY (set PYTHON=... or MOBILE_O_PYTHON_VERSION=...)"

if [[ -x "$VPY" ]] && [[ "$("$VPY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" != "$PYVER" ]]; then
  log "existing $VNAME is broken or not Python $PYVER: recreating it"
  rm -rf "$VENV"
fi
BOOT_HASH="$(hash_files requirements/bootstrap.txt)-$PYVER"
if [[ ! -x "$VPY" ]]; then
  log "creating $VNAME with $("$PYTHON" -c 'import sys; print(sys.executable)') ($PYVER)"
  "$PYTHON" -m venv "$VENV"
fi
if ! stamp_ok "$VENV/.stamp-bootstrap" "$BOOT_HASH"; then
  log "upgrading pip/setuptools/wheel (requirements/bootstrap.txt)"
  pip_quiet install --upgrade -r requirements/bootstrap.txt
  echo "$BOOT_HASH" > "$VENV/.stamp-bootstrap"
fi

# ------------------------------------------------------------------------------ 2. pinned requirements
REQ_ARGS=()
REQ_FILES=(requirements/bootstrap.txt requirements/runtime.txt)
for tier in $TIERS; do
  [[ -f "requirements/$tier.txt" ]] || die "no requirements/$tier.txt (MOBILE_O_TIERS=$TIERS)"
  REQ_ARGS+=(-r "requirements/$tier.txt")
  REQ_FILES+=("requirements/$tier.txt")
done
REQ_HASH="$(hash_files "${REQ_FILES[@]}")-$TIERS"
if ! stamp_ok "$VENV/.stamp-requirements" "$REQ_HASH"; then
  t=$(now)
  if [[ " $TIERS " == *" export "* ]]; then
    log "installing requirements: $TIERS (torch comes from local disk; first run takes a few minutes)"
  else
    log "installing requirements: $TIERS"
  fi
  # One resolver run over all tiers, so the pins are checked against each other.
  pip_quiet install "${REQ_ARGS[@]}"
  "$VPY" -m pip check >/dev/null || { "$VPY" -m pip check || true; die "pip check reports broken requirements"; }
  echo "$REQ_HASH" > "$VENV/.stamp-requirements"
  rm -f "$VENV/.stamp-package" "$VENV/.stamp-colcon"   # rebuild what depends on the venv contents
  log "requirements installed in $(( $(now) - t ))s"
fi

# --------------------------------------------------------------------- 3. our package, non-editable
# Non-editable and --no-deps: gives the venv the `mobile-o` console script. env.sh puts the colcon
# install (which also holds the generated msg/srv/action modules) ahead of this copy on PYTHONPATH; an
# editable install would instead inject the source tree, which lacks the generated interfaces.
PKG_HASH="$(hash_files setup.py)-$(hash_names mobile_o_ros)-$REQ_HASH"
if ! stamp_ok "$VENV/.stamp-package" "$PKG_HASH"; then
  log "installing mobile_o_ros into $VNAME (pip install --no-deps .)"
  # From a scratch copy: setuptools builds in-tree (build/, *.egg-info) and would otherwise leave its
  # artefacts in the source dir and in colcon's build/ (and re-ship stale files from build/lib later).
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  cp -r setup.py mobile_o_ros "$tmp/"
  [[ -f README.md ]] && cp README.md "$tmp/"
  find "$tmp" -name __pycache__ -prune -exec rm -rf {} +
  pip_quiet install --no-deps --no-build-isolation --force-reinstall "$tmp"
  rm -rf "$tmp"
  echo "$PKG_HASH" > "$VENV/.stamp-package"
fi

# ------------------------------------------------------------------- 4. /opt/python include links
# The ROS wheels were built in a manylinux image; their exported CMake targets name these two include
# dirs literally, and CMake refuses targets whose include dirs do not exist.
link_if_missing() {  # link_if_missing TARGET LINK
  local target="$1" link="$2"
  [[ -d "$target" ]] || die "include dir $target not found"
  if [[ -e "$link" ]]; then return 0; fi            # exists (a dir or a working link): leave it
  if [[ -L "$link" ]]; then rm -f "$link"; fi        # dangling link (e.g. a deleted checkout's venv)
  mkdir -p "$(dirname "$link")" || die "cannot create $(dirname "$link") (run as root, or create $link -> $target)"
  ln -s "$target" "$link"
  log "linked $link -> $target"
}
if [[ "$WITH_ROS" == 1 ]]; then
  PY_INC="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  NP_INC="$("$VPY" -c 'import numpy, os; print(os.path.join(os.path.dirname(numpy.__file__), "_core", "include"))')"
  link_if_missing "$PY_INC" /opt/python/cp311-cp311/include/python3.11
  NP_INC_LINK=/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include
  link_if_missing "$NP_INC" "$NP_INC_LINK"
fi

# ----------------------------------------------------------------------------------- 5. colcon build
# Re-run only when the interfaces or the build description change, or when the set of files to
# install changes (--symlink-install links each file, so a new .py/launch/config file needs an
# install; edits to existing files need nothing).
if [[ "$WITH_ROS" == 1 ]]; then
  COLCON_HASH="$(hash_files package.xml CMakeLists.txt msg/* srv/* action/*)-$(hash_names mobile_o_ros scripts/nodes launch config)-$REQ_HASH-$ROOT-$INSTALL_BASE"
  SITE="$INSTALL_BASE/lib/python$PYVER/site-packages"
  if ! stamp_ok "$VENV/.stamp-colcon" "$COLCON_HASH" || [[ ! -d "$SITE/mobile_o_ros/msg" ]]; then
    t=$(now)
    log "colcon build (interfaces + install tree)"
    # Drop the previously installed Python package so removed/renamed files leave no stale links.
    rm -rf "$SITE/mobile_o_ros"
    mkdir -p "$LOG_BASE"
    (
      # A clean environment: only the venv's ROS, whatever else the calling shell had sourced.
      unset PYTHONPATH COLCON_PREFIX_PATH ROS_DISTRO ROS_VERSION _ROS_WHEELS_BOOTSTRAP_COMPLETE PYTHONSAFEPATH
      export VIRTUAL_ENV="$VENV"
      export PATH="$VENV/bin:$PATH"
      export AMENT_PREFIX_PATH="$VENV"
      export CMAKE_PREFIX_PATH="$VENV"
      export LD_LIBRARY_PATH="$VENV/lib"
      export MAKEFLAGS="-j$(nproc)"
      "$VENV/bin/colcon" --log-base "$LOG_BASE" build \
        --merge-install --symlink-install \
        --base-paths "$ROOT" --build-base "$BUILD_BASE" --install-base "$INSTALL_BASE" \
        --event-handlers console_cohesion+ summary+ desktop_notification- \
        --cmake-args -DPython3_EXECUTABLE="$VPY" -DPython3_FIND_VIRTUALENV=ONLY -DBUILD_TESTING=OFF \
                     -DPython3_NumPy_INCLUDE_DIR="$NP_INC_LINK" \
        > "$LOG_BASE/colcon-build.txt" 2>&1 \
        || { tail -n 60 "$LOG_BASE/colcon-build.txt" >&2; die "colcon build failed (full log: $LOG_BASE/colcon-build.txt)"; }
    )
    [[ -d "$SITE/mobile_o_ros/msg" ]] || die "colcon build produced no $SITE/mobile_o_ros/msg"
    echo "$COLCON_HASH" > "$VENV/.stamp-colcon"
    log "colcon build done in $(( $(now) - t ))s"
  fi
fi

if [[ "$VENV" == "$ROOT/.venv" && "$INSTALL_BASE" == "$ROOT/install" ]]; then
  log "ready in $(( $(now) - T0 ))s; now: . scripts/env.sh"
else
  log "ready in $(( $(now) - T0 ))s; now: MOBILE_O_VENV=$VENV MOBILE_O_INSTALL=$INSTALL_BASE . scripts/env.sh"
fi
