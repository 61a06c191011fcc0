"""Writing outputs so that no reader ever sees half a file: write to a temporary name beside
the target, then rename it (atomic within one file system)."""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` and rename it onto ``path`` when the block ends.

    The temporary name keeps the suffix (``results.tmp.csv``), so writers that choose the format
    from it (matplotlib, ``np.savez``) still work. If the block raises, the temporary file is
    removed and ``path`` is left as it was. Parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp{path.suffix}")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def finite_or_none(payload: Any) -> Any:
    """``payload`` with every NaN or infinite float (Python or NumPy) replaced by ``None``, so
    that it can be written as strict JSON (``null``): dictionaries, lists and tuples are walked,
    everything else is returned as it is."""
    if isinstance(payload, Mapping):
        return {key: finite_or_none(value) for key, value in payload.items()}
    if isinstance(payload, (list, tuple)):
        return [finite_or_none(value) for value in payload]
    if isinstance(payload, numbers.Real) and not isinstance(payload, numbers.Integral):
        value = float(payload)
        return value if math.isfinite(value) else None
    return payload


def json_text(payload: Any, **options: Any) -> str:
    """Strict JSON of ``payload``: non-finite floats become ``null`` (:func:`finite_or_none`),
    and ``allow_nan=False`` makes sure no ``NaN`` or ``Infinity`` token is ever written."""
    return json.dumps(finite_or_none(payload), allow_nan=False, **options)
