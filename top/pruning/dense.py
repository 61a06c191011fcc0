"""``dense``: the unpruned reference row, evaluated through the same code as every method."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from top.pruning.base import PruningMethod, Stage, TokenSelector, reject_unknown_settings


@dataclass
class DenseSettings:
    """``dense`` has no settings: any key under ``methods.dense`` is a mistake."""


class Dense(PruningMethod):
    """Keeps every token. Its weights are the fine-tuned teacher's; it trains nothing more."""

    name = "dense"
    settings_class = DenseSettings

    def __init__(self, model_config, settings: Mapping[str, Any] | None = None):
        reject_unknown_settings(self.name, settings or {}, DenseSettings)
        super().__init__(model_config, settings)

    def stages(self) -> list[Stage]:
        return []

    def selectors(self, stage: str) -> dict[int, TokenSelector]:
        return {}

    def export(self) -> dict[str, Any]:
        return {}

    @classmethod
    def inference_selectors(cls, exported: Mapping[str, Any], model_config) -> dict[int, TokenSelector]:
        return {}


class Finetune(Dense):
    """The teacher fine-tune: the dense method with one ``finetune`` stage of ``epochs`` epochs."""

    def __init__(self, model_config, epochs: float):
        super().__init__(model_config)
        self.epochs = epochs

    def stages(self) -> list[Stage]:
        return [Stage("finetune", self.epochs)]
