"""The configuration a :class:`~top.tasks.base.Task` reads, typed: where the data comes from,
the SQuAD settings and whether GLUE inputs keep their separators. The workflow's dictionary
stops at :meth:`TaskConfig.from_config`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class QASettings:
    """The ``qa`` block: SQuAD features and post-processing (defaults and ranges:
    ``workflow/schemas/config.schema.yaml``).

    Attributes:
        max_length: tokens per feature, special tokens included.
        doc_stride: context tokens shared by two consecutive windows.
        max_query_length: question tokens kept (special tokens excluded).
        n_best_size: start and end candidates searched per feature.
        max_answer_length: the longest answer span, in tokens.
        null_threshold: ``squad_v2``: predict no answer when the null score minus the best
            span's score exceeds it.
        protect_question: never drop [CLS], the question or the separators, whatever the
            method decides (ToP's constraint counts them as kept; a method that cannot train
            with them says so and is refused by :func:`top.config.validate_config`).
    """

    max_length: int
    doc_stride: int
    max_query_length: int
    n_best_size: int
    max_answer_length: int
    null_threshold: float
    protect_question: bool


@dataclass(frozen=True)
class TaskConfig:
    """What a :class:`~top.tasks.base.Task` needs from the configuration.

    Attributes:
        data_source: ``local`` (the folders below) or ``hub``.
        glue_dir: the GLUE download's folder (``local``, GLUE tasks).
        squad_dir: the folder of the official SQuAD JSON files (``local``, SQuAD tasks).
        qa: SQuAD features and post-processing.
        protect_separators: GLUE tasks (``glue.protect_separators``): never drop [CLS] or the
            separators, whatever the method decides.
    """

    data_source: str
    glue_dir: str | None
    squad_dir: str | None
    qa: QASettings
    protect_separators: bool = False

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> TaskConfig:
        """The task settings of a workflow configuration that the schema has filled in."""
        qa_fields = [field.name for field in dataclasses.fields(QASettings)]
        missing = [key for key in qa_fields if key not in (cfg.get("qa") or {})]
        if missing:
            raise ValueError(f"qa: missing {', '.join(missing)} (the schema's defaults fill them in)")
        qa = {key: cfg["qa"][key] for key in qa_fields}
        return cls(
            data_source=cfg["data_source"],
            glue_dir=cfg.get("glue_dir") or None,
            squad_dir=cfg.get("squad_dir") or None,
            qa=QASettings(**qa),
            protect_separators=bool((cfg.get("glue") or {}).get("protect_separators", False)),
        )
