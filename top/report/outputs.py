"""Where a configuration's tables, figures, report and logs are, said at the end of every run.

:func:`where_outputs_are` gives the lines the workflow logs when a run ends (Snakefile,
``onsuccess``, and a run with nothing to do): each output under the configuration's
``results_dir``, whether it exists yet, and the command that makes the HTML report
(:func:`report_command`). ``python -m top.report.outputs results-dir CONFIG... [KEY=VALUE...]``
prints a configuration's ``results_dir`` (``make report`` puts the report there).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

#: ``results_dir`` when no configuration sets it (the schema's default,
#: workflow/schemas/config.schema.yaml; a test keeps the two equal)
DEFAULT_RESULTS_DIR = "results"
#: the HTML report's name inside ``results_dir`` (``make report``)
REPORT_NAME = "report.html"
#: a run's folder under each per-run folder of ``results_dir`` (``models/``, ``eval/``, ``flops/``,
#: ``latency/``): the workflow's wildcard pattern, and ``RUN_DIR.format(...)`` for one run
RUN_DIR = "{task}/{method}/{setting}/seed{seed}"
#: a task's fine-tuned teacher (every run of that task and seed starts from it, and the ``dense``
#: row is it) under ``results_dir``
TEACHER_DIR = "teachers/{task}/seed{seed}"
#: ``make`` variables that carry a data folder (everything else goes to ``CONFIG_ARGS``)
_MAKE_VARIABLES = {"glue_dir": "GLUE_DIR", "squad_dir": "SQUAD_DIR"}


def results_dir(config_files: Iterable[str | Path], overrides: Mapping[str, Any] | None = None) -> str:
    """The ``results_dir`` of the configuration these files and ``--config`` overrides make (as
    Snakemake merges them: later files win, overrides win over files)."""
    found = DEFAULT_RESULTS_DIR
    for path in config_files:
        config = yaml.safe_load(Path(path).read_text()) or {}
        if isinstance(config, Mapping) and config.get("results_dir"):
            found = str(config["results_dir"])
    if overrides and overrides.get("results_dir"):
        found = str(overrides["results_dir"])
    return found


def _relative(path: str | Path, cwd: Path) -> str:
    path = Path(path)
    try:
        return str(path.resolve().relative_to(cwd.resolve()))
    except ValueError:
        return str(path)


def _config_value(value: Any) -> str:
    """A ``--config`` value as one writes it on the command line (lists as ``[1,2,3]``)."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_config_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return yaml.safe_dump(dict(value), default_flow_style=True, width=10**6).strip()
    return str(value)


def report_command(config_files: Sequence[str | Path], overrides: Mapping[str, Any] | None = None, cwd: str | Path | None = None) -> str:
    """The ``make report`` command for the run these configuration files and ``--config``
    overrides describe: data folders as ``GLUE_DIR``/``SQUAD_DIR``, every other override in
    ``CONFIG_ARGS`` (``preflight`` left out: the report never checks the data)."""
    cwd = Path(cwd or os.getcwd())
    files = " ".join(_relative(path, cwd) for path in config_files)
    parts = ["make report", f"CONFIG={shlex.quote(files)}"]
    rest = []
    for key, value in (overrides or {}).items():
        if key in _MAKE_VARIABLES:
            parts.append(f"{_MAKE_VARIABLES[key]}={shlex.quote(_config_value(value))}")
        elif key != "preflight":
            rest.append(shlex.quote(f"{key}={_config_value(value)}"))
    if rest:
        parts.append(f'CONFIG_ARGS="{" ".join(rest)}"')
    return " ".join(parts)


def _listing(folder: Path, names: Sequence[str], also: str) -> str:
    made = [name for name in names if (folder / name).is_file()]
    missing = [name for name in names if name not in made]
    text = f"{folder}/: {', '.join(made)}" if made else f"{folder}/: none yet"
    if made and also:
        text += f" ({also})"
    if made and missing:
        text += f"; not made by this run: {', '.join(missing)}"
    return text


def where_outputs_are(results: str | Path, tables: Sequence[str], figures: Sequence[str], report: str) -> list[str]:
    """The lines that end a run: where each of the configuration's outputs is under
    ``results`` (its ``results_dir``) and whether it exists yet. ``tables`` and ``figures``:
    the paper's tables and figures this configuration makes (``glue``, ``latency``, ...);
    ``report``: the command that makes the HTML report."""
    results = Path(results)
    every_run = ["results.md", "results.csv", "layers.csv"]
    report_path = results / REPORT_NAME
    lines = [
        f"Outputs of this configuration (results_dir: {results}):",
        "  every run:  " + _listing(results / "tables", every_run, ""),
        "  tables:     " + _listing(results / "tables", [f"{name}.md" for name in tables], "each also .csv and .tex"),
        "  figures:    " + _listing(results / "plots", [f"{name}.png" for name in figures], "each also .svg and .pdf"),
    ]
    if report_path.is_file():
        lines.append(f"  report:     {report_path} (remake it after a new run: {report})")
    else:
        lines.append(f"  report:     {report_path} is made by: {report}")
    lines.append(f"  job logs:   {results / 'logs'}/")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Where a configuration's outputs are.")
    commands = parser.add_subparsers(dest="command", required=True)
    where = commands.add_parser("results-dir", help="print the results_dir of these configuration files and key=value overrides")
    where.add_argument(
        "items", nargs="+", metavar="CONFIG_OR_OVERRIDE", help="configuration files, then key=value overrides (as --config takes them)"
    )
    args = parser.parse_args(argv)
    files = [item for item in args.items if "=" not in item]
    overrides = dict(item.split("=", 1) for item in args.items if "=" in item)
    sys.stdout.write(results_dir(files, overrides) + "\n")  # the value itself, for make's $(shell ...)


if __name__ == "__main__":
    main()
