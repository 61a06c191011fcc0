"""Preflight: what the planned jobs will need, checked at workflow start (dry runs too).

The schema and :func:`top.config.validate_config` check the configuration itself. This module
checks what lies outside it, so that a mistake stops the workflow before its first job instead
of failing inside one after minutes of work:

* the configuration files named on the command line: no key given twice (YAML keeps the last
  value silently; :func:`check_yaml_files`);
* every data file the jobs will read (each task's training split and dev splits): present,
  UTF-8, header and every row parsed once, by the loaders' own code
  (:func:`top.tasks.glue.check_local_file`, :func:`top.tasks.squad.check_local_file`), so a
  check here and a load in a job cannot disagree. Verdicts are cached by path, size and
  modification time (and the loaders' source), in ``.snakemake/top-preflight.json``, so a
  re-run reads nothing again. Hub data (``data_source: hub``): in the local Hugging Face
  caches when the machine is offline;
* the model: a local folder or packaged weights with ``config.json``, weights and tokenizer
  files, or a hub name that the local Hugging Face cache holds, or, online, that the hub knows;
* the machine, when the jobs run on it: ``device`` (a CUDA device needs one) and
  ``latency.cores`` (cores this process may run on, ``os.sched_getaffinity``);
* that ``results_dir`` (outputs and logs) can be written;
* with ``budget_tolerance`` set, that every method setting of a task trains for the same number
  of optimiser steps (:mod:`top.budget`), counted with the training splits' row counts that the
  data check found (local GLUE data; other tasks are noted as not checked).

Every problem is reported at once, each naming the key, file or line and what to do
(:class:`PreflightError`). The workflow calls :func:`run_preflight` from
``workflow/rules/common.smk``; ``preflight: false`` in the configuration skips it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from top.config import ConfigError
from top.hub import datasets_cache_dir, hub_cache_dir, hub_cache_file, offline_reason
from top.tasks import is_qa_task

CACHE_FILE = ".snakemake/top-preflight.json"
"""Where verdicts on data files are cached, relative to the working directory."""

HUB_TIMEOUT_S = 5.0
"""How long the hub may take to answer whether a model exists (only for a model the cache
lacks, on a machine not marked offline)."""

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "vocab.json", "spiece.model", "sentencepiece.bpe.model")
_CHECKER_SOURCES = ("tasks/glue.py", "tasks/squad.py", "tasks/sources.py", "preflight.py", "hub.py")


class PreflightError(ConfigError):
    """One or more problems found before any job ran; ``problems`` lists them."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
        super().__init__(f"preflight found {count} before any job ran:\n" + "\n".join(f"- {p}" for p in problems))


@dataclass
class PreflightReport:
    """What :func:`run_preflight` checked: data files (and how many verdicts came from the
    cache), notes on checks skipped, and the time it took."""

    data_files: int = 0
    cached_files: int = 0
    checked: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        files = f"{self.data_files} data file{'s' if self.data_files != 1 else ''}"
        if self.data_files:
            files += f" ({self.cached_files} unchanged since checked)"
        line = f"preflight: {', '.join([files, *self.checked])} checked in {self.seconds:.2f} s"
        return line + "".join(f"\n  note: {note}" for note in self.notes)


# ---- YAML: duplicate keys ----------------------------------------------------------------


class DuplicateKeyError(yaml.YAMLError):
    """A mapping gives the same key twice."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (merge keys ``<<``
    may still be overridden, as YAML means them to be)."""

    source = "<yaml>"

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = key in first
                except TypeError:  # an unhashable key: PyYAML refuses it itself
                    continue
                line = key_node.start_mark.line + 1
                if seen:
                    raise DuplicateKeyError(
                        f"{self.source}, line {line}: duplicate key {key!r} (first given at line {first[key]}); YAML would keep "
                        "only the last value and silently drop the other: remove or rename one of them"
                    )
                first[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml_unique(path: str | os.PathLike) -> Any:
    """Load a YAML (or JSON) file, refusing duplicate keys (:class:`DuplicateKeyError`, naming the
    file, the key and both lines)."""
    text = Path(path).read_text(encoding="utf-8")
    loader = _UniqueKeyLoader(text)
    loader.source = str(path)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def check_yaml_files(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Problems (duplicate keys) in the configuration files ``paths``; a file that cannot be read
    or parsed is left to Snakemake, which read it already."""
    problems = []
    for path in dict.fromkeys(str(p) for p in paths):
        try:
            load_yaml_unique(path)
        except DuplicateKeyError as error:
            problems.append(str(error))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
    return problems


# ---- data files --------------------------------------------------------------------------


def _checker_version() -> str:
    """A digest of the loaders' and this module's source: a cached verdict holds only for the
    code that gave it."""
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for name in _CHECKER_SOURCES:
        digest.update((root / name).read_bytes())
    return digest.hexdigest()[:16]


class _VerdictCache:
    """Data files found good, by (folder, task) -> [{split, path, size, mtime_ns, rows}]."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path else None
        self.version = _checker_version()
        self.entries: dict[str, list[dict[str, Any]]] = {}
        self.changed = False
        if self.path is None or not self.path.is_file():
            return
        try:
            stored = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return
        if isinstance(stored, dict) and stored.get("version") == self.version and isinstance(stored.get("tasks"), dict):
            self.entries = stored["tasks"]

    @staticmethod
    def key(folder: str, task: str) -> str:
        return f"{os.path.abspath(folder)}|{task}"

    def fresh(self, key: str) -> list[dict[str, Any]] | None:
        """The entries of ``key`` if every file is unchanged since it was checked."""
        entries = self.entries.get(key)
        if not entries:
            return None
        for entry in entries:
            try:
                stat = os.stat(entry["path"])
            except OSError:
                return None
            if (stat.st_size, stat.st_mtime_ns) != (entry["size"], entry["mtime_ns"]):
                return None
        return entries

    def store(self, key: str, entries: list[dict[str, Any]]) -> None:
        self.entries[key] = entries
        self.changed = True

    def save(self) -> None:
        """Write the cache atomically; best effort (a folder that cannot be written only costs
        the next run a re-check)."""
        if self.path is None or not self.changed:
            return
        # forget folders that are gone (e.g. tests' temporary ones), so the file stays small
        self.entries = {key: entries for key, entries in self.entries.items() if all(os.path.exists(e["path"]) for e in entries)}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"version": self.version, "tasks": self.entries}, indent=1))
            os.replace(tmp, self.path)
        except OSError:
            pass


def _layout_hint(folder: str, relative: str) -> str:
    """Where the expected file is, when ``folder`` is near the right one: one level up or down,
    or the task folder spelt in another case."""
    root = Path(folder)
    parts = Path(relative).parts
    below = sorted(root.glob(f"*/{relative}"))
    if below:
        return f"; it is one level down: did you mean {below[0].parents[len(parts) - 1]}?"
    if len(parts) > 1 and root.name == parts[0] and (root / parts[-1]).is_file():
        return f"; {folder} is the task's own folder: give the folder above it, {root.parent}"
    if len(parts) > 1 and root.is_dir():
        for entry in root.iterdir():
            if entry.name.lower() == parts[0].lower() and entry.name != parts[0]:
                return f"; found {entry.name!r}, but the layout spells it {parts[0]!r}: rename the folder"
    return ""


_LAYOUTS = {
    "glue_dir": "; glue_dir must be the GLUE download's folder, the one holding CoLA/, SST-2/, MRPC/, ... (README, 'Data and models')",
    "squad_dir": "; squad_dir must be the folder holding the official files train-v1.1.json, dev-v1.1.json, train-v2.0.json, dev-v2.0.json",
}


def _data_key(task: str) -> str:
    return "squad_dir" if is_qa_task(task) else "glue_dir"


def _check_local_task(cfg: Mapping[str, Any], task: str, cache: _VerdictCache, report: PreflightReport) -> str | None:
    """Check every split the jobs read of ``task`` from its local folder: the first problem, or
    None."""
    key = _data_key(task)
    folder = cfg.get(key)
    cache_key = _VerdictCache.key(str(folder), task)
    entries = cache.fresh(cache_key)
    if entries is not None:
        report.data_files += len(entries)
        report.cached_files += len(entries)
        return None
    if is_qa_task(task):
        from top.tasks import squad as module
    else:
        from top.tasks import glue as module
    from top.tasks.sources import DataError

    spec = module.get_spec(task)
    checked = []
    for split in dict.fromkeys(("train", *spec.dev_splits)):
        try:
            path = module.local_path(task, split, folder)
        except DataError as error:
            relative = spec.local_file(split) if is_qa_task(task) else f"{spec.glue_dir}/{spec.local_file(split).filename}"
            hint = _layout_hint(str(folder), relative) or _LAYOUTS[key]
            return f"{key}: {error}{hint}"
        stat = path.stat()
        try:
            rows = module.check_local_file(task, split, path)
        except DataError as error:
            return f"{key}: {task} split {split!r}: {error}"
        report.data_files += 1
        checked.append({"split": split, "path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "rows": rows})
    cache.store(cache_key, checked)
    return None


def _hub_dataset(task: str) -> tuple[str, str | None]:
    """The hub repository (and config) a task's data comes from with ``data_source: hub``."""
    if is_qa_task(task):
        from top.tasks.squad import get_spec

        return get_spec(task).hub_dataset, None
    from top.tasks.glue import HUB_DATASET

    return HUB_DATASET, task


def _check_hub_task(task: str) -> str | None:
    """Offline, the hub data must be in a local cache; online the job downloads it."""
    offline = offline_reason(data=True)
    if offline is None:
        return None
    repo, config = _hub_dataset(task)
    hub = hub_cache_dir() / f"datasets--{repo.replace('/', '--')}"
    prepared = datasets_cache_dir() / repo.replace("/", "___")
    if config is not None:
        prepared = prepared / config
    if hub.is_dir() or prepared.is_dir():
        return None
    return (
        f"tasks: {task} reads {repo}{f' ({config})' if config else ''} from the hub (data_source: hub), but this machine is "
        f"offline ({offline}) and neither {hub} nor {prepared} holds it; use data_source: local with {_data_key(task)} "
        "(see README, 'Data and models'), or load the dataset once on a machine with network and copy the cache"
    )


def check_data(cfg: Mapping[str, Any], cache: _VerdictCache, report: PreflightReport) -> list[str]:
    """Problems with the data of every configured task (first problem per task)."""
    problems = []
    for task in cfg["tasks"]:
        if cfg.get("data_source", "hub") == "local":
            problem = _check_local_task(cfg, task, cache, report)
        else:
            problem = _check_hub_task(task)
        if problem:
            problems.append(problem)
    return problems


# ---- the model ---------------------------------------------------------------------------


def probe_hub(name: str) -> str | None:
    """Ask the hub whether model ``name`` exists: None if it does, ``"missing"`` if the hub
    says it does not, else why the hub could not be asked."""
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        huggingface_hub.model_info(name, timeout=HUB_TIMEOUT_S)
    except RepositoryNotFoundError:
        return "missing"
    except Exception as error:  # noqa: BLE001 - any failure to connect means "cannot ask"
        return f"{type(error).__name__}: {error}"
    return None


def _check_model_folder(spec: str, path: Path) -> list[str]:
    where = spec if str(path) == spec else f"{spec!r} ({path})"
    try:
        json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return [f"model: {where}: config.json cannot be read ({error}); replace the folder with a complete save_pretrained() copy"]
    problems = []
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        problems.append(f"model: {where} has config.json but no weights ({', '.join(WEIGHT_FILES[:2])}); copy the weights into it")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        problems.append(f"model: {where} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}); save the tokenizer into it")
    return problems


def check_model(spec: str) -> list[str]:
    """Problems with the configured model (package, folder or hub name)."""
    from top.models import resolve_model

    try:
        resolved = resolve_model(spec)
    except FileNotFoundError as error:
        return [f"model: {error}"]
    if os.path.isdir(resolved):
        return _check_model_folder(spec, Path(resolved))
    if os.sep in spec or spec.startswith("."):
        return [f"model: {spec!r} looks like a path but is not a folder; give an existing folder, a hub name or python-package:PKG/SUBDIR"]
    try:
        config = hub_cache_file(spec, "config.json")
    except ValueError as error:
        return [f"model: {spec!r} is neither a folder nor a valid hub name ({error})"]
    offline = offline_reason()
    cache = hub_cache_dir()
    if config is not None:
        weights = [name for name in WEIGHT_FILES if hub_cache_file(spec, name)]
        if weights or offline is None:
            return []
        return [
            f"model: the local Hugging Face cache ({cache}) has {spec!r}'s config.json but not its weights, and this machine "
            f"is offline ({offline}); download the model where there is network (hf download {spec}) and copy the cache"
        ]
    why = offline or probe_hub(spec)
    if why is None:
        return []  # on the hub: the teacher job downloads it
    if why == "missing":
        return [
            f"model: {spec!r} is not on the Hugging Face hub (nor in the local cache {cache}); check the spelling "
            "(e.g. bert-base-uncased), or log in (hf auth login) if the model is private"
        ]
    return [
        f"model: {spec!r} is not in the local Hugging Face cache ({cache}) and the hub cannot be reached ({why}); check "
        f"the name's spelling, download it where there is network (hf download {spec}) and copy the cache, or set model to "
        "a local folder or python-package:PKG/SUBDIR"
    ]


# ---- this machine ------------------------------------------------------------------------


def check_device(device: str) -> list[str]:
    """A CUDA (or MPS) device must exist on this machine; ``auto`` and ``cpu`` always do."""
    if device in ("auto", "cpu"):
        return []
    import torch

    if device == "mps":
        if torch.backends.mps.is_available():
            return []
        return ["device: 'mps' asks for Apple's Metal GPU, which torch does not find here; use device: cpu or auto"]
    if not torch.cuda.is_available():
        return [
            f"device: {device!r} asks for a CUDA GPU, but torch finds none on this machine (torch {torch.__version__}, CUDA "
            f"build: {torch.version.cuda or 'none'}); use device: cpu, or auto (CUDA when present)"
        ]
    _, _, index = device.partition(":")
    count = torch.cuda.device_count()
    if index and int(index) >= count:
        return [f"device: {device!r} names GPU {index}, but this machine has {count} (cuda:0 to cuda:{count - 1}); use one of those, or cuda"]
    return []


def _core_list(cores: Iterable[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``'0-2,5'`` (taskset style)."""
    items, run = [], []
    for core in sorted(cores):
        if run and core == run[-1] + 1:
            run.append(core)
            continue
        if run:
            items.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [core]
    if run:
        items.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(items)


def check_latency_cores(latency: Mapping[str, Any], available: Iterable[int] | None = None) -> list[str]:
    """``latency.cores`` must be cores this process may run on (``os.sched_getaffinity``), where
    the latency job pins itself (:func:`top.measure.pinning.pin_process`)."""
    from top.measure.pinning import parse_cores

    try:
        cores = parse_cores(str(latency.get("cores", "0")))
    except ValueError:
        return []  # validate_config names the key
    if available is None:
        available = os.sched_getaffinity(0)
    available = set(available)
    missing = sorted(set(cores) - available)
    if not missing:
        return []
    allowed = _core_list(available)
    suggestion = _core_list(sorted(available)[: max(1, min(len(cores), len(available)))])
    return [
        f"latency.cores: {latency['cores']!r} names core(s) {_core_list(missing)}, but this machine lets the workflow run on "
        f"cores {allowed} only (os.sched_getaffinity); the latency job would fail when pinning itself. Set latency.cores to "
        f"some of those, e.g. '{suggestion}'"
    ]


def check_results_dir(results_dir: str) -> list[str]:
    """``results_dir`` (outputs and logs) must be a folder that can be written, or creatable in
    one; nothing is created (a test file is written and removed in the nearest existing
    folder)."""
    path = Path(results_dir)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return [f"results_dir: {results_dir!r} cannot be created: {probe} is a file, not a folder; choose another results_dir"]
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".top-preflight-"):
            pass
    except OSError as error:
        target = "written" if probe == path else f"created (in {probe})"
        return [
            f"results_dir: {results_dir!r} cannot be {target}: {error.strerror or error}; choose a results_dir you can write "
            "(--config results_dir=...)"
        ]
    return []


# ---- training budgets --------------------------------------------------------------------


def train_rows(cfg: Mapping[str, Any], task: str, cache: _VerdictCache) -> int | None:
    """The row count of a local GLUE task's training split, as the data check found it; None for
    hub data, SQuAD (whose training features depend on tokenisation) or a file with a problem."""
    if is_qa_task(task) or cfg.get("data_source", "hub") != "local":
        return None
    entries = cache.entries.get(_VerdictCache.key(str(cfg.get("glue_dir")), task)) or []
    return next((int(entry["rows"]) for entry in entries if entry["split"] == "train"), None)


def check_training_budgets(cfg: Mapping[str, Any], cache: _VerdictCache, report: PreflightReport) -> list[str]:
    """With ``budget_tolerance`` set: a problem per task whose method settings' optimiser steps
    differ by more than it (:func:`top.budget.check_budgets`)."""
    tolerance = cfg.get("budget_tolerance")
    if tolerance is None:
        return []
    from top.budget import check_budgets, task_budgets
    from top.config import ablation_scales, offline_model_config

    try:
        model_config = offline_model_config(cfg["model"])
    except (OSError, ValueError):
        model_config = None
    if model_config is None:
        report.notes.append("training budgets not checked: the model's config.json cannot be read offline")
        return []
    budgets, unknown = [], []
    for task in cfg["tasks"]:
        rows = train_rows(cfg, task, cache)
        if rows is None:
            unknown.append(task)
            continue
        budgets += task_budgets(cfg, task, rows, model_config)
    if unknown:
        report.notes.append(
            f"training budgets not checked for {', '.join(unknown)}: the training rows are counted only for local GLUE files that passed the data check"
        )
    report.checked.append("training budgets")
    return check_budgets(budgets, float(tolerance), ablation_scales(cfg))


# ---- all of it ---------------------------------------------------------------------------


def run_preflight(
    cfg: Mapping[str, Any],
    *,
    config_files: Iterable[str | os.PathLike] = (),
    machine: bool = True,
    cache_file: str | os.PathLike | None = CACHE_FILE,
) -> PreflightReport:
    """Check everything the module docstring lists for the validated configuration ``cfg``.

    Args:
        config_files: the configuration files the workflow read (duplicate keys).
        machine: check ``device`` and ``latency.cores`` against this machine (False when the
            jobs run elsewhere, e.g. on a cluster).
        cache_file: where verdicts on data files are cached (None: no cache).

    Returns:
        What was checked, for a one-line summary.

    Raises:
        PreflightError: listing every problem found.
    """
    start = time.perf_counter()
    report = PreflightReport()
    problems = check_yaml_files(config_files)
    cache = _VerdictCache(cache_file)
    problems += check_data(cfg, cache, report)
    cache.save()
    problems += check_training_budgets(cfg, cache, report)
    problems += check_model(cfg["model"])
    report.checked.append("the model")
    if machine:
        problems += check_device(str(cfg.get("device", "auto")))
        report.checked.append("device")
        if hasattr(os, "sched_getaffinity"):
            problems += check_latency_cores(cfg.get("latency") or {})
            report.checked.append("latency.cores")
        else:
            report.notes.append("latency.cores not checked: this system has no os.sched_getaffinity")
    else:
        report.notes.append("device and latency.cores not checked here: the jobs run on other machines (--jobs)")
    problems += check_results_dir(str(cfg.get("results_dir", "results")))
    report.checked.append("results_dir")
    report.seconds = time.perf_counter() - start
    if problems:
        raise PreflightError(problems)
    return report
