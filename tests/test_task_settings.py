"""Tests of the typed task configuration (``top.tasks.settings``) and the task names
(``top.tasks``)."""

from __future__ import annotations

import pytest

from top.tasks import GLUE_TASKS, SQUAD_TASKS, is_qa_task, task_names
from top.tasks.base import GlueTask, QATask, get_task
from top.tasks.settings import QASettings, TaskConfig

QA = {
    "max_length": 64,
    "doc_stride": 16,
    "max_query_length": 8,
    "n_best_size": 5,
    "max_answer_length": 10,
    "null_threshold": 0.5,
    "protect_question": True,
}


def test_task_config_takes_only_what_a_task_reads() -> None:
    cfg = TaskConfig.from_config({"data_source": "local", "glue_dir": "/g", "squad_dir": "", "qa": QA, "methods": {"dense": {}}})
    assert cfg == TaskConfig(data_source="local", glue_dir="/g", squad_dir=None, qa=QASettings(**QA))
    with pytest.raises(AttributeError):
        cfg.methods  # noqa: B018


def test_task_config_reads_whether_glue_inputs_keep_their_separators() -> None:
    base = {"data_source": "local", "glue_dir": "/g", "qa": QA}
    assert TaskConfig.from_config(base).protect_separators is False
    assert TaskConfig.from_config({**base, "glue": {"protect_separators": True}}).protect_separators is True
    assert get_task(TaskConfig.from_config({**base, "glue": {"protect_separators": True}}), "mrpc").protects_tokens
    assert not get_task(TaskConfig.from_config(base), "mrpc").protects_tokens


def test_task_config_names_missing_qa_keys() -> None:
    qa = {k: v for k, v in QA.items() if k not in ("doc_stride", "null_threshold")}
    with pytest.raises(ValueError, match=r"qa: missing doc_stride, null_threshold"):
        TaskConfig.from_config({"data_source": "hub", "qa": qa})


def test_get_task_dispatches_on_the_task_name() -> None:
    cfg = TaskConfig(data_source="hub", glue_dir=None, squad_dir=None, qa=QASettings(**QA))
    assert isinstance(get_task(cfg, "rte"), GlueTask)
    squad = get_task(cfg, "squad_v2")
    assert isinstance(squad, QATask) and squad.settings.protect_question and squad.spec.version_2


def test_task_names_match_the_registries() -> None:
    from top.tasks import glue, squad

    assert tuple(glue.SPECS) == GLUE_TASKS and tuple(squad.SPECS) == SQUAD_TASKS
    assert task_names() == [*GLUE_TASKS, *SQUAD_TASKS]
    assert is_qa_task("squad") and not is_qa_task("mnli")
