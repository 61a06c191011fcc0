"""The tasks: what each one is (names here), how its data is read and encoded, and how it is scored.

Kept light on purpose (no ``datasets`` or ``torch`` import), so that :func:`is_qa_task` and
:func:`task_names` answer cheaply wherever a configuration is read.

========================== ==================================================================
module                     what it holds
========================== ==================================================================
:mod:`top.tasks.base`      :class:`~top.tasks.base.Task`: the one interface the pipeline uses,
                           for GLUE and SQuAD alike, and :func:`~top.tasks.base.get_task`
:mod:`top.tasks.settings`  :class:`~top.tasks.settings.TaskConfig`, what a task reads of the configuration
:mod:`top.tasks.sources`   local files or the hub, seeded subsets, :class:`~top.tasks.sources.DataError`
:mod:`top.tasks.glue`      the GLUE registry (columns, labels, lengths), TSV reading, encoding
:mod:`top.tasks.glue_metrics`  GLUE metrics, as the ``evaluate`` library names them
:mod:`top.tasks.squad`     the SQuAD registry, JSON reading and checking
:mod:`top.tasks.squad_features`  windowed features, ``protect_mask``, batching
:mod:`top.tasks.squad_postprocess`  n-best span search, null answers
:mod:`top.tasks.squad_metrics`  the official EM/F1 (v1.1, v2.0)
========================== ==================================================================
"""

from __future__ import annotations

GLUE_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")
"""The GLUE tasks, named as the ``evaluate`` library and the hub's ``glue`` configs name them
(:data:`top.tasks.glue.SPECS` holds one spec for each)."""

SQUAD_TASKS = ("squad", "squad_v2")
"""The extractive QA tasks (:data:`top.tasks.squad.SPECS` holds one spec for each)."""


def task_names() -> list[str]:
    """Every task the harness runs: GLUE's, then SQuAD's."""
    return [*GLUE_TASKS, *SQUAD_TASKS]


def is_qa_task(name: str) -> bool:
    """Whether ``name`` is an extractive QA task (``squad``, ``squad_v2``)."""
    return name in SQUAD_TASKS
