"""The `xsearch` command line (typer): calls only ``xsearch.engine`` (and config/errors). Every command goes through
one error funnel, the only place that turns errors into exit codes: 0 ok, 1 XSearchError (one line), 2 internal error
(one line; XSEARCH_DEBUG=1 re-raises it with its traceback), 130 interrupted, 141 (quietly) when the reader of stdout
went away (``| head``)."""
from __future__ import annotations

import functools
import json
import os
import sys
import warnings
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .config import DEFAULT_COLLECTION, default_home
from .errors import BadInput, XSearchError, XSearchWarning

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Cross-modal search: index images, text and audio into one vector space and query it.")
class _Out(Console):
    def on_broken_pipe(self) -> None:
        """A closed stdout pipe goes to the error funnel (quiet exit 141), as plain writes do."""
        self.quiet = True
        raise BrokenPipeError


out = _Out(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

RayOpt = typer.Option(None, "--ray", metavar="auto|ADDRESS",
                      help="Run on Ray: 'auto' (RAY_ADDRESS, a local `ray start`, else a new local Ray) or a cluster address.")
HomeOpt = typer.Option(None, "--home", envvar="XSEARCH_HOME", help="Folder holding collections [default: ./indexes].")
CollectionOpt = typer.Option(DEFAULT_COLLECTION, "--collection", "-c", help="Collection name inside the home folder.")
JsonOpt = typer.Option(False, "--json", help="Machine-readable JSON output.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bars or summaries.")
WaitOpt = typer.Option(False, "--wait", help="If another process is writing the collection, wait for it (default: "
                       "fail at once, naming it).")


@app.callback()
def _global_options(
    offline: bool = typer.Option(False, "--offline", help="Never download model weights (sets HF_HUB_OFFLINE=1); "
                                 "a model that is not cached fails at once, saying how to get it."),
) -> None:
    """Cross-modal search: index images, text and audio into one vector space and query it."""
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """xsearch warnings are one line on stderr; others keep Python's format."""
    if issubclass(category, XSearchWarning):
        err.print(f"[yellow]warning:[/yellow] {escape(str(message))}", highlight=False, markup=True)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


_python_showwarning = warnings.showwarning


def _say(line: str) -> None:
    err.print(line, highlight=False, markup=False)


@contextmanager
def _errors() -> Iterator[None]:
    """Turn library errors into a one-line message and an exit code."""
    warnings.showwarning = _show_warning
    try:
        yield
    except XSearchError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, markup=True)
        raise typer.Exit(exc.exit_code) from None
    except BrokenPipeError:  # the reader went away (`xsearch query ... --json | head -1`): stop quietly, like `ls`
        _detach_stdout()
        raise typer.Exit(141) from None
    except OSError as exc:  # the file system said no (read-only, permissions, full disk): one line naming the file
        where = f"{exc.filename}: " if exc.filename else ""
        err.print(f"[red]error:[/red] {escape(where + (exc.strerror or str(exc)))}", highlight=False, markup=True)
        raise typer.Exit(1) from None
    except typer.Exit:
        raise
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


def _detach_stdout() -> None:
    """Point stdout at /dev/null so that flushing it at exit does not fail a second time."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (tests' CliRunner)
        pass


def command(name: Optional[str] = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a command on ``app`` with its body inside the error funnel (typer reads the wrapped signature)."""
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def funnelled(*args: Any, **kwargs: Any) -> Any:
            with _errors():
                return fn(*args, **kwargs)

        app.command(name)(funnelled)
        return funnelled

    return register


def _home(home: Optional[Path]) -> Path:
    return Path(home) if home else default_home()


@contextmanager
def _progress(enabled: bool, label: str) -> Iterator[Optional[Callable[[int, int], None]]]:
    """A rich progress bar driven by the engine's (advance, total) callbacks; yields None when disabled."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if not enabled:
        yield None
        return
    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err,
                  transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield lambda advance, total: bar.update(task, advance=advance, total=total)


@command()
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
    ray: Optional[str] = RayOpt,
    wait: bool = WaitOpt,
    quiet: bool = QuietOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Index files/folders: new or changed files are embedded, deleted ones dropped; bad files are reported and skipped."""
    from .engine import Collection, parse_memory

    if not paths and captions is None:
        raise BadInput("nothing to index: give one or more PATHs (and/or --captions CSV)")
    for p in list(paths or []) + ([captions] if captions else []):
        if not p.exists():
            raise BadInput(f"{p}: no such file or folder")
    with Collection.open(_home(home), collection, encoder=encoder, create=True, index=index_spec,
                         target_recall=target_recall, memory_bytes=parse_memory(memory), wait=wait, say=_say) as col:
        with _progress(not (quiet or as_json), "embedding") as update:
            report = col.add([str(p) for p in paths or []], captions=captions, progress=update, workers=workers,
                             batch_size=batch_size, executor=f"ray:{ray}" if ray else "local")
        _print_report(col, report, quiet, as_json)


def _print_report(col, report, quiet: bool, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps({"collection": col.name, "items": len(col), **report.to_dict()}), ensure_ascii=True)
        return
    for _, reason in report.skipped:
        err.print(f"[yellow]skipped:[/yellow] {reason}", highlight=False)
    if not quiet:
        err.print(f"{col.name}: {report.added} added, {report.updated} updated, {report.unchanged} unchanged, "
                  f"{report.removed} removed, {report.captions} captions, {len(report.skipped)} skipped; "
                  f"{len(col)} items in {col.folder}", highlight=False)
    if report.outgrown and not quiet:
        err.print(f"note: the collection has outgrown its {col.index_spec.kind} index; run `xsearch reindex -c {col.name}`")


@command()
def query(
    text: Optional[str] = typer.Argument(None, help="Text query (text→image by default)."),
    image: Optional[Path] = typer.Option(None, "--image", help="Image query (image→image and image→text)."),
    audio: Optional[Path] = typer.Option(None, "--audio", help="Audio query."),
    file: Optional[Path] = typer.Option(None, "--file", help="Text file: one query per line; prints JSON Lines."),
    modality: Optional[str] = typer.Option(None, "--modality", "-m",
                                           help="What to return: image, text, audio, video or any."),
    k: int = typer.Option(10, "-k", "--top", help="Number of hits."),
    all_moments: bool = typer.Option(False, "--all-moments", help="Every matching moment of a video, not just its best."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Fused query weights, e.g. text=0.3,image=0.7."),
    under: Optional[List[Path]] = typer.Option(None, "--under", help="Only items under this path (repeatable)."),
    tag: Optional[List[str]] = typer.Option(None, "--tag", help="Only items with this tag (repeatable)."),
    since: Optional[datetime] = typer.Option(None, "--since", help="Only files modified at or after this time (ISO date)."),
    until: Optional[datetime] = typer.Option(None, "--until", help="Only files modified at or before this time (ISO date)."),
    taken_after: Optional[datetime] = typer.Option(None, "--taken-after", help="Only photos taken at or after this time (EXIF, ISO date)."),
    taken_before: Optional[datetime] = typer.Option(None, "--taken-before", help="Only photos taken at or before this time (EXIF, ISO date)."),
    camera: Optional[str] = typer.Option(None, "--camera", help="Only photos whose camera make or model contains this (any case)."),
    near: Optional[str] = typer.Option(None, "--near", help="Only photos within KM of a GPS point: LAT,LON,KM."),
    sort: str = typer.Option("score", "--sort", help="Order of the hits: score, or date (newest capture first)."),
    min_score: Optional[str] = typer.Option(None, "--min-score", help="Drop hits scoring below this; 'auto': the encoder's default (see `xsearch info`)."),
    encoder: Optional[str] = typer.Option(None, "--encoder", "-e", help="Must match the collection's encoder if given."),
    ray: Optional[str] = RayOpt,
    home: Optional[Path] = HomeOpt,
    collection: str = CollectionOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Search a collection with text, an image, audio, or a weighted mix of them."""
    from .engine import Collection, Filters, parse_near, parse_weights, serve_shards_on_ray

    if k < 1:
        raise BadInput(f"-k must be at least 1 (got {k})")
    filters = Filters(modalities=(modality,) if modality else None, under=tuple(under or ()), tags=tuple(tag or ()),
                      since=since, until=until, taken_after=taken_after, taken_before=taken_before, camera=camera,
                      near=parse_near(near), sort=sort, min_score=_min_score(min_score))
    if file is None and text is None and image is None and audio is None:
        raise BadInput("give a TEXT query, --image FILE, --audio FILE or --file QUERIES.txt")
    with Collection.open(_home(home), collection, encoder=encoder, read_only=True) as col:
        if ray:
            serve_shards_on_ray(col, ray)  # sharded: one Ray actor per shard; otherwise searched here as always
        if file is not None:
            _query_file(col, file, k, filters, all_moments)
            return
        hits = col.search(text=text, image=image, audio=audio, k=k, weights=parse_weights(weights, "--weights"),
                          filters=filters, all_moments=all_moments)
        _print_hits(hits, as_json)
    global _skip_teardown
    _skip_teardown = True


def _min_score(value: str | None) -> float | str | None:
    if value is None or value.strip().lower() == "auto":
        return value and "auto"
    try:
        return float(value)
    except ValueError:
        raise BadInput(f"--min-score '{value}': expected a number or 'auto'") from None


def _query_file(col, file: Path, k: int, filters, all_moments: bool = False) -> None:
    try:
        queries = [q.strip() for q in file.read_text(encoding="utf-8").splitlines() if q.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{file}: unreadable queries file ({exc})") from None
    if not queries:
        raise BadInput(f"{file}: no queries (one per line)")
    for q, hits in zip(queries, col.search_many(queries, k=k, filters=filters, all_moments=all_moments)):
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
        where = _short(h.path) + (f" @ {h.t:.1f}s" if h.t is not None else "")
        table.add_row(str(h.rank), f"{h.score:.3f}", h.modality, where, (h.text or "")[:80])
    out.print(table)


def _short(path: str) -> str:
    """``path`` relative to here when below it, printable (bytes that are not UTF-8 shown as \\xNN)."""
    from .engine import shown

    try:
        rel = os.path.relpath(path)
        return shown(rel if not rel.startswith("..") else path)
    except ValueError:
        return shown(path)


@command()
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
    from .engine import save_matrix, similarity_matrix

    result = similarity_matrix(rows, cols, _home(home), encoder)
    written = save_matrix(result, out_path, csv=csv, plot=plot)
    if not quiet:
        err.print(f"{result.values.shape[0]}x{result.values.shape[1]} matrix ({result.encoder}): "
                  + ", ".join(str(p) for p in written), highlight=False)


@command()
def info(
    home: Optional[Path] = HomeOpt,
    collection: str = CollectionOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Show a collection's encoder, index and counts."""
    from .engine import Collection

    with Collection.open(_home(home), collection, read_only=True) as col:
        stats = col.stats()
    if as_json:
        out.print_json(json.dumps(stats))
        return
    table = Table(show_header=False)
    for key in ("name", "path", "encoder", "encoder_fingerprint", "dim", "items", "counts", "index", "created",
                "updated", "bytes", "min_score_default"):
        value = stats.get(key)
        table.add_row(key, json.dumps(value) if isinstance(value, (dict, list)) else str(value))
    out.print(table)


@command()
def reindex(
    index_spec: Optional[str] = typer.Option(None, "--index", help="New index choice [default: the collection's, re-applied at its current size]."),
    target_recall: Optional[float] = typer.Option(None, "--target-recall", help="Recall@10 target for tuning."),
    memory: Optional[str] = typer.Option(None, "--memory", help="Memory budget, e.g. 4G."),
    reembed: bool = typer.Option(False, "--reembed", help="First re-embed every item from its file (captions from their "
                                 "text) with this xsearch's version of the encoder; keeps metadata and tags."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Image decode worker processes (with --reembed)."),
    shards: Optional[int] = typer.Option(None, "--shards", min=1, help="Split the index into N shards over disjoint id ranges (1: one index)."),
    ray: Optional[str] = RayOpt,
    home: Optional[Path] = HomeOpt,
    collection: str = CollectionOpt,
    wait: bool = WaitOpt,
    quiet: bool = QuietOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Rebuild the FAISS index from the stored vectors (after growth, or to change the index type); with --reembed,
    re-embed everything first (a collection built with an older version of its encoder)."""
    from .engine import Collection, parse_memory

    with Collection.open(_home(home), collection, wait=wait, say=_say) as col:
        result: dict = {}
        if reembed:
            with _progress(not (quiet or as_json), "re-embedding") as update:
                report = col.reembed(progress=update, workers=workers, index=index_spec, target_recall=target_recall,
                                     memory_bytes=parse_memory(memory))
            result["reembed"] = report.to_dict()
            for path, reason in report.dropped:
                err.print(f"[yellow]dropped:[/yellow] {escape(reason or path)}", highlight=False)
        else:
            col.rebuild_index(index_spec, target_recall, parse_memory(memory), shards, ray)
        spec, count = col.index_spec, len(col)
    if as_json:
        out.print_json(json.dumps({**spec.to_dict(), **result}), ensure_ascii=True)
        return
    if reembed and not quiet:
        r = result["reembed"]
        err.print(f"{collection}: re-embedded {r['reembedded']} items with {r['encoder']} "
                  f"{r['new_fingerprint'] or '(unversioned)'} ({r['resumed']} from an interrupted run), "
                  f"{r['removed']} removed", highlight=False)
    recall = "exact" if spec.recall is None else f"recall@10 {spec.recall:.3f}"
    sharded = f" in {spec.params['shards']} shards" if spec.params.get("shards", 1) > 1 else ""
    err.print(f"{collection}: {spec.kind} index ({spec.factory}){sharded}, {recall}, {count} vectors", highlight=False)


@command()
def encoders(as_json: bool = JsonOpt) -> None:
    """List the encoder backends (prefixed names) you can pass to --encoder."""
    from .engine import list_encoders

    rows = list_encoders()
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table("name", "example", "description")
    for r in rows:
        table.add_row(r["name"], r["example"], r["description"])
    out.print(table)


@command()
def rm(
    paths: List[Path] = typer.Argument(..., help="Files or folders to drop from the collection."),
    home: Optional[Path] = HomeOpt,
    collection: str = CollectionOpt,
    wait: bool = WaitOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Remove files (or everything under folders) from a collection; the files themselves are untouched."""
    from .engine import Collection

    with Collection.open(_home(home), collection, wait=wait, say=_say) as col:
        removed = col.remove([str(p) for p in paths])
        if not quiet:
            err.print(f"{removed} items removed; {len(col)} left")
    if removed == 0:
        raise BadInput(f"{', '.join(map(str, paths))}: not in collection '{collection}'")


@command()
def dupes(
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Vector cosine above which two photos are candidates [default: 0.80]."),
    max_hash: Optional[int] = typer.Option(None, "--max-hash", help="pHash Hamming distance (of 64 bits) that confirms a candidate [default: 14]."),
    under: Optional[List[Path]] = typer.Option(None, "--under", help="Only photos under this path (repeatable)."),
    home: Optional[Path] = HomeOpt,
    collection: str = CollectionOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Find duplicate photos (exact copies and near-duplicates) and suggest which to keep; never deletes anything."""
    from .engine import Collection

    with Collection.open(_home(home), collection, read_only=True) as col:
        groups = col.dupes(threshold=threshold, max_hash=max_hash, under=[str(p) for p in under or ()])
    if as_json:
        for g in groups:
            sys.stdout.write(json.dumps(g.to_dict()) + "\n")
        return
    if not groups:
        err.print("no duplicates")
        return
    for n, g in enumerate(groups, start=1):
        out.print(f"group {n} ({g.kind}, {len(g.members)} files, similarity >= {g.score:.3f})", highlight=False)
        for r in g.members:
            mark = "keep" if r is g.keeper else "    "
            size = f"{r.width}x{r.height}" if r.width else "?"
            out.print(f"  {mark} {size:>11} {r.taken.isoformat() if r.taken else '-':19} {_short(r.path)}",
                      highlight=False)
    err.print(f"{len(groups)} groups, {sum(len(g.members) - 1 for g in groups)} files could go (nothing was deleted)")


@command()
def tag(
    labels: str = typer.Option(..., "--labels", help="Comma-separated labels, or a file with one label per line."),
    k: int = typer.Option(3, "-k", help="Tags per item."),
    template: Optional[str] = typer.Option(
        None, "--template", help='Prompt per label; default "a photo of a {}." (image), "the sound of {}." (audio).'),
    modality: str = typer.Option("image", "--modality", "-m", help="Which items to tag: image, audio, text or video (by its key frames)."),
    home: Optional[Path] = HomeOpt,
    collection: str = CollectionOpt,
    wait: bool = WaitOpt,
    as_json: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Zero-shot tagging: store the k best labels of every image (or audio/text item) as tags (`query --tag`)."""
    from .engine import Collection

    names = _labels(labels)
    with Collection.open(_home(home), collection, wait=wait, say=_say) as col:
        tags = col.tag(names, k=k, template=template, modality=modality)
    for path, pairs in () if quiet and not as_json else tags.items():
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


METRIC_COLUMNS = ("R@1", "R@5", "R@10", "mean_rank")


@command()
def verify(
    repair: bool = typer.Option(False, "--repair", help="Rebuild what can be rebuilt (FAISS from SQLite, SQLite rows "
                                "by recovery, lost or NaN items by re-embedding their files); damaged files are kept "
                                "as *.damaged-<time>."),
    files: bool = typer.Option(False, "--files", help="Also check that every indexed file is still there, unchanged."),
    home: Optional[Path] = HomeOpt,
    collection: str = CollectionOpt,
    wait: bool = WaitOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Check a collection (SQLite integrity, FAISS file vs stored vectors, NaN vectors, versions; --files: the
    files); exit 1 with one line per problem. --repair fixes what can be fixed from the source of truth."""
    from .engine import verify_collection as run

    report = run(_home(home), collection, files=files, repair=repair, wait=wait, say=_say)
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict()) + "\n")
    else:
        for line in report.repaired:
            err.print(f"repaired: {escape(line)}", highlight=False)
        for line in report.notes:
            err.print(f"note: {escape(line)}", highlight=False)
        for line in report.problems:
            out.print(f"problem: {escape(line)}", highlight=False)
        if report.ok:
            counts = ", ".join(f"{v} {k}" for k, v in report.checked.items())
            err.print(f"{collection}: ok ({counts} checked)", highlight=False)
    if not report.ok:
        raise typer.Exit(1)


@command()
def serve(
    home: Optional[Path] = HomeOpt,
    collection: Optional[List[str]] = typer.Option(None, "--collection", "-c", help="Collection to serve (repeatable) [default: every collection in the home folder]."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; anything but loopback needs --token."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    token: Optional[str] = typer.Option(None, "--token", envvar="XSEARCH_TOKEN", help="Require 'Authorization: Bearer TOKEN' on /api."),
    ray: Optional[str] = RayOpt,
) -> None:
    """Serve the web page and the HTTP API (read-only) over the collections of a home folder."""
    from .server import serve as run

    run(_home(home), collection or None, host=host, port=port, token=token, say=lambda line: err.print(line, highlight=False),
        ray=ray)


@command("train")
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
    from .engine import train_encoder

    result = train_encoder(manifest, out, base=base, epochs=epochs, batch_size=batch_size, lr=lr,
                           val_fraction=val_fraction, seed=seed, hard_negatives=hard_negatives, patience=patience,
                           image_features=image_features, hidden=hidden,
                           train_sides="both" if text_adapter else "auto", cache_dir=str(cache) if cache else None,
                           quiet=quiet or as_json)
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), default=str) + "\n")
        return
    _print_training(result.to_dict())


def _print_training(res: dict[str, Any]) -> None:
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
