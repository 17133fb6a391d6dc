# mcrobust: one venv, two commands (`make demo`, `make test`). Set-up is idempotent: it reinstalls
# only when the package metadata changed since the last successful install.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.mcrobust-installed
# torch comes from the files on this machine's disk; the package itself accepts a range.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
# worksteal: a worker that runs out of tests takes queued ones from the other, so the few long end-to-end tests do not
# leave one worker running alone at the end (measured 2026-12-07 on 2 idle cores: pytest 501 s, 652 s with 'load').
PYTEST_ARGS ?= -n 2 --dist worksteal
# glibc: keep freed blocks instead of returning them to the kernel every step (measured: removes the page faults
# that made a curve step 5-15% slower than a plain one on CPU; see docs/results.md). Harmless elsewhere.
export MALLOC_MMAP_THRESHOLD_ ?= 33554432
export MALLOC_TRIM_THRESHOLD_ ?= 17179869184

.PHONY: setup demo demo-robustness test test-slow lint format bench clean

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -e '.[test,lint]' $(TORCH_PINS)
	touch $(STAMP)

demo: setup
	$(PY) scripts/demo.py

demo-robustness: setup
	$(PY) scripts/demo_robustness.py

test: setup lint
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check mcrobust tests benchmarks scripts
	$(VENV)/bin/ruff format --check mcrobust tests benchmarks scripts
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff check --fix mcrobust tests benchmarks scripts
	$(VENV)/bin/ruff format mcrobust tests benchmarks scripts

bench: setup
	$(PY) benchmarks/run_all.py --include-demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
