"""The `xsearch` command line (typer). The only place that turns XSearchError into exit codes."""
from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Iterator, List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .config import DEFAULT_COLLECTION, default_home
from .errors import BadInput, XSearchError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Cross-modal search: index images, text and audio into one vector space and query it.")
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

HomeOpt = typer.Option(None, "--home", envvar="XSEARCH_HOME", help="Folder holding collections [default: ./indexes].")
CollectionOpt = typer.Option(DEFAULT_COLLECTION, "--collection", "-c", help="Collection name inside the home folder.")
JsonOpt = typer.Option(False, "--json", help="Machine-readable JSON output.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bars or summaries.")


@app.callback()
def _global_options(
    offline: bool = typer.Option(False, "--offline", help="Never download model weights (sets HF_HUB_OFFLINE=1); "
                                 "a model that is not cached fails at once, saying how to get it."),
) -> None:
    """Cross-modal search: index images, text and audio into one vector space and query it."""
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"


@contextmanager
def _errors() -> Iterator[None]:
    """Turn library errors into a one-line message and an exit code."""
    try:
        yield
    except XSearchError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, markup=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err.print("interrupted: finished batches are kept; run the same command again to resume")
        raise typer.Exit(130) from None
    except Exception as exc:  # noqa: BLE001 - a bug: one line for users, the traceback on request
        if os.environ.get("XSEARCH_DEBUG"):
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        err.print(f"[red]internal error:[/red] {type(exc).__name__}: {escape(first)} (XSEARCH_DEBUG=1 shows the traceback; "
                  "please report it)", highlight=False, markup=True)
        raise typer.Exit(2) from None


def _home(home: Optional[Path]) -> Path:
    return Path(home) if home else default_home()


def _progress(enabled: bool, label: str):
    """A rich progress bar driven by the engine's (advance, total) callbacks; a no-op when disabled."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if not enabled:
        return None, None
    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err,
                   transient=True)
    task = bar.add_task(label, total=None)

    def update(advance: int, total: int) -> None:
        bar.update(task, advance=advance, total=total)

    return bar, update


@app.command()
def index(
    paths: List[Path] = typer.Argument(None, help="Files or folders to index (recursively)."),
    home: Optional[Path] = HomeOpt,
    collection: str = CollectionOpt,
    encoder: Optional[str] = typer.Option(None, "--encoder", "-e", help="Encoder for a new collection [default: xsearch-mini]."),
    captions: Optional[Path] = typer.Option(None, "--captions", help="CSV of file,caption: captions become text items linked to their image."),
    index_spec: str = typer.Option("auto", "--index", help="FAISS index for a new collection: auto, flat, ivf, ivfpq, hnsw, ... or a FAISS factory string."),
    target_recall: float = typer.Option(0.95, "--target-recall", help="Recall@10 vs exact search that IVF/HNSW tuning aims for."),
    memory: Optional[str] = typer.Option(None, "--memory", help="Memory budget for the index, e.g. 4G [default: half the RAM]."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Image decode worker processes [default: by core count; none below 4 CPU cores]."),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per inference batch."),
    quiet: bool = QuietOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Index files/folders: new or changed files are embedded, deleted ones dropped; bad files are reported and skipped."""
    from .engine import Collection
    from .index import parse_memory

    with _errors():
        if not paths and captions is None:
            raise BadInput("nothing to index: give one or more PATHs (and/or --captions CSV)")
        for p in list(paths or []) + ([captions] if captions else []):
            if not p.exists():
                raise BadInput(f"{p}: no such file or folder")
        col = Collection.open(_home(home), collection, encoder=encoder, create=True, index=index_spec,
                              target_recall=target_recall, memory_bytes=parse_memory(memory) if memory else None)
        bar, update = _progress(not (quiet or as_json), "embedding")
        if bar:
            bar.start()
        try:
            report = col.add([str(p) for p in paths or []], captions=captions, progress=update, workers=workers,
                             batch_size=batch_size)
        finally:
            if bar:
                bar.stop()
        _print_report(col, report, quiet, as_json)
        col.close()


def _print_report(col, report, quiet: bool, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps({"collection": col.name, "items": len(col), **report.to_dict()}))
        return
    for _, reason in report.skipped:
        err.print(f"[yellow]skipped:[/yellow] {reason}", highlight=False)
    if not quiet:
        err.print(f"{col.name}: {report.added} added, {report.updated} updated, {report.unchanged} unchanged, "
                  f"{report.removed} removed, {report.captions} captions, {len(report.skipped)} skipped; "
                  f"{len(col)} items in {col.folder}", highlight=False)
    if report.outgrown and not quiet:
        err.print(f"note: the collection has outgrown its {col.index.spec.kind} index; run `xsearch reindex -c {col.name}`")


def _parse_weights(spec: Optional[str]) -> Optional[dict]:
    if not spec:
        return None
    weights = {}
    for part in spec.split(","):
        name, sep, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise BadInput(f"--weights '{spec}': expected e.g. text=0.3,image=0.7") from None
        if not sep or name.strip() not in ("text", "image", "audio"):
            raise BadInput(f"--weights '{spec}': expected e.g. text=0.3,image=0.7")
    return weights


@app.command()
def query(
    text: Optional[str] = typer.Argument(None, help="Text query (text→image by default)."),
    image: Optional[Path] = typer.Option(None, "--image", help="Image query (image→image and image→text)."),
    audio: Optional[Path] = typer.Option(None, "--audio", help="Audio query."),
    file: Optional[Path] = typer.Option(None, "--file", help="Text file: one query per line; prints JSON Lines."),
    modality: Optional[str] = typer.Option(None, "--modality", "-m", help="What to return: image, text, audio or any."),
    k: int = typer.Option(10, "-k", "--top", help="Number of hits."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Fused query weights, e.g. text=0.3,image=0.7."),
    under: Optional[List[Path]] = typer.Option(None, "--under", help="Only items under this path (repeatable)."),
    tag: Optional[List[str]] = typer.Option(None, "--tag", help="Only items with this tag (repeatable)."),
    since: Optional[datetime] = typer.Option(None, "--since", help="Only files modified at or after this time (ISO date)."),
    until: Optional[datetime] = typer.Option(None, "--until", help="Only files modified at or before this time (ISO date)."),
    encoder: Optional[str] = typer.Option(None, "--encoder", "-e", help="Must match the collection's encoder if given."),
    home: Optional[Path] = HomeOpt,
    collection: str = CollectionOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Search a collection with text, an image, audio, or a weighted mix of them."""
    from .engine import Collection

    with _errors():
        if k < 1:
            raise BadInput(f"-k must be at least 1 (got {k})")
        col = Collection.open(_home(home), collection, encoder=encoder, read_only=True)
        filters = {"under": [str(p) for p in under] if under else None, "tags": tag or None, "since": since,
                   "until": until}
        if file is not None:
            _query_file(col, file, k, modality, filters)
            return
        if text is None and image is None and audio is None:
            raise BadInput("give a TEXT query, --image FILE, --audio FILE or --file QUERIES.txt")
        hits = col.search(text=text, image=image, audio=audio, k=k, modality=modality,
                          weights=_parse_weights(weights), **filters)
        _print_hits(hits, as_json)
        col.close()
        global _skip_teardown
        _skip_teardown = True


def _query_file(col, file: Path, k: int, modality: Optional[str], filters: dict) -> None:
    try:
        queries = [q.strip() for q in file.read_text(encoding="utf-8").splitlines() if q.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{file}: unreadable queries file ({exc})") from None
    if not queries:
        raise BadInput(f"{file}: no queries (one per line)")
    for q, hits in zip(queries, col.search_many(queries, k=k, modality=modality, **filters)):
        sys.stdout.write(json.dumps({"query": q, "hits": [h.to_dict() for h in hits]}) + "\n")


def _print_hits(hits, as_json: bool) -> None:
    if as_json:
        for h in hits:
            sys.stdout.write(json.dumps(h.to_dict()) + "\n")
        return
    if not hits:
        err.print("no hits")
        return
    table = Table("#", "score", "modality")
    table.add_column("path", overflow="fold")
    table.add_column("text", overflow="fold")
    for h in hits:
        table.add_row(str(h.rank), f"{h.score:.3f}", h.modality, _short(h.path), (h.text or "")[:80])
    out.print(table)


def _short(path: str) -> str:
    try:
        rel = os.path.relpath(path)
        return rel if not rel.startswith("..") else path
    except ValueError:
        return path


@app.command()
def matrix(
    rows: str = typer.Option(..., "--rows", help="Folder, text file (one text per line), or collection:NAME."),
    cols: str = typer.Option(..., "--cols", help="Folder, text file (one text per line), or collection:NAME."),
    out_path: Path = typer.Option(..., "--out", help="Where to save the similarity matrix (.npy)."),
    csv: bool = typer.Option(False, "--csv", help="Also write a labelled .csv beside the .npy."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw a heatmap PNG."),
    encoder: Optional[str] = typer.Option(None, "--encoder", "-e", help="Encoder [default: the collection's, else xsearch-mini]."),
    home: Optional[Path] = HomeOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Cosine similarity matrix between two sets, saved as .npy with row/column labels beside it."""
    from . import matrix as mx

    with _errors():
        result = mx.similarity_matrix(rows, cols, _home(home), encoder)
        written = mx.save(result, out_path, csv=csv, plot=plot)
        if not quiet:
            err.print(f"{result.values.shape[0]}x{result.values.shape[1]} matrix ({result.encoder}): "
                      + ", ".join(str(p) for p in written), highlight=False)


@app.command()
def info(
    home: Optional[Path] = HomeOpt,
    collection: str = CollectionOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Show a collection's encoder, index and counts."""
    from .engine import Collection

    with _errors():
        col = Collection.open(_home(home), collection)
        stats = col.stats()
        col.close()
        if as_json:
            out.print_json(json.dumps(stats))
            return
        table = Table(show_header=False)
        for key in ("name", "path", "encoder", "dim", "items", "counts", "index", "created", "updated", "bytes"):
            value = stats.get(key)
            table.add_row(key, json.dumps(value) if isinstance(value, (dict, list)) else str(value))
        out.print(table)


@app.command()
def reindex(
    index_spec: Optional[str] = typer.Option(None, "--index", help="New index choice [default: the collection's, re-applied at its current size]."),
    target_recall: Optional[float] = typer.Option(None, "--target-recall", help="Recall@10 target for tuning."),
    memory: Optional[str] = typer.Option(None, "--memory", help="Memory budget, e.g. 4G."),
    home: Optional[Path] = HomeOpt,
    collection: str = CollectionOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Rebuild the FAISS index from the stored vectors (after growth, or to change the index type)."""
    from .engine import Collection
    from .index import parse_memory

    with _errors():
        col = Collection.open(_home(home), collection)
        col.rebuild_index(index_spec, target_recall, parse_memory(memory) if memory else None)
        spec = col.index.spec
        col.close()
        if as_json:
            out.print_json(json.dumps(spec.to_dict()))
        else:
            recall = "exact" if spec.recall is None else f"recall@10 {spec.recall:.3f}"
            err.print(f"{collection}: {spec.kind} index ({spec.factory}), {recall}, {len(col)} vectors", highlight=False)


@app.command()
def encoders(as_json: bool = JsonOpt) -> None:
    """List the encoder backends (prefixed names) you can pass to --encoder."""
    from .encoders import backends

    rows = [{"name": b.prefix if b.exact else f"{b.prefix}:...", "example": b.example, "description": b.description}
            for b in backends()]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table("name", "example", "description")
    for r in rows:
        table.add_row(r["name"], r["example"], r["description"])
    out.print(table)


@app.command()
def rm(
    paths: List[Path] = typer.Argument(..., help="Files or folders to drop from the collection."),
    home: Optional[Path] = HomeOpt,
    collection: str = CollectionOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Remove files (or everything under folders) from a collection; the files themselves are untouched."""
    from .engine import Collection

    with _errors():
        col = Collection.open(_home(home), collection)
        removed = col.remove([str(p) for p in paths])
        if not quiet:
            err.print(f"{removed} items removed; {len(col)} left")
        col.close()
        if removed == 0:
            raise BadInput(f"{', '.join(map(str, paths))}: not in collection '{collection}'")


@app.command()
def tag(
    labels: str = typer.Option(..., "--labels", help="Comma-separated labels, or a file with one label per line."),
    k: int = typer.Option(3, "-k", help="Tags per item."),
    template: Optional[str] = typer.Option(
        None, "--template", help='Prompt per label; default "a photo of a {}." (image), "the sound of {}." (audio).'),
    modality: str = typer.Option("image", "--modality", "-m", help="Which items to tag: image, audio or text."),
    home: Optional[Path] = HomeOpt,
    collection: str = CollectionOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Zero-shot tagging: store the k best labels of every image (or audio/text item) as tags (`query --tag`)."""
    from .engine import Collection

    with _errors():
        names = _labels(labels)
        col = Collection.open(_home(home), collection)
        tags = col.tag(names, k=k, template=template, modality=modality)
        col.close()
        for path, pairs in tags.items():
            if as_json:
                sys.stdout.write(json.dumps({"path": path, "tags": [{"tag": t, "score": round(s, 6)} for t, s in pairs]}) + "\n")
            else:
                out.print(f"{_short(path)}: " + ", ".join(f"{t} ({s:.2f})" for t, s in pairs), highlight=False)


def _labels(spec: str) -> list[str]:
    path = Path(spec)
    if path.is_file():
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    else:
        names = [part.strip() for part in spec.split(",")]
    names = [n for n in names if n]
    if not names:
        raise BadInput(f"--labels '{spec}': no labels")
    return names


def _register_extras() -> None:
    """Commands that live beside their feature (training); importing them is cheap (no torch at import time)."""
    from .train.command import register

    register(app)


_register_extras()


_skip_teardown = False  # set by a read-only command that closed everything: exit without interpreter teardown


def main() -> None:
    """Console entry point; after a finished `query`, skips Python's teardown of ~450 modules (~0.2 s of a cold query)."""
    try:
        app()
    except SystemExit as exc:
        if not _skip_teardown:
            raise
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1)


if __name__ == "__main__":  # pragma: no cover
    main()
