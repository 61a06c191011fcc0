"""Configuration: schema defaults, semantic validation, per-run resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from tests.conftest import write_tiny_model
from top.config import ConfigError, resolve_run, runs, validate_config

SCHEMA = str(Path(__file__).resolve().parents[1] / "workflow/schemas/config.schema.yaml")


@pytest.fixture
def config(tmp_path):
    glue = tmp_path / "glue"
    glue.mkdir()
    cfg = {
        "model": str(write_tiny_model(tmp_path / "model")),
        "data_source": "local",
        "glue_dir": str(glue),
        "tasks": ["sst2", "rte"],
        "methods": {
            "dense": {"settings": {"default": {}}},
            "topk": {"common": {"finetune_epochs": 1}, "settings": {"a": {"keep_ratios": [0.9, 0.5]}, "b": {"keep_ratios": [0.5, 0.2]}}},
        },
        "train": {"learning_rate": 1e-4},
        "task_settings": {"rte": {"train": {"learning_rate": 5e-5}, "methods": {"topk": {"finetune_epochs": 3}}}},
    }
    validate(cfg, SCHEMA)
    return cfg


def test_schema_fills_defaults_once(config):
    assert config["seeds"] == [42]
    assert config["teacher"]["epochs"] == 3
    assert config["latency"] == {"cores": "0", "threads": 1, "n_examples": 100, "sample_seed": 0, "warmup": 2, "repeats": 5, "batch_sizes": [8, 32]}
    assert config["train"]["learning_rate"] == 1e-4 and config["train"]["batch_size"] == 32


def test_resolution_order(config):
    sst2 = resolve_run(config, "sst2", "topk", "a", 42)
    rte = resolve_run(config, "rte", "topk", "b", 42)
    assert sst2["method_settings"] == {"finetune_epochs": 1, "keep_ratios": [0.9, 0.5]}
    assert rte["method_settings"] == {"finetune_epochs": 3, "keep_ratios": [0.5, 0.2]}
    assert (sst2["train"]["learning_rate"], rte["train"]["learning_rate"]) == (1e-4, 5e-5)
    assert len(list(runs(config))) == 2 * 3


def test_method_train_block_overrides_shared_train_settings(config):
    config["methods"]["topk"]["settings"]["a"]["train"] = {"batch_size": 8}
    run = resolve_run(config, "rte", "topk", "a", 42)
    assert run["train"]["batch_size"] == 8 and run["train"]["learning_rate"] == 5e-5
    assert "train" not in run["method_settings"]


def test_checkpoint_selection_defaults_to_best_dev_and_resolves_per_run(config):
    from top.config import teacher_settings

    assert config["train"]["selection"] == "best_dev" and teacher_settings(config, "sst2")["selection"] == "best_dev"
    config["task_settings"]["rte"]["teacher"] = {"selection": "last"}
    config["methods"]["topk"]["settings"]["b"]["train"] = {"selection": "last"}
    assert teacher_settings(config, "rte")["selection"] == "last" and teacher_settings(config, "sst2")["selection"] == "best_dev"
    assert resolve_run(config, "rte", "topk", "b", 42)["train"]["selection"] == "last"
    assert resolve_run(config, "rte", "topk", "a", 42)["train"]["selection"] == "best_dev"


def test_valid_config_passes(config):
    validate_config(config)


def test_ablations_name_their_base_setting_and_budget_scale(config):
    from top.config import ablation_scales

    config["ablations"] = {"topk": {"b": {"of": "a", "change": "keeps fewer tokens", "budget_scale": 2}}}
    validate(config, SCHEMA)
    validate_config(config)
    assert ablation_scales(config) == {("topk", "b"): 2.0}


def test_an_ablation_runs_only_on_its_tasks(config):
    """``tasks`` restricts an ablation to the named tasks: the other tasks neither run it nor
    count its budget; without ``tasks`` it runs everywhere."""
    from transformers import AutoConfig

    from top.budget import task_budgets
    from top.config import task_settings_of

    config["ablations"] = {"topk": {"b": {"of": "a", "change": "keeps fewer tokens", "tasks": ["rte"]}}}
    validate(config, SCHEMA)
    validate_config(config)
    assert task_settings_of(config, "rte", "topk") == ["a", "b"] and task_settings_of(config, "sst2", "topk") == ["a"]
    assert sorted((task, setting) for task, method, setting, _ in runs(config) if method == "topk") == [("rte", "a"), ("rte", "b"), ("sst2", "a")]
    model_config = AutoConfig.from_pretrained(config["model"])
    assert [b.setting for b in task_budgets(config, "sst2", 100, model_config)] == ["a"]
    del config["ablations"]["topk"]["b"]["tasks"]
    assert task_settings_of(config, "sst2", "topk") == ["a", "b"]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c.update(tasks=["sst2", "imdb"]), "tasks[1]: unknown task 'imdb'; allowed: cola, sst2"),
        (lambda c: c["methods"].update(spattn={"settings": {"x": {}}}), "methods.spattn: unknown method; allowed: dense, topk"),
        (lambda c: c["methods"].pop("dense"), "the reference method 'dense' must be configured"),
        (lambda c: c.update(glue_dir="/nonexistent/glue"), "glue_dir: '/nonexistent/glue' is not a directory"),
        (lambda c: c.update(glue_dir=None), "glue_dir: required when data_source is 'local'"),
        (lambda c: c.update(model="/nonexistent/model"), "model: '/nonexistent/model' looks like a path"),
        (lambda c: c.update(model="python-package:no_such_pkg/model"), "Python package 'no_such_pkg' is not installed"),
        (
            lambda c: c["methods"]["topk"]["settings"].update(up={"keep_ratios": [0.5, 0.9]}),
            "methods.topk.settings.up (task sst2): keep_ratios must not increase",
        ),
        (lambda c: c["methods"]["topk"]["settings"].update(short={"keep_ratios": [0.5]}), "1 entries, the model has 2 layers"),
        (lambda c: c["task_settings"].update(imdb={}), "task_settings.imdb: unknown task"),
        (lambda c: c.update(not_reproducible={"imdb": "no data"}), "not_reproducible.imdb: unknown task"),
        (lambda c: c.update(not_reproducible={"sst2": "a weak teacher"}), "not_reproducible.sst2: the task is also in tasks"),
        (lambda c: c.update(seeds=[1, 1]), "seeds: duplicates"),
        (
            lambda c: c["methods"].update(top={"settings": {"zero": {"target_sparsity": 0, "prune_layers": [0]}}}),
            "methods.top.settings.zero (task sst2): target_sparsity must be in (0, 1)",
        ),
        (
            lambda c: c["methods"].update(top={"settings": {"big": {"target_sparsity": 1.5, "prune_layers": [0]}}}),
            "methods.top.settings.big (task sst2): target_sparsity must be in (0, 1)",
        ),
        (lambda c: c["methods"].update(top={"settings": {"deep": {"prune_layers": [0, 5]}}}), "prune_layers: layer 5 is outside 0..1"),
        (lambda c: c["methods"].update(top={"settings": {"typo": {"target_sparsty": 0.5}}}), "target_sparsty"),
        (lambda c: c["methods"].update(power_bert={"settings": {"up": {"retention": [3, 9]}}}), "methods.power_bert.settings.up (task sst2)"),
        (lambda c: c["methods"].update(ltp={"settings": {"neg": {"reg_lambda": -1}}}), "methods.ltp.settings.neg (task sst2)"),
        (lambda c: c.update(tasks=["squad"]), "squad_dir: required when data_source is 'local'"),
        (lambda c: c.update(tasks=["squad"], squad_dir="/nonexistent/squad"), "squad_dir: '/nonexistent/squad' is not a directory"),
        (lambda c: c["qa"].update(doc_stride=400), "qa.doc_stride: 400 leaves the context windows no room"),
        (
            lambda c: c.update(ablations={"topk": {"c": {"of": "a", "change": "x"}}}),
            "ablations.topk.c: no such setting in methods.topk.settings (a, b)",
        ),
        (lambda c: c.update(ablations={"topk": {"b": {"of": "z", "change": "x"}}}), "ablations.topk.b.of: 'z' is not a setting of methods.topk"),
        (
            lambda c: c.update(ablations={"topk": {"a": {"of": "b", "change": "x"}, "b": {"of": "a", "change": "y"}}}),
            "ablations.topk.a.of: 'b' is not a setting of methods.topk that is not itself an ablation",
        ),
        (
            lambda c: c.update(ablations={"topk": {"b": {"of": "a", "change": "x", "tasks": ["rte", "mrcp"]}}}),
            "ablations.topk.b.tasks: unknown task(s) 'mrcp'; allowed: cola",
        ),
    ],
)
def test_bad_configs_name_the_key(config, change, message):
    change(config)
    with pytest.raises(ConfigError) as error:
        validate_config(config)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "change",
    [
        lambda c: c.update(tasks=[]),
        lambda c: c.update(not_reproducible={"cola": ""}),
        lambda c: c.update(seeds=["one"]),
        lambda c: c.update(data_source="s3"),
        lambda c: c["teacher"].update(epochs=0),
        lambda c: c["latency"].update(threads=0),
        lambda c: c.update(unknown_key=1),
        lambda c: c["methods"]["topk"].update(settings={}),
        lambda c: c["train"].update(selection="best"),
        lambda c: c["teacher"].update(selection="best_test"),
    ],
)
def test_schema_rejects_bad_types(config, change):
    change(config)
    with pytest.raises(Exception, match="ValidationError|validation"):
        validate(config, SCHEMA)


def test_shipped_configs_are_valid():
    root = Path(__file__).resolve().parents[1]
    for name in ("config.yaml", "demo.yaml", "benchmark.yaml", "reproduction.yaml"):
        cfg = yaml.safe_load((root / "config" / name).read_text())
        validate(cfg, SCHEMA)
        validate_config(cfg, check_paths=False)


def test_config_files_merge_in_order_and_bad_files_are_named(tmp_path):
    from top.config import ConfigError, read_config_files

    base, overlay, empty = tmp_path / "base.yaml", tmp_path / "overlay.yaml", tmp_path / "empty.yaml"
    base.write_text("seeds: [42]\nqa: {max_length: 384, doc_stride: 128}\n")
    overlay.write_text("qa: {protect_question: true}\nseeds: [43]\n")
    empty.write_text("")
    merged = read_config_files([base, empty, overlay])
    assert merged == {"seeds": [43], "qa": {"max_length": 384, "doc_stride": 128, "protect_question": True}}
    with pytest.raises(ConfigError, match="missing.yaml: no such configuration file"):
        read_config_files([base, tmp_path / "missing.yaml"])
    listing = tmp_path / "list.yaml"
    listing.write_text("- seeds\n")
    with pytest.raises(ConfigError, match="list.yaml: a configuration file holds a mapping of keys, not a list"):
        read_config_files([listing])


def test_the_squad_ablation_configs_are_valid_alone_and_protected():
    from top.config import read_config_files

    root = Path(__file__).resolve().parents[1] / "config"
    plain = read_config_files([root / "squad_benchmark.yaml", root / "squad_ablation.yaml"])
    protected = read_config_files([root / "squad_benchmark.yaml", root / "squad_ablation_protect.yaml"])
    for cfg in (plain, protected):
        validate(cfg, SCHEMA)
        validate_config(cfg, check_paths=False)
    assert set(plain["methods"]["top"]["settings"]) == {"t50", "t50_ep3", "t50_norank", "t50_rank1"}
    assert set(protected["methods"]["top"]["settings"]) == {"t50"}
    assert set(plain["ablations"]["top"]) == {"t50_ep3", "t50_norank", "t50_rank1"}
    assert protected["qa"]["protect_question"] and not plain["qa"].get("protect_question")
    # the protected runs start from the same teacher and train as the unprotected ones
    assert protected["teacher"] == plain["teacher"] and protected["train"] == plain["train"]


def test_the_squad_reproduction_configs_are_valid_alone_and_protected():
    from top.config import merge_layers

    root = Path(__file__).resolve().parents[1]
    base = yaml.safe_load((root / "config/reproduction_squad.yaml").read_text())
    protect = yaml.safe_load((root / "config/reproduction_squad_protect.yaml").read_text())
    for cfg in (base, merge_layers(base, protect)):
        validate(cfg, SCHEMA)
        validate_config(cfg, check_paths=False)
    assert merge_layers(base, protect)["qa"] == {**base["qa"], "protect_question": True}


def test_the_reproduction_runs_its_ablations_on_mrpc_and_stsb_only():
    """The reproduction's ablations are ToP settings, each ablating a setting on ToP's curve: all
    six of s50 and s75 on MRPC, s75's three, its frozen-gates fine-tune, and ranked bins at 2x
    and 4x on STS-B (its longer schedule a setting of its own, twice STS-B's epochs; the fine-tune split of
    the same epochs);
    SST-2 runs ToP's curve only."""
    from top.config import resolve_run, task_settings_of

    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "config/reproduction.yaml").read_text())
    validate(cfg, SCHEMA)
    validate_config(cfg, check_paths=False)
    ablations = cfg["ablations"]["top"]
    curve = [s for s in cfg["methods"]["top"]["settings"] if s not in ablations]
    assert ablations and all(a["of"] in curve for a in ablations.values())
    mrpc = ["s50_norank", "s75_norank", "s50_nolayergates", "s75_nolayergates", "s50_long", "s75_long"]
    assert task_settings_of(cfg, "mrpc", "top") == curve + mrpc
    assert task_settings_of(cfg, "stsb", "top") == curve + ["s75_norank", "s75_nolayergates", "s75_long16", "s75_ft4", "s50_ranked", "s75_ranked"]
    assert task_settings_of(cfg, "sst2", "top") == curve
    for task, long in (("mrpc", "s75_long"), ("stsb", "s75_long16")):
        base, longer = (resolve_run(cfg, task, "top", setting, 42)["method_settings"] for setting in ("s75", long))
        assert longer["epochs"] == ablations[long]["budget_scale"] * base["epochs"]
        assert longer["lagrangian_warmup_epochs"] == ablations[long]["budget_scale"] * base["lagrangian_warmup_epochs"]
    base, split = (resolve_run(cfg, "stsb", "top", setting, 42)["method_settings"] for setting in ("s75", "s75_ft4"))
    assert ablations["s75_ft4"]["budget_scale"] == 1
    assert split["epochs"] + split["finetune_epochs"] == base["epochs"] and split["finetune_epochs"] > 0
    assert split["lagrangian_warmup_epochs"] / split["epochs"] == base["lagrangian_warmup_epochs"] / base["epochs"]


def test_paper_config_builds_every_method_for_bert_base():
    from transformers import BertConfig

    from top.pruning.registry import build_method

    root = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((root / "config/config.yaml").read_text())
    validate(cfg, SCHEMA)
    bert_base = BertConfig()  # 12 layers, 768 hidden: the paper's model
    built = 0
    for task, method, setting, seed in runs(cfg):
        run = resolve_run(cfg, task, method, setting, seed)
        build_method(method, bert_base, run["method_settings"])
        built += 1
    assert built == len(cfg["tasks"]) * sum(len(m["settings"]) for m in cfg["methods"].values())
    assert len(cfg["tasks"]) == 10  # eight GLUE tasks, SQuAD v1.1 and v2.0


def test_seeds_given_on_the_command_line_become_integers():
    from top.config import seeds_from_command_line

    cfg = {"seeds": ["1", " 2", "-3", "x"]}  # what --config 'seeds=[1, 2,-3,x]' gives
    seeds_from_command_line(cfg)
    assert cfg["seeds"] == [1, 2, -3, "x"]  # "x" is left for the schema to reject
    empty: dict = {}
    seeds_from_command_line(empty)
    assert empty == {}


def test_protect_question_is_refused_only_for_a_method_that_says_why(config, tmp_path, monkeypatch):
    from top.pruning.topk import TopK

    squad = tmp_path / "squad"
    squad.mkdir()
    config.update(tasks=["sst2", "squad"], squad_dir=str(squad))
    config["methods"]["top"] = {"settings": {"t": {"prune_layers": [0]}}}
    validate_config(config)  # protect_question is off by default
    config["qa"]["protect_question"] = True
    validate_config(config, check_paths=False)  # ToP trains with protected tokens (its constraint counts them as kept)
    monkeypatch.setattr(TopK, "protected_tokens_unsupported", "its schedule cannot keep them")
    with pytest.raises(ConfigError) as error:
        validate_config(config, check_paths=False)
    message = str(error.value)
    assert message == (
        "qa.protect_question: true cannot be used with method 'topk' (tasks squad): its schedule cannot keep them; "
        "set qa.protect_question: false or remove 'topk' from methods"
    )
    # without a SQuAD task the option does nothing
    validate_config({**config, "tasks": ["sst2"]})
    # GLUE's separators: refused for that method on a GLUE task, nothing without one
    config["qa"]["protect_question"] = False
    config["glue"] = {"protect_separators": True}
    with pytest.raises(ConfigError, match=r"^glue.protect_separators: true cannot be used with method 'topk' \(tasks sst2\): its schedule"):
        validate_config(config, check_paths=False)
    validate_config({**config, "tasks": ["squad"]}, check_paths=False)


def test_a_task_may_have_its_own_seeds(config):
    from top.config import task_seeds

    config["seeds"] = [1, 2]
    config["task_settings"]["rte"]["seeds"] = [7, 8, 9]
    validate(config, SCHEMA)
    validate_config(config)
    assert task_seeds(config, "sst2") == [1, 2] and task_seeds(config, "rte") == [7, 8, 9]
    seeds = {(task, seed) for task, method, setting, seed in runs(config)}
    assert seeds == {("sst2", 1), ("sst2", 2), ("rte", 7), ("rte", 8), ("rte", 9)}
    config["task_settings"]["rte"]["seeds"] = [7, 7]
    with pytest.raises(Exception, match="ValidationError|validation|unique"):
        validate(config, SCHEMA)


def test_expected_teacher_must_name_a_metric_of_its_task(config):
    config["task_settings"]["rte"]["expected_teacher"] = {"metric": "accuracy", "score": 68.8, "source": "a README"}
    validate(config, SCHEMA)
    validate_config(config)
    config["task_settings"]["rte"]["expected_teacher"]["metric"] = "f1"
    with pytest.raises(ConfigError, match="task_settings.rte.expected_teacher.metric: 'f1' is not a metric of rte; allowed: accuracy"):
        validate_config(config)
    config["task_settings"]["rte"]["expected_teacher"] = {"metric": "accuracy", "score": 68.8}
    with pytest.raises(Exception, match="ValidationError|validation|source"):
        validate(config, SCHEMA)


def test_scripts_read_the_configuration_as_a_job_sees_it(tmp_path):
    from snakemake.exceptions import WorkflowError

    from top.config import read_local_config

    base, overlay = tmp_path / "base.yaml", tmp_path / "overlay.yaml"
    base.write_text("model: some/model\ndata_source: hub\ntasks: [mrpc]\nteacher: {epochs: 5}\nmethods: {dense: {settings: {default: {}}}}\n")
    overlay.write_text("teacher: {precision: bf16}\n")
    cfg = read_local_config([base, overlay], glue_dir=tmp_path / "glue")
    # merged as Snakemake merges --configfile, the local folder set, the schema's defaults filled
    assert cfg["teacher"]["epochs"] == 5 and cfg["teacher"]["precision"] == "bf16"
    assert (cfg["data_source"], cfg["glue_dir"], cfg["squad_dir"]) == ("local", str(tmp_path / "glue"), None)
    assert cfg["eval"] == {"batch_size": 64, "limit": None}
    # without a folder the configuration's data source stays
    assert read_local_config([base])["data_source"] == "hub"
    with pytest.raises(ConfigError, match="missing.yaml: no such configuration file"):
        read_local_config([base, tmp_path / "missing.yaml"])
    overlay.write_text("eval: {batch_size: 0}\n")
    with pytest.raises(WorkflowError):
        read_local_config([base, overlay])
