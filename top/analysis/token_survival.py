"""Which tokens a pruned sentence(-pair) classifier drops, layer by layer, by the token's role
(docs/design.md, "Token survival by role").

One gather-mode pass over a GLUE dev split (the evaluation's own mode: tokens physically removed,
batches formed as :func:`top.evaluate.predict` forms them) records, for every example, which of
its positions are alive after each layer (:func:`trace_kept`); its logits come with it, so the
pass can be checked against the run's recorded score. Each real token has one role
(:func:`token_roles`):

* ``[SEP]``: the separator tokens (one after each segment);
* ``punctuation``: a token made of punctuation characters only (Unicode category P*);
* ``words A`` and ``words B``: the other tokens of the first and of the second segment
  (``token_type_ids``; every token is of segment A in a single-sentence task).

[CLS] (slot 0) has no role: every selector keeps it (ToP §3.3 ranks the other tokens only).
:func:`dropped_by_role` gives, per layer, the share of each role's tokens not alive after it,
pooled over the examples: whether a method spends its FLOPs budget on separators and
punctuation or on the words of one sentence.

Static top-k, LTP and PoWER-BERT keep a layer's highest-scored tokens by construction; ToP keeps
the tokens of the rank bins its gates keep, which need not be the best-ranked ones.
:func:`bins_in_rank_order` reads from a ToP run's export how far its kept bins are from that.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from top.analysis.squad_tokens import sorted_batches
from top.batching import example_lengths
from top.encoder import PrunableModel
from top.train import model_inputs

ROLES = ("[SEP]", "punctuation", "words A", "words B")
"""The roles of :func:`token_roles`, in table order."""


@torch.inference_mode()
def trace_kept(
    model: PrunableModel, dataset, collate, *, batch_size: int = 64, device: torch.device | str = "cpu"
) -> tuple[list[np.ndarray], np.ndarray]:
    """Run ``model`` over ``dataset`` in gather mode and record which positions survive.

    Returns:
        ``alive``: per example, in dataset order, ``[num_layers + 1, L_i]`` bool over its ``L_i``
        positions: row 0 its real tokens, row ``l + 1`` the tokens alive after layer ``l``'s
        selector; and ``logits``: ``[N, C]`` float32 in dataset order.

    Raises:
        ValueError: for a span-extraction model (its logits are per position).
    """
    if model.head_kind == "qa":
        raise ValueError("token survival by role covers sentence(-pair) classifiers; a span-extraction model has per-position logits")
    model.to(device).eval()
    lengths = example_lengths(dataset)
    alive: list[np.ndarray | None] = [None] * len(lengths)
    logits: list[np.ndarray | None] = [None] * len(lengths)
    for rows, batch in sorted_batches(dataset, lengths, collate, batch_size):
        out = model(**model_inputs(batch, torch.device(device)), mode="gather", record=True)
        real = batch["attention_mask"].bool().to(out.logits.device)
        masks = torch.stack([real, *out.kept], dim=1).cpu().numpy()  # [B, layers + 1, L]
        block = out.logits.float().cpu().numpy()
        for i, row in enumerate(rows):
            alive[row] = masks[i, :, : lengths[row]].copy()
            logits[row] = block[i]
    return alive, np.stack(logits) if logits else np.zeros((0, 0), dtype=np.float32)


def _is_punctuation(token: str) -> bool:
    text = token.removeprefix("##")
    return bool(text) and all(unicodedata.category(char).startswith("P") for char in text)


def token_roles(dataset, tokenizer) -> dict[str, list[np.ndarray]]:
    """Per role of :data:`ROLES`, per example ``[L_i]`` bool: the tokens of that role.

    Every real token but slot 0 ([CLS]) has exactly one role. The segment comes from
    ``token_type_ids`` (all segment A without them)."""
    roles: dict[str, list[np.ndarray]] = {role: [] for role in ROLES}
    types = dataset["token_type_ids"] if "token_type_ids" in dataset.column_names else None
    for index, ids in enumerate(dataset["input_ids"]):
        ids = np.asarray(ids, dtype=np.int64)
        segment_b = np.asarray(types[index], dtype=bool) if types is not None else np.zeros(len(ids), dtype=bool)
        sep = ids == tokenizer.sep_token_id
        punctuation = np.asarray([_is_punctuation(token) for token in tokenizer.convert_ids_to_tokens(ids.tolist())]) & ~sep
        words = ~sep & ~punctuation
        words[0] = False  # [CLS]
        sep[0] = punctuation[0] = False
        roles["[SEP]"].append(sep)
        roles["punctuation"].append(punctuation)
        roles["words A"].append(words & ~segment_b)
        roles["words B"].append(words & segment_b)
    return roles


def bins_in_rank_order(record: Mapping[str, Any]) -> list[dict[str, int]]:
    """For each layer a ToP run prunes at (a saved run's ``pruning.json`` record, with its
    ``decisions`` as :meth:`top.pruning.top.ToP.export` writes them): ``kept``, the rank bins
    it keeps, and ``best``, how many of them are among its ``kept`` best-ranked bins (bin 0
    holds the highest scores). ``best == kept`` when a layer keeps its best-ranked tokens, as
    the baselines do; bins chosen at random would give ``kept² / bin_num`` on average. Layers
    that keep every bin are left out.

    Raises:
        ValueError: for a record that is not a ToP run's.
    """
    decisions = record.get("decisions") or {}
    if record.get("method") != "top" or "layers" not in decisions:
        raise ValueError(f"rank bins are ToP's; this run's method is {record.get('method')!r}")
    out = []
    for layer in decisions["layers"]:
        mask = [bool(v) for v in layer["bin_mask"]]
        kept = sum(mask)
        if layer["prunes"] and kept < len(mask):
            out.append({"layer": int(layer["layer"]), "bins": len(mask), "kept": kept, "best": sum(mask[:kept])})
    return out


def dropped_by_role(alive: Sequence[np.ndarray], roles: Mapping[str, Sequence[np.ndarray]]) -> list[dict[str, Any]]:
    """Per layer, pooled over the examples: ``tokens_in`` and ``tokens_kept`` (mean real tokens
    entering the layer and alive after it), and per role its ``tokens`` (count over the split)
    and ``dropped`` (the share of them not alive after the layer; None for a role with no
    token).

    Args:
        alive: per example ``[num_layers + 1, L_i]`` bool (:func:`trace_kept`).
        roles: per role, per example ``[L_i]`` bool (:func:`token_roles`).
    """
    if not alive:
        return []
    totals = {role: sum(int(mask.sum()) for mask in masks) for role, masks in roles.items()}
    out = []
    for layer in range(alive[0].shape[0] - 1):
        entering = sum(int(mask[layer].sum()) for mask in alive)
        kept = sum(int(mask[layer + 1].sum()) for mask in alive)
        row: dict[str, Any] = {"layer": layer, "tokens_in": entering / len(alive), "tokens_kept": kept / len(alive), "roles": {}}
        for role, masks in roles.items():
            gone = sum(int((mask & ~here[layer + 1]).sum()) for mask, here in zip(masks, alive))
            row["roles"][role] = {"tokens": totals[role], "dropped": None if totals[role] == 0 else gone / totals[role]}
        out.append(row)
    return out
