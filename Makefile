# Developer entry points. Every target first runs `setup`, which is a few-second no-op once the
# environment is built (hash stamps under .venv/; see scripts/setup.sh and DEVELOPERS.md).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

ENV := . scripts/env.sh &&
PYTEST_ARGS ?=

# The test lanes beside the main suite (see DEVELOPERS.md "Test lanes"): each has its own venv (and, for
# Jazzy, its own colcon build/install/log trees), built by the same scripts/setup.sh, and runs the tests
# that need no torch against the tiny export that the main venv writes to $(TINY_EXPORT).
TINY_EXPORT := .cache/tiny-export
PY310 := MOBILE_O_VENV=.venv-py310 MOBILE_O_TIERS=py310 MOBILE_O_PYTHON_VERSION=3.10
JAZZY := MOBILE_O_VENV=.venv-jazzy MOBILE_O_TIERS="runtime dev ros-jazzy" MOBILE_O_PYTHON_VERSION=3.11 \
	MOBILE_O_BUILD=build-jazzy MOBILE_O_INSTALL=install-jazzy MOBILE_O_LOG=log-jazzy
# A lane's shell: the other environments' variables cleared, then its own env.sh.
LANE_ENV := unset VIRTUAL_ENV PYTHONPATH PYTHONSAFEPATH AMENT_PREFIX_PATH CMAKE_PREFIX_PATH LD_LIBRARY_PATH \
	_ROS_WHEELS_BOOTSTRAP_COMPLETE MOBILE_O_VENV MOBILE_O_INSTALL; export MOBILE_O_TINY_EXPORT=$(CURDIR)/$(TINY_EXPORT);

.PHONY: help setup test test-fast test-gpu gpu-first-run test-py310 test-jazzy setup-py310 setup-jazzy tiny-export demo bench lint \
	clean distclean

help:
	@echo "make setup     build .venv (pinned requirements), /opt/python include links, colcon build"
	@echo "make test      run the test suite (pytest test -q -rfEs) and report skipped tests"
	@echo "make test-fast the unit tests: no ROS 2 node or DDS server, no GPU, no training (about 1.5 min on 2 cores)"
	@echo "make test-gpu  run only the GPU tests (pytest -m gpu)"
	@echo "make gpu-first-run  mobile-o gpu-report: what the first TensorRT GPU must answer (gpu_report/)"
	@echo "make test-py310  the torch-free runtime tier on Python 3.10 + numpy 1.26 (.venv-py310)"
	@echo "make test-jazzy  the ROS tests (and the runtime tier) on ROS 2 Jazzy (.venv-jazzy, install-jazzy/)"
	@echo "make demo      mobile-o demo --out demo_out"
	@echo "make bench     mobile-o bench --out bench_out"
	@echo "make lint      ruff check, ruff format --check, the import contract (.importlinter), mypy (runtime/, ros/)"
	@echo "make clean     remove build/ install/ log/ and outputs (keeps the venvs); distclean also the venvs"

setup:
	@bash scripts/setup.sh

test: setup
	@rm -f log/pytest.txt; mkdir -p log
	@$(ENV) python scripts/lane_check.py
	@rc=0; $(ENV) python -m pytest test -q -rfEs $(PYTEST_ARGS) 2>&1 | tee log/pytest.txt || rc=$$?; \
	 skipped=$$(tail -n 5 log/pytest.txt | grep -Eo '[0-9]+ skipped' | tail -n 1 | grep -Eo '[0-9]+' || true); \
	 echo "make test: $${skipped:-0} test(s) skipped (reasons in the summary above)"; \
	 exit $$rc

# The main suite's unit tests (test/conftest.py: the ros, gpu and slow marks).
test-fast: setup
	@$(ENV) python -m pytest test -q -rfEs -m "not ros and not gpu and not slow" $(PYTEST_ARGS)

test-gpu: setup
	@rc=0; $(ENV) python -m pytest test -q -rfEs -m gpu $(PYTEST_ARGS) || rc=$$?; \
	 if [ $$rc -eq 5 ]; then echo "make test-gpu: no GPU tests collected"; rc=0; fi; exit $$rc

gpu-first-run: setup
	$(ENV) mobile-o gpu-report --out gpu_report

tiny-export: setup
	@$(ENV) python scripts/tiny_export.py $(TINY_EXPORT)

setup-py310:
	@$(PY310) bash scripts/setup.sh

setup-jazzy:
	@$(JAZZY) bash scripts/setup.sh

test-py310: setup-py310 tiny-export
	@mkdir -p log; rm -f log/pytest-py310.txt
	@$(LANE_ENV) MOBILE_O_VENV=.venv-py310 . scripts/env.sh && export MOBILE_O_TEST_LANE=runtime && \
	 python scripts/lane_check.py && \
	 python -m pytest test -q -rfEs $(PYTEST_ARGS) 2>&1 | tee log/pytest-py310.txt

test-jazzy: setup-jazzy tiny-export
	@mkdir -p log-jazzy; rm -f log-jazzy/pytest.txt
	@$(LANE_ENV) MOBILE_O_VENV=.venv-jazzy MOBILE_O_INSTALL=install-jazzy . scripts/env.sh && \
	 export MOBILE_O_TEST_LANE=ros && python scripts/lane_check.py && \
	 python -m pytest test -q -rfEs $(PYTEST_ARGS) 2>&1 | tee log-jazzy/pytest.txt

demo: setup
	$(ENV) mobile-o demo --out demo_out

bench: setup
	$(ENV) mobile-o bench --out bench_out

lint: setup
	@$(ENV) bash scripts/lint.sh

clean:
	rm -rf build install log demo_out bench_out .pytest_cache .ruff_cache *.egg-info
	rm -rf build-jazzy install-jazzy log-jazzy $(TINY_EXPORT) $(TINY_EXPORT)-int8
	rm -f .venv/.stamp-colcon .venv/.stamp-package .venv-jazzy/.stamp-colcon .venv-jazzy/.stamp-package \
	 .venv-py310/.stamp-package
	find . -path ./.venv -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf .venv .venv-py310 .venv-jazzy
