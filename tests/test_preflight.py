"""Mistakes caught before the first job: the preflight (top/preflight.py), the configuration
checks it relies on (top/config.py), and the messages a user sees. Each case asserts its message."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from snakemake.utils import validate

from tests.conftest import write_fake_hub_cache, write_tiny_model, write_tiny_squad, write_tiny_sst2
from top import preflight
from top.config import ConfigError, schema_error_message, validate_config
from top.preflight import PreflightError, check_latency_cores, check_results_dir, check_yaml_files, run_preflight

SCHEMA = str(Path(__file__).resolve().parents[1] / "workflow/schemas/config.schema.yaml")
HF_ENV = ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("model") / "model")


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch, tmp_path):
    """Every test sees an empty Hugging Face cache and, unless it says otherwise, an offline hub."""
    for name in HF_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def make_config(tmp_path: Path, model: Path, **changes) -> dict:
    cfg = {
        "model": str(model),
        "data_source": "local",
        "glue_dir": str(write_tiny_sst2(tmp_path / "glue")),
        "tasks": ["sst2"],
        "device": "cpu",
        "results_dir": str(tmp_path / "results"),
        "methods": {"dense": {"settings": {"default": {}}}, "topk": {"settings": {"a": {"keep_ratios": [0.9, 0.5]}}}},
    }
    cfg.update(changes)
    validate(cfg, SCHEMA)
    return cfg


@pytest.fixture
def config(tmp_path, tiny_model) -> dict:
    return make_config(tmp_path, tiny_model)


def preflight_message(cfg: dict, **options) -> str:
    options.setdefault("cache_file", None)
    with pytest.raises(PreflightError) as error:
        run_preflight(cfg, **options)
    return str(error.value)


def config_message(cfg: dict) -> str:
    with pytest.raises(ConfigError) as error:
        validate_config(cfg)
    return str(error.value)


# ---- data files: GLUE --------------------------------------------------------------------


def lines(path: Path, *rows: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{row}\n" for row in rows))


def empty_glue(glue: Path) -> str:
    shutil.rmtree(glue / "SST-2")
    return "glue_dir: sst2 split 'train': file {glue}/SST-2/train.tsv not found; expected DATA_DIR/SST-2/train.tsv"


def nested_glue(glue: Path) -> str:
    (glue / "glue_data").mkdir()
    shutil.move(glue / "SST-2", glue / "glue_data" / "SST-2")
    return "it is one level down: did you mean {glue}/glue_data?"


def lowercase_folder(glue: Path) -> str:
    shutil.move(glue / "SST-2", glue / "sst-2")
    return "found 'sst-2', but the layout spells it 'SST-2': rename the folder"


def not_utf8(glue: Path) -> str:
    (glue / "SST-2/dev.tsv").write_bytes(b"sentence\tlabel\na fine film\t1\nun caf\xe9 noir\t0\n")
    return "glue_dir: sst2 split 'validation': {glue}/SST-2/dev.tsv, line 3: byte 0xe9 is not UTF-8"


def extra_column(glue: Path) -> str:
    lines(glue / "SST-2/dev.tsv", "sentence\tlabel", "good\t1", "bad\t0", "a\ttab inside\t1")
    return "{glue}/SST-2/dev.tsv, line 4: expected 2 tab-separated columns, found 3"


def renamed_header(glue: Path) -> str:
    lines(glue / "SST-2/dev.tsv", "sentence\tsentiment", "good\t1")
    return "{glue}/SST-2/dev.tsv: header has no column 'label'; found ['sentence', 'sentiment']"


def word_labels(glue: Path) -> str:
    lines(glue / "SST-2/dev.tsv", "sentence\tlabel", "good\tpositive")
    return "{glue}/SST-2/dev.tsv, line 2: unknown label 'positive'; allowed labels: ('0', '1')"


def empty_file(glue: Path) -> str:
    (glue / "SST-2/dev.tsv").write_text("")
    return "{glue}/SST-2/dev.tsv is empty: expected a header row and data rows"


def header_only(glue: Path) -> str:
    lines(glue / "SST-2/dev.tsv", "sentence\tlabel")
    return "{glue}/SST-2/dev.tsv has no data rows"


def bad_last_training_row(glue: Path) -> str:
    train = glue / "SST-2/train.tsv"
    train.write_text(train.read_text() + "the end\t2\n")
    return "glue_dir: sst2 split 'train': {glue}/SST-2/train.tsv, line 50: unknown label '2'"


def missing_dev(glue: Path) -> str:
    (glue / "SST-2/dev.tsv").unlink()
    return "sst2 split 'validation': file {glue}/SST-2/dev.tsv not found"


def task_folder_given(glue: Path) -> str:
    return "SST-2 is the task's own folder: give the folder above it, {glue}"


@pytest.mark.parametrize(
    "mistake",
    [
        empty_glue,
        nested_glue,
        lowercase_folder,
        not_utf8,
        extra_column,
        renamed_header,
        word_labels,
        empty_file,
        header_only,
        bad_last_training_row,
        missing_dev,
    ],
)
def test_bad_glue_folder_is_named_before_any_job(config, mistake: Callable[[Path], str]):
    glue = Path(config["glue_dir"])
    expected = mistake(glue).format(glue=glue)
    message = preflight_message(config)
    assert message.startswith("preflight found 1 problem before any job ran:\n- ")
    assert expected in message


def test_glue_dir_pointing_into_a_task_folder(config):
    glue = Path(config["glue_dir"])
    config["glue_dir"] = str(glue / "SST-2")
    assert task_folder_given(glue).format(glue=glue) in preflight_message(config)


def write_stsb(glue: Path, score: str) -> None:
    rows = ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"]
    rows += [f"{i}\tmain\tf\t2012\t{i}\ts\ts\ta man plays\ta man sings\t{s}" for i, s in enumerate(["3.2", "0", "5.000", score])]
    lines(glue / "STS-B/train.tsv", *rows[:3])
    lines(glue / "STS-B/dev.tsv", *rows)


@pytest.mark.parametrize(
    "score, expected",
    [
        ("5.5", "dev.tsv, line 5: score '5.5' is outside stsb's range 0 to 5"),
        ("-0.4", "dev.tsv, line 5: score '-0.4' is outside stsb's range 0 to 5"),
        ("n/a", "dev.tsv, line 5: label 'n/a' is not a finite number"),
    ],
)
def test_stsb_scores_outside_0_to_5_are_refused(config, score, expected):
    write_stsb(Path(config["glue_dir"]), score)
    config["tasks"] = ["stsb"]
    message = preflight_message(config)
    assert "glue_dir: stsb split 'validation': " in message and expected in message


def test_stsb_scores_at_the_ends_of_the_range_are_read(config):
    write_stsb(Path(config["glue_dir"]), "4.8")
    config["tasks"] = ["stsb"]
    assert run_preflight(config, cache_file=None).data_files == 2


def test_mnli_needs_both_dev_files(config):
    glue = Path(config["glue_dir"])
    header = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2"
    row = "0\t1\t1\tfiction\t(a)\t(b)\t(a)\t(b)\ta cat sat\ta cat"
    lines(glue / "MNLI/train.tsv", header + "\tlabel1\tgold_label", row + "\tentailment\tentailment")
    lines(glue / "MNLI/dev_matched.tsv", header + "\tgold_label", row + "\tentailment")
    config["tasks"] = ["mnli"]
    assert f"mnli split 'validation_mismatched': file {glue}/MNLI/dev_mismatched.tsv not found" in preflight_message(config)


# ---- data files: SQuAD ---------------------------------------------------------------------


@pytest.fixture
def squad_config(config, tmp_path) -> dict:
    config.update(tasks=["squad"], squad_dir=str(write_tiny_squad(tmp_path / "squad")))
    validate_config(config)
    return config


def truncated(squad: Path) -> tuple[str, str]:
    dev = squad / "dev-v1.1.json"
    dev.write_text(dev.read_text()[:700])
    return "squad", "dev-v1.1.json: not valid JSON (it ends early: truncated, e.g. by an interrupted download)"


def v1_named_v2(squad: Path) -> tuple[str, str]:
    shutil.copy(squad / "train-v1.1.json", squad / "train-v2.0.json")
    shutil.copy(squad / "dev-v1.1.json", squad / "dev-v2.0.json")
    return "squad_v2", "train-v2.0.json: 'version' is '1.1', but task 'squad_v2' reads SQuAD 2.0 files"


def v2_named_v1(squad: Path) -> tuple[str, str]:
    dev = json.loads((squad / "dev-v1.1.json").read_text())
    (squad / "dev-v1.1.json").write_text(json.dumps({**dev, "version": "v2.0"}))
    return "squad", "dev-v1.1.json: 'version' is 'v2.0', but task 'squad' reads SQuAD 1.1 files"


def no_v2_training_file(squad: Path) -> tuple[str, str]:
    shutil.copy(squad / "dev-v1.1.json", squad / "dev-v2.0.json")
    return "squad_v2", "squad_dir: squad_v2 split 'train': file {squad}/train-v2.0.json not found"


def latin1_squad(squad: Path) -> tuple[str, str]:
    dev = squad / "dev-v1.1.json"
    dev.write_bytes(dev.read_bytes().replace(b"which", b"wh\xefch", 1))
    return "squad", "dev-v1.1.json, line 1: byte 0xef is not UTF-8"


def answer_elsewhere(squad: Path) -> tuple[str, str]:
    dev = json.loads((squad / "dev-v1.1.json").read_text())
    dev["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["text"] = "no such words"
    (squad / "dev-v1.1.json").write_text(json.dumps(dev))
    return "squad", "answer text 'no such words' does not occur in the context"


@pytest.mark.parametrize("mistake", [truncated, v1_named_v2, v2_named_v1, no_v2_training_file, latin1_squad, answer_elsewhere])
def test_bad_squad_folder_is_named_before_any_job(squad_config, mistake):
    squad = Path(squad_config["squad_dir"])
    task, expected = mistake(squad)
    squad_config["tasks"] = [task]
    message = preflight_message(squad_config)
    assert expected.format(squad=squad) in message and "squad_dir: " in message


def test_good_squad_folder_passes(squad_config):
    assert run_preflight(squad_config, cache_file=None).data_files == 2


# ---- data from the hub ------------------------------------------------------------------------


def test_hub_data_offline_needs_the_cache(config, tmp_path):
    config["data_source"] = "hub"
    message = preflight_message(config)
    assert "tasks: sst2 reads nyu-mll/glue (sst2) from the hub (data_source: hub), but this machine is offline (HF_HUB_OFFLINE=1)" in message
    assert "use data_source: local with glue_dir" in message
    write_fake_hub_cache(tmp_path / "hf", datasets=("nyu-mll/glue/sst2",))
    run_preflight(config, cache_file=None)


# ---- the verdict cache --------------------------------------------------------------------------


def test_verdicts_are_cached_by_path_size_and_time(config, tmp_path, monkeypatch):
    cache = tmp_path / ".snakemake" / "top-preflight.json"
    first = run_preflight(config, cache_file=cache)
    assert (first.data_files, first.cached_files) == (2, 0) and cache.is_file()
    from top.tasks import glue

    def never(*args):
        raise AssertionError("a cached file was read again")

    monkeypatch.setattr(glue, "check_local_file", never)
    again = run_preflight(config, cache_file=cache)
    assert (again.data_files, again.cached_files) == (2, 2)
    assert "2 data files (2 unchanged since checked)" in again.summary()
    monkeypatch.undo()
    dev = Path(config["glue_dir"]) / "SST-2/dev.tsv"
    dev.write_text(dev.read_text() + "a new row\tpositive\n")  # changed: checked again
    assert "unknown label 'positive'" in preflight_message(config, cache_file=cache)


# ---- the model ---------------------------------------------------------------------------------


def test_misspelt_hub_name_offline_is_named(config, tmp_path):
    config["model"] = "bert-base-uncasd"
    message = preflight_message(config)
    assert (
        f"model: 'bert-base-uncasd' is not in the local Hugging Face cache ({tmp_path}/hf/hub) and the hub cannot be reached (HF_HUB_OFFLINE=1)"
        in message
    )
    assert "check the name's spelling" in message


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("missing", "model: 'bert-base-uncasd' is not on the Hugging Face hub (nor in the local cache"),
        ("ConnectError: [Errno -2] Name or service not known", "the hub cannot be reached (ConnectError: [Errno -2] Name or service not known)"),
    ],
)
def test_hub_name_online_is_asked_of_the_hub(config, monkeypatch, answer, expected):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(preflight, "probe_hub", lambda name: answer)
    config["model"] = "bert-base-uncasd"
    assert expected in preflight_message(config)
    monkeypatch.setattr(preflight, "probe_hub", lambda name: None)  # found: the job downloads it
    run_preflight(config, cache_file=None)


def test_cached_hub_model_passes_offline_and_needs_its_weights(config, tmp_path):
    config["model"] = "bert-base-uncased"
    write_fake_hub_cache(tmp_path / "hf", weights=False)
    assert "has 'bert-base-uncased''s config.json but not its weights, and this machine is offline" in preflight_message(config)
    write_fake_hub_cache(tmp_path / "hf")
    run_preflight(config, cache_file=None)


def test_model_folder_without_weights_or_tokenizer(config, tmp_path, tiny_model):
    folder = tmp_path / "copy"
    shutil.copytree(tiny_model, folder)
    (folder / "model.safetensors").unlink()
    config["model"] = str(folder)
    assert f"model: {folder} has config.json but no weights (model.safetensors, pytorch_model.bin)" in preflight_message(config)
    shutil.copy(tiny_model / "model.safetensors", folder)
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json"):
        (folder / name).unlink(missing_ok=True)
    assert f"model: {folder} has no tokenizer files" in preflight_message(config)


@pytest.mark.parametrize(
    "model, expected",
    [
        ("python-package:no_such_pkg/model", "model: model 'python-package:no_such_pkg/model': Python package 'no_such_pkg' is not installed"),
        ("not a name", "model: 'not a name' is neither a folder nor a valid hub name"),
    ],
)
def test_model_names_that_cannot_work(config, model, expected):
    config["model"] = model
    assert expected in preflight_message(config)


# ---- this machine: device and latency cores --------------------------------------------------------


def test_gpu_is_not_a_device(config):
    config["device"] = "gpu"
    assert config_message(config).startswith("device: 'gpu' is not a device torch knows; use auto (CUDA when present), cpu, cuda, cuda:N")


@pytest.mark.parametrize(
    "device, available, count, expected",
    [
        ("cuda", False, 0, "device: 'cuda' asks for a CUDA GPU, but torch finds none on this machine"),
        ("cuda:1", False, 0, "device: 'cuda:1' asks for a CUDA GPU, but torch finds none on this machine"),
        ("cuda:3", True, 1, "device: 'cuda:3' names GPU 3, but this machine has 1 (cuda:0 to cuda:0)"),
    ],
)
def test_cuda_device_must_exist_here(config, monkeypatch, device, available, count, expected):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    config["device"] = device
    validate_config(config)
    assert expected in preflight_message(config)
    run_preflight(config, cache_file=None, machine=False)  # jobs on other machines: not checked here


def test_latency_cores_this_machine_lacks():
    message = check_latency_cores({"cores": "7", "threads": 1}, available={0, 1})[0]
    assert message.startswith("latency.cores: '7' names core(s) 7, but this machine lets the workflow run on cores 0-1 only")
    assert message.endswith("Set latency.cores to some of those, e.g. '0'")
    assert check_latency_cores({"cores": "0-3,6", "threads": 1}, available={0, 1, 2, 3, 6, 7}) == []
    assert "names core(s) 2-3" in check_latency_cores({"cores": "0-3"}, available={0, 1, 8})[0]


def test_latency_cores_checked_against_this_process(config):
    beyond = max(os.sched_getaffinity(0)) + 1
    config["latency"]["cores"] = str(beyond)
    assert f"latency.cores: '{beyond}' names core(s) {beyond}, but this machine lets the workflow run on cores" in preflight_message(config)


@pytest.mark.parametrize(
    "latency, expected",
    [
        ({"cores": "0", "threads": 2}, "latency.threads: 2 threads on the 1 core(s) of latency.cores '0' would compete for cores"),
        ({"cores": "0-", "threads": 1}, "latency.cores: bad item '0-' in core spec '0-'"),
        ({"cores": "3-1", "threads": 1}, "latency.cores: backwards range '3-1'"),
    ],
)
def test_latency_settings_that_cannot_be_pinned(config, latency, expected):
    config["latency"].update(latency)
    assert expected in config_message(config)


# ---- results folder ----------------------------------------------------------------------------


def test_results_dir_under_a_file(config, tmp_path):
    (tmp_path / "notes.txt").write_text("")
    config["results_dir"] = str(tmp_path / "notes.txt" / "results")
    assert f"results_dir: '{tmp_path}/notes.txt/results' cannot be created: {tmp_path}/notes.txt is a file, not a folder" in preflight_message(config)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_results_dir_that_cannot_be_written(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert "cannot be created (in" in check_results_dir(str(locked / "results"))[0]
    finally:
        locked.chmod(0o755)


def test_results_dir_is_not_created_by_the_check(tmp_path):
    assert check_results_dir(str(tmp_path / "a" / "b")) == [] and not (tmp_path / "a").exists()
    assert list(tmp_path.iterdir()) == []  # the test file is gone too


# ---- several problems at once ------------------------------------------------------------------


def test_every_problem_is_reported_at_once(config):
    shutil.rmtree(Path(config["glue_dir"]) / "SST-2")
    config.update(model="bert-base-uncasd", results_dir="/dev/null/results")
    message = preflight_message(config)
    assert message.startswith("preflight found 3 problems before any job ran:")
    assert [line.split(":")[0] for line in message.splitlines()[1:]] == ["- glue_dir", "- model", "- results_dir"]


# ---- configuration files: duplicate keys ------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("model: a\ntasks: [sst2]\nseeds: [1]\ntasks: [rte]\n", "line 4: duplicate key 'tasks' (first given at line 2)"),
        (
            "methods:\n  topk:\n    settings:\n      keep50: {keep_ratios: [1, 0.5]}\n      keep50: {keep_ratios: [1, 0.3]}\n",
            "line 5: duplicate key 'keep50' (first given at line 4)",
        ),
        ("latency: {cores: '0', threads: 1, cores: '1'}\n", "line 1: duplicate key 'cores' (first given at line 1)"),
    ],
)
def test_duplicate_yaml_keys_name_the_key_and_lines(tmp_path, text, expected):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    [message] = check_yaml_files([path])
    assert message.startswith(f"{path}, {expected}; YAML would keep only the last value and silently drop the other")


def test_yaml_merge_keys_may_be_overridden(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("base: &base {epochs: 1, batch_size: 8}\nteacher:\n  <<: *base\n  epochs: 3\n")
    assert check_yaml_files([path]) == []


def test_shipped_configs_have_no_duplicate_keys():
    root = Path(__file__).resolve().parents[1]
    assert check_yaml_files(sorted((root / "config").glob("*.yaml"))) == []


# ---- method settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, settings, expected",
    [
        (
            "topk",
            {"keep_ratios": [0.9, 0.5], "finetune_epoch": 1},
            "methods.topk.settings.s (task sst2): topk: unknown settings ['finetune_epoch']; known: ['finetune_epochs', 'keep_ratios']",
        ),
        ("dense", {"keep_ratios": [1.0, 1.0]}, "methods.dense.settings.s (task sst2): dense: unknown settings ['keep_ratios']; known: none"),
        (
            "topk",
            {"finetune_epochs": 1},
            "methods.topk.settings.s (task sst2): topk: keep_ratios is required: one keep ratio per layer (2 for this model)",
        ),
    ],
)
def test_every_method_refuses_unknown_settings(config, method, settings, expected):
    config["methods"][method] = {"settings": {"s": settings}}
    assert config_message(config).startswith(expected)


def test_unknown_settings_are_refused_without_the_model(config):
    # a hub model the machine cannot read: the methods are not built, their setting names are still checked
    config["model"] = "bert-base-uncased"
    config["methods"]["ltp"] = {"settings": {"x": {"reg_lamda": 0.1}}}
    assert "methods.ltp.settings.x (task sst2): ltp: unknown settings ['reg_lamda']" in config_message(config)


# ---- schema errors: the key, not the schema ------------------------------------------------------------


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            lambda c: c.update(glue_dri="/data/glue"),
            "invalid configuration: (top level): Additional properties are not allowed ('glue_dri' was unexpected)",
        ),
        (
            lambda c: c["teacher"].update(epochs="three"),
            "invalid configuration: teacher.epochs: 'three' is not of type 'number'\n  offending value: 'three'",
        ),
        (lambda c: c.update(seeds=[1, "x"]), "invalid configuration: seeds[1]: 'x' is not of type 'integer'"),
        (
            lambda c: c["methods"]["topk"].update(setings={}),
            "invalid configuration: methods.topk: Additional properties are not allowed ('setings' was unexpected)",
        ),
    ],
)
def test_schema_errors_are_a_few_lines(config, change, expected):
    change(config)
    with pytest.raises(Exception) as error:
        validate(config, SCHEMA)
    message = schema_error_message(error.value)
    assert message.startswith(expected)
    assert len(message.splitlines()) <= 3 and "Failed validating" not in message and "Failed validating" in str(error.value)


# ---- JSON outputs: no NaN --------------------------------------------------------------------------


def test_json_outputs_write_null_for_nan(tmp_path):
    from top.pipeline import write_json

    path = tmp_path / "metrics.json"
    write_json(path, {"pearson": float("nan"), "inf": np.float32("inf"), "ok": np.float64(0.5), "n": 3, "splits": [{"f1": -math.inf}]})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text, parse_constant=lambda token: pytest.fail(token)) == {
        "pearson": None,
        "inf": None,
        "ok": 0.5,
        "n": 3,
        "splits": [{"f1": None}],
    }


def test_undefined_metric_is_explained_in_the_tables(tmp_path):
    from top.report.tables import collect, markdown_table

    run = {"task": "stsb", "method": "dense", "setting": "default", "seed": 1}
    metrics = {**run, "primary_metric": "pearson", "score": None, "splits": {"validation": {"pearson": None, "spearmanr": None, "n_examples": 9}}}
    flops = {
        **run,
        "flops": 1.0,
        "dense_flops": 1.0,
        "flops_reduction": 1.0,
        "mean_input_length": 5.0,
        "mean_lengths_in": [5.0],
        "mean_lengths_kept": [5.0],
    }
    runner = {"median_ms": 1.0, "iqr_ms": 0.1}
    latency = {
        **run,
        "timings": {"runners": {"pruned": runner, "dense": runner}},
        "speedup": 1.0,
        "speedup_at_pruned_lengths": 1.0,
        "environment": {"cpu_model": "cpu", "threads": 1},
    }
    files = []
    for name, payload in (("metrics", metrics), ("flops", flops), ("latency", latency)):
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(payload))
    frame = collect([files[0]], [files[1]], [files[2]], tmp_path / "results.csv")
    assert math.isnan(frame["score"].iloc[0]) and frame["undefined_metrics"].iloc[0] == "validation/pearson; validation/spearmanr"
    markdown = markdown_table(tmp_path / "results.csv", tmp_path / "results.md")
    assert "| stsb | Dense (teacher) | default | pearson | – |" in markdown
    assert "–: the metric is undefined for this run (null in its metrics.json)" in markdown
    assert "- stsb Dense (teacher) default seed 1: validation/pearson; validation/spearmanr" in markdown


# ---- failed jobs: the reason on the console ------------------------------------------------------------


def test_a_failed_job_prints_its_reason_on_the_console(capfd, monkeypatch):
    from top.files import reported_errors
    from top.tasks.sources import DataError

    monkeypatch.setattr(sys, "__stderr__", sys.stderr)
    with pytest.raises(DataError), reported_errors("rule teacher (task=sst2, seed=42)", "results/logs/teacher/sst2/seed42.log"):
        raise DataError("/data/SST-2/dev.tsv, line 3: unknown label 'x'")
    with pytest.raises(KeyError), reported_errors("rule flops"):
        raise KeyError("lengths_in")
    err = capfd.readouterr().err
    assert (
        "rule teacher (task=sst2, seed=42) failed (traceback in results/logs/teacher/sst2/seed42.log):\n  /data/SST-2/dev.tsv, line 3: unknown label 'x'"
        in err
    )
    assert "rule flops failed:\n  KeyError: 'lengths_in'" in err
