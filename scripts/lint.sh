#!/usr/bin/env bash
# `make lint`: every check runs, each one's output is shown, and the last lines say which failed.
#   ruff-check    ruff check .                 (rules in ruff.toml)
#   ruff-format   ruff format --check .        (formatting; lists the files, rewrites nothing)
#   imports       lint-imports                 (the import contract in .importlinter)
#   types         mypy                         (runtime/ and ros/, settings in mypy.ini)
# The import contract and the type check read the source tree (PYTHONPATH=the repository), not install/,
# whose copy of the package also holds the generated interfaces. Run inside scripts/env.sh's environment.
# Exit status: 0 when every check passed, else 1.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

failed=()
run_check() {
  local name="$1"
  shift
  echo "--- lint: $name: $*"
  if "$@"; then
    echo "--- lint: $name ok"
  else
    echo "--- lint: $name FAILED"
    failed+=("$name")
  fi
}

run_check ruff-check ruff check .
run_check ruff-format ruff format --check --output-format concise .
run_check imports env PYTHONPATH="$ROOT" lint-imports --no-cache
run_check types env PYTHONPATH="$ROOT" mypy

if ((${#failed[@]})); then
  echo "make lint: FAILED: ${failed[*]} (of ruff-check ruff-format imports types)"
  exit 1
fi
echo "make lint: passed (ruff-check ruff-format imports types)"
