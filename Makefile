# Two entry points, both self-contained on a fresh machine:
#   make demo   set up .venv and run the offline demo
#   make test   set up .venv (+ test tools, Debian's chromium) and run the whole test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU wheel of torch; for a GPU machine: make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup setup-test demo test lint

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

setup: $(BIN)/python
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e .

setup-test: setup
	$(BIN)/pip install -q -e '.[test]'
	@command -v chromium >/dev/null || (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q && apt-get install -y -q chromium)) || echo "warning: chromium not installed; browser tests will be skipped"

demo: setup
	$(BIN)/prefloop demo

test: setup-test
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

lint: setup-test
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy src
