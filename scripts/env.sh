# Source me (bash or zsh), from any directory:   . /path/to/mobile_o_ros/scripts/env.sh
#
# Activates the repo's .venv and the colcon install tree built by scripts/setup.sh (`make setup`):
#   PATH, VIRTUAL_ENV       the venv (python, pip, colcon, mobile-o)
#   AMENT_PREFIX_PATH       install/ then .venv (ROS packages: ours, then the pip-installed ROS wheels)
#   CMAKE_PREFIX_PATH       same, for building other packages against ours
#   PYTHONPATH              install/lib/python3.11/site-packages FIRST: that copy of mobile_o_ros holds
#                           the generated msg/srv/action modules (its .py files are symlinks to the
#                           sources); the venv's copy only exists for the `mobile-o` console script
#   PYTHONSAFEPATH=1        python -c/-m/script do not put the cwd/script dir first on sys.path, so the
#                           source tree's mobile_o_ros (no generated interfaces) never shadows install/
#   LD_LIBRARY_PATH         install/lib (our generated typesupport libs), .venv/lib and the wheels'
#                           ros_*.libs dirs; _ROS_WHEELS_BOOTSTRAP_COMPLETE=1 then stops the wheels'
#                           .pth hook from re-exec'ing every python process to set the same thing
#   RMW_IMPLEMENTATION      rmw_fastrtps_cpp (the only RMW installed; overrides any earlier value)
#   ROS_DOMAIN_ID           0 unless already set
# Any other ROS environment (/opt/ros/... sourced earlier) is replaced, not extended.
#
# Another venv / install tree (the test lanes; see scripts/setup.sh):
#   MOBILE_O_VENV=.venv-jazzy MOBILE_O_INSTALL=install-jazzy . scripts/env.sh
#   MOBILE_O_VENV=.venv-py310 . scripts/env.sh     a venv without ROS: no install tree; the repository
#                                                 root goes first on PYTHONPATH instead
# Relative paths are taken from the repository root. The active ones show in VIRTUAL_ENV and as the first
# two entries of AMENT_PREFIX_PATH (install, venv).

if [ -n "${BASH_SOURCE[0]:-}" ]; then
  _mo_src="${BASH_SOURCE[0]}"
elif [ -n "${ZSH_VERSION:-}" ]; then
  # shellcheck disable=SC2296
  _mo_src="${(%):-%x}"
else
  _mo_src="$0"
fi
MOBILE_O_ROOT="$(cd "$(dirname "$_mo_src")/.." && pwd)"
unset _mo_src
export MOBILE_O_ROOT

case "${MOBILE_O_VENV:-.venv}" in /*) _mo_venv="${MOBILE_O_VENV}" ;; *) _mo_venv="$MOBILE_O_ROOT/${MOBILE_O_VENV:-.venv}" ;; esac
case "${MOBILE_O_INSTALL:-install}" in /*) _mo_inst="${MOBILE_O_INSTALL}" ;; *) _mo_inst="$MOBILE_O_ROOT/${MOBILE_O_INSTALL:-install}" ;; esac
if [ ! -x "$_mo_venv/bin/python" ]; then
  echo "scripts/env.sh: $_mo_venv is missing: run 'make setup' first" >&2
  unset _mo_venv _mo_inst
  return 1 2>/dev/null || exit 1
fi

# shellcheck disable=SC1091
. "$_mo_venv/bin/activate"

_mo_pyver="$("$_mo_venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo 3.11)"
_mo_site_venv="$_mo_venv/lib/python$_mo_pyver/site-packages"
_mo_site_inst="$_mo_inst/lib/python$_mo_pyver/site-packages"

# _mo_prepend VAR DIR: put DIR first in the colon list VAR, removing an earlier copy (re-sourcing is safe).
_mo_prepend() {
  _mo_cur="$(eval "printf '%s' \"\${$1:-}\"")"
  _mo_new="$2"
  _mo_old_ifs="$IFS"; IFS=:
  for _mo_p in $_mo_cur; do
    [ -n "$_mo_p" ] && [ "$_mo_p" != "$2" ] && _mo_new="$_mo_new:$_mo_p"
  done
  IFS="$_mo_old_ifs"
  export "$1=$_mo_new"
  unset _mo_cur _mo_new _mo_old_ifs _mo_p
}

export AMENT_PREFIX_PATH="$_mo_inst:$_mo_venv"
export CMAKE_PREFIX_PATH="$_mo_inst:$_mo_venv"
unset COLCON_PREFIX_PATH ROS_DISTRO

# Drop the other lanes' trees from PYTHONPATH (re-sourcing with another venv is safe).
_mo_old_ifs="$IFS"; IFS=:; _mo_keep=""
for _mo_p in ${PYTHONPATH:-}; do
  case "$_mo_p" in
    "$MOBILE_O_ROOT"|"$MOBILE_O_ROOT"/install*/lib/python*/site-packages) ;;
    *) [ -n "$_mo_p" ] && _mo_keep="${_mo_keep:+$_mo_keep:}$_mo_p" ;;
  esac
done
IFS="$_mo_old_ifs"; PYTHONPATH="$_mo_keep"; export PYTHONPATH; unset _mo_old_ifs _mo_keep _mo_p
if [ -d "$_mo_site_venv/rclpy" ]; then
  _mo_prepend PYTHONPATH "$_mo_site_inst"
else
  _mo_prepend PYTHONPATH "$MOBILE_O_ROOT"   # a venv without ROS: the sources themselves
fi
export PYTHONSAFEPATH=1

_mo_prepend LD_LIBRARY_PATH "$_mo_venv/lib"
for _mo_d in "$_mo_site_venv"/ros_*.libs; do
  [ -d "$_mo_d" ] && _mo_prepend LD_LIBRARY_PATH "$_mo_d"
done
_mo_prepend LD_LIBRARY_PATH "$_mo_inst/lib"
export _ROS_WHEELS_BOOTSTRAP_COMPLETE=1

export RMW_IMPLEMENTATION=rmw_fastrtps_cpp   # the only RMW in .venv; a value from another ROS env would fail
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-0}"

if [ -d "$_mo_site_venv/rclpy" ] && [ ! -d "$_mo_site_inst/mobile_o_ros/msg" ]; then
  echo "scripts/env.sh: warning: no colcon install in $_mo_inst (run 'make setup'); the ROS interfaces will not import" >&2
fi
unset _mo_pyver _mo_site_venv _mo_site_inst _mo_d _mo_venv _mo_inst
unset -f _mo_prepend
