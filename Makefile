# flux2-edit — see README.md. `make test` is what CI (.ci/run) runs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.install-stamp
# The suite runs on every core (pytest-xdist; each test file stays on one worker, so its
# module-scoped servers start once). PYTEST_ARGS="-n 0" runs it in one process.
PYTEST_ARGS ?= -n auto --dist loadfile
BENCH_ARGS  ?=
GPU_CHECK_ARGS ?=

LOCK   := requirements/dev.txt
PIP    := $(PY) -m pip --disable-pip-version-check
LOCK_ARGS ?=

.PHONY: install lock system-deps demo test lint fmt typecheck bench gpu-check clean

install: $(STAMP)

# Everything comes from the hashed lock (pip refuses any file whose sha256 is not in it, and
# installs nothing the lock does not list); then the project itself, built by the locked
# setuptools without fetching anything. Re-installs only when pyproject.toml or the lock
# changes; the venv is reused otherwise (idempotent). See requirements/README.md.
$(STAMP): pyproject.toml $(LOCK)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --require-hashes --no-deps -r $(LOCK)
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	$(PIP) check
	@touch $(STAMP)

# Re-resolve requirements/*.txt after a change to pyproject.toml (pins that still fit are
# kept); LOCK_ARGS=--upgrade moves everything, LOCK_ARGS="--upgrade-package NAME" one package.
# Uses the venv's uv (the dev extra pins it) without re-installing: the old lock may no longer
# fit the changed pyproject.toml.
lock:
	UV=$(VENV)/bin/uv bash scripts/lock.sh $(LOCK_ARGS)

# Debian packages the tests need (redis-server, …); installs them when run as root, else says how.
system-deps:
	bash scripts/install-system-deps.sh

demo: install
	$(VENV)/bin/flux2-edit serve --model tiny --host 127.0.0.1 --port 8000

# The Debian packages the suites need (redis-server, chromium) are installed first when this runs
# as root; otherwise their tests are skipped, and the summary at the end says which and why.
test: install system-deps
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/lint-imports --no-logo
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy core service pipelines weights benchmarks

# The benchmarks of benchmarks/RESULTS.md (the GPU one skips itself without CUDA), then the
# plot; results land in benchmarks/results/. e.g. make bench BENCH_ARGS="--only bench_gpu"
bench: install
	$(PY) -m benchmarks.run_all $(BENCH_ARGS)

# The first thing to run on a new GPU: every GPU figure the project needs (the full-size
# transformer with random weights at 1024² with 0, 1 and 3 references, s/step per fast path,
# peak memory, the fraction of the compute floor, VAE and text encoder) in at most 8 minutes on
# one H100/H200; results in benchmarks/results/gpu.{json,csv}, a summary line that names the
# settings worth turning on. No weights or network needed.
gpu-check: install
	$(PY) -m benchmarks.bench_gpu $(GPU_CHECK_ARGS)

typecheck: install
	$(VENV)/bin/mypy core service pipelines weights benchmarks

fmt: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
