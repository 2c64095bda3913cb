"""``glta graph train``: LightGCN pretraining on a prepared dataset."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from glta_cli.commands._common import Quiet, handle_errors, out_console

app = typer.Typer(no_args_is_help=True, help="Stage 1: LightGCN graph pretraining.")


@app.command(
    "train",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
@handle_errors
def train(
    ctx: typer.Context,
    dataset_dir: Annotated[
        Path, typer.Argument(help="A prepared dataset folder (from `glta data prepare`).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to write.")],
    dim: Annotated[int | None, typer.Option(help="Embedding size d.")] = None,
    layers: Annotated[int | None, typer.Option(help="Propagation layers L.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="BPR triples per step.")] = None,
    lr: Annotated[float | None, typer.Option(help="Adam learning rate.")] = None,
    l2: Annotated[float | None, typer.Option(help="L2 on layer-0 embeddings.")] = None,
    loss: Annotated[
        str | None,
        typer.Option(help="bpr (the paper) or softmax (sampled softmax, far fewer epochs)."),
    ] = None,
    hard_negatives: Annotated[
        int | None,
        typer.Option(help="BPR: candidates per triple; the highest-scored one is the negative "
                          "(1 = uniform, the paper)."),
    ] = None,
    patience: Annotated[int | None, typer.Option(help="Validations without gain.")] = None,
    eval_every: Annotated[int | None, typer.Option(help="Validate every N epochs.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda.")] = None,
    text_align: Annotated[
        str | None,
        typer.Option(help="Text baseline: infonce (LightGCN+: item text InfoNCE) or rlmrec-con "
                          "(RLMRec-Con: LLM user profiles + item text); none = LightGCN."),
    ] = None,
    text_weight: Annotated[
        float | None, typer.Option(help="Weight of the text-alignment loss.")
    ] = None,
    text_temperature: Annotated[
        float | None, typer.Option(help="InfoNCE temperature of the text-alignment loss.")
    ] = None,
    text_encoder: Annotated[
        str | None,
        typer.Option(help="Sentence encoder: all-MiniLM-L6-v2 (offline copy), a folder or a "
                          "hub id."),
    ] = None,
    profiles: Annotated[
        Path | None,
        typer.Option(help="rlmrec-con: a profiles.jsonl with the user profiles (default: "
                          "RUN/profiles.jsonl, generated with the default LLM when missing)."),
    ] = None,
    restart: Annotated[
        bool, typer.Option("--restart", help="Ignore saved state and train from scratch.")
    ] = False,
    quiet: Quiet = False,
) -> None:
    """Train LightGCN (BPR, early stopping on valid) and save RUN/graph.

    The dataset is copied into RUN/dataset so the run directory is self-contained. A
    killed run resumes from RUN/state/graph when rerun. RUN must be a new or empty folder
    or a glta run. Any other LightGCNConfig key can be
    set with --graph.key value.

    Example: glta graph train data/ml100k --out runs/lgcn --epochs 50 --lr 0.005

    On 2 processes (gloo on the CPU, NCCL with --device cuda; each draws half of every
    batch, gradients averaged): uv run torchrun --standalone --nproc-per-node 2 -m glta_cli
    graph train data/ml100k --out runs/lgcn

    Text baselines: --text-align infonce (LightGCN+) or rlmrec-con (RLMRec-Con, user
    profiles from --profiles or the LLM), with --text-weight, --text-temperature and
    --text-encoder.

    Gowalla recipe (the published LightGCN Recall@20 in 120 epochs, see benchmarks/RESULTS.md):
    --batch-size 4096 --lr 0.002 --l2 0.003 --hard-negatives 32
    """
    from glta_cli.baselines import graph_user_texts
    from glta_cli.outputs import check_output_dir, write_marker
    from glta_cli.pipeline import train_graph_run

    if int(os.environ.get("RANK", "0")) != 0:
        pass  # under torchrun rank 0 checks and marks the output folder
    elif (dataset_dir / "dataset.json").is_file():  # else train_graph_run names the problem
        if check_output_dir(out, "run", inputs=[dataset_dir]) == "new":
            out.mkdir(parents=True, exist_ok=True)
        write_marker(out, "run")
    else:
        check_output_dir(out, "run", inputs=[dataset_dir])
    options = {
        "dim": dim, "layers": layers, "epochs": epochs, "batch_size": batch_size, "lr": lr,
        "l2": l2, "loss": loss, "hard_negatives": hard_negatives, "patience": patience,
        "eval_every": eval_every, "seed": seed, "device": device, "text_align": text_align,
        "text_weight": text_weight, "text_temperature": text_temperature,
        "text_encoder": text_encoder,
    }
    result, valid = train_graph_run(
        dataset_dir, out, {k: v for k, v in options.items() if v is not None}, ctx.args,
        restart=restart, quiet=quiet, user_texts=graph_user_texts(profiles),
    )
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
        return
    console = out_console()
    headline = ("recall@20", "ndcg@20", "precision@10", "ndcg@10")
    shown = ", ".join(f"{k} {valid[k]:.4f}" for k in headline if k in valid)
    console.print(
        f"LightGCN: best epoch {result.best_epoch + 1} of {len(result.history)} "
        f"({result.seconds:.1f} s); valid {shown or '(not validated)'}"
    )
    if result.text:
        from glta_cli.baselines import text_line

        console.print(f"text alignment {result.text['mode']}: {text_line(result.text)}")
    console.print(f"saved {out / 'graph'}; next: glta evaluate {out}")
