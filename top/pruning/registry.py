"""Method registry: method names -> ``"module:Class"`` strings, imported lazily.

``top`` never imports ``baselines`` directly (docs/design.md, "Layers"); the registry names them as
strings and imports a method only when it is asked for.
"""

from __future__ import annotations

import importlib

from top.pruning.base import PruningMethod

METHODS: dict[str, str] = {
    "dense": "top.pruning.dense:Dense",
    "topk": "top.pruning.topk:TopK",
    "top": "top.pruning.top:ToP",
    "ltp": "baselines.ltp:LTP",
    "power_bert": "baselines.power_bert:PoWERBERT",
}


def method_class(name: str) -> type[PruningMethod]:
    """The class registered as ``name``; a clear error lists the known names."""
    try:
        target = METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known methods: {', '.join(sorted(METHODS))}") from None
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def build_method(name: str, model_config, settings=None) -> PruningMethod:
    """Instantiate method ``name`` for a model with ``model_config``."""
    return method_class(name)(model_config, settings)
