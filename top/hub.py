"""Where the Hugging Face caches are, and whether this machine may use the hub.

The paths follow ``huggingface_hub`` and ``datasets``: ``HF_HUB_CACHE`` (or
``HUGGINGFACE_HUB_CACHE``) and ``HF_DATASETS_CACHE`` when set, else under ``HF_HOME``, else under
``$XDG_CACHE_HOME/huggingface`` (``~/.cache/huggingface``). They are read from the environment at
each call, so that a test or a job that sets them sees its own.
"""

from __future__ import annotations

import os
from pathlib import Path

_TRUE = {"1", "ON", "YES", "TRUE"}


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, as ``huggingface_hub`` finds it (read from the environment
    at each call, not at import)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    return _hf_home() / "hub"


def datasets_cache_dir() -> Path:
    """The ``datasets`` library's cache of prepared datasets."""
    explicit = os.environ.get("HF_DATASETS_CACHE")
    return Path(explicit).expanduser() if explicit else _hf_home() / "datasets"


def _hf_home() -> Path:
    home = os.environ.get("HF_HOME")
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface"


def hub_cache_file(repo: str, filename: str) -> str | None:
    """The cached path of ``filename`` of the hub model ``repo``, or None.

    Raises:
        ValueError: ``repo`` is not a valid repository name.
    """
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, cache_dir=hub_cache_dir())
    return found if isinstance(found, str) else None


def offline_reason(data: bool = False) -> str | None:
    """Why the hub must not be used (an environment variable says so), or None."""
    names = ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"] + (["HF_DATASETS_OFFLINE"] if data else [])
    for name in names:
        if os.environ.get(name, "").strip().upper() in _TRUE:
            return f"{name}={os.environ[name]}"
    return None
