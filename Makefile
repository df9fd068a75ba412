# flux2-edit — see README.md. `make test` is what CI (.ci/run) runs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.install-stamp
PYTEST_ARGS ?=
BENCH_ARGS  ?=

.PHONY: install system-deps demo test lint fmt typecheck bench clean

install: $(STAMP)

# Re-installs only when pyproject.toml changes; the venv is reused otherwise (idempotent).
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $(STAMP)

# Debian packages the tests need (redis-server, …); installs them when run as root, else says how.
system-deps:
	bash scripts/install-system-deps.sh

demo: install
	$(VENV)/bin/flux2-edit serve --model tiny --host 127.0.0.1 --port 8000

test: install
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/lint-imports --no-logo
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy core service pipelines weights benchmarks

# The four benchmarks of benchmarks/RESULTS.md (the GPU one skips itself without CUDA), then the
# plot; results land in benchmarks/results/. e.g. make bench BENCH_ARGS="--only bench_gpu"
bench: install
	$(PY) -m benchmarks.run_all $(BENCH_ARGS)

typecheck: install
	$(VENV)/bin/mypy core service pipelines weights benchmarks

fmt: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
