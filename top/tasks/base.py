"""What the workflow's steps need from a task, for GLUE and SQuAD alike.

A :class:`Task` hides whether a task is sentence(-pair) classification (:mod:`top.tasks.glue`,
:mod:`top.tasks.glue_metrics`) or span extraction (:mod:`top.tasks.squad`,
:mod:`top.tasks.squad_features`, :mod:`top.tasks.squad_postprocess`,
:mod:`top.tasks.squad_metrics`), so :mod:`top.pipeline` runs every method on both through the same
code: training features with ``labels``, dev features, a collate function, and scoring of the
model's outputs on a dev split. Batches carry ``labels`` in the form
:func:`top.train.task_loss` expects: class ids or scores ``[B]``, or ``[B, 2]`` start/end token
indices for span extraction.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from top.tasks import glue, is_qa_task, squad, squad_features
from top.tasks.glue_metrics import compute_glue_metrics, glue_predictions, primary_metric
from top.tasks.settings import TaskConfig
from top.tasks.squad_metrics import compute_squad_metrics, primary_qa_metric
from top.tasks.squad_postprocess import QAPredictions, postprocess_qa_predictions


class Task(abc.ABC):
    """One task as the pipeline sees it.

    Attributes:
        name: the task's name (``sst2``, ``squad``, ...).
        head: ``"classification"`` (classification or regression on [CLS]) or ``"qa"``.
        num_labels: classes (1 for regression); None for span extraction.
        dev_splits: evaluation splits; FLOPs and latency use the first.
        primary_metric: the metric key reported as a run's ``score``.
        metric_scale: the full scale of the task's metrics (1 for GLUE's, 100 for SQuAD's).
        protects_tokens: whether the batches carry a ``protect_mask`` (tokens the encoder never
            drops: SQuAD's question with ``qa.protect_question``, a GLUE input's separators with
            ``glue.protect_separators``); every feature then has a ``protect_mask`` column.
    """

    name: str
    head: str
    num_labels: int | None
    dev_splits: tuple[str, ...]
    primary_metric: str
    metric_scale: float = 1.0
    protects_tokens: bool = False

    def __init__(self, cfg: TaskConfig, name: str):
        self.cfg = cfg
        self.name = name

    @abc.abstractmethod
    def train_features(self, tokenizer, limit: int | None, seed: int):
        """Training features (a ``datasets.Dataset``) of ``limit`` rows (None: all), sampled with
        ``seed``; each has ``labels``."""

    @abc.abstractmethod
    def dev_features(self, split: str, tokenizer, limit: int | None):
        """Model features of a dev split, in a fixed order (the first ``limit`` rows sampled
        with seed 0)."""

    @abc.abstractmethod
    def collate(self, tokenizer) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
        """Batches model inputs (and ``labels`` when the features have them)."""

    @abc.abstractmethod
    def score(self, split: str, features, logits: np.ndarray, labels: np.ndarray | None, limit: int | None) -> dict[str, Any]:
        """Task metrics of a dev split from the model's outputs over :meth:`dev_features`."""


class GlueTask(Task):
    """A GLUE task (:mod:`top.tasks.glue`, :mod:`top.tasks.glue_metrics`)."""

    head = "classification"

    def __init__(self, cfg: TaskConfig, name: str):
        super().__init__(cfg, name)
        self.spec = glue.get_spec(name)
        self.num_labels = self.spec.num_labels
        self.dev_splits = self.spec.dev_splits
        self.primary_metric = primary_metric(name)
        self.protects_tokens = cfg.protect_separators

    def _encoded(self, split: str, tokenizer, limit: int | None, seed: int):
        rows = glue.load_split(self.name, split, source=self.cfg.data_source, data_dir=self.cfg.glue_dir, limit=limit, seed=seed)
        return glue.encode(rows, tokenizer, self.spec, protect_separators=self.protects_tokens)

    def train_features(self, tokenizer, limit, seed):
        return self._encoded("train", tokenizer, limit, seed)

    def dev_features(self, split, tokenizer, limit):
        return self._encoded(split, tokenizer, limit, 0)

    def collate(self, tokenizer):
        return functools.partial(glue.collate, pad_token_id=tokenizer.pad_token_id)

    def score(self, split, features, logits, labels, limit):
        return compute_glue_metrics(self.name, glue_predictions(logits), labels)


class QATask(Task):
    """SQuAD v1.1 or v2.0 (:mod:`top.tasks.squad`, :mod:`top.tasks.squad_features`), with the
    feature and post-processing settings of :class:`top.tasks.settings.QASettings`."""

    head = "qa"
    num_labels = None
    metric_scale = 100.0

    def __init__(self, cfg: TaskConfig, name: str):
        super().__init__(cfg, name)
        self.spec = squad.get_spec(name)
        self.settings = cfg.qa
        self.dev_splits = self.spec.dev_splits
        self.primary_metric = primary_qa_metric(self.spec.version_2)
        self.protects_tokens = bool(self.settings.protect_question)
        self._dev_cache: dict[tuple[str, int | None], Any] = {}

    def _rows(self, split: str, limit: int | None, seed: int):
        return squad.load_qa_split(self.name, split, source=self.cfg.data_source, data_dir=self.cfg.squad_dir, limit=limit, seed=seed)

    def _window(self) -> dict[str, int]:
        s = self.settings
        return {"max_length": s.max_length, "doc_stride": s.doc_stride, "max_query_length": s.max_query_length}

    def train_features(self, tokenizer, limit, seed):
        return squad_features.prepare_train_features(self._rows("train", limit, seed), tokenizer, **self._window())

    def dev_rows(self, split: str, limit: int | None):
        """The dev questions (:func:`top.tasks.squad.load_qa_split`), read once per split and
        limit: scoring needs the rows that :meth:`dev_features` was built from."""
        key = (split, limit)
        if key not in self._dev_cache:
            self._dev_cache[key] = self._rows(split, limit, 0)
        return self._dev_cache[key]

    def dev_features(self, split, tokenizer, limit):
        return squad_features.prepare_eval_features(self.dev_rows(split, limit), tokenizer, **self._window())

    def collate(self, tokenizer):
        return functools.partial(_collate_qa, pad_token_id=tokenizer.pad_token_id, protect=self.settings.protect_question)

    def answers(self, split: str, windows: list[dict], logits: np.ndarray, limit: int | None) -> QAPredictions:
        """Each dev question's predicted answer (:func:`top.tasks.squad_postprocess.postprocess_qa_predictions`
        with the task's ``qa`` settings).

        Args:
            windows: one ``{"example_id", "offset_mapping"}`` per feature of :meth:`dev_features`.
            logits: ``[N, W, 2]`` start and end logits of the features.
        """
        return postprocess_qa_predictions(
            self.dev_rows(split, limit),
            windows,
            logits[..., 0],
            logits[..., 1],
            n_best_size=self.settings.n_best_size,
            max_answer_length=self.settings.max_answer_length,
            version_2=self.spec.version_2,
            null_threshold=self.settings.null_threshold,
        )

    def score(self, split, features, logits, labels, limit):
        rows = self.dev_rows(split, limit)
        windows = features.select_columns(["example_id", "offset_mapping"]).to_list()
        result = self.answers(split, windows, logits, limit)
        null_scores = result.null_scores if self.spec.version_2 else None
        return compute_squad_metrics(result.predictions, rows, version_2=self.spec.version_2, null_scores=null_scores)


def _collate_qa(features: list[dict], pad_token_id: int, protect: bool) -> dict[str, torch.Tensor]:
    """:func:`top.tasks.squad_features.collate_qa`, with ``labels`` ``[B, 2]`` (start, end) for training features
    and ``protect_mask`` only when the question is protected."""
    batch = squad_features.collate_qa(features, pad_token_id)
    if not protect:
        batch.pop("protect_mask", None)
    if "start_positions" in batch:
        batch["labels"] = torch.stack([batch.pop("start_positions"), batch.pop("end_positions")], dim=1)
    return batch


def get_task(cfg: TaskConfig, name: str) -> Task:
    """The :class:`Task` named ``name``, reading its data as ``cfg`` says."""
    if is_qa_task(name):
        return QATask(cfg, name)
    return GlueTask(cfg, name)
