"""Tests for top.measure.pinning and top.measure.latency (docs/design.md, "Latency protocol").

No test asserts on absolute timings: the only timing-based check compares two runners whose
work differs by 100x. Everything else uses call records or a fake clock.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import torch

from top import latency
from top.measure.latency import environment_info, measure_interleaved
from top.measure.pinning import parse_cores, pin_process

FIRST_CORE = min(os.sched_getaffinity(0))


def run_python(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (so torch is not yet imported there)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, env=env, timeout=300,
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


@pytest.mark.parametrize(
    "spec", ["", " ", "a", "0,", ",0", "0,,1", "1-", "-1", "3-1", "0-2-4", "1.5", "+1", "x-3"]
)
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
        recorder.runners, INPUTS, warmup=warmup, repeats=repeats, reference="dense", seed=seed,
        progress=False,
    )
    return recorder, result


def timed_groups(recorder, warmup):
    """The timed calls split into one group per (round, input), each a list of names."""
    timed = recorder.calls[warmup * len(INPUTS) * len(NAMES):]
    groups = [timed[i:i + len(NAMES)] for i in range(0, len(timed), len(NAMES))]
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
    stat_keys = {"median_ms", "q25_ms", "q75_ms", "iqr_ms", "p95_ms", "mean_ms", "n_inputs",
                 "repeats", "speedup", "per_input_ms"}
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
        {"dense": make("dense"), "pruned": make("pruned")}, ["a", "b"],
        warmup=0, repeats=3, reference="dense", progress=False,
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
        runners, [2_000, 3_000], warmup=1, repeats=5, reference="light", progress=False,
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
            {"dense": lambda _: None, "bad": failing}, [0], warmup=0, repeats=2,
            reference="dense", progress=False,
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
    assert set(info) == {"cpu_model", "cores", "threads", "torch_version",
                         "transformers_version", "python_version", "platform", "hostname"}
    assert info["torch_version"] == torch.__version__
    assert info["cores"] == [0, 1]
    assert info["threads"] == 2
    assert info["python_version"] == ".".join(map(str, sys.version_info[:3]))
    assert all(isinstance(info[key], str) for key in
               ("cpu_model", "transformers_version", "platform", "hostname"))


def test_cpu_model_reads_model_name_and_falls_back(tmp_path: Path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU @ 3.00GHz\nflags\t: x\n")
    assert latency._cpu_model(cpuinfo) == "Test CPU @ 3.00GHz"
    monkeypatch.setattr(latency.platform, "processor", lambda: "fallback-arch")
    cpuinfo.write_text("processor\t: 0\nCPU implementer\t: 0x41\n")
    assert latency._cpu_model(cpuinfo) == "fallback-arch"
    assert latency._cpu_model(tmp_path / "missing") == "fallback-arch"
