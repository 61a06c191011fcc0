"""Checkpoint selection: which epoch's model a run keeps (docs/design.md, "Checkpoint selection").

The papers report each run's best dev checkpoint: ToP's trainer evaluates on dev during
training and keeps the best score among the evaluations whose sparsity has reached the target
(within 0.01). This harness does the same, once per epoch, for every method and the teacher:

* **Candidates**: the end of every epoch of the method's last stage (the teacher: of its
  fine-tune). Earlier stages (ToP's prune before a finetune stage, LTP's soft stage,
  PoWER-BERT's search) produce no candidates: what they leave is not a finished model.
* **What a candidate is**: the model the run would export had training stopped there. That is
  the encoder's weights at that epoch and the method's state *after* its
  :meth:`~top.pruning.base.PruningMethod.on_stage_end` hook for the last stage. For ToP whose
  last stage is ``prune``, the candidate at epoch ``e`` is the gates at ``e`` calibrated to the
  FLOPs target (the calibration runs in ``on_stage_end``), exactly what :meth:`export` would
  write at that point; training then continues from the uncalibrated gates, as it would have
  without the evaluation. With a ``finetune`` stage the gates were calibrated at the end of
  ``prune`` and are frozen, so the candidates differ only in their weights.
* **Evaluation** (the caller's ``evaluate``, :func:`top.pipeline.dev_evaluator`): as
  :func:`top.pipeline.evaluate_run` scores a saved run, on the first dev split with
  ``eval.limit``, gather mode, the selectors rebuilt from the export; FLOPs from the
  per-example lengths as :func:`top.pipeline.count_flops` counts them.
* **Budget**: a candidate qualifies when its method has no FLOPs target
  (:meth:`~top.pruning.base.PruningMethod.flops_target` is None) or when its dev FLOPs
  sparsity is at least the target minus :data:`SPARSITY_TOLERANCE`.
* **Rule** ``best_dev``: the qualifying candidate with the highest primary dev metric (every
  GLUE and SQuAD primary metric is higher-is-better; on a tie the later epoch; NaN ranks
  last); if none qualifies, the last candidate; every candidate is evaluated and recorded.
  ``last``: the last candidate, the only one evaluated (the others cannot be chosen, and on
  SQuAD's dev set each evaluation is a pass over 10,784 features).

The evaluation does not disturb training: the caller restores the random number generators
around it and the method's state is put back after ``on_stage_end`` ran on it, so a run's
training trajectory is the same under both rules.

For a method that declares it (:meth:`~top.pruning.base.PruningMethod.compare_stage_end`; ToP
with calibration), the end of that stage is also scored *before* ``on_stage_end``, so the
record shows what the hook changed (ToP: dev metric and FLOPs before and after calibration).

The state (history, best record, best weights and method state) goes into the training
checkpoint, so a resumed run ends with the same choice as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

#: A candidate meets a FLOPs target ``t`` when its dev sparsity is at least ``t - 0.01`` (the
#: reference's ``sparsity_epsilon``).
SPARSITY_TOLERANCE = 0.01
RULES = ("best_dev", "last")

#: ``evaluate(model, method)`` scores the model ``method.export()`` describes on dev and returns
#: at least ``score`` (the primary metric), ``metric`` (its name), ``sparsity`` (dev FLOPs
#: sparsity, 1 - pruned/dense), ``flops_reduction`` and ``target_sparsity`` (None: no target).
Evaluator = Callable[[Any, Any], dict[str, Any]]


def clone_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of ``module``'s state on the CPU."""
    return {key: value.detach().to("cpu", copy=True) for key, value in module.state_dict().items()}


def _to_cpu(state: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
    return None if state is None else {key: value.to("cpu") for key, value in state.items()}


@contextlib.contextmanager
def _quiet(method):
    """Silence the method's module logger below errors: what ``on_stage_end`` logs (ToP's
    calibration warnings) is about the stage's real end, not about every candidate."""
    logger = logging.getLogger(type(method).__module__)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _rank(record: Mapping[str, Any]) -> float:
    score = record["score"]
    return -math.inf if score is None or math.isnan(score) else float(score)


class CheckpointSelection:
    """Evaluates the candidates of a run, keeps the chosen one and restores it at the end.

    Args:
        evaluate: scores a model and its method on dev (:data:`Evaluator`).
        rule: ``"best_dev"`` or ``"last"`` (module docstring).
    """

    def __init__(self, evaluate: Evaluator, rule: str = "best_dev"):
        if rule not in RULES:
            raise ValueError(f"selection: unknown rule {rule!r}; expected one of {', '.join(RULES)}")
        self.evaluate = evaluate
        self.rule = rule
        #: Every dev evaluation, in order: candidates and before/after-stage-end records.
        self.history: list[dict[str, Any]] = []
        #: The chosen candidate's record so far (None before the first).
        self.best: dict[str, Any] | None = None
        self._best_weights: dict[str, torch.Tensor] | None = None
        self._best_method: dict[str, torch.Tensor] | None = None

    # -- evaluation ---------------------------------------------------------------------------
    def _record(self, model, method, stage: str, epoch: int, epochs: int, *, finalised: bool, candidate: bool) -> dict[str, Any]:
        result = dict(self.evaluate(model, method))
        target = result.get("target_sparsity")
        qualifies = target is None or result["sparsity"] >= target - SPARSITY_TOLERANCE
        record = {
            "stage": stage,
            "epoch": epoch,
            "epochs": epochs,
            "finalised": finalised,
            "candidate": candidate,
            **result,
            "qualifies": bool(qualifies),
        }
        self.history.append(record)
        log.info(
            "dev evaluation, %s epoch %d/%d (%s): %s %.4f, FLOPs sparsity %.4f (%.2fx)%s",
            stage,
            epoch,
            epochs,
            ("candidate" if candidate else "after on_stage_end") if finalised else "before on_stage_end",
            result.get("metric", "score"),
            result["score"],
            result["sparsity"],
            result["flops_reduction"],
            "" if target is None else f", target {target:.4f}: {'meets' if qualifies else 'misses'} the budget",
        )
        return record

    def _prefer(self, record: Mapping[str, Any]) -> bool:
        """Whether ``record`` replaces the chosen candidate (module docstring, "Rule")."""
        best = self.best
        if self.rule == "last" or best is None:
            return True
        if record["qualifies"] != best["qualifies"]:
            return record["qualifies"]
        if not record["qualifies"]:
            return True  # none qualifies so far: the latest
        return _rank(record) >= _rank(best)

    def consider(self, model, method, stage: str, epoch: int, epochs: int) -> dict[str, Any] | None:
        """Evaluate the candidate at the end of epoch ``epoch`` (from 1) of ``epochs`` of the
        run's last stage ``stage`` and keep it if the rule prefers it; return its record (None:
        under ``last``, an epoch before the last, not evaluated).

        ``method.on_stage_end(stage)`` is applied for the evaluation (and kept with the
        candidate) and then undone, so training continues unchanged. At the last epoch of a
        stage for which ``method.compare_stage_end(stage)``, the decisions before the hook are
        scored too.
        """
        if self.rule == "last" and epoch < epochs:
            return None  # not the last candidate: nothing to choose, nothing to evaluate
        snapshot = clone_state(method.module)
        try:
            if epoch == epochs and method.compare_stage_end(stage):
                self._record(model, method, stage, epoch, epochs, finalised=False, candidate=False)
            with _quiet(method):
                method.on_stage_end(stage)
            record = self._record(model, method, stage, epoch, epochs, finalised=True, candidate=True)
            if self._prefer(record):
                self.best = record
                if self.rule == "best_dev":
                    self._best_weights = clone_state(model.hf)
                    self._best_method = clone_state(method.module)
        finally:
            method.module.load_state_dict(snapshot)
        return record

    def end_stage(self, model, method, stage: str, epochs: int) -> None:
        """Run ``method.on_stage_end(stage)`` for a stage before the last, scoring the decisions
        before and after it when ``method.compare_stage_end(stage)`` (no candidates)."""
        compare = method.compare_stage_end(stage)
        if compare:
            self._record(model, method, stage, epochs, epochs, finalised=False, candidate=False)
        method.on_stage_end(stage)
        if compare:
            self._record(model, method, stage, epochs, epochs, finalised=True, candidate=False)

    def restore(self, model, method) -> None:
        """Load the chosen candidate's weights and method state (``last``: nothing to do, the
        run already ends there)."""
        if self._best_weights is not None:
            model.hf.load_state_dict(self._best_weights)
        if self._best_method is not None:
            method.module.load_state_dict(self._best_method)
        if self.best is not None:
            log.info("kept the checkpoint of %s epoch %d/%d (%s)", self.best["stage"], self.best["epoch"], self.best["epochs"], self.rule)

    # -- record ---------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """What ``pruning.json`` records under ``"selection"``: the rule, the chosen stage and
        epoch, whether ``best_dev`` fell back to the last candidate (none met the budget), the
        whole dev history, and per compared stage end the dev results before and after it."""
        best = self.best or {}
        compared = []
        for before in (r for r in self.history if not r["finalised"]):
            after = next(r for r in self.history if r["finalised"] and r["stage"] == before["stage"] and r["epoch"] == before["epoch"])
            keys = ("score", "sparsity", "flops_reduction", "qualifies")
            compared.append({"stage": before["stage"], "before": {k: before.get(k) for k in keys}, "after": {k: after.get(k) for k in keys}})
        return {
            "rule": self.rule,
            "tolerance": SPARSITY_TOLERANCE,
            "metric": best.get("metric"),
            "split": best.get("split"),
            "stage": best.get("stage"),
            "selected_epoch": best.get("epoch"),
            "epochs": best.get("epochs"),
            "score": best.get("score"),
            "sparsity": best.get("sparsity"),
            "fallback": bool(self.rule == "best_dev" and best and not best["qualifies"]),
            "stage_end": compared,
            "history": list(self.history),
        }

    # -- checkpoints ------------------------------------------------------------------------------
    def state_dict(self, current: tuple[str, int] | None = None) -> dict[str, Any]:
        """Everything a resumed run needs. ``current``, the (stage, epoch) the checkpoint is
        written at: when the chosen candidate is that epoch's, its weights are the checkpoint's
        own and are not stored twice."""
        same = self.best is not None and current == (self.best["stage"], self.best["epoch"])
        return {
            "rule": self.rule,
            "history": list(self.history),
            "best": self.best,
            "weights": None if same else self._best_weights,
            "weights_are_checkpoint": bool(same and self._best_weights is not None),
            "method": self._best_method,
        }

    def load_state_dict(self, state: Mapping[str, Any], checkpoint_model: Mapping[str, torch.Tensor] | None = None) -> None:
        """Restore :meth:`state_dict`'s output; ``checkpoint_model`` is the checkpoint's
        ``PrunableModel`` state (``hf.`` keys), where the chosen weights may live."""
        if state["rule"] != self.rule:
            raise ValueError(
                f"the checkpoint was written with selection {state['rule']!r}, this run asks for {self.rule!r}; "
                "delete the checkpoint folder (*.ckpt) to start again"
            )
        self.history = list(state["history"])
        self.best = state["best"]
        self._best_method = _to_cpu(state["method"])
        self._best_weights = _to_cpu(state["weights"])
        if state["weights_are_checkpoint"]:
            if checkpoint_model is None:
                raise ValueError("selection state refers to the checkpoint's weights, which were not given")
            prefix = "hf."
            self._best_weights = {k[len(prefix) :]: v.detach().to("cpu", copy=True) for k, v in checkpoint_model.items() if k.startswith(prefix)}
