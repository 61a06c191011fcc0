"""``dense``: the unpruned reference row, evaluated through the same code as every method."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from top.pruning.base import PruningMethod, Stage, TokenSelector


class Dense(PruningMethod):
    """Keeps every token. Its weights are the fine-tuned teacher's; it trains nothing more."""

    name = "dense"

    def stages(self) -> list[Stage]:
        return []

    def selectors(self, stage: str) -> dict[int, TokenSelector]:
        return {}

    def export(self) -> dict[str, Any]:
        return {}

    @classmethod
    def inference_selectors(cls, exported: Mapping[str, Any], model_config) -> dict[int, TokenSelector]:
        return {}
