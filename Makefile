# Two commands do all the set-up on a fresh machine with python3 and pip:
#   make demo   run the bundled demo
#   make test   run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
TOOLS := .tools

# uv from PATH if present, else installed from PyPI into .tools/ (kept apart from .venv,
# which `uv sync` keeps exactly to the lock).
UV := $(shell command -v uv 2>/dev/null || echo $(TOOLS)/bin/uv)

export UV_PYTHON_DOWNLOADS := never
export DO_NOT_TRACK := true
export DVC_NO_ANALYTICS := 1

.PHONY: demo test check sync toolchain bench bento clean

$(TOOLS)/bin/uv:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv

# llama-cpp-python compiles on install: it needs a C++ compiler and CMake (installed from Debian's
# packages when missing and run as root; otherwise say what to install).
toolchain:
	@command -v g++ >/dev/null && command -v cmake >/dev/null && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing build-essential and cmake (llama-cpp-python compiles on install)"; \
	  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential cmake >/dev/null; \
	else echo "llama-cpp-python needs a C++ compiler and CMake: install them (e.g. build-essential, cmake)" >&2; exit 2; fi

sync: toolchain $(if $(findstring $(TOOLS),$(UV)),$(TOOLS)/bin/uv)
	$(UV) sync --frozen --extra servers --python $(PYTHON) --quiet --compile-bytecode

demo: sync
	$(VENV)/bin/conveyor demo

# Lint, format, types, the layers' imports and the documentation site (mkdocs.yml; strict: any warning fails) first; then the suite, with a private PostgreSQL on 127.0.0.1 (started,
# then stopped, by the script).
check: sync
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-logo --no-cache   # the layers' import contract (pyproject.toml: tool.importlinter)
	$(VENV)/bin/mkdocs build --strict --quiet

test: check
	bash scripts/with-test-services.sh $(VENV)/bin/python -m pytest

# The service's Bento, from the package's wheel and uv.lock's pins (scripts/bento.sh)
bento: sync
	CONVEYOR_VENV_BIN=$(CURDIR)/$(VENV)/bin bash scripts/bento.sh

bench: sync
	$(VENV)/bin/python bench/run.py

clean:
	rm -rf $(VENV) $(TOOLS) .conveyor
