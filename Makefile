# Developer entry points. Every target first runs `setup`, which is a few-second no-op once the
# environment is built (hash stamps under .venv/; see scripts/setup.sh and DEVELOPERS.md).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

ENV := . scripts/env.sh &&
PYTEST_ARGS ?=

.PHONY: help setup test test-gpu demo bench lint clean distclean

help:
	@echo "make setup     build .venv (pinned requirements), /opt/python include links, colcon build"
	@echo "make test      run the test suite (pytest test -q -rfEs) and report skipped tests"
	@echo "make test-gpu  run only the GPU tests (pytest -m gpu)"
	@echo "make demo      mobile-o demo --out demo_out"
	@echo "make bench     mobile-o bench --out bench_out"
	@echo "make lint      ruff check"
	@echo "make clean     remove build/ install/ log/ and outputs (keeps .venv); distclean also .venv"

setup:
	@bash scripts/setup.sh

test: setup
	@rm -f log/pytest.txt; mkdir -p log
	@rc=0; $(ENV) python -m pytest test -q -rfEs $(PYTEST_ARGS) 2>&1 | tee log/pytest.txt || rc=$$?; \
	 skipped=$$(tail -n 5 log/pytest.txt | grep -Eo '[0-9]+ skipped' | tail -n 1 | grep -Eo '[0-9]+' || true); \
	 echo "make test: $${skipped:-0} test(s) skipped (reasons in the summary above)"; \
	 exit $$rc

test-gpu: setup
	@rc=0; $(ENV) python -m pytest test -q -rfEs -m gpu $(PYTEST_ARGS) || rc=$$?; \
	 if [ $$rc -eq 5 ]; then echo "make test-gpu: no GPU tests collected"; rc=0; fi; exit $$rc

demo: setup
	$(ENV) mobile-o demo --out demo_out

bench: setup
	$(ENV) mobile-o bench --out bench_out

lint: setup
	$(ENV) ruff check .

clean:
	rm -rf build install log demo_out bench_out .pytest_cache .ruff_cache *.egg-info
	rm -f .venv/.stamp-colcon .venv/.stamp-package
	find . -path ./.venv -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf .venv
