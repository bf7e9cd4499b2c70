"""The ``xsearch train`` command (registered on the main typer app by ``register(app)``)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from ..errors import XSearchError

METRIC_COLUMNS = ("R@1", "R@5", "R@10", "mean_rank")


def register(app: typer.Typer) -> None:
    """Add ``train`` to ``app``."""
    app.command("train")(train_command)


def train_command(
    manifest: Path = typer.Argument(..., help="Pairs: CSV/JSONL with path,caption or path_a,path_b; or a folder "
                                              "with captions.csv / captions.jsonl / image+.txt files."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the trained encoder to (config.json + heads.safetensors)."),
    base: str = typer.Option("xsearch-mini", "--base", help="Frozen base encoder the heads are trained on."),
    epochs: int = typer.Option(20, "--epochs", min=1, help="Maximum epochs."),
    batch_size: int = typer.Option(64, "--batch-size", min=2, help="Pairs per batch (in-batch negatives)."),
    lr: float = typer.Option(2e-4, "--lr", min=0.0, help="AdamW learning rate."),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="Share of items held out for validation / early stopping."),
    seed: int = typer.Option(0, "--seed", help="Seed for the split, initialisation and batch order."),
    hard_negatives: float = typer.Option(0.0, "--hard-negatives", min=0.0, help="Extra weight on each row's hardest in-batch negative."),
    patience: int = typer.Option(4, "--patience", min=0, help="Stop after this many epochs without validation gain (0: never)."),
    image_features: str = typer.Option("auto", "--image-features", help="Frozen image features: auto, embed, pooled, embed+pooled."),
    hidden: int = typer.Option(256, "--hidden", min=0, help="Hidden width of the residual adapters."),
    text_adapter: bool = typer.Option(False, "--text-adapter", help="Also train an adapter on the text side "
                                      "(default: text keeps the frozen base space, LiT style)."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Folder to cache frozen features in (re-runs skip the base encoder)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Fine-tune adapters on your own pairs; save an encoder usable as `--encoder align:OUT`."""
    from .loop import TrainConfig, train

    config = TrainConfig(manifest=str(manifest), out=str(out), base=base, epochs=epochs, batch_size=batch_size, lr=lr,
                         val_fraction=val_fraction, seed=seed, hard_negatives=hard_negatives, patience=patience,
                         image_features=image_features, hidden=hidden, train_sides="both" if text_adapter else "auto",
                         cache_dir=str(cache) if cache else None,
                         quiet=quiet or as_json)
    try:
        result = train(config)
    except XSearchError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(result.to_dict(), default=str))
        return
    _print_report(result.to_dict())


def _print_report(res: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(markup=False, highlight=False, soft_wrap=True)
    c = res["counts"]
    split = "validation" if res["split"] == "validation" else "training (no validation split)"
    table = Table(title=f"{split} retrieval: {c['val_items'] or c['items']} items, frozen base vs trained")
    table.add_column("direction")
    table.add_column("")
    for col in METRIC_COLUMNS:
        table.add_column(col, justify="right")
    for direction in res["directions"]:
        for label, key in (("before", "before"), ("after", "after")):
            m = res[key][direction]
            table.add_row(direction.replace("_to_", " -> ") if label == "before" else "", label,
                          *(f"{m[k]:.3f}" if k.startswith("R@") else f"{m[k]:.1f}" for k in METRIC_COLUMNS))
    console.print(table)
    console.print(f"pairs: {c['train_pairs']} train / {c['val_pairs']} validation; best epoch {res['best_epoch']} of "
                  f"{res['epochs_run']}; temperature {res['temperature']:.3f}; {res['seconds']:.1f} s", highlight=False)
    if res["best_epoch"] == 0:
        console.print("note: no epoch beat the frozen base on validation; the saved heads are the untrained ones",
                      highlight=False)
    console.print(f"saved to {res['out']}", highlight=False)
    console.print(f"use it with: xsearch index PATH --encoder {res['encoder']}", highlight=False)
