"""Tests of the end-of-run report: table rows, report.md, PNG charts."""

from __future__ import annotations

import io

from rich.console import Console

from glta_cli.report import (
    metrics_chart,
    metrics_table,
    render_report,
    summary_rows,
    throughput_line,
    training_curves_chart,
    write_report,
)

METRICS = {
    "glta": {"test": {"precision@5": 0.2, "precision@10": 0.15, "ndcg@5": 0.25,
                      "ndcg@10": 0.22, "recall@20": 0.3, "users": 10.0}},
    "lightgcn": {"test": {"precision@5": 0.1, "precision@10": 0.08, "ndcg@5": 0.12,
                          "ndcg@10": 0.11, "recall@20": 0.2, "users": 10.0},
                 "valid": {"recall@20": 0.19}},
}
HIST = {
    "graph": {"epochs": [{"epoch": 0, "loss": 0.6, "recall@20": 0.1},
                         {"epoch": 1, "loss": 0.4, "recall@20": 0.15}], "steps": []},
    "item_text": {"epochs": [], "steps": [[1, 5.0], [2, 4.0], [3, 3.5]]},
    "user_item": {"epochs": [], "steps": []},
}
PNG = b"\x89PNG\r\n\x1a\n"


def test_summary_rows_order_and_format():
    rows = summary_rows(METRICS, "test", {"lightgcn": 12.3, "glta": 99.6})
    assert rows[0] == ["LightGCN", "0.1000", "0.0800", "0.1200", "0.1100", "0.2000", "12 s"]
    assert rows[1][0] == "GLTA" and rows[1][-1] == "100 s"
    assert summary_rows(METRICS, "valid")[0][1] == "-"
    assert summary_rows(METRICS, "test", {"lightgcn": 0.42})[0][-1] == "0.4 s"


def test_metrics_table_renders_both_models():
    buf = io.StringIO()
    Console(file=buf, width=150).print(metrics_table(METRICS, "test", {"lightgcn": 1.0}))
    text = buf.getvalue()
    assert "LightGCN" in text and "GLTA" in text and "P@10" in text and "R@20" in text


def test_charts_are_pngs_or_none():
    assert training_curves_chart(HIST).startswith(PNG)
    assert training_curves_chart({"x": {"epochs": [], "steps": []}}) is None
    assert metrics_chart(METRICS, "test").startswith(PNG)
    assert metrics_chart(METRICS, "nope") is None


def test_render_report_has_table_and_stages():
    text = render_report(METRICS, split="test", stage_seconds={"graph": 3.25},
                         train_seconds={"lightgcn": 3.0}, dataset={"name": "d", "users": 5,
                         "items": 7, "interactions": {"train": 10}}, command="glta pipeline",
                         charts=["a.png"], llm="`default` (int8)")
    assert "| LightGCN | 0.1000 |" in text and "| GLTA | 0.2000 |" in text
    assert "| graph | 3.2 |" in text or "| graph | 3.3 |" in text
    assert "glta pipeline" in text and "![a](a.png)" in text and "5 users" in text
    assert "LLM: `default` (int8)." in text


def test_write_report_writes_files(tmp_path):
    files = write_report(tmp_path, METRICS, split="test", stage_seconds={"graph": 1.0},
                         train_seconds={"lightgcn": 1.0, "glta": 2.0}, histories=HIST)
    assert set(files) == {"report", "training_curves", "metrics_chart"}
    assert (tmp_path / "training_curves.png").read_bytes().startswith(PNG)
    assert (tmp_path / "metrics_comparison.png").read_bytes().startswith(PNG)
    assert "training_curves.png" in (tmp_path / "report.md").read_text(encoding="utf-8")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


PROBE = {"choice": "bfloat16", "source": "probe", "gflops": {"float32": 333.2, "bfloat16": 1961.0}}


def test_throughput_line_against_the_probe_rate_of_the_precision_run():
    meta = {"achieved_gflops": 412.4, "llm_precision": "bfloat16", "llm_precision_probe": PROBE,
            "timed_steps": 40, "steps": 40}
    assert throughput_line(meta) == (
        "Stage 3 trained at 412 GFLOP/s (model FLOPs / training time), 21% of the bfloat16 "
        "GEMM rate the precision probe measured (1961 GFLOP/s).")
    # the rate of the precision the LLM ran in, not the fastest one
    fp32 = throughput_line({**meta, "llm_precision": "float32"}, "Stage 2")
    assert fp32.startswith("Stage 2 trained at 412 GFLOP/s") and "124% of the float32" in fp32
    assert "(333 GFLOP/s)" in fp32
    busy = {**meta, "llm_precision_probe": {**meta["llm_precision_probe"],
                                            "measured_choice": "float32"}}
    assert ("on a machine that stayed busy (it measured float32 fastest; the CPU flags chose"
            in throughput_line(busy))
    resumed = throughput_line({**meta, "timed_steps": 15})
    assert resumed.endswith("; over the last 15 of its 40 steps (the run was resumed).")
    # kernels held below AVX-512 are named; AVX-512 (or no record) says nothing more
    held = {**meta, "llm_precision_probe": {**PROBE, "isa": "AVX2; oneDNN AVX2"}}
    assert throughput_line(held).endswith(
        "(1961 GFLOP/s) with torch's kernels at AVX2; oneDNN AVX2.")
    wide = {**meta, "llm_precision_probe": {**PROBE, "isa": "AVX512"}}
    assert throughput_line(wide) == throughput_line(meta)


def test_attention_text_names_the_training_kernels_and_the_probe():
    from glta_cli.report import attention_text

    probe = {"choice": "eager", "source": "cache", "ms": {"eager": 34.49, "sdpa": 42.25}}
    assert attention_text({"llm_attention": "eager", "llm_attention_probe": probe}) == (
        "LLM attention in training: eager (probe, cached: eager 34.5 ms, sdpa 42.2 ms)")
    assert attention_text({"llm_attention": "sdpa", "llm_attention_probe": None}) == (
        "LLM attention in training: sdpa")
    assert attention_text({}) is None  # runs made before it was recorded
    assert attention_text({"llm_attention": "sdpa", "llm_pointwise": True}) == (
        "LLM attention in training: sdpa; element-wise parts compiled")
    assert attention_text({"llm_attention": "eager", "llm_attention_probe": probe,
                           "llm_pointwise": True}) == (
        "LLM attention in training: eager (probe, cached: eager 34.5 ms, sdpa 42.2 ms); "
        "element-wise parts compiled")
    assert attention_text({"llm_attention": "sdpa", "llm_pointwise": False}) == (
        "LLM attention in training: sdpa")
    assert attention_text({"llm_attention": "eager_grouped", "llm_pointwise": True,
                           "llm_compiled_layers": 30}) == (
        "LLM attention in training: eager_grouped; 30 decoder layers as two compiled regions "
        "each; element-wise parts compiled")
    assert attention_text({"llm_attention": "sdpa", "llm_pointwise": True,
                           "llm_compiled_layers": 0}) == (
        "LLM attention in training: sdpa; element-wise parts compiled")
    busy = {**probe, "source": "probe", "choice": "eager_grouped", "measured_choice": "sdpa"}
    assert attention_text({"llm_attention": "eager_grouped", "llm_attention_probe": busy}) == (
        "LLM attention in training: eager_grouped (probe: eager 34.5 ms, sdpa 42.2 ms); the "
        "machine stayed busy through the probe (it measured sdpa fastest): eager_grouped by "
        "the rule for its dtype")


def test_text_cache_text_says_what_stage_3_kept_and_what_did_not_fit():
    from glta_cli.report import text_cache_text

    kept = {"texts": 943, "not_kept": 0, "mib": 1180.3, "budget_mib": 2048.0,
            "dtype": "bfloat16"}
    assert text_cache_text({"text_cache": kept}) == (
        "Stage 3 kept the keys/values of 943 texts (1180.3 MiB in bfloat16 of its 2048 MiB "
        "budget)")
    over = {**kept, "texts": 812, "not_kept": 131, "mib": 2047.9, "dtype": None}
    assert text_cache_text({"text_cache": over}) == (
        "Stage 3 kept the keys/values of 812 texts (2047.9 MiB of its 2048 MiB budget); 131 "
        "more did not fit and were computed again in every epoch and ranking")
    assert text_cache_text({}) is None  # text off, or runs made before it was recorded


def test_throughput_line_without_probe_figures_or_figure():
    plain = "Stage 3 trained at 0.19 GFLOP/s (model FLOPs / training time)."
    for probe in (None, {"choice": "bfloat16", "source": "flags", "gflops": {}},
                  {"choice": "float32", "source": "cache"}):  # given dtype / GPU, flags, old
        assert throughput_line({"achieved_gflops": 0.19, "llm_precision": "bfloat16",
                                "llm_precision_probe": probe}) == plain
    assert throughput_line({"achieved_gflops": 0.19, "llm_precision": "int8",
                            "llm_precision_probe": PROBE}) == plain  # int8 not measured
    assert throughput_line({}) is None and throughput_line({"achieved_gflops": None}) is None
