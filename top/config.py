"""The workflow configuration: semantic validation and per-run resolution.

The Snakemake schema (``workflow/schemas/config.schema.yaml``) checks types and fills defaults
(declared there once). :func:`validate_config` then checks what a schema cannot: task and
method names, data folders, model paths, that every setting builds a valid method and that no
configured method refuses protected tokens (``qa.protect_question``,
``glue.protect_separators``). Both run before any job starts.
:func:`resolve_run` merges, for one (task, method, setting, seed), in increasing priority:

1. ``train`` (shared optimisation settings) and ``methods.<m>.common``;
2. ``task_settings.<task>.train`` and ``task_settings.<task>.methods.<m>``;
3. ``methods.<m>.settings.<setting>``.

A method's block may hold a ``train`` sub-block (e.g. a method's own batch size or learning
rate); it overrides the run's shared ``train`` settings at the method's priority. A task runs
with ``task_settings.<task>.seeds`` if given, else ``seeds`` (:func:`task_seeds`), and every
setting of a method except the ablations whose ``ablations.<m>.<setting>.tasks`` leaves it out
(:func:`task_settings_of`).

The resolved dictionary is written as JSON beside every run's outputs.

Where the configuration crosses into the task layer it becomes a typed object,
:class:`top.tasks.settings.TaskConfig` (where the data comes from, and the SQuAD settings), so a
:class:`~top.tasks.base.Task` never sees the whole workflow dictionary.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from top.pruning.registry import METHODS, method_class
from top.tasks import is_qa_task, task_names

TEACHER_METHOD = "dense"
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?|mps")
"""The values of ``device``: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:N``, ``mps``."""


class ConfigError(ValueError):
    """A configuration problem, with the offending key in the message."""


def seeds_from_command_line(cfg: dict[str, Any]) -> None:
    """Turn digit strings in ``seeds`` into integers, in place.

    ``--config 'seeds=[1,2,3]'`` reaches the workflow as ``['1', '2', '3']``: Snakemake parses
    a list given on the command line with YAML's base loader, which keeps every item a string.
    Anything else is left for the schema to reject."""
    seeds = cfg.get("seeds")
    if isinstance(seeds, list):
        cfg["seeds"] = [int(s) if isinstance(s, str) and s.strip().lstrip("-").isdigit() else s for s in seeds]


def schema_error_message(error: BaseException, limit: int = 200) -> str:
    """A schema violation in a few lines: the failing key, the schema's message and the
    offending value, instead of the whole schema that ``jsonschema`` prints.

    ``error`` is what ``snakemake.utils.validate`` raises (a ``WorkflowError`` carrying the
    ``jsonschema`` ``ValidationError``) or that ``ValidationError`` itself; anything else is
    returned as its first lines."""
    # Snakemake formats the ValidationError into its message; the object is the context.
    candidates = (error, error.__cause__, error.__context__, *getattr(error, "args", ()))
    violation = next((arg for arg in candidates if hasattr(arg, "absolute_path") and hasattr(arg, "message")), None)
    if violation is None:
        return "\n".join(str(error).splitlines()[:5])
    key = ""
    for part in violation.absolute_path:
        key += f"[{part}]" if isinstance(part, int) else f"{'.' if key else ''}{part}"
    key = key or "(top level)"
    value = repr(violation.instance)
    if len(value) > limit:
        value = value[:limit] + " ..."
    hint = ""
    if violation.validator == "additionalProperties":
        hint = " (a misspelt or unknown key: every key and its default is in workflow/schemas/config.schema.yaml)"
    elif violation.validator == "required":
        hint = " (add it to the configuration)"
    lines = [f"invalid configuration: {key}: {violation.message}{hint}"]
    if violation.validator not in ("additionalProperties", "required"):
        lines.append(f"  offending value: {value}")
    description = (violation.schema or {}).get("description") if isinstance(violation.schema, Mapping) else None
    if description and violation.absolute_path:
        lines.append(f"  {key}: {' '.join(str(description).split())}")
    return "\n".join(lines)


def merge_layers(*layers: Mapping[str, Any] | None) -> dict[str, Any]:
    """Mappings merged key by key, later layers winning; nested mappings are merged, anything
    else replaced (as Snakemake merges several ``--configfile``)."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
                out[key] = merge_layers(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


def read_config_files(paths: Iterable[str | Path]) -> dict[str, Any]:
    """The configuration files merged in order, as Snakemake merges several ``--configfile``
    (:func:`merge_layers`; an empty file adds nothing).

    Raises:
        ConfigError: naming a file that does not exist or does not hold a mapping.
    """
    layers = []
    for path in map(Path, paths):
        if not path.is_file():
            raise ConfigError(f"{path}: no such configuration file")
        layer = yaml.safe_load(path.read_text())
        if layer is not None and not isinstance(layer, Mapping):
            raise ConfigError(f"{path}: a configuration file holds a mapping of keys, not a {type(layer).__name__}")
        layers.append(layer)
    return merge_layers(*layers)


SCHEMA = Path(__file__).resolve().parents[1] / "workflow/schemas/config.schema.yaml"
"""The workflow's configuration schema: every key, its type and its default."""


def read_local_config(paths: Iterable[str | Path], glue_dir: str | Path | None = None, squad_dir: str | Path | None = None) -> dict[str, Any]:
    """The configuration as a workflow job sees it, for scripts that run outside Snakemake: the
    files merged (:func:`read_config_files`), the data read from the local folders given
    (``glue_dir``, ``squad_dir``; ``data_source: local``), the schema's defaults filled in and
    its types checked (Snakemake's own validator).

    Raises:
        ConfigError: naming a missing or malformed file.
        snakemake.exceptions.WorkflowError: a value the schema rejects.
    """
    from snakemake.utils import validate

    cfg = read_config_files(paths)
    for key, folder in (("glue_dir", glue_dir), ("squad_dir", squad_dir)):
        if folder is not None:
            cfg.update({key: str(folder), "data_source": "local"})
    validate(cfg, str(SCHEMA))
    return cfg


def _task_block(cfg: Mapping[str, Any], task: str) -> Mapping[str, Any]:
    return (cfg.get("task_settings") or {}).get(task) or {}


def teacher_settings(cfg: Mapping[str, Any], task: str) -> dict[str, Any]:
    """The teacher fine-tune's settings for ``task``."""
    return merge_layers(cfg["teacher"], _task_block(cfg, task).get("teacher"))


def expected_teacher(cfg: Mapping[str, Any], task: str) -> Mapping[str, Any] | None:
    """The published dev level ``task``'s teacher should reach
    (``task_settings.<task>.expected_teacher``), or None where none is configured."""
    return _task_block(cfg, task).get("expected_teacher")


def resolve_run(cfg: Mapping[str, Any], task: str, method: str, setting: str, seed: int) -> dict[str, Any]:
    """Everything one method run needs, merged as the module docstring says."""
    methods = cfg["methods"]
    if method not in methods:
        raise ConfigError(f"methods.{method}: not configured; configured methods: {', '.join(methods)}")
    if setting not in methods[method]["settings"]:
        raise ConfigError(f"methods.{method}.settings.{setting}: no such setting; settings: {', '.join(methods[method]['settings'])}")
    block = _task_block(cfg, task)
    method_settings = merge_layers(
        methods[method].get("common"),
        (block.get("methods") or {}).get(method),
        methods[method]["settings"][setting],
    )
    return {
        "task": task,
        "method": method,
        "setting": setting,
        "seed": int(seed),
        "model": cfg["model"],
        "device": cfg["device"],
        "train": merge_layers(cfg["train"], block.get("train"), method_settings.pop("train", None)),
        "method_settings": method_settings,
    }


def task_seeds(cfg: Mapping[str, Any], task: str) -> list[int]:
    """The seeds ``task`` runs with: ``task_settings.<task>.seeds`` if given, else ``seeds``."""
    return [int(seed) for seed in _task_block(cfg, task).get("seeds") or cfg["seeds"]]


def task_settings_of(cfg: Mapping[str, Any], task: str, method: str) -> list[str]:
    """The settings of ``method`` that ``task`` runs: every configured setting but an ablation
    whose ``tasks`` (``ablations.<method>.<setting>.tasks``) does not name ``task``."""
    ablations = (cfg.get("ablations") or {}).get(method) or {}
    return [
        setting
        for setting in cfg["methods"][method]["settings"]
        if setting not in ablations or ablations[setting].get("tasks") is None or task in ablations[setting]["tasks"]
    ]


def runs(cfg: Mapping[str, Any]) -> Iterator[tuple[str, str, str, int]]:
    """Every (task, method, setting, seed) the configuration asks for (each task with its own
    seeds, :func:`task_seeds`, and its own settings, :func:`task_settings_of`)."""
    for task in cfg["tasks"]:
        for method in cfg["methods"]:
            for setting in task_settings_of(cfg, task, method):
                for seed in task_seeds(cfg, task):
                    yield task, method, setting, seed


def validate_config(cfg: Mapping[str, Any], *, check_paths: bool = True) -> None:
    """Checks beyond the schema; raises :class:`ConfigError` with the key and allowed values."""
    tasks = task_names()
    for i, task in enumerate(cfg["tasks"]):
        if task not in tasks:
            raise ConfigError(f"tasks[{i}]: unknown task {task!r}; allowed: {', '.join(tasks)}")
    for task, block in (cfg.get("task_settings") or {}).items():
        if task not in tasks:
            raise ConfigError(f"task_settings.{task}: unknown task; allowed: {', '.join(tasks)}")
        _check_expected_teacher(task, (block or {}).get("expected_teacher"))
    for task in cfg.get("not_reproducible") or {}:
        if task not in tasks:
            raise ConfigError(f"not_reproducible.{task}: unknown task; allowed: {', '.join(tasks)}")
        if task in cfg["tasks"]:
            raise ConfigError(f"not_reproducible.{task}: the task is also in tasks; a task not reproducible here does not run")
    qa_cfg = cfg.get("qa") or {}
    if "max_length" in qa_cfg and qa_cfg.get("doc_stride", 0) >= qa_cfg["max_length"] - qa_cfg.get("max_query_length", 0) - 3:
        raise ConfigError(
            f"qa.doc_stride: {qa_cfg['doc_stride']} leaves the context windows no room to advance; it must be below "
            f"qa.max_length - qa.max_query_length - 3 = {qa_cfg['max_length'] - qa_cfg.get('max_query_length', 0) - 3}"
        )
    for method in cfg["methods"]:
        if method not in METHODS:
            raise ConfigError(f"methods.{method}: unknown method; allowed: {', '.join(METHODS)}")
    if TEACHER_METHOD not in cfg["methods"]:
        raise ConfigError(f"methods: the reference method {TEACHER_METHOD!r} must be configured")
    if len(set(cfg["seeds"])) != len(cfg["seeds"]):
        raise ConfigError(f"seeds: duplicates in {cfg['seeds']}")
    device = cfg.get("device", "auto")
    if not DEVICE_PATTERN.fullmatch(str(device)):
        raise ConfigError(
            f"device: {device!r} is not a device torch knows; use auto (CUDA when present), cpu, cuda, cuda:N (N: the GPU's index) or mps"
        )
    _check_latency(cfg.get("latency") or {})
    _check_protected_tokens(cfg)
    _check_ablations(cfg)

    if check_paths:
        if cfg["data_source"] == "local":
            needs = {"squad_dir" if is_qa_task(task) else "glue_dir" for task in cfg["tasks"]}
            examples = {"glue_dir": "/path/to/glue_data", "squad_dir": "/path/to/squad"}
            for key in sorted(needs):
                folder = cfg.get(key)
                if not folder:
                    raise ConfigError(f"{key}: required when data_source is 'local' (e.g. --config {key}={examples[key]})")
                if not os.path.isdir(folder):
                    raise ConfigError(f"{key}: {folder!r} is not a directory")
        _check_model(cfg["model"])
    _check_method_settings(cfg)


def _check_ablations(cfg: Mapping[str, Any]) -> None:
    """Every ``ablations.<method>.<setting>`` is a configured setting, ablates (``of``) another
    configured setting of the same method that is not itself an ablation, and names known
    ``tasks`` (any task, not only the configured ones: a command line may narrow ``tasks``)."""
    known = task_names()
    for method, block in (cfg.get("ablations") or {}).items():
        settings = (cfg["methods"].get(method) or {}).get("settings") or {}
        for setting, ablation in block.items():
            where = f"ablations.{method}.{setting}"
            if setting not in settings:
                raise ConfigError(f"{where}: no such setting in methods.{method}.settings ({', '.join(settings) or 'none'})")
            base = ablation["of"]
            if base not in settings or base in block:
                raise ConfigError(f"{where}.of: {base!r} is not a setting of methods.{method} that is not itself an ablation")
            unknown = [task for task in ablation.get("tasks") or [] if task not in known]
            if unknown:
                raise ConfigError(f"{where}.tasks: unknown task(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(known)}")


def is_ablation(ablations: Mapping[str, Any] | None, method: str, setting: str) -> bool:
    """Whether ``method``'s ``setting`` is an ablation in a configuration's ``ablations``
    (method -> ablation setting -> what it ablates): ablations stay off the methods' curves."""
    return setting in ((ablations or {}).get(method) or {})


def ablation_scales(cfg: Mapping[str, Any]) -> dict[tuple[str, str], float]:
    """(method, setting) -> ``budget_scale`` of every ablation (:data:`ablations` in the schema)."""
    return {
        (method, setting): float(ablation.get("budget_scale", 1.0))
        for method, block in (cfg.get("ablations") or {}).items()
        for setting, ablation in block.items()
    }


def _check_expected_teacher(task: str, expected: Mapping[str, Any] | None) -> None:
    """``task_settings.<task>.expected_teacher.metric`` is one of the task's metrics."""
    if not expected:
        return
    if is_qa_task(task):
        metrics = ("exact", "f1") if task == "squad_v2" else ("exact_match", "f1")
    else:
        from top.tasks.glue_metrics import GLUE_METRICS

        metrics = GLUE_METRICS[task]
    if expected["metric"] not in metrics:
        raise ConfigError(
            f"task_settings.{task}.expected_teacher.metric: {expected['metric']!r} is not a metric of {task}; allowed: {', '.join(metrics)}"
        )


def _check_latency(latency: Mapping[str, Any]) -> None:
    """``latency.cores`` parses, and ``latency.threads`` is at most the number of cores (the
    latency job pins itself to them, :func:`top.measure.pinning.pin_process`). Whether this
    machine has those cores is checked by :mod:`top.preflight`."""
    from top.measure.pinning import parse_cores

    if "cores" not in latency:
        return
    try:
        cores = parse_cores(str(latency["cores"]))
    except ValueError as error:
        raise ConfigError(f"latency.cores: {error}") from None
    threads = latency.get("threads", 1)
    if threads > len(cores):
        raise ConfigError(
            f"latency.threads: {threads} threads on the {len(cores)} core(s) of latency.cores {latency['cores']!r} would compete "
            f"for cores; set latency.threads to at most {len(cores)} or give latency.cores more cores (e.g. '0-{threads - 1}')"
        )


def _check_protected_tokens(cfg: Mapping[str, Any]) -> None:
    """Refuse a method that cannot train with protected tokens (``qa.protect_question`` when a
    SQuAD task is run, ``glue.protect_separators`` when a GLUE task is;
    :attr:`~top.pruning.base.PruningMethod.protected_tokens_unsupported`)."""
    options = (
        ("qa.protect_question", (cfg.get("qa") or {}).get("protect_question"), [task for task in cfg["tasks"] if is_qa_task(task)]),
        ("glue.protect_separators", (cfg.get("glue") or {}).get("protect_separators"), [task for task in cfg["tasks"] if not is_qa_task(task)]),
    )
    for option, on, tasks in options:
        if not on or not tasks:
            continue
        for method in cfg["methods"]:
            reason = method_class(method).protected_tokens_unsupported
            if reason:
                raise ConfigError(
                    f"{option}: true cannot be used with method {method!r} (tasks {', '.join(tasks)}): {reason}; "
                    f"set {option}: false or remove {method!r} from methods"
                )


def _check_model(spec: str) -> None:
    from top.models import resolve_model

    try:
        path = resolve_model(spec)
    except FileNotFoundError as error:
        raise ConfigError(f"model: {error}") from None
    looks_local = os.sep in spec or spec.startswith(".")
    if looks_local and not os.path.isdir(path):
        raise ConfigError(f"model: {spec!r} looks like a path but is not a directory")


def offline_model_config(spec: str):
    """The model's config when it can be read offline (package, local folder, or a hub name in
    the local Hugging Face cache), else None."""
    from transformers import AutoConfig

    from top.models import resolve_model

    path = resolve_model(spec)
    if not os.path.isdir(path) and not _in_hub_cache(path):
        return None
    return AutoConfig.from_pretrained(path, local_files_only=True)


def _in_hub_cache(name: str) -> bool:
    """Whether the hub model ``name``'s ``config.json`` is in the local Hugging Face cache."""
    from top.hub import hub_cache_file

    try:
        return hub_cache_file(name, "config.json") is not None
    except ValueError:  # not a valid repository name
        return False


def _check_method_settings(cfg: Mapping[str, Any]) -> None:
    """Refuse unknown setting names of every method (no model needed), then build every
    configured method once when the model's config can be read offline, so bad settings fail
    before any job runs."""
    from top.pruning.registry import build_method

    for task in cfg["tasks"]:
        for method in cfg["methods"]:
            for setting in task_settings_of(cfg, task, method):
                resolved = resolve_run(cfg, task, method, setting, cfg["seeds"][0])
                try:
                    method_class(method).check_setting_names(resolved["method_settings"])
                except ValueError as error:
                    raise ConfigError(f"methods.{method}.settings.{setting} (task {task}): {error}") from None
    try:
        model_config = offline_model_config(cfg["model"])
    except (OSError, ValueError):
        model_config = None
    if model_config is None:
        return
    for task in cfg["tasks"]:
        for method in cfg["methods"]:
            for setting in task_settings_of(cfg, task, method):
                resolved = resolve_run(cfg, task, method, setting, cfg["seeds"][0])
                try:
                    build_method(method, model_config, resolved["method_settings"])
                except (KeyError, TypeError, ValueError) as error:
                    raise ConfigError(f"methods.{method}.settings.{setting} (task {task}): {error}") from None
