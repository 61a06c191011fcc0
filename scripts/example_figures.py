"""One example of each of the workflow's figures, drawn from invented results.

    python scripts/example_figures.py docs/figures

Writes ``{accuracy_vs_flops,latency_vs_flops,retained_tokens}.png`` into the folder, drawn by
the workflow's own code (:func:`top.report.plots.draw_figure`) from the made-up runs of
:mod:`top.report.example` (BERT-base dimensions, SST-2 and MRPC, every method, three seeds):
the README shows them, so they must never be read as measurements.
"""

import argparse
import logging
import tempfile
from pathlib import Path

from top.report.example import MODEL, write_example_results
from top.report.plots import FIGURES, draw_figure

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for the PNG files (e.g. docs/figures)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as scratch:
        results_csv, layers_csv = write_example_results(scratch)
        for figure in FIGURES:
            draw_figure(figure, results_csv, layers_csv, ROOT / "config/paper_results.yaml", MODEL, [args.out / f"{figure}.png"])


if __name__ == "__main__":
    main()
