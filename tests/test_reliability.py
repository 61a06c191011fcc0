"""Reliability of a whole run: the same seed gives the same results, and a training job killed
with SIGKILL half-way resumes to exactly the result of an uninterrupted run.

Each run goes through the workflow's own library steps (``top.pipeline``) on a tiny random BERT
and a tiny SST-2, with ToP (the method with the most state: gates, multipliers, a second
optimiser, random gate samples).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from snakemake.utils import validate

from tests.conftest import write_tiny_model, write_tiny_sst2
from top.pipeline import count_flops, evaluate_run, finetune_teacher, train_method

pytestmark = pytest.mark.usefixtures("one_thread")

SCHEMA = str(Path(__file__).resolve().parents[1] / "workflow/schemas/config.schema.yaml")
TOP = {"target_sparsity": 0.3, "epochs": 6, "lagrangian_warmup_epochs": 2, "bin_num": 4, "reg_learning_rate": 0.2}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    cfg = {
        "model": str(write_tiny_model(root / "model", layers=4)),
        "data_source": "local",
        "glue_dir": str(write_tiny_sst2(root / "glue", train_rows=96, dev_rows=24)),
        "tasks": ["sst2"],
        "device": "cpu",
        "teacher": {"epochs": 2, "batch_size": 8, "learning_rate": 1e-3},
        "train": {"batch_size": 8, "learning_rate": 1e-3},
        "methods": {"dense": {"settings": {"default": {}}}, "top": {"settings": {"t30": TOP}}},
    }
    validate(cfg, SCHEMA)
    finetune_teacher(cfg, "sst2", 7, root / "teacher")
    return root, cfg


def _evaluate(cfg, root: Path, run: Path) -> tuple[dict, dict]:
    info = {"task": "sst2", "method": "top", "setting": "t30", "seed": 7}
    metrics = evaluate_run(cfg, "sst2", run, root / f"{run.name}.metrics.json", root / f"{run.name}.npz", info)
    flops = count_flops(run, root / f"{run.name}.npz", root / f"{run.name}.flops.json", info)
    return metrics, flops


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model.safetensors")


def test_same_seed_same_metrics_flops_and_weights(setup):
    root, cfg = setup
    first, second = root / "first", root / "second"
    for global_seed, run in enumerate((first, second)):
        torch.manual_seed(global_seed)  # whatever the process's state, the run seeds itself
        train_method(cfg, "sst2", "top", "t30", 7, root / "teacher", run)
    m1, f1 = _evaluate(cfg, root, first)
    m2, f2 = _evaluate(cfg, root, second)
    assert m1["splits"] == m2["splits"] and m1["decisions"] == m2["decisions"]
    assert f1["flops"] == f2["flops"] and f1["flops_reduction"] == f2["flops_reduction"]
    w1, w2 = _weights(first), _weights(second)
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    assert f1["flops_reduction"] > 1.0  # ToP did prune: the check is not vacuous


def test_the_kept_checkpoint_is_the_one_evaluation_measures(setup):
    """pruning.json records every epoch's dev score and FLOPs sparsity (ToP: calibrated, plus
    the last epoch before calibration); the kept epoch's numbers are exactly what evaluate_run
    and count_flops then measure on the saved run."""
    root, cfg = setup
    run = root / "selected"
    train_method(cfg, "sst2", "top", "t30", 7, root / "teacher", run)
    metrics, flops = _evaluate(cfg, root, run)
    selection = json.loads((run / "pruning.json").read_text())["selection"]
    history = selection["history"]
    candidates = [r for r in history if r["candidate"]]
    assert [r["epoch"] for r in candidates] == list(range(1, TOP["epochs"] + 1)) and all(r["stage"] == "prune" for r in candidates)
    assert all(r["qualifies"] == (r["sparsity"] >= TOP["target_sparsity"] - 0.01) for r in history)
    kept = next(r for r in candidates if r["epoch"] == selection["selected_epoch"])
    assert kept["qualifies"] and not selection["fallback"]
    assert kept["score"] == max(r["score"] for r in candidates if r["qualifies"])
    assert metrics["score"] == kept["score"] and flops["achieved_sparsity"] == kept["sparsity"]
    assert (metrics["selection"], metrics["selected_epoch"], metrics["selection_epochs"]) == ("best_dev", kept["epoch"], TOP["epochs"])

    # one extra evaluation: the last epoch before the calibration, which moved whole bins
    before = [r for r in history if not r["finalised"]]
    assert len(history) == TOP["epochs"] + 1 and [(r["stage"], r["epoch"], r["candidate"]) for r in before] == [("prune", TOP["epochs"], False)]
    compared = selection["stage_end"]
    assert [c["stage"] for c in compared] == ["prune"] and compared[0]["after"]["sparsity"] == candidates[-1]["sparsity"]
    assert compared[0]["before"]["sparsity"] != compared[0]["after"]["sparsity"]  # the calibration changed the FLOPs
    assert abs(compared[0]["after"]["sparsity"] - TOP["target_sparsity"]) < abs(compared[0]["before"]["sparsity"] - TOP["target_sparsity"])

    teacher = json.loads((root / "teacher" / "pruning.json").read_text())["selection"]
    assert [r["epoch"] for r in teacher["history"]] == [1, 2] and all(r["qualifies"] and r["target_sparsity"] is None for r in teacher["history"])
    assert teacher["rule"] == "best_dev" and teacher["trained"] == "teacher" and selection["trained"] == "method"

    # a method with nothing to train keeps the teacher's weights and says which epoch they are
    topk = {**cfg, "methods": {**cfg["methods"], "topk": {"settings": {"half": {"keep_ratios": [1.0, 0.5, 0.5, 0.5]}}}}}
    train_method(topk, "sst2", "topk", "half", 7, root / "teacher", root / "topk")
    assert json.loads((root / "topk" / "pruning.json").read_text())["selection"] == teacher


@pytest.mark.slow
def test_sigkill_half_way_then_rerun_equals_an_uninterrupted_run(setup):
    root, cfg = setup
    straight = root / "straight"
    train_method(cfg, "sst2", "top", "t30", 7, root / "teacher", straight)

    killed = root / "killed"
    checkpoint = killed.with_name(killed.name + ".ckpt") / "checkpoint.pt"
    config_file = root / "config.json"
    config_file.write_text(json.dumps(cfg))
    script = (
        "import json, sys, torch; from top.pipeline import train_method; torch.set_num_threads(1); "
        "cfg = json.load(open(sys.argv[1])); "
        "train_method(cfg, 'sst2', 'top', 't30', 7, sys.argv[2], sys.argv[3])"
    )
    process = subprocess.Popen([sys.executable, "-c", script, str(config_file), str(root / "teacher"), str(killed)])
    deadline = time.monotonic() + 300
    while not checkpoint.exists():  # the end of the first epoch
        assert process.poll() is None, "the training job ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not killed.exists()  # nothing half-written where the result belongs
    state = torch.load(checkpoint, weights_only=False)
    assert state["epoch"] < TOP["epochs"] - 1  # killed before the end

    train_method(cfg, "sst2", "top", "t30", 7, root / "teacher", killed)  # the re-run resumes
    assert not checkpoint.exists()  # and cleans up its checkpoint
    a, b = _weights(straight), _weights(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    exported = [json.loads((run / "pruning.json").read_text()) for run in (straight, killed)]
    assert exported[0]["decisions"] == exported[1]["decisions"]
    assert exported[0]["history"] == exported[1]["history"]
    assert exported[0]["selection"] == exported[1]["selection"]  # the dev history and the kept epoch survive the kill
    assert len(exported[1]["selection"]["history"]) == TOP["epochs"] + 1


def test_atomic_path_renames_on_success_and_leaves_nothing_on_failure(tmp_path):
    from top.files import atomic_path, atomic_write_text

    target = tmp_path / "out" / "figure.png"
    with atomic_path(target) as tmp:
        assert tmp.name == "figure.tmp.png" and not target.exists()  # the suffix stays: writers pick formats from it
        tmp.write_text("new")
    assert target.read_text() == "new"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "new" and sorted(p.name for p in target.parent.iterdir()) == ["figure.png"]
    atomic_write_text(tmp_path / "a.md", "text")
    assert (tmp_path / "a.md").read_text() == "text"


def test_replace_block_rewrites_only_between_its_markers(tmp_path):
    from top.files import has_block, replace_block

    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\nprose\n<!-- results:start -->\nold table\n<!-- results:end -->\nmore prose\n")
    assert has_block(readme, "results") and not has_block(readme, "other") and not has_block(tmp_path / "none.md", "results")
    replace_block(readme, "results", "| a |\n|---|")
    assert readme.read_text() == "# Title\n\nprose\n<!-- results:start -->\n| a |\n|---|\n<!-- results:end -->\nmore prose\n"
    replace_block(readme, "results", "")
    assert readme.read_text() == "# Title\n\nprose\n<!-- results:start -->\n<!-- results:end -->\nmore prose\n"
    for broken in (
        "<!-- results:start -->\n",  # no end
        "<!-- results:end -->\nx\n<!-- results:start -->\n",  # out of order
        "<!-- results:start -->\n<!-- results:end -->\n<!-- results:start -->\n<!-- results:end -->\n",  # twice
    ):
        readme.write_text(broken)
        with pytest.raises(ValueError, match=r"README.md: block 'results' needs one line"):
            replace_block(readme, "results", "new")
        assert readme.read_text() == broken


def test_the_teacher_comes_out_bit_identical_in_another_process(setup):
    """The reproduction's run ledger keeps a run valid on a new machine only if its teacher,
    fine-tuned again there, has the same weights (top/report/ledger.py): at a fixed thread count
    a fresh process must reproduce the teacher's weights exactly."""
    from top.report.ledger import weights_sha256

    root, cfg = setup
    torch.set_num_threads(1)  # the module's teacher may predate the one_thread fixture: train one at a known count
    here, again = root / "teacher_here", root / "teacher_again"
    finetune_teacher(cfg, "sst2", 7, here)
    code = (
        "import json, sys, torch; torch.set_num_threads(1); from top.pipeline import finetune_teacher; "
        "finetune_teacher(json.loads(sys.argv[1]), 'sst2', 7, sys.argv[2])"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    subprocess.run([sys.executable, "-c", code, json.dumps(cfg), str(again)], check=True, env=env, capture_output=True)
    assert weights_sha256(again) == weights_sha256(here)
