# `make demo` and `make test` set everything up on a fresh machine: a virtualenv in .venv, torch from
# the machine's own wheels where present, the project, and Debian's Fashion-MNIST package.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.embedlab-installed
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist
ARCH := $(shell uname -m)
ifeq ($(ARCH),aarch64)
TORCH_PINS := torch==2.9.1 torchvision==0.24.1
else
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
endif

.PHONY: demo test lint setup fashion-mnist browser clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/pip install --quiet $(TORCH_PINS)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

fashion-mnist:
	@if [ -e $(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz ] || [ -n "$$EMBEDLAB_FASHION_MNIST_DIR" ]; then \
		true; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null)) && \
		echo "installed Debian's dataset-fashion-mnist"; \
	else \
		echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist' or set EMBEDLAB_FASHION_MNIST_DIR"; \
	fi

# Debian's Chromium drives the browser tests of the search page and the report (Playwright launches it
# by path; nothing downloads a browser build).
browser:
	@if command -v chromium >/dev/null; then \
		true; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -qq chromium >/dev/null 2>&1 || \
		 (apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null)) && \
		echo "installed Debian's chromium"; \
	else \
		echo "Chromium is missing: run 'sudo apt-get install chromium' for the browser tests"; \
	fi

demo: setup fashion-mnist
	$(BIN)/embedlab demo --out demo-output

test: setup fashion-mnist browser
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf demo-output runs .pytest_cache
