"""Tables, figures and the papers' numbers (top/report.py, top/plots.py, top/paper.py), on
hand-made per-run JSON files."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg

from top.report.example import MODEL as EXAMPLE_MODEL
from top.report.example import write_example_results
from top.report.paper import PaperResultsError, comparable, load_paper_results, same_model
from top.report.plots import FIGURES, RatioLocator, draw_figure, pareto_front
from top.report.tables import build_tables, collect, metric_value, summarise, write_table

ROOT = Path(__file__).resolve().parents[1]
MODEL = "bert-base-uncased"

# (task, method, setting, seed, primary metric, primary score 0-1 or 0-100, second metric and
#  value, FLOPs reduction, speedup)
RUNS = [
    ("mrpc", "dense", "default", 1, "f1", 0.90, ("accuracy", 0.85), 1.0, 1.0),
    ("mrpc", "dense", "default", 2, "f1", 0.88, ("accuracy", 0.83), 1.0, 1.0),
    ("mrpc", "top", "t50", 1, "f1", 0.86, ("accuracy", 0.80), 2.0, 1.5),
    ("mrpc", "top", "t50", 2, "f1", 0.84, ("accuracy", 0.78), 2.2, 1.7),
    ("sst2", "dense", "default", 1, "accuracy", 0.92, None, 1.0, 1.0),
    ("sst2", "dense", "default", 2, "accuracy", 0.92, None, 1.0, 1.0),
    ("sst2", "top", "t50", 1, "accuracy", 0.90, None, 2.0, 1.4),
    ("sst2", "top", "t50", 2, "accuracy", 0.88, None, 2.0, 1.6),
    ("squad", "dense", "default", 1, "f1", 88.0, ("exact_match", 80.0), 1.0, 1.0),
    ("squad", "top", "t50", 1, "f1", 85.0, ("exact_match", 76.0), 2.0, 1.8),
]


def _write_run(root: Path, task, method, setting, seed, metric, score, second, reduction, speedup, layers=3) -> tuple[Path, Path, Path]:
    keys = {"task": task, "method": method, "setting": setting, "seed": seed}
    run = root / f"{task}/{method}/{setting}/seed{seed}"
    run.mkdir(parents=True)
    scale = 100.0 if task.startswith("squad") else 1.0
    split = {metric: score, "n_examples": 10}
    if second:
        split[second[0]] = second[1]
    # which checkpoint the run kept (evaluate_run copies it from pruning.json); squad runs: a
    # metrics.json from before selection was recorded
    selection = (
        {}
        if task == "squad"
        else {"selection": "best_dev", "selected_epoch": seed + 1, "selection_epochs": 3, "selection_fallback": method == "top" and seed == 2}
    )
    (run / "metrics.json").write_text(
        json.dumps({**keys, "primary_metric": metric, "score": score, "metric_scale": scale, "splits": {"validation": split}, **selection})
    )
    kept = [20.0 / reduction ** ((i + 1) / layers) for i in range(layers)]
    (run / "flops.json").write_text(
        json.dumps(
            {
                **keys,
                "flops": 1e9 / reduction,
                "dense_flops": 1e9,
                "flops_reduction": reduction,
                "mean_input_length": 20.0,
                "mean_lengths_in": [20.0] + kept[:-1],
                "mean_lengths_kept": kept,
            }
        )
    )
    (run / "latency.json").write_text(json.dumps(_latency_record(keys, speedup)))
    return run / "metrics.json", run / "flops.json", run / "latency.json"


def _latency_record(keys: dict, speedup: float) -> dict:
    """A latency.json as measure_latency writes it: the ideal 10% faster than the pruned model,
    batch-8 throughput speedup 0.9 x the batch-1 speedup, batch 32 0.8 x."""
    ideal_ms, pruned_ms = 10 / (1.1 * speedup), 10 / speedup
    runners = {
        "pruned": {"median_ms": pruned_ms, "iqr_ms": 0.5},
        "dense": {"median_ms": 10.0},
        "dense_harness": {"median_ms": 10.5},
        "ideal": {"median_ms": ideal_ms},
    }
    throughput = {
        size: {"batch_size": int(size), "speedup": factor * speedup, "examples_per_s": {"dense": 100.0, "pruned": 100.0 * factor * speedup}}
        for size, factor in (("8", 0.9), ("32", 0.8))
    }
    memory = {
        "method": "clear_refs",
        "runners": {name: {"peak_rss_bytes": mb * 2**20} for name, mb in (("pruned", 500), ("dense", 600), ("ideal", 450))},
    }
    return {
        **keys,
        "speedup": speedup,
        "speedup_ideal": 1.1 * speedup,
        "speedup_harness": 10.0 / 10.5,
        "pruned_vs_ideal": ideal_ms / pruned_ms,
        "timings": {"runners": runners, "reference": "dense"},
        "throughput": throughput,
        "memory": memory,
        "environment": {"cpu_model": "Test CPU", "threads": 1},
    }


@pytest.fixture
def results(tmp_path) -> tuple[Path, Path]:
    files = [_write_run(tmp_path / "runs", *run) for run in RUNS]
    csv, layers = tmp_path / "results.csv", tmp_path / "layers.csv"
    collect([f[0] for f in files], [f[1] for f in files], [f[2] for f in files], csv, layers)
    return csv, layers


def _paper(tmp_path: Path, rows: list[dict], model: str = MODEL, split: str = "dev", flops_baseline: str = "real_length") -> Path:
    """Source ``p`` (dev unless told, FLOPs on our baseline unless told) and ``q`` (test split,
    FLOPs on another baseline)."""
    path = tmp_path / "paper.yaml"
    source = {"label": "Paper", "citation": "c", "url": "u", "where": "Table 2", "model": model, "split": split}
    sources = {"p": {**source, "flops_baseline": flops_baseline}, "q": {**source, "label": "Other", "split": "test"}}
    path.write_text(yaml.safe_dump({"sources": sources, "results": rows}))
    return path


PAPER_ROWS = [
    {"source": "p", "task": "mrpc", "method": "top", "metric": "accuracy", "score": 81.0, "flops_reduction": 7.7, "latency_speedup": None},
    {"source": "q", "task": "mrpc", "method": "top", "metric": "accuracy", "score": 99.0, "flops_reduction": 7.7, "latency_speedup": None},
    {"source": "p", "task": "sst2", "method": "top", "metric": "accuracy", "score": 93.0, "flops_reduction": 4.7, "latency_speedup": 3.0},
    {"source": "q", "task": "sst2", "method": "lat", "metric": "accuracy", "score": 92.0, "flops_reduction": 3.0, "latency_speedup": None},
    {"source": "p", "task": "squad", "method": "top", "metric": "f1", "score": 87.5, "flops_reduction": 2.0, "latency_speedup": None},
]


def test_collect_writes_one_row_per_run_and_one_per_run_and_layer(results):
    csv, layers = results
    frame, per_layer = pd.read_csv(csv), pd.read_csv(layers)
    assert len(frame) == len(RUNS) and len(per_layer) == 3 * len(RUNS)
    sst2 = frame[(frame["task"] == "sst2") & (frame["method"] == "top") & (frame["seed"] == 1)].iloc[0]
    assert sst2["score"] == pytest.approx(90.0) and sst2["flops_reduction"] == 2.0 and sst2["speedup"] == 1.4
    assert (sst2["selection"], sst2["selected_epoch"], sst2["selection_epochs"], bool(sst2["selection_fallback"])) == ("best_dev", 2, 3, False)
    fallback = frame[(frame["task"] == "sst2") & (frame["method"] == "top") & (frame["seed"] == 2)].iloc[0]
    assert bool(fallback["selection_fallback"]) and fallback["selected_epoch"] == 3
    squad = frame[frame["task"] == "squad"]
    assert squad["selection"].isna().all() and squad["selected_epoch"].isna().all()  # not recorded: empty, not an error
    squad = frame[(frame["task"] == "squad") & (frame["method"] == "top")].iloc[0]
    assert squad["score"] == pytest.approx(85.0) and squad["validation/exact_match"] == pytest.approx(76.0)  # 0-100 stays 0-100
    # dense before top within a task, whatever the file order
    assert list(frame[frame["task"] == "mrpc"]["method"]) == ["dense", "dense", "top", "top"]
    run = per_layer[(per_layer["task"] == "mrpc") & (per_layer["method"] == "top") & (per_layer["seed"] == 1)]
    assert list(run["layer"]) == [0, 1, 2]
    assert run["kept_fraction"].iloc[-1] == pytest.approx(1 / 2.0)  # 20 / 2 tokens of 20 after the last layer
    assert (run["mean_tokens_kept"].to_numpy() <= run["mean_tokens_in"].to_numpy()).all()


def test_summarise_gives_mean_and_sample_std_over_seeds(results):
    summary = summarise(pd.read_csv(results[0])).set_index(["task", "method", "setting"])
    top = summary.loc[("mrpc", "top", "t50")]
    assert top["seeds"] == 2
    assert top["score"] == pytest.approx(85.0) and top["score_std"] == pytest.approx(math.sqrt(2.0))
    assert top["flops_reduction"] == pytest.approx(2.1) and top["speedup"] == pytest.approx(1.6)
    assert top["validation/accuracy"] == pytest.approx(79.0)
    assert math.isnan(summary.loc[("squad", "top", "t50")]["score_std"])  # one seed: no spread
    assert metric_value(top, "accuracy") == (pytest.approx(79.0), pytest.approx(math.sqrt(2.0)))
    assert metric_value(top, "f1")[0] == pytest.approx(85.0)
    assert math.isnan(metric_value(top, "pearson")[0])


def test_glue_table_puts_the_papers_numbers_beside_ours(results, tmp_path):
    built = build_tables(results[0], _paper(tmp_path, PAPER_ROWS), "glue", model=MODEL)
    long = built["long"]
    ours = long[(long["source"] == "ours") & (long["method"] == "top") & (long["task"] == "mrpc")].iloc[0]
    # the paper reports MRPC accuracy, so the column shows our accuracy, not our primary F1
    assert ours["metric"] == "accuracy" and ours["score"] == pytest.approx(79.0)
    assert ours["paper_score"] == 81.0 and ours["score_diff"] == pytest.approx(-2.0)  # first row wins over the test-split one
    assert set(long.loc[long["source"] != "ours", "source"]) == {"Paper (dev)", "Other (test)"}
    md = built["md"]
    assert "| MRPC (acc.)" in md and "| SST-2 (acc.)" in md and "SQuAD" not in md
    assert "79.0 ± 1.4 (2.1x; Δ −2.0)" in md
    assert "84.0 ± 1.4 (1.0x)" in md  # dense: no paper row for dense, no Δ
    lines = md.splitlines()
    top_row = next(line for line in lines if line.startswith("| ToP ") and "| ours " in line)
    paper_row = next(line for line in lines if line.startswith("| ToP ") and "Paper (dev)" in line)
    assert lines.index(paper_row) == lines.index(top_row) + 1  # the paper's row right under ours
    assert "| Lat " in md or "| LAT " in md  # a method only the paper has keeps its row
    assert top_row.rstrip(" |").endswith("84.0")  # GLUE average of 79.0 and 89.0
    lat_row = next(line for line in lines if "LAT" in line)
    assert "92.0 (1/2)" in lat_row  # an average over one of two tasks says so
    assert "| 93.0 (4.7x)" in paper_row and "92.0 (3.0x†)" in lat_row  # † : FLOPs on another baseline than ours
    tex = built["tex"]
    assert "\\begin{tabular}" in tex and "$\\pm$" in tex and "±" not in tex.split("%")[0]


def test_differences_only_against_the_same_checkpoint_on_dev(results, tmp_path):
    other_model = build_tables(results[0], _paper(tmp_path, PAPER_ROWS, model="roberta-base"), "glue", model=MODEL)["long"]
    assert other_model["score_diff"].isna().all()
    assert other_model.loc[other_model["source"] == "ours", "paper_score"].notna().any()  # still shown beside ours
    test_split = build_tables(results[0], _paper(tmp_path, PAPER_ROWS, split="test"), "glue", model=MODEL)["long"]
    assert test_split["score_diff"].isna().all()
    assert comparable("google-bert/bert-base-uncased", "bert-base-uncased", "dev")
    assert not comparable("bert-base-uncased", "bert-base-uncased", "test")
    assert same_model("/models/bert-base-uncased/", "BERT-base-uncased") and not same_model(None, "bert-base-uncased")


def test_squad_table_has_em_and_f1(results, tmp_path):
    md = build_tables(results[0], _paper(tmp_path, PAPER_ROWS), "squad", model=MODEL)["md"]
    header = md.splitlines()[0]
    assert "SQuAD v1.1 EM" in header and "SQuAD v1.1 F1" in header and "MRPC" not in header
    top_row = next(line for line in md.splitlines() if line.startswith("| ToP ") and "| ours " in line)
    assert "| 76.0 " in top_row and "85.0 (Δ −2.5)" in top_row and "2.0x" in top_row


def test_latency_table_has_ideal_measured_and_papers_speedups(results, tmp_path):
    built = build_tables(results[0], _paper(tmp_path, PAPER_ROWS), "latency", model=MODEL)
    long = built["long"].set_index(["task", "method"])
    assert long.loc[("sst2", "top"), "speedup"] == pytest.approx(1.5)
    assert long.loc[("sst2", "top"), "speedup_std"] == pytest.approx(math.sqrt(0.02))
    assert long.loc[("sst2", "top"), "paper_speedup"] == 3.0 and math.isnan(long.loc[("mrpc", "top"), "paper_speedup"])
    assert "3.00x at 4.7x FLOPs reduction, Paper (dev)" in built["md"]
    assert "1 pinned thread(s) on Test CPU" in built["md"]


def test_collect_has_ideal_throughput_and_memory_columns(results):
    frame = pd.read_csv(results[0]).set_index(["task", "method", "seed"])
    row = frame.loc[("sst2", "top", 1)]
    assert row["speedup"] == pytest.approx(1.4) and row["speedup_ideal"] == pytest.approx(1.54)
    assert row["pruned_vs_ideal"] == pytest.approx(1 / 1.1)
    assert row["ideal_latency_ms"] == pytest.approx(10 / 1.54) and row["dense_harness_latency_ms"] == pytest.approx(10.5)
    assert row["throughput_speedup_b8"] == pytest.approx(0.9 * 1.4) and row["throughput_speedup_b32"] == pytest.approx(0.8 * 1.4)
    assert row["examples_per_s_b8"] == pytest.approx(126.0) and row["dense_examples_per_s_b32"] == pytest.approx(100.0)
    assert row["peak_rss_mb_pruned"] == pytest.approx(500.0) and row["peak_rss_mb_ideal"] == pytest.approx(450.0)
    assert "speedup_at_pruned_lengths" not in frame.columns


def test_collect_reads_latency_files_from_before_the_ideal_runner(tmp_path):
    metrics, flops, latency = _write_run(tmp_path / "runs", *RUNS[2])
    old = json.loads(latency.read_text())
    old = {key: old[key] for key in ("task", "method", "setting", "seed", "speedup", "environment")}
    old["speedup_at_pruned_lengths"] = 1.6
    old["timings"] = {"runners": {"pruned": {"median_ms": 6.0, "iqr_ms": 0.5}, "dense": {"median_ms": 10.0}}}
    latency.write_text(json.dumps(old))
    frame = collect([metrics], [flops], [latency], tmp_path / "results.csv")
    assert frame["speedup"].iloc[0] == 1.5
    assert frame[["speedup_ideal", "pruned_vs_ideal", "ideal_latency_ms"]].isna().all(axis=None)
    assert not any(column.startswith("throughput_speedup") for column in frame.columns)


def test_latency_table_shows_ideal_pruned_over_ideal_and_throughput(results, tmp_path):
    built = build_tables(results[0], None, "latency", model=MODEL)
    header, _, *lines = built["md"].splitlines()
    assert "Ideal speedup" in header and "Pruned / ideal" in header and "Throughput speedup" in header
    assert "FLOPs reduction (ideal" not in header and "pruned lengths" not in built["md"]
    sst2 = next(line for line in lines if line.startswith("| SST-2") and "ToP" in line)
    assert "1.65x" in sst2  # ideal: mean of 1.54 and 1.76
    assert re.search(r"\|\s+0\.91\s+\|", sst2)  # pruned / ideal
    assert "b8 1.35x, b32 1.20x" in sst2
    assert "stock Hugging Face model with SDPA" in built["md"]
    long = built["long"].set_index(["task", "method"])
    assert long.loc[("sst2", "top"), "speedup_ideal"] == pytest.approx(1.65)


def test_write_table_writes_three_renderings_and_no_temporary_files(results, tmp_path):
    out = tmp_path / "tables"
    write_table(results[0], _paper(tmp_path, PAPER_ROWS), "glue", out / "glue.csv", out / "glue.md", out / "glue.tex", model=MODEL)
    assert sorted(p.name for p in out.iterdir()) == ["glue.csv", "glue.md", "glue.tex"]
    assert set(pd.read_csv(out / "glue.csv")["task"]) == {"mrpc", "sst2"}


def test_tables_without_paper_numbers_and_unknown_tables(results):
    table = build_tables(results[0], None, "glue", model=MODEL)["md"].split("\n\n")[0]
    assert "| MRPC (F1)" in table and "85.0 ± 1.4 (2.1x)" in table  # without a paper: our primary metric
    assert "Paper" not in table and "Δ" not in table
    with pytest.raises(ValueError, match="unknown table"):
        build_tables(results[0], None, "imagenet")


def test_pareto_front():
    reduction = [1.0, 1.2, 2.0, 2.0, 4.0, 3.0]
    score = [90.0, 91.0, 88.0, 85.0, 80.0, 79.0]
    # (1.0, 90) is beaten by (1.2, 91); (2.0, 85) by (2.0, 88); (3.0, 79) by (4.0, 80)
    assert pareto_front(reduction, score) == [1, 2, 4]


@pytest.mark.parametrize("figure", FIGURES)
def test_figures_are_written_in_three_formats(results, tmp_path, figure):
    csv, layers = results
    paths = [tmp_path / f"{figure}.{ext}" for ext in ("png", "svg", "pdf")]
    draw_figure(figure, csv, layers, _paper(tmp_path, PAPER_ROWS), MODEL, paths)
    assert paths[0].read_bytes().startswith(b"\x89PNG") and paths[2].read_bytes().startswith(b"%PDF")
    svg = paths[1].read_text()
    for label in ("MRPC", "SST-2", "SQuAD v1.1", "Dense (teacher)", "ToP"):
        assert label in svg, label
    if figure == "latency_vs_flops":
        assert "hollow: ideal (SDPA layers" in svg and "at the pruned lengths)" in svg
    assert not list(tmp_path.glob("*.tmp*"))


def test_accuracy_figure_shows_paper_points_only_for_our_checkpoint(results, tmp_path):
    csv, layers = results
    paper = _paper(tmp_path, PAPER_ROWS)
    same, other = tmp_path / "same.svg", tmp_path / "other.svg"
    draw_figure("accuracy_vs_flops", csv, layers, paper, MODEL, [same])
    draw_figure("accuracy_vs_flops", csv, layers, paper, "prajjwal1/bert-tiny", [other])
    assert "ToP (paper)" in same.read_text() and "Pareto front (ours)" in same.read_text()
    assert "ToP (paper" not in other.read_text()
    # a paper whose FLOPs divide by another baseline has no x position: its score is a level
    level = tmp_path / "level.svg"
    draw_figure("accuracy_vs_flops", csv, layers, _paper(tmp_path, PAPER_ROWS, flops_baseline="other"), MODEL, [level])
    assert "ToP (paper score; its FLOPs on another baseline)" in level.read_text() and "ToP (paper)" not in level.read_text()


def test_retained_tokens_figure_labels_every_setting(results, tmp_path):
    csv, layers = results
    out = tmp_path / "kept.svg"
    draw_figure("retained_tokens", csv, layers, None, MODEL, [out])
    assert "ToP t50" in out.read_text() and "tokens kept (share of input length)" in out.read_text()
    with pytest.raises(ValueError, match="unknown figure"):
        draw_figure("histogram", csv, layers, None, MODEL, [out])


def test_the_shipped_paper_results_file_is_valid():
    frame, sources = load_paper_results(ROOT / "config/paper_results.yaml")
    assert len(frame) > 0 and set(frame["source"]) <= set(sources)
    assert frame["score"].between(0, 100).all()
    for source in sources.values():
        assert source["url"].startswith("http") and source["split"] in {"dev", "test", "unknown"}


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["results"][0].update(source="nope"), r"results\[0\]: unknown source 'nope'"),
        (lambda d: d["results"][0].update(task="imdb"), r"results\[0\]: unknown task 'imdb'"),
        (lambda d: d["results"][0].update(metric="bleu"), r"results\[0\]: unknown metric 'bleu'"),
        (lambda d: d["results"][0].update(score=0.93), None),  # 0-1 scores are in range, and allowed
        (lambda d: d["results"][0].update(score=930), r"results\[0\].score: expected the 0-100 scale"),
        (lambda d: d["results"][0].update(flops_reduction=-2), r"results\[0\].flops_reduction: must be > 0"),
        (lambda d: d["results"][0].update(latency_speedup="fast"), r"results\[0\].latency_speedup: expected a number"),
        (lambda d: d["results"][0].update(flops=3), r"results\[0\]: unknown keys \['flops'\]"),
        (lambda d: d["results"][0].update(method="Power BERT"), r"results\[0\]: method 'Power BERT' must be"),
        (lambda d: d["results"][0].pop("task"), r"results\[0\]: 'task' is required"),
        (lambda d: d["sources"]["p"].pop("url"), r"sources.p: missing \['url'\]"),
        (lambda d: d["sources"]["p"].update(flops_baseline="padded"), r"sources.p.flops_baseline: expected real_length or other"),
        (lambda d: d.pop("sources"), r"expected a mapping with 'sources'"),
    ],
)
def test_malformed_paper_results_name_the_file_and_row(tmp_path, change, message):
    path = _paper(tmp_path, [dict(row) for row in PAPER_ROWS])
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data))
    if message is None:
        load_paper_results(path)
        return
    with pytest.raises(PaperResultsError, match=message) as error:
        load_paper_results(path)
    assert str(path) in str(error.value)


def test_missing_or_unparsable_paper_results(tmp_path):
    with pytest.raises(PaperResultsError, match="file not found"):
        load_paper_results(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: [unclosed")
    with pytest.raises(PaperResultsError, match="not valid YAML"):
        load_paper_results(bad)


def test_ratio_ticks_are_round_values_as_dense_as_the_axis_allows():
    locator = RatioLocator()
    assert locator.tick_values(0.87, 2.9) == [1.0, 1.25, 1.5, 1.75, 2.0, 2.5]  # no size yet: at most 7
    narrow, wide = locator.tick_values(0.87, 2.9, length_inches=1.5), locator.tick_values(0.87, 2.9, length_inches=3.3)
    assert narrow == [1.0, 1.5, 2.0] and wide == [1.0, 1.25, 1.5, 2.0, 2.5]
    assert locator.tick_values(0.9, 12, length_inches=3.3) == [1.0, 2.0, 5.0, 10.0]
    assert locator.tick_values(0.5, 1.3, length_inches=3, horizontal=False)[:3] == [0.5, 0.6, 0.7]  # stacked labels need less room


def _single_task(results, tmp_path, task="sst2"):
    csv, layers = results
    for source, name in ((csv, "one.csv"), (layers, "one_layers.csv")):
        frame = pd.read_csv(source)
        frame[frame["task"] == task].to_csv(tmp_path / name, index=False)
    return tmp_path / "one.csv", tmp_path / "one_layers.csv"


@pytest.mark.parametrize("figure", FIGURES)
@pytest.mark.parametrize("tasks", ["one", "three"])
def test_figures_fill_their_area_and_keep_the_legend_inside(results, tmp_path, figure, tasks):
    csv, layers = _single_task(results, tmp_path) if tasks == "one" else results
    fig = draw_figure(figure, csv, layers, None, MODEL, [tmp_path / f"{figure}.png"])
    renderer = FigureCanvasAgg(fig).get_renderer()  # pyplot let go of the figure once it was written
    fig.draw_without_rendering()
    width, height = fig.bbox.width, fig.bbox.height
    panels = [ax for ax in fig.axes if ax.get_visible()]
    area = sum(ax.get_window_extent(renderer).width * ax.get_window_extent(renderer).height for ax in panels)
    assert area / (width * height) > 0.3, "the panels leave most of the figure empty"
    (legend,) = fig.legends
    box = legend.get_window_extent(renderer)
    assert box.x0 >= 0 and box.x1 <= width + 1 and box.y0 >= -1, "the legend runs off the figure"
    if tasks == "one":  # beside the single panel, not below it
        assert box.x0 >= panels[0].get_window_extent(renderer).x1


def test_ratio_axes_have_several_labelled_ticks_and_points_name_their_setting(results, tmp_path):
    csv, layers = results
    for figure in ("accuracy_vs_flops", "latency_vs_flops"):
        out = tmp_path / f"{figure}.svg"
        fig = draw_figure(figure, csv, layers, None, MODEL, [out])
        for ax in fig.axes:
            labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
            assert len(labels) >= 3 and all(label.endswith("x") for label in labels), labels
            assert "t50" in [text.get_text() for text in ax.texts]  # ToP's setting beside its point
        assert "1.5x" in out.read_text()


def test_panels_follow_the_tables_task_order(results, tmp_path):
    csv, layers = results
    for figure in FIGURES:
        fig = draw_figure(figure, csv, layers, None, MODEL, [tmp_path / f"{figure}.png"])
        assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["SST-2", "MRPC", "SQuAD v1.1"]


def test_example_results_make_every_figure(tmp_path):
    results_csv, layers_csv = write_example_results(tmp_path)
    frame = pd.read_csv(results_csv)
    assert set(frame["task"]) == {"sst2", "mrpc"} and set(frame["method"]) == {"dense", "topk", "ltp", "power_bert", "top"}
    assert frame.groupby(["task", "method", "setting"]).size().eq(3).all()  # three seeds each
    dense = frame[frame["method"] == "dense"]
    assert (dense["flops_reduction"] == 1.0).all() and (frame["flops_reduction"] >= 1.0).all()
    top = frame[frame["method"] == "top"]
    assert (top["target_error_pct"].abs() < 0.1).all()  # ToP lands on its targets, as it does in the workflow
    layers = pd.read_csv(layers_csv)
    assert layers["layer"].max() == 11 and layers["kept_fraction"].between(0, 1).all()
    for figure in FIGURES:
        draw_figure(figure, results_csv, layers_csv, ROOT / "config/paper_results.yaml", EXAMPLE_MODEL, [tmp_path / f"{figure}.png"])
        assert (tmp_path / f"{figure}.png").stat().st_size > 10_000


def test_reproduction_figure_draws_a_task_with_no_curve_runs_yet(tmp_path):
    from top.report.plots import reproduction_figure

    rows = [
        {"task": "mrpc", "method": method, "setting": setting, "seed": 42, "metric": "f1", "score": score, "flops_reduction": reduction}
        for method, setting, score, reduction in (("dense", "default", 88.0, 1.0), ("top", "s50", 85.0, 2.0), ("top", "s75", 80.0, 4.0))
    ]
    out = tmp_path / "figure.png"
    # squad: only ablation runs so far, which the caller leaves out of the frame
    reproduction_figure(pd.DataFrame(rows), [out], tasks=["mrpc", "squad"], notes={"squad": "1 of 6 runs"})
    assert out.stat().st_size > 0
