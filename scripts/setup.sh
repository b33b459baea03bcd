#!/usr/bin/env bash
# Build the development environment of mobile_o_ros in the repository:
#   .venv/     Python 3.11 venv with requirements/{export,dev,ros}.txt and our package (non-editable)
#   build/     colcon build tree of the ament_cmake package (generated msg/srv/action code)
#   install/   colcon install tree (--merge-install --symlink-install); scripts/env.sh puts it first
# plus the two /opt/python/cp311-cp311 include links that the ROS wheels' CMake files hard-code.
#
# Every step is skipped when its inputs are unchanged (hash stamps under .venv/), so a second run takes a
# few seconds. Environment knobs:
#   PYTHON=python3.11          interpreter for the venv (must be CPython 3.11: the ROS wheels are cp311)
#   MOBILE_O_TIERS="export dev ros"   requirement files to install (e.g. "runtime dev ros" skips torch)
#   MOBILE_O_FORCE=1           ignore the stamps and redo every step
# See DEVELOPERS.md for the why of each step.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python3}"
TIERS="${MOBILE_O_TIERS:-export dev ros}"
VENV="$ROOT/.venv"
VPY="$VENV/bin/python"
FORCE="${MOBILE_O_FORCE:-0}"

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }
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
# pip, with its output kept in .venv/pip.log and shown (minus local-index noise) only on failure.
pip_quiet() {
  "$VPY" -m pip "$@" > "$VENV/pip.log" 2>&1 \
    || { grep -v "is ignored: it is neither a file nor a directory" "$VENV/pip.log" | tail -n 40 >&2
         die "pip $* failed (full log: .venv/pip.log)"; }
}
stamp_ok() { [[ "$FORCE" != 1 && -f "$1" && "$(cat "$1")" == "$2" ]]; }

# ------------------------------------------------------------------------------------------- 1. venv
command -v "$PYTHON" >/dev/null || die "$PYTHON not found"
PYVER="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[[ "$PYVER" == 3.11 ]] || die "$PYTHON is Python $PYVER; the ROS 2 wheels need CPython 3.11 (set PYTHON=...)"

if [[ -x "$VPY" ]] && ! "$VPY" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then
  log "existing .venv is broken or not Python 3.11: recreating it"
  rm -rf "$VENV"
fi
BOOT_HASH="$(hash_files requirements/bootstrap.txt)-$PYVER"
if [[ ! -x "$VPY" ]]; then
  log "creating .venv with $("$PYTHON" -c 'import sys; print(sys.executable)') ($PYVER)"
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
  log "installing requirements: $TIERS (torch comes from local disk; first run takes a few minutes)"
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
  log "installing mobile_o_ros into .venv (pip install --no-deps .)"
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
if [[ " $TIERS " == *" ros "* ]]; then
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
if [[ " $TIERS " == *" ros "* ]]; then
  COLCON_HASH="$(hash_files package.xml CMakeLists.txt msg/* srv/* action/*)-$(hash_names mobile_o_ros scripts/nodes launch config)-$REQ_HASH-$ROOT"
  SITE="$ROOT/install/lib/python$PYVER/site-packages"
  if ! stamp_ok "$VENV/.stamp-colcon" "$COLCON_HASH" || [[ ! -d "$SITE/mobile_o_ros/msg" ]]; then
    t=$(now)
    log "colcon build (interfaces + install tree)"
    # Drop the previously installed Python package so removed/renamed files leave no stale links.
    rm -rf "$SITE/mobile_o_ros"
    mkdir -p "$ROOT/log"
    (
      # A clean environment: only the venv's ROS, whatever else the calling shell had sourced.
      unset PYTHONPATH COLCON_PREFIX_PATH ROS_DISTRO ROS_VERSION _ROS_WHEELS_BOOTSTRAP_COMPLETE PYTHONSAFEPATH
      export VIRTUAL_ENV="$VENV"
      export PATH="$VENV/bin:$PATH"
      export AMENT_PREFIX_PATH="$VENV"
      export CMAKE_PREFIX_PATH="$VENV"
      export LD_LIBRARY_PATH="$VENV/lib"
      export MAKEFLAGS="-j$(nproc)"
      "$VENV/bin/colcon" --log-base "$ROOT/log" build \
        --merge-install --symlink-install \
        --base-paths "$ROOT" --build-base "$ROOT/build" --install-base "$ROOT/install" \
        --event-handlers console_cohesion+ summary+ desktop_notification- \
        --cmake-args -DPython3_EXECUTABLE="$VPY" -DPython3_FIND_VIRTUALENV=ONLY -DBUILD_TESTING=OFF \
                     -DPython3_NumPy_INCLUDE_DIR="$NP_INC_LINK" \
        > "$ROOT/log/colcon-build.txt" 2>&1 \
        || { tail -n 60 "$ROOT/log/colcon-build.txt" >&2; die "colcon build failed (full log: log/colcon-build.txt)"; }
    )
    [[ -d "$SITE/mobile_o_ros/msg" ]] || die "colcon build produced no $SITE/mobile_o_ros/msg"
    echo "$COLCON_HASH" > "$VENV/.stamp-colcon"
    log "colcon build done in $(( $(now) - t ))s"
  fi
fi

log "ready in $(( $(now) - T0 ))s; now: . scripts/env.sh"
