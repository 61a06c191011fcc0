"""Tests for top.measure.pinning, top.measure.latency and top.pipeline.measure_latency
(docs/design.md, "Latency protocol").

No test asserts on absolute timings: the only timing-based check compares two runners whose
work differs by 100x. Everything else uses call records, a fake clock or the structure and
arithmetic of a result.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import torch
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from tests.conftest import write_tiny_model, write_tiny_sst2
from top.measure import latency
from top.measure.flops import example_flops
from top.measure.latency import cpu_frequency, environment_info, measure_interleaved, measure_peak_memory, parameter_bytes
from top.measure.pinning import parse_cores, pin_process
from top.models import load_pretrained, save_run
from top.pipeline import latency_batches, latency_sample, measure_latency

FIRST_CORE = min(os.sched_getaffinity(0))


def run_python(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (so torch is not yet imported there)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def assert_succeeded(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"


# --------------------------------------------------------------------------- parse_cores


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("0", [0]),
        ("0-3", [0, 1, 2, 3]),
        ("0,2,4-5", [0, 2, 4, 5]),
        ("5,1,1-2", [1, 2, 5]),
        (" 0 , 2 ", [0, 2]),
        ("3-3", [3]),
        ("2-4,3-5", [2, 3, 4, 5]),
    ],
)
def test_parse_cores(spec, expected):
    assert parse_cores(spec) == expected


@pytest.mark.parametrize("spec", ["", " ", "a", "0,", ",0", "0,,1", "1-", "-1", "3-1", "0-2-4", "1.5", "+1", "x-3"])
def test_parse_cores_rejects_bad_spec(spec):
    with pytest.raises(ValueError, match="core spec|empty"):
        parse_cores(spec)


# --------------------------------------------------------------------------- pin_process


def test_pinning_module_does_not_import_torch():
    result = run_python(
        """
        import sys
        import top.measure.pinning
        assert "torch" not in sys.modules, "importing top.measure.pinning imported torch"
        """
    )
    assert_succeeded(result)


def test_pin_then_import_torch_passes_check():
    result = run_python(
        f"""
        import os
        from top.measure.pinning import pin_process
        pin_process([{FIRST_CORE}], threads=1)
        assert os.environ["OMP_NUM_THREADS"] == "1"
        assert os.environ["MKL_NUM_THREADS"] == "1"
        assert os.sched_getaffinity(0) == {{{FIRST_CORE}}}
        import torch
        from top.measure.latency import check_pinning
        check_pinning([{FIRST_CORE}], threads=1)
        assert torch.get_num_threads() == 1
        """
    )
    assert_succeeded(result)


def test_pin_after_torch_import_raises_in_subprocess():
    result = run_python(
        f"""
        import os
        import torch
        from top.measure.pinning import pin_process
        affinity = os.sched_getaffinity(0)
        try:
            pin_process([{FIRST_CORE}], threads=1)
        except RuntimeError as error:
            assert "before torch is imported" in str(error), error
        else:
            raise AssertionError("pin_process did not refuse after torch was imported")
        assert "OMP_NUM_THREADS" not in os.environ
        assert os.sched_getaffinity(0) == affinity
        """
    )
    assert_succeeded(result)


def test_check_pinning_detects_mismatches():
    other_cores = [FIRST_CORE, FIRST_CORE + 1]
    result = run_python(
        f"""
        import os
        from top.measure.pinning import pin_process
        pin_process([{FIRST_CORE}], threads=1)
        import torch
        from top.measure.latency import PinningError, check_pinning

        try:
            check_pinning({other_cores}, threads=1)
        except PinningError as error:
            message = str(error)
            assert "affinity" in message and "no latency will be reported" in message, message
        else:
            raise AssertionError("different core set was not detected")

        os.environ["OMP_NUM_THREADS"] = "2"
        try:
            check_pinning([{FIRST_CORE}], threads=1)
        except PinningError as error:
            assert "OMP_NUM_THREADS" in str(error) and "affinity" not in str(error), error
        else:
            raise AssertionError("OMP_NUM_THREADS mismatch was not detected")
        """
    )
    assert_succeeded(result)


def test_pin_process_refuses_once_torch_is_imported_and_changes_nothing(monkeypatch):
    # This test process has imported torch, so a valid call must be refused untouched.
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    affinity = os.sched_getaffinity(0)
    with pytest.raises(RuntimeError, match="before torch is imported"):
        pin_process([FIRST_CORE], threads=1)
    assert "OMP_NUM_THREADS" not in os.environ
    assert "MKL_NUM_THREADS" not in os.environ
    assert os.sched_getaffinity(0) == affinity


@pytest.mark.parametrize(
    ("cores", "threads", "match"),
    [
        ([], 1, "must not be empty"),
        ([-1], 1, "non-negative"),
        (["0"], 1, "non-negative"),
        ("0", 1, "parse_cores"),
        ([FIRST_CORE], 0, "threads must be"),
        ([FIRST_CORE], 1.0, "threads must be"),
        ([FIRST_CORE], 2, "exceeds"),
        ([FIRST_CORE, FIRST_CORE], 2, "exceeds"),
    ],
)
def test_pin_process_rejects_bad_arguments(cores, threads, match):
    with pytest.raises(ValueError, match=match):
        pin_process(cores, threads)


def test_pin_process_names_unavailable_cores():
    missing = max(os.sched_getaffinity(0)) + 1000
    with pytest.raises(ValueError, match=rf"\[{missing}\] are not available"):
        pin_process([FIRST_CORE, missing], threads=1)


# --------------------------------------------------------------------------- measure_interleaved


class Recorder:
    """Fake runners that record every call as ``(name, input)``."""

    def __init__(self, names):
        self.calls: list[tuple[str, object]] = []
        self.inference_mode: list[bool] = []
        self.runners = {name: self._make(name) for name in names}

    def _make(self, name):
        def run(example):
            self.calls.append((name, example))
            self.inference_mode.append(torch.is_inference_mode_enabled())

        return run


NAMES = ["dense", "pruned", "shortened"]
INPUTS = ["x0", "x1", "x2"]


def measure_recorded(*, warmup=2, repeats=6, seed=0):
    recorder = Recorder(NAMES)
    result = measure_interleaved(
        recorder.runners,
        INPUTS,
        warmup=warmup,
        repeats=repeats,
        reference="dense",
        seed=seed,
        progress=False,
    )
    return recorder, result


def timed_groups(recorder, warmup):
    """The timed calls split into one group per (round, input), each a list of names."""
    timed = recorder.calls[warmup * len(INPUTS) * len(NAMES) :]
    groups = [timed[i : i + len(NAMES)] for i in range(0, len(timed), len(NAMES))]
    return [[name for name, _ in group] for group in groups], groups


def test_every_runner_called_warmup_plus_repeats_times_per_input():
    warmup, repeats = 2, 6
    recorder, _ = measure_recorded(warmup=warmup, repeats=repeats)
    per_runner = Counter(name for name, _ in recorder.calls)
    assert per_runner == {name: (warmup + repeats) * len(INPUTS) for name in NAMES}
    per_pair = Counter(recorder.calls)
    assert set(per_pair.values()) == {warmup + repeats}
    assert all(recorder.inference_mode)


def test_each_input_sees_every_runner_once_per_round_in_shuffled_order():
    warmup, repeats = 1, 8
    recorder, _ = measure_recorded(warmup=warmup, repeats=repeats)
    orders, groups = timed_groups(recorder, warmup)
    assert len(orders) == repeats * len(INPUTS)
    for index, group in enumerate(groups):
        assert sorted(name for name, _ in group) == sorted(NAMES)
        assert {example for _, example in group} == {INPUTS[index % len(INPUTS)]}
    assert len({order[0] for order in orders}) > 1, "the same runner always went first"
    first_input_orders = [tuple(order) for order in orders[:: len(INPUTS)]]
    assert len(set(first_input_orders)) > 1, "the order never changed across rounds"


def test_order_is_reproducible_from_seed():
    first, _ = measure_recorded(seed=3)
    again, _ = measure_recorded(seed=3)
    other, _ = measure_recorded(seed=4)
    assert first.calls == again.calls
    assert first.calls != other.calls


def test_result_structure_and_reference_speedup():
    repeats = 4
    _, result = measure_recorded(repeats=repeats)
    assert set(result) == {"runners", "reference", "warmup", "repeats", "seed"}
    assert (result["reference"], result["warmup"], result["repeats"]) == ("dense", 2, repeats)
    assert set(result["runners"]) == set(NAMES)
    stat_keys = {"median_ms", "q25_ms", "q75_ms", "iqr_ms", "p95_ms", "mean_ms", "n_inputs", "repeats", "speedup", "per_input_ms"}
    for stats in result["runners"].values():
        assert set(stats) == stat_keys
        assert stats["n_inputs"] == len(INPUTS)
        assert stats["repeats"] == repeats
        assert len(stats["per_input_ms"]) == len(INPUTS)
        assert stats["q25_ms"] <= stats["median_ms"] <= stats["q75_ms"] <= stats["p95_ms"]
        assert stats["iqr_ms"] == pytest.approx(stats["q75_ms"] - stats["q25_ms"])
    assert result["runners"]["dense"]["speedup"] == 1.0


def test_statistics_from_a_fake_clock(monkeypatch):
    """Median over rounds per input, then statistics over inputs; speedup is the median ratio."""
    ms = 1_000_000
    # cost[name][input] = nanoseconds per round; one outlier round each that the median ignores.
    cost = {
        "dense": {"a": [4 * ms, 4 * ms, 90 * ms], "b": [8 * ms, 60 * ms, 8 * ms]},
        "pruned": {"a": [70 * ms, 1 * ms, 1 * ms], "b": [2 * ms, 2 * ms, 50 * ms]},
    }
    clock = {"now": 0}
    calls = Counter()

    def make(name):
        def run(example):
            clock["now"] += cost[name][example][calls[name, example]]
            calls[name, example] += 1

        return run

    monkeypatch.setattr(latency.time, "perf_counter_ns", lambda: clock["now"])
    result = measure_interleaved(
        {"dense": make("dense"), "pruned": make("pruned")},
        ["a", "b"],
        warmup=0,
        repeats=3,
        reference="dense",
        progress=False,
    )
    dense, pruned = result["runners"]["dense"], result["runners"]["pruned"]
    assert dense["per_input_ms"] == [4.0, 8.0]
    assert pruned["per_input_ms"] == [1.0, 2.0]
    assert dense["median_ms"] == pytest.approx(6.0)
    assert dense["mean_ms"] == pytest.approx(6.0)
    assert dense["q25_ms"] == pytest.approx(5.0)
    assert dense["q75_ms"] == pytest.approx(7.0)
    assert dense["iqr_ms"] == pytest.approx(2.0)
    assert dense["p95_ms"] == pytest.approx(7.8)
    assert pruned["median_ms"] == pytest.approx(1.5)
    assert pruned["speedup"] == pytest.approx(4.0)
    assert dense["speedup"] == 1.0


def test_heavier_runner_has_larger_median():
    # 100x more work; only the ordering is asserted, never absolute times.
    runners = {
        "light": lambda n: sum(range(n)),
        "heavy": lambda n: sum(range(100 * n)),
    }
    result = measure_interleaved(
        runners,
        [2_000, 3_000],
        warmup=1,
        repeats=5,
        reference="light",
        progress=False,
    )
    stats = result["runners"]
    assert stats["heavy"]["median_ms"] > stats["light"]["median_ms"]
    assert stats["heavy"]["speedup"] < 1.0


def test_garbage_collection_is_restored_even_if_a_runner_fails():
    assert gc.isenabled()

    def failing(_):
        raise KeyError("boom")

    with pytest.raises(KeyError):
        measure_interleaved(
            {"dense": lambda _: None, "bad": failing},
            [0],
            warmup=0,
            repeats=2,
            reference="dense",
            progress=False,
        )
    assert gc.isenabled()


def test_progress_bar_goes_to_stderr_only_when_asked(capsys):
    runners = {"dense": lambda _: None}
    measure_interleaved(runners, [0], warmup=0, repeats=2, reference="dense", progress=True)
    shown = capsys.readouterr()
    assert "latency rounds" in shown.err
    assert shown.out == ""
    measure_interleaved(runners, [0], warmup=0, repeats=2, reference="dense", progress=False)
    assert "latency rounds" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"runners": {}}, "runners must not be empty"),
        ({"reference": "missing"}, "reference 'missing'"),
        ({"inputs": []}, "inputs must not be empty"),
        ({"repeats": 0}, "repeats must be >= 1"),
        ({"warmup": -1}, "warmup must be >= 0"),
    ],
)
def test_measure_interleaved_rejects_bad_arguments(kwargs, match):
    arguments = {
        "runners": {"dense": lambda _: None},
        "inputs": [0],
        "warmup": 0,
        "repeats": 1,
        "reference": "dense",
    } | kwargs
    runners, inputs = arguments.pop("runners"), arguments.pop("inputs")
    with pytest.raises(ValueError, match=match):
        measure_interleaved(runners, inputs, **arguments)


# --------------------------------------------------------------------------- environment_info


def test_environment_info():
    info = environment_info([1, 0, 1], threads=2)
    assert set(info) == {
        "cpu_model",
        "cores",
        "threads",
        "logical_cpus",
        "physical_cores",
        "cpu_frequency",
        "torch_version",
        "transformers_version",
        "python_version",
        "platform",
        "hostname",
        "date",
    }
    assert info["torch_version"] == torch.__version__
    assert info["cores"] == [0, 1]
    assert info["threads"] == 2
    assert info["python_version"] == ".".join(map(str, sys.version_info[:3]))
    assert all(isinstance(info[key], str) for key in ("cpu_model", "transformers_version", "platform", "hostname", "date"))
    assert info["logical_cpus"] >= len(os.sched_getaffinity(0))
    assert set(info["cpu_frequency"]["governor"]) == {"0", "1"}
    assert info["date"].endswith("+00:00")


def test_cpu_frequency_reads_sysfs_and_tolerates_what_is_missing(tmp_path: Path):
    freq = tmp_path / "cpu2/cpufreq"
    freq.mkdir(parents=True)
    (freq / "scaling_governor").write_text("performance\n")
    (freq / "scaling_cur_freq").write_text("2100000\n")
    (freq / "scaling_max_freq").write_text("not a number\n")
    found = cpu_frequency([2, 3], sysfs=tmp_path)
    assert found["governor"] == {"2": "performance", "3": None}
    assert found["cur_mhz"] == {"2": 2100.0, "3": None}
    assert found["max_mhz"] == {"2": None, "3": None}
    assert found["psutil_mhz"] is None or found["psutil_mhz"]["current"] >= 0


def test_cpu_model_reads_model_name_and_falls_back(tmp_path: Path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU @ 3.00GHz\nflags\t: x\n")
    assert latency._cpu_model(cpuinfo) == "Test CPU @ 3.00GHz"
    monkeypatch.setattr(latency.platform, "processor", lambda: "fallback-arch")
    cpuinfo.write_text("processor\t: 0\nCPU implementer\t: 0x41\n")
    assert latency._cpu_model(cpuinfo) == "fallback-arch"
    assert latency._cpu_model(tmp_path / "missing") == "fallback-arch"


def test_keep_samples_returns_every_timing():
    result = measure_interleaved(
        {"a": lambda _: None, "b": lambda _: None}, [0, 1], warmup=0, repeats=3, reference="a", progress=False, keep_samples=True
    )
    samples = result["runners"]["b"]["samples_ms"]
    assert len(samples) == 3 and all(len(row) == 2 for row in samples)
    plain = measure_interleaved({"a": lambda _: None}, [0], warmup=0, repeats=1, reference="a", progress=False)
    assert "samples_ms" not in plain["runners"]["a"]


# --------------------------------------------------------------------------- memory


def test_peak_memory_separates_a_heavy_runner_from_a_light_one():
    if not latency._reset_peak_rss():
        pytest.skip("the resident high-water mark cannot be reset here (/proc/self/clear_refs)")

    def heavy(_):
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, every page touched
        return float(block[-1])

    result = measure_peak_memory({"light": lambda _: torch.ones(16).sum(), "heavy": heavy}, [0])
    assert result["method"] == "clear_refs"
    light, big = result["runners"]["light"], result["runners"]["heavy"]
    assert big["rise_bytes"] >= 48 * 2**20 > light["rise_bytes"]
    assert big["peak_rss_bytes"] >= big["rss_before_bytes"] + big["rise_bytes"] - 4096
    assert result["process"]["peak_rss_bytes"] >= big["peak_rss_bytes"] - 2**20


def test_peak_memory_says_when_runners_cannot_be_separated(monkeypatch):
    monkeypatch.setattr(latency, "_reset_peak_rss", lambda: False)
    result = measure_peak_memory({"a": lambda _: None}, [0])
    assert result["method"] == "process_peak_only" and result["runners"] == {}
    assert result["process"]["peak_rss_bytes"] > 0 and result["process"]["rss_bytes"] > 0


def test_parameter_bytes_counts_shared_tensors_once():
    linear = torch.nn.Linear(4, 3)
    assert parameter_bytes(linear) == (12 + 3) * 4
    tied = torch.nn.Sequential(linear, linear)
    tied.register_buffer("steps", torch.zeros(2, dtype=torch.int64))
    assert parameter_bytes(tied) == (12 + 3) * 4 + 2 * 8


# --------------------------------------------------------------------------- measure_latency


SCHEMA = str(Path(__file__).resolve().parents[1] / "workflow/schemas/config.schema.yaml")


@pytest.fixture
def saved_runs(tmp_path):
    """A dense teacher and a top-k run of a tiny BERT, and a configuration timing 6 examples."""
    model_dir = write_tiny_model(tmp_path / "model")
    model, tokenizer = load_pretrained(str(model_dir), num_labels=2)
    save_run(model, tokenizer, tmp_path / "dense", "dense", {})
    save_run(model, tokenizer, tmp_path / "topk", "topk", {"keep_ratios": [0.8, 0.5]})
    cfg = {
        "model": str(model_dir),
        "data_source": "local",
        "glue_dir": str(write_tiny_sst2(tmp_path / "glue")),
        "tasks": ["sst2"],
        "methods": {"dense": {"settings": {"default": {}}}},
        "latency": {"n_examples": 6, "warmup": 0, "repeats": 2, "batch_sizes": [2, 4]},
    }
    validate(cfg, SCHEMA)
    return cfg, tmp_path


def test_measure_latency_runners_ideal_throughput_and_memory(saved_runs, monkeypatch):
    cfg, root = saved_runs
    monkeypatch.setattr(latency, "check_pinning", lambda cores, threads: None)  # this test process is not pinned
    stock_calls = Counter()
    stock_forward = BertForSequenceClassification.forward

    def counting_forward(self, *args, **kwargs):
        stock_calls[self.config._attn_implementation] += 1
        return stock_forward(self, *args, **kwargs)

    monkeypatch.setattr(BertForSequenceClassification, "forward", counting_forward)
    result = measure_latency(cfg, "sst2", root / "dense", root / "topk", root / "latency.json", {"task": "sst2"})
    # the dense reference is the stock forward with SDPA, and nothing else calls it: 2 rounds x 6
    # examples, 2 rounds x (3 + 2) ragged batches, one memory probe over the 6 examples
    assert stock_calls == {"sdpa": 2 * 6 + 2 * (3 + 2) + 6}
    assert json.loads((root / "latency.json").read_text())["speedup"] == result["speedup"]
    runners = result["timings"]["runners"]
    assert set(runners) == {"dense", "dense_harness", "pruned", "ideal"} and result["timings"]["reference"] == "dense"
    assert result["speedup"] == pytest.approx(runners["dense"]["median_ms"] / runners["pruned"]["median_ms"])
    assert result["speedup_ideal"] == pytest.approx(runners["dense"]["median_ms"] / runners["ideal"]["median_ms"])
    assert result["speedup_harness"] == pytest.approx(runners["dense"]["median_ms"] / runners["dense_harness"]["median_ms"])
    assert result["pruned_vs_ideal"] == pytest.approx(runners["ideal"]["median_ms"] / runners["pruned"]["median_ms"])
    assert all(stats["n_inputs"] == 6 for stats in runners.values())
    assert set(result["throughput"]) == {"2", "4"}
    four = result["throughput"]["4"]
    assert (four["batch_size"], four["n_batches"], four["n_examples"]) == (4, 2, 6)
    pruned_ms = sum(four["timings"]["runners"]["pruned"]["per_input_ms"])
    assert four["examples_per_s"]["pruned"] == pytest.approx(6 / (pruned_ms / 1000))
    assert four["speedup"] == pytest.approx(four["examples_per_s"]["pruned"] / four["examples_per_s"]["dense"])
    assert four["mean_padded_length"] >= four["mean_real_length"]
    memory = result["memory"]
    assert memory["method"] in ("clear_refs", "process_peak_only")
    if memory["method"] == "clear_refs":
        assert set(memory["runners"]) == set(runners)
    assert memory["parameter_bytes"]["dense"] == memory["parameter_bytes"]["pruned"] > 0
    assert "cpu_frequency" in result["environment"]
    tokenizer = AutoTokenizer.from_pretrained(root / "topk")
    sample = latency_sample(cfg, "sst2", tokenizer)
    assert result["mean_lengths_kept"][0] < result["mean_input_length"] == pytest.approx(sum(x["input_ids"].shape[1] for x in sample) / 6)
    batches = latency_batches(cfg, "sst2", tokenizer, 4)
    assert [b["input_ids"].shape[0] for b in batches] == [4, 2]
    for batch, rows in zip(batches, (sample[:4], sample[4:])):
        assert batch["input_ids"].shape[1] == max(x["input_ids"].shape[1] for x in rows)  # padded per batch
        for row, x in enumerate(rows):
            n = x["input_ids"].shape[1]
            assert torch.equal(batch["input_ids"][row, :n], x["input_ids"][0]) and int(batch["attention_mask"][row].sum()) == n


@pytest.mark.parametrize("sizes", [[1], [8, 8], ["8"]])
def test_schema_refuses_bad_batch_sizes(sizes):
    cfg = {"model": "m", "tasks": ["sst2"], "methods": {"dense": {"settings": {"default": {}}}}, "latency": {"batch_sizes": sizes}}
    with pytest.raises(WorkflowError):
        validate(cfg, SCHEMA)


# --------------------------------------------------------------------------- benchmarks/latency_shapes.py


def _shapes_module():
    spec = importlib.util.spec_from_file_location("latency_shapes", Path(__file__).resolve().parents[1] / "benchmarks/latency_shapes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("name", "starts"), [("bert-base", {2.0: 2, 4.0: 1}), ("minilm-l6", {2.0: 1, 4.0: 0})])
@pytest.mark.parametrize("n", [64, 384])
def test_benchmark_schedules_hit_their_flops_targets(name, starts, n):
    shapes = _shapes_module()
    config = BertConfig(**shapes.MODELS[name])
    for target, start in starts.items():
        schedule = shapes.find_schedule(config, n, target)
        assert schedule["flops_reduction"] == pytest.approx(target, rel=0.02)
        assert schedule["start"] == start and schedule["keep_ratios"][:start] == [1.0] * start
        assert schedule["lengths_in"][0] == n and schedule["lengths_in"][1:] == schedule["lengths_kept"][:-1]
        assert all(a >= b >= 1 for a, b in zip(schedule["lengths_in"], schedule["lengths_kept"]))
        flops = example_flops(config, "classification", [[n] * config.num_hidden_layers], [[n] * config.num_hidden_layers])[0]
        pruned = example_flops(config, "classification", [schedule["lengths_in"]], [schedule["lengths_kept"]])[0]
        assert flops / pruned == pytest.approx(schedule["flops_reduction"])


def test_benchmark_cell_times_every_runner_and_derives_its_ratios(monkeypatch):
    shapes = _shapes_module()
    monkeypatch.setitem(shapes.MODELS, "tiny", {"num_hidden_layers": 6, "hidden_size": 32, "intermediate_size": 48, "num_attention_heads": 4})
    monkeypatch.setitem(shapes.GOALS, "tiny", 0.9)
    cell = shapes.measure_cell("tiny", 48, 1, warmup=0, repeats=2, seed=0)
    assert set(cell["runners"]) == {"stock", "harness", "pruned_2x", "ideal_2x", "pruned_4x", "ideal_4x"}
    assert all(len(stats["samples_ms"]) == 2 and stats["iqr_over_rounds_ms"] >= 0 for stats in cell["runners"].values())
    assert [row["target"] for row in cell["rows"]] == ["2x", "4x"]
    for row in cell["rows"]:
        runners = cell["runners"]
        assert row["stock_ms"] == runners["stock"]["median_ms"] and row["pruned_ms"] == runners[f"pruned_{row['target']}"]["median_ms"]
        assert row["pruned_vs_ideal"] == pytest.approx(row["ideal_ms"] / row["pruned_ms"])
        assert row["speedup"] == pytest.approx(row["stock_ms"] / row["pruned_ms"])
        assert row["flops_reduction"] == pytest.approx(cell["schedules"][row["target"]]["flops_reduction"])
    assert cell["memory"]["parameter_bytes"] > 0 and "process" in cell["memory"]


def test_benchmark_file_resumes_and_renders(tmp_path, monkeypatch):
    shapes = _shapes_module()
    out = tmp_path / "shapes.json"
    row = {
        "model": "bert-base",
        "n": 64,
        "threads": 1,
        "target": "2x",
        "flops_reduction": 2.0,
        "stock_ms": 10.0,
        "harness_ms": 10.0,
        "pruned_ms": 6.0,
        "ideal_ms": 5.4,
        "pruned_vs_ideal": 0.9,
        "speedup": 1.67,
        "speedup_ideal": 1.85,
        "harness_vs_stock": 1.0,
        "goal": 0.95,
    }
    memory = {"method": "clear_refs", "runners": {"stock": {"rise_bytes": 2**20}}, "process": {"peak_rss_bytes": 900 * 2**20}}
    cell = {
        "model": "bert-base",
        "n": 64,
        "threads": 1,
        "rows": [row],
        "memory": memory,
        "environment": {"cpu_model": "Test CPU", "threads": 1, "cores": [0]},
    }
    shapes._store(out, cell)
    shapes._store(out, {**cell, "rows": [{**row, "pruned_ms": 5.5}]})  # the same cell again replaces it
    data = json.loads(out.read_text())
    assert len(data["cells"]) == 1 and data["cells"][0]["rows"][0]["pruned_ms"] == 5.5
    table = shapes.markdown(data)
    line = next(text for text in table.splitlines() if text.startswith("| bert-base"))
    assert "| 0.900 (below) | 0.95 |" in line and "| 1.0 / – / – | 900 |" in line and "Test CPU, 1 thread(s)" in table

    started = []
    monkeypatch.setattr(shapes.subprocess, "run", lambda command, **kwargs: started.append(command))
    monkeypatch.setattr(sys, "argv", ["latency_shapes.py", "--models", "bert-base", "--lengths", "64", "128", "--threads", "1", "--out", str(out)])
    shapes.main()
    (command,) = started  # only the missing cell is measured
    assert json.loads(command[command.index("--plan") + 1]) == [{"model": "bert-base", "n": 128}]
    assert (tmp_path / "shapes.md").is_file()
