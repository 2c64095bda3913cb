"""The end-of-run summary: terminal table, ``report.md`` and PNG charts.

Everything here works from plain data (the ``metrics.json`` dict, per-stage seconds and
per-stage histories), so it is testable without training anything. Charts are drawn with
matplotlib's object API on the Agg canvas (no GUI, no global pyplot state) and written
atomically.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from glta_gllm.checkpoint import atomic_write_bytes, atomic_write_text
from rich.table import Table

__all__ = [
    "MODEL_LABELS",
    "SUMMARY_COLUMNS",
    "metrics_chart",
    "metrics_table",
    "render_report",
    "summary_rows",
    "throughput_line",
    "training_curves_chart",
    "write_report",
]

# In the paper's Table 2 order.
MODEL_LABELS = {"lightgcn": "LightGCN", "lightgcn+": "LightGCN+", "rlmrec-con": "RLMRec-Con",
                "glta": "GLTA"}
# (header, metric key) of the summary table.
SUMMARY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("P@5", "precision@5"),
    ("P@10", "precision@10"),
    ("N@5", "ndcg@5"),
    ("N@10", "ndcg@10"),
    ("R@20", "recall@20"),
)
_CURVE_METRICS = ("recall@20", "ndcg@20", "precision@10", "ndcg@10", "recall@10")
_STAGE_LABELS = {
    "graph": "Stage 1: LightGCN (BPR)",
    "item_text": "Stage 2: item-text alignment",
    "user_item": "Stage 3: user-item alignment",
}


def _fmt(value: Any, key: str = "") -> str:
    if value is None:
        return "-"
    if key == "users" and isinstance(value, int | float):
        return f"{value:.0f}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _seconds_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"


def _rate_text(gflops: float) -> str:
    return f"{gflops:.0f}" if gflops >= 100 else f"{gflops:.3g}"


def throughput_line(meta: Mapping[str, Any], stage: str = "Stage 3") -> str | None:
    """The sentence on a stage's achieved GFLOP/s, from its saved metadata.

    Args:
        meta: a stage's ``config.json`` entries (``user_projector`` for stage 3,
            ``item_text/item_projector`` for stage 2): ``achieved_gflops`` (model FLOPs of
            the optimiser steps / their time, ``glta_align.flops``), ``llm_precision``,
            ``llm_precision_probe`` (``{"gflops": {precision: rate}, ...}`` or ``None``),
            ``timed_steps`` and ``steps``.
        stage: how the stage is named in the sentence.

    Returns:
        ``"Stage 3 trained at X GFLOP/s (model FLOPs / training time), Y% of the bfloat16
        GEMM rate the precision probe measured (Z GFLOP/s)."``: the ratio against the probe's
        rate for the precision the LLM ran in, only when the probe measured one (not with a
        given dtype, the CPU-flag fallback or on a GPU), with the instruction sets torch's
        kernels were held to when the probe saw them below AVX-512 (its ``isa``,
        ``glta_align.llm.kernel_isa``: "with torch's kernels at AVX2; oneDNN AVX2"); a note
        when the figure covers only the steps of a resumed attempt; ``None`` without a
        figure (runs made before it was recorded).
    """
    rate = meta.get("achieved_gflops")
    if isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0:
        return None
    line = f"{stage} trained at {_rate_text(rate)} GFLOP/s (model FLOPs / training time)"
    precision = meta.get("llm_precision")
    probe = meta.get("llm_precision_probe")
    figures = probe.get("gflops") if isinstance(probe, Mapping) else None
    gemm = figures.get(precision) if isinstance(figures, Mapping) and precision else None
    if isinstance(gemm, int | float) and not isinstance(gemm, bool) and gemm > 0:
        line += (f", {100 * rate / gemm:.0f}% of the {precision} GEMM rate the precision "
                 f"probe measured ({_rate_text(gemm)} GFLOP/s)")
        isa = probe.get("isa")
        if isinstance(isa, str) and isa not in ("", "AVX512", "unknown"):
            line += f" with torch's kernels at {isa}"
        if probe.get("measured_choice"):
            line += (f" on a machine that stayed busy (it measured "
                     f"{probe['measured_choice']} fastest; the CPU flags chose {precision})")
    timed, steps = meta.get("timed_steps"), meta.get("steps")
    if isinstance(timed, int) and isinstance(steps, int) and 0 < timed < steps:
        line += f"; over the last {timed} of its {steps} steps (the run was resumed)"
    return line + "."


def attention_text(meta: Mapping[str, Any]) -> str | None:
    """``"LLM attention in training: eager (probe: eager 34.5 ms, sdpa 42.1 ms)"`` from a
    stage's saved ``llm_attention`` and ``llm_attention_probe`` (the probe's figures only
    when ``attention="auto"`` measured them; "; element-wise parts compiled" at the end when
    ``llm_pointwise`` is true, preceded by "; 30 decoder layers as two compiled regions each"
    when ``llm_compiled_layers`` is 30); ``None`` for runs made before it was recorded."""
    impl = meta.get("llm_attention")
    if not isinstance(impl, str) or not impl:
        return None
    text = f"LLM attention in training: {impl}"
    probe = meta.get("llm_attention_probe")
    if isinstance(probe, Mapping):
        ms = ", ".join(f"{k} {v:.1f} ms" for k, v in (probe.get("ms") or {}).items()
                       if isinstance(v, int | float) and not isinstance(v, bool))
        how = {"probe": "probe", "cache": "probe, cached", "none": "no probe"}.get(
            str(probe.get("source")), str(probe.get("source")))
        text += f" ({how}" + (f": {ms}" if ms else "") + ")"
        if probe.get("measured_choice"):
            text += (f"; the machine stayed busy through the probe (it measured "
                     f"{probe['measured_choice']} fastest): {impl} by the rule for its dtype")
    if meta.get("llm_pointwise") is True:
        layers = meta.get("llm_compiled_layers")
        if isinstance(layers, int) and not isinstance(layers, bool) and layers > 0:
            text += f"; {layers} decoder layers as two compiled regions each"
        text += "; element-wise parts compiled"
    return text


def text_cache_text(meta: Mapping[str, Any]) -> str | None:
    """``"Stage 3 kept the keys/values of 943 texts (1180.3 MiB in bfloat16 of its 2048 MiB
    budget)"`` from stage 3's saved ``text_cache`` (plus how many texts did not fit and were
    computed again whenever they came back); ``None`` when it has none (text off, or runs
    made before it was recorded)."""
    cache = meta.get("text_cache")
    if not isinstance(cache, Mapping) or not cache.get("budget_mib"):
        return None
    dtype = f" in {cache['dtype']}" if cache.get("dtype") else ""
    text = (f"Stage 3 kept the keys/values of {cache.get('texts', 0)} texts "
            f"({cache.get('mib', 0)} MiB{dtype} of its {cache['budget_mib']:g} MiB budget)")
    if cache.get("not_kept"):
        text += (f"; {cache['not_kept']} more did not fit and were computed again in every "
                 "epoch and ranking")
    return text


def summary_rows(
    metrics: Mapping[str, Mapping[str, Mapping[str, float]]],
    split: str,
    train_seconds: Mapping[str, float] | None = None,
) -> list[list[str]]:
    """Rows ``[model, P@5, P@10, N@5, N@10, R@20, training time]`` for each model present.

    Args:
        metrics: ``{model: {split: {metric: value}}}`` as in ``metrics.json``.
        split: which split's numbers to show.
        train_seconds: model -> training seconds (``-`` when missing).

    Returns:
        One list of strings per model, LightGCN first.
    """
    rows = []
    order = [m for m in MODEL_LABELS if m in metrics]
    order += [m for m in metrics if m not in MODEL_LABELS]
    for model in order:
        values = metrics[model].get(split)
        if not values:
            continue
        seconds = (train_seconds or {}).get(model)
        rows.append(
            [MODEL_LABELS.get(model, model)]
            + [_fmt(values.get(key)) for _, key in SUMMARY_COLUMNS]
            + [_seconds_text(seconds)]
        )
    return rows


def metrics_table(
    metrics: Mapping[str, Mapping[str, Mapping[str, float]]],
    split: str,
    train_seconds: Mapping[str, float] | None = None,
    *,
    title: str | None = None,
) -> Table:
    """The LightGCN-vs-GLTA rich table (P@5, P@10, N@5, N@10, R@20, training time)."""
    table = Table(title=title or f"Full-ranking results on the {split} split")
    table.add_column("model", style="bold")
    for header, _ in SUMMARY_COLUMNS:
        table.add_column(header, justify="right")
    table.add_column("training time", justify="right")
    for row in summary_rows(metrics, split, train_seconds):
        table.add_row(*row)
    return table


def _figure_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def training_curves_chart(histories: Mapping[str, Mapping[str, Any]]) -> bytes | None:
    """PNG bytes with one panel per stage: training loss and, when present, valid metrics.

    Args:
        histories: stage -> ``{"epochs": [{"epoch": e, "loss": .., "recall@20": ..}, ...],
            "steps": [[step, loss], ...]}``. Per-epoch records are plotted when a stage has
            at least two, else per-step losses.

    Returns:
        The PNG, or ``None`` when no stage has anything to plot.
    """
    from matplotlib.figure import Figure

    panels = []
    for stage, hist in histories.items():
        epochs = [e for e in hist.get("epochs", []) if isinstance(e, Mapping)]
        steps = hist.get("steps", [])
        if len(epochs) >= 2 or steps:
            panels.append((stage, epochs, steps))
    if not panels:
        return None
    fig = Figure(figsize=(5.0 * len(panels), 3.6))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (stage, epochs, steps) in zip(axes, panels, strict=True):
        ax.set_title(_STAGE_LABELS.get(stage, stage), fontsize=10)
        if len(epochs) >= 2 and any("loss" in e for e in epochs):
            xs = [e.get("epoch", i) + 1 for i, e in enumerate(epochs) if "loss" in e]
            ax.plot(xs, [e["loss"] for e in epochs if "loss" in e], "o-", color="C0", ms=3)
            ax.set_xlabel("epoch")
        else:
            style = "o-" if len(steps) <= 50 else "-"
            ax.plot([s[0] for s in steps], [s[1] for s in steps], style, color="C0", lw=1, ms=3)
            ax.set_xlabel("step")
        ax.set_ylabel("training loss", color="C0")
        found = {k for e in epochs for k in e if k not in ("epoch", "loss", "seconds", "lr")}
        valid_keys = [k for k in _CURVE_METRICS if k in found] or sorted(found)
        if len(epochs) >= 2 and valid_keys:
            twin = ax.twinx()
            for j, key in enumerate(valid_keys[:3]):
                pts = [(e.get("epoch", i) + 1, e[key]) for i, e in enumerate(epochs) if key in e]
                twin.plot([p[0] for p in pts], [p[1] for p in pts], "s--", ms=3,
                          color=f"C{j + 1}", label=f"valid {key}")
            twin.set_ylabel("validation metric")
            twin.legend(fontsize=7, loc="best")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _figure_png(fig)


def metrics_chart(
    metrics: Mapping[str, Mapping[str, Mapping[str, float]]],
    split: str,
    keys: Sequence[str] | None = None,
) -> bytes | None:
    """PNG bytes of a grouped bar chart: each model's metrics side by side on ``split``.

    Returns ``None`` when no model has metrics for ``split``.
    """
    from matplotlib.figure import Figure

    order = [m for m in MODEL_LABELS if m in metrics]
    order += [m for m in metrics if m not in MODEL_LABELS]
    models = [m for m in order if metrics[m].get(split)]
    if not models:
        return None
    keys = list(keys or [k for _, k in SUMMARY_COLUMNS])
    labels = [h for h, k in SUMMARY_COLUMNS if k in keys] + [
        k for k in keys if k not in dict((k2, h) for h, k2 in SUMMARY_COLUMNS)
    ]
    fig = Figure(figsize=(1.4 * len(keys) + 2, 3.8))
    ax = fig.subplots()
    width = 0.8 / len(models)
    for j, model in enumerate(models):
        values = [float(metrics[model][split].get(k, 0.0)) for k in keys]
        xs = [i + (j - (len(models) - 1) / 2) * width for i in range(len(keys))]
        bars = ax.bar(xs, values, width, label=MODEL_LABELS.get(model, model), color=f"C{j}")
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    ax.set_xticks(range(len(keys)), labels)
    ax.set_ylabel("score")
    ax.set_title(f"Full ranking, {split} split")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _figure_png(fig)


def render_report(
    metrics: Mapping[str, Mapping[str, Mapping[str, float]]],
    *,
    split: str,
    stage_seconds: Mapping[str, float],
    train_seconds: Mapping[str, float],
    dataset: Mapping[str, Any] | None = None,
    command: str | None = None,
    charts: Sequence[str] = (),
    config_name: str = "resolved-config.toml",
    llm: str | None = None,
    extra: str = "",
) -> str:
    """The Markdown text of ``report.md``.

    Args:
        metrics: ``{model: {split: {metric: value}}}``.
        split: the split of the headline table.
        stage_seconds: stage -> seconds spent (as measured, summed over resumed attempts).
        train_seconds: model -> training seconds shown in the table.
        dataset: ``Interactions.stats()`` of the dataset, shown as a summary line.
        command: the command line that produced the run.
        charts: file names of charts to embed (relative to the run directory).
        config_name: the resolved configuration's file name.
        llm: what GLTA's LLM was and the precision it ran in, e.g. ``"default (int8)"``.
        extra: Markdown inserted before the charts (ablation, epoch selection, breakdowns).
    """
    lines = ["# GLTA run report", ""]
    if command:
        lines += ["Command:", "", "```bash", command, "```", ""]
    if dataset:
        inter = dataset.get("interactions", {})
        per = ", ".join(f"{k} {v:,}" for k, v in inter.items()) if isinstance(inter, dict) else ""
        lines += [
            f"Dataset `{dataset.get('name', '?')}` "
            f"(fingerprint `{dataset.get('fingerprint', '?')}`): "
            f"{dataset.get('users', 0):,} users, {dataset.get('items', 0):,} items; {per}.",
            "",
        ]
    if llm:
        lines += [f"LLM: {llm}.", ""]
    lines += [f"## Results ({split} split, full ranking, training items excluded)", ""]
    headers = ["model"] + [h for h, _ in SUMMARY_COLUMNS] + ["training time"]
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|")
    for row in summary_rows(metrics, split, train_seconds):
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines += ["GLTA's training time includes the LightGCN pretraining it builds on.", ""]
    if any(m in metrics for m in ("lightgcn+", "rlmrec-con")):
        lines += ["LightGCN+ and RLMRec-Con are LightGCN trained from scratch with a "
                  "text-alignment loss (`glta_graph.text_align`); their time is their own "
                  "training (text encoding and LLM profiles not included).", ""]
    if stage_seconds:
        lines += ["## Time per stage", "", "| stage | seconds |", "|---|---:|"]
        for stage, secs in stage_seconds.items():
            lines.append(f"| {stage} | {secs:.1f} |")
        lines.append("")
    all_keys = sorted({k for m in metrics.values() for v in m.values() for k in v})
    if all_keys:
        lines += ["## All metrics", ""]
        lines.append("| model | split | " + " | ".join(all_keys) + " |")
        lines.append("|---|---|" + "|".join(["---:"] * len(all_keys)) + "|")
        for model, per_split in metrics.items():
            for split_name, values in per_split.items():
                cells = [MODEL_LABELS.get(model, model), split_name]
                cells += [_fmt(values.get(k), k) for k in all_keys]
                lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if extra:
        lines += [extra.rstrip("\n"), ""]
    for chart in charts:
        lines += [f"![{Path(chart).stem}]({chart})", ""]
    lines += [f"Configuration: [`{config_name}`]({config_name}).", ""]
    return "\n".join(lines)


def write_report(
    run_dir: str | os.PathLike[str],
    metrics: Mapping[str, Mapping[str, Mapping[str, float]]],
    *,
    split: str,
    stage_seconds: Mapping[str, float],
    train_seconds: Mapping[str, float],
    histories: Mapping[str, Mapping[str, Any]],
    dataset: Mapping[str, Any] | None = None,
    command: str | None = None,
    llm: str | None = None,
    extra: str = "",
) -> dict[str, Path]:
    """Write ``report.md`` (see :func:`render_report`) and the charts into ``run_dir``
    (atomically).

    Returns:
        name -> path of every file written: ``report`` and, when there is data for them,
        ``training_curves`` (``training_curves.png``) and ``metrics_chart``
        (``metrics_comparison.png``).
    """
    run_dir = Path(run_dir)
    written: dict[str, Path] = {}
    charts = []
    curves = training_curves_chart(histories)
    if curves is not None:
        written["training_curves"] = atomic_write_bytes(run_dir / "training_curves.png", curves)
        charts.append("training_curves.png")
    bars = metrics_chart(metrics, split)
    if bars is not None:
        written["metrics_chart"] = atomic_write_bytes(run_dir / "metrics_comparison.png", bars)
        charts.append("metrics_comparison.png")
    text = render_report(
        metrics,
        split=split,
        stage_seconds=stage_seconds,
        train_seconds=train_seconds,
        dataset=dataset,
        command=command,
        charts=charts,
        llm=llm,
        extra=extra,
    )
    written["report"] = atomic_write_text(run_dir / "report.md", text)
    return written
