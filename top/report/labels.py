"""How tables and figures name and order things: the run keys, display names of methods, tasks
and metrics, and the methods' order (dense first, ToP last)."""

from __future__ import annotations

KEYS = ["task", "method", "setting", "seed"]
GROUP = ["task", "method", "setting"]
METHOD_ORDER = ["dense", "topk", "ltp", "power_bert", "top"]
METHOD_LABELS = {
    "dense": "Dense (teacher)",
    "topk": "Top-k (static)",
    "ltp": "LTP",
    "power_bert": "PoWER-BERT",
    "top": "ToP",
}
TASK_LABELS = {
    "cola": "CoLA",
    "sst2": "SST-2",
    "mrpc": "MRPC",
    "stsb": "STS-B",
    "qqp": "QQP",
    "mnli": "MNLI",
    "qnli": "QNLI",
    "rte": "RTE",
    "wnli": "WNLI",
    "squad": "SQuAD v1.1",
    "squad_v2": "SQuAD v2.0",
}
METRIC_LABELS = {
    "accuracy": "acc.",
    "f1": "F1",
    "matthews_correlation": "MCC",
    "pearson": "Pearson",
    "spearmanr": "Spearman",
    "exact_match": "EM",
}


def method_label(method: str) -> str:
    """Display name of a method (paper-only methods: their config-style name, upper-cased)."""
    return METHOD_LABELS.get(method, method.replace("_", "-").upper() if len(method) <= 4 else method.replace("_", " ").title())


def method_rank(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
