"""The FastAPI app: JSON routes under /api over the engine surface, the page at /, OpenAPI docs at /docs."""
from __future__ import annotations

import hmac
import json
import mimetypes
import os
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, List, Optional, Union

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from ..engine import TAG_TEMPLATES, Filters, clamp_time, parse_near, parse_weights
from ..errors import BadInput, MissingItem
from . import funnel
from .funnel import Forbidden, Unauthorized
from .state import Handle, Library
from .thumbs import ThumbCache
from .uploads import MAX_UPLOAD_BYTES, PayloadTooLarge, staged

STATIC = Path(__file__).parent / "static"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
MAX_K = 500
MAX_SET = 64  # entries per side of a similarity matrix, labels / items of a zero-shot request
CSP = ("default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; style-src 'self'; "
       "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


class AsciiJSON(JSONResponse):
    """JSON with non-ASCII escaped: a file name that is not valid UTF-8 (kept as surrogates) travels as ``\\udcXX``
    instead of failing the response."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


@dataclass
class Settings:
    """What one server process serves and how."""

    home: Path
    collections: list[str] | None
    token: str | None
    allowed_hosts: tuple[str, ...] | None  # None: any Host header (a token guards the server)
    thumb_cache_bytes: int


def create_app(home: str | os.PathLike[str], collections: list[str] | None = None, token: str | None = None,
               allowed_hosts: tuple[str, ...] | None = LOOPBACK_HOSTS, thumb_cache_bytes: int = 256 * 1024 * 1024,
               warm: bool = True, ray: str | None = None) -> FastAPI:
    """The app serving ``collections`` (default: all) of ``home`` read-only; ``token`` guards every /api route but
    /api/health. ``allowed_hosts`` (loopback names by default, ``None`` = any) stops DNS-rebinding pages from
    reading a loopback server. ``warm`` loads collections and encoders in a background thread at start. ``ray``
    (``auto`` or an address): sharded collections are searched by Ray shard actors."""
    settings = Settings(Path(home), list(collections) if collections else None, token,
                        None if token else allowed_hosts, thumb_cache_bytes)
    library = Library(settings.home, settings.collections, ray)
    thumbs = ThumbCache(settings.home / ".xsearch-cache" / "thumbs", thumb_cache_bytes)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if warm:
            threading.Thread(target=_warm, args=(library,), daemon=True, name="xsearch-warm").start()
        yield
        library.close()

    app = FastAPI(title="xsearch", version="1", lifespan=lifespan, default_response_class=AsciiJSON,
                  description="Cross-modal search over xsearch collections (read-only). Errors are "
                              '`{"error": "..."}` with the status of their kind (400, 401, 403, 404, 409, 413).')
    app.state.library, app.state.settings, app.state.thumbs = library, settings, thumbs
    funnel.install(app)
    _guards(app, settings)
    app.include_router(_api(library, thumbs, settings), prefix="/api")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"),
                            headers={"Cache-Control": "no-cache"})

    return app


def _warm(library: Library) -> None:
    try:
        library.warm()
    except Exception:  # noqa: BLE001 - readiness stays false; requests report the real error through the funnel
        funnel.log.exception("warm-up failed")


def _guards(app: FastAPI, settings: Settings) -> None:
    """Host check, request body limit and security headers, as one middleware."""

    @app.middleware("http")
    async def guard(request: Request, call_next):
        host = _host_name(request.headers.get("host") or "")
        if settings.allowed_hosts is not None and host not in settings.allowed_hosts:
            return JSONResponse({"error": f"Host '{host}' is not served here (use 127.0.0.1)"}, status_code=403)
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > MAX_UPLOAD_BYTES + 64 * 1024:
            return JSONResponse({"error": f"request body of {int(length):,} bytes is over the limit "
                                          f"({MAX_UPLOAD_BYTES:,})"}, status_code=413)
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        if request.url.path == "/" or request.url.path.startswith("/static"):
            response.headers.setdefault("Content-Security-Policy", CSP)
        return response


def _host_name(header: str) -> str:
    """The name part of a Host header (``[::1]:8000`` -> ``[::1]``, ``localhost:8000`` -> ``localhost``)."""
    if header.startswith("["):
        return header.split("]")[0] + "]"
    return header.rsplit(":", 1)[0]


# ---- request models ---------------------------------------------------------------------------------------------
@dataclass
class SearchArgs:
    collection: Optional[str]
    k: int
    min_score: Optional[float]
    filters: Filters
    all_moments: bool = False


def _when(value: Optional[str], name: str) -> Optional[datetime]:
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise BadInput(f"{name}={value!r}: expected an ISO date such as 2024-05-31") from None
    return clamp_time(when)


def search_args(
    collection: Optional[str] = Query(None, description="Collection name (default: the first served)."),
    k: int = Query(20, ge=1, le=MAX_K, description="Number of hits."),
    min_score: Optional[float] = Query(None, ge=-1, le=1, description="Drop hits scoring below this."),
    modality: Optional[List[str]] = Query(None, description="image, text, audio, video or any (repeatable)."),
    under: Optional[List[str]] = Query(None, description="Only items under this folder (repeatable)."),
    tag: Optional[List[str]] = Query(None, description="Only items with this tag (repeatable)."),
    since: Optional[str] = Query(None, description="Files modified at or after (ISO date)."),
    until: Optional[str] = Query(None, description="Files modified at or before (ISO date)."),
    taken_after: Optional[str] = Query(None, description="Photos taken at or after (EXIF, ISO date)."),
    taken_before: Optional[str] = Query(None, description="Photos taken at or before (EXIF, ISO date)."),
    camera: Optional[str] = Query(None, max_length=200, description="Camera make or model contains this (any case)."),
    near: Optional[str] = Query(None, description="Photos within KM of a GPS point: LAT,LON,KM."),
    sort: str = Query("score", description="score, or date (newest capture first)."),
    all_moments: bool = Query(False, description="Every matching moment of a video, not only its best."),
) -> SearchArgs:
    """The filters every search route takes, as the CLI spells them."""
    mods = [m for part in modality or [] for m in part.split(",") if m] or None
    filters = Filters(modalities=tuple(mods) if mods else None, under=tuple(under or ()), tags=tuple(tag or ()),
                      since=_when(since, "since"), until=_when(until, "until"),
                      taken_after=_when(taken_after, "taken_after"), taken_before=_when(taken_before, "taken_before"),
                      camera=camera, near=parse_near(near, "near"), sort=sort)
    return SearchArgs(collection, k, min_score, filters, all_moments)


class TagRequest(BaseModel):
    labels: List[str] = Field(..., min_length=1, max_length=200, description="Candidate labels.")
    ids: List[int] = Field(..., min_length=1, max_length=MAX_SET * 16, description="Item ids to tag.")
    k: int = Field(3, ge=1, le=50)
    template: Optional[str] = Field(None, description='Prompt per label; default by modality ("a photo of a {}.").')
    collection: Optional[str] = None


class SimilarityRequest(BaseModel):
    rows: List[Union[int, str]] = Field(..., min_length=1, max_length=MAX_SET,
                                        description="Texts (strings) or item ids (integers).")
    cols: List[Union[int, str]] = Field(..., min_length=1, max_length=MAX_SET)
    collection: Optional[str] = None


# ---- routes -------------------------------------------------------------------------------------------------------
def _api(library: Library, thumbs: ThumbCache, settings: Settings) -> APIRouter:
    def auth(request: Request) -> None:
        if settings.token is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else request.cookies.get("xsearch_token", "")
        if not hmac.compare_digest(token.encode(), settings.token.encode()):
            raise Unauthorized("missing or wrong token: send 'Authorization: Bearer <token>'")

    open_router = APIRouter()
    router = APIRouter(dependencies=[Depends(auth)])

    @open_router.get("/health", summary="Liveness: the process answers")
    def health() -> dict:
        return {"status": "ok"}

    @router.get("/ready", summary="Readiness: collections opened and encoders loaded (503 until then)")
    def ready() -> JSONResponse:
        ok = library.ready
        return JSONResponse({"ready": ok, "collections": library.names()}, status_code=200 if ok else 503)

    @router.get("/collections", summary="The collections served (for a collection switcher)")
    def collections() -> dict:
        out = []
        for name in library.names():
            stats = library.get(name).col.stats()
            out.append({"name": name, "items": stats["items"], "counts": stats["counts"], "encoder": stats["encoder"]})
        return {"default": library.default() if out else None, "collections": out}

    @router.get("/collections/{name}", summary="collection.json plus live counts and sizes")
    def collection_info(name: str) -> dict:
        return library.get(name).col.stats()

    @router.get("/collections/{name}/facets", summary="Folders, tags, counts and date range, for filters")
    def facets(name: str) -> dict:
        return library.get(name).facets()

    @router.get("/search", summary="Text search (text → image and audio by default)")
    def search(q: str = Query(..., min_length=1, max_length=2000, description="The text query."),
               args: SearchArgs = Depends(search_args)) -> dict:
        return _search(library.get(args.collection), args, dict(text=q), {"text": q})

    @router.post("/search", summary="Search by uploaded image and/or audio, optionally fused with text")
    def search_upload(image: Optional[UploadFile] = File(None, description="Image query (sniffed, not by name)."),
                      audio: Optional[UploadFile] = File(None, description="Audio query (sniffed, not by name)."),
                      q: Optional[str] = Form(None, max_length=2000, description="Optional text to fuse."),
                      weights: Optional[str] = Form(None, description="e.g. text=0.3,image=0.7"),
                      args: SearchArgs = Depends(search_args)) -> dict:
        files = {kind: (f.filename or kind, _read(f)) for kind, f in (("image", image), ("audio", audio)) if f}
        if not files and not q:
            raise BadInput("POST /api/search needs an image or audio file (multipart), and/or q")
        handle = library.get(args.collection)
        with staged(files) as paths:
            query = dict(text=q or None, weights=parse_weights(weights), **paths)
            shown = {"text": q, "image": files.get("image", (None,))[0], "audio": files.get("audio", (None,))[0]}
            return _search(handle, args, query, {k: v for k, v in shown.items() if v})

    @router.get("/items/{item_id}", summary="An item's metadata and tags")
    def item(item_id: int, collection: Optional[str] = None) -> dict:
        handle = library.get(collection)
        return _item_json(handle, item_id)

    @router.get("/items/{item_id}/similar", summary='"More like this": nearest items to a stored item')
    def similar(item_id: int, args: SearchArgs = Depends(search_args)) -> dict:
        handle = library.get(args.collection)
        start = time.perf_counter()
        hits = handle.col.similar(item_id, k=args.k, filters=args.filters)
        return _hits_json(handle, hits, args, {"item": item_id}, start)

    @router.get("/items/{item_id}/thumbnail", summary="JPEG thumbnail of an image (or a caption's image)",
                response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
    def thumbnail(item_id: int, size: int = Query(320, ge=16, le=2048), collection: Optional[str] = None) -> Response:
        handle = library.get(collection)
        row = handle.col.item(item_id)
        if row.modality != "image" and row.parent_id is None:
            raise MissingItem(f"item {item_id} is {row.modality}: it has no thumbnail")
        path = _served_file(handle, item_id)
        version = (row.sha256 or str(row.mtime_ns or 0))[:16]
        opener = ((lambda: handle.col.moment_frame(item_id)) if row.modality == "video"
                  else (lambda: handle.col.image_of(item_id, size)))  # HEIC, RAW, 16-bit decode as for embedding
        data = thumbs.get(handle.name, item_id, version, str(path), size, opener)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})

    @router.get("/items/{item_id}/file", summary="The original file (images, audio with Range support, texts)",
                response_class=FileResponse)
    def original(item_id: int, collection: Optional[str] = None) -> FileResponse:
        handle = library.get(collection)
        path = _served_file(handle, item_id)
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if media.startswith("text/"):
            media += "; charset=utf-8"
        return FileResponse(path, media_type=media, content_disposition_type="inline", filename=path.name,
                            headers={"Content-Security-Policy": "sandbox; default-src 'none'",
                                     "Cache-Control": "private, max-age=3600"})

    @router.post("/tags", summary="Zero-shot tags of items against labels (computed, not stored)")
    def tags(req: TagRequest) -> dict:
        handle = library.get(req.collection)
        rows = [handle.col.item(i) for i in req.ids]
        vecs = handle.col.vectors([r.id for r in rows])
        out = []
        for row, vec in zip(rows, vecs):
            template = req.template or TAG_TEMPLATES.get(row.modality, "{}")
            if "{}" not in template:
                raise BadInput(f"template '{template}' needs a {{}} for the label")
            labels = _text_vectors(handle, [template.format(lab) for lab in req.labels])
            scores = labels @ vec
            top = np.argsort(-scores)[: req.k]
            out.append({"id": row.id, "path": row.path,
                        "tags": [{"tag": req.labels[j], "score": round(float(scores[j]), 6)} for j in top]})
        return {"items": out}

    @router.post("/similarity", summary="Cosine similarity matrix of two small sets (texts or item ids)")
    def similarity(req: SimilarityRequest) -> dict:
        handle = library.get(req.collection)
        rows, row_labels = _entries(handle, req.rows)
        cols, col_labels = _entries(handle, req.cols)
        matrix = handle.col.similarity(list(rows), list(cols))
        return {"rows": row_labels, "cols": col_labels, "matrix": np.round(np.asarray(matrix, np.float64), 6).tolist()}

    api = APIRouter()
    api.include_router(open_router)
    api.include_router(router)
    return api


# ---- helpers ------------------------------------------------------------------------------------------------------
def _read(upload: UploadFile) -> bytes:
    """The upload's bytes, refusing anything over the limit without reading it all."""
    data = upload.file.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise PayloadTooLarge(f"upload '{upload.filename}': over the limit ({MAX_UPLOAD_BYTES:,} bytes)")
    return data


def _search(handle: Handle, args: SearchArgs, query: dict[str, Any], shown: dict) -> dict:
    start = time.perf_counter()
    hits = handle.col.search(k=args.k, filters=args.filters, all_moments=args.all_moments, **query)
    return _hits_json(handle, hits, args, shown, start)


def _hits_json(handle: Handle, hits: list, args: SearchArgs, shown: dict, start: float) -> dict:
    """The response of every search route: hits as ``xsearch query --json`` prints them, plus ``id``."""
    if args.min_score is not None:
        hits = [h for h in hits if round(h.score, 6) >= args.min_score]  # as the client sees the score
    return {"collection": handle.name, "query": shown, "filters": args.filters.to_dict(),
            "took_ms": round((time.perf_counter() - start) * 1000, 2),
            "hits": [h.to_dict(with_id=True) for h in hits]}


def _served_file(handle: Handle, item_id: int) -> Path:
    """The item's file, only if it is still the regular file that was indexed: a path that now resolves elsewhere
    (a symlink swapped in, a moved parent folder) is refused (403), a missing one is 404."""
    path = handle.col.file_of(item_id)
    real = Path(os.path.realpath(path))
    if real != Path(os.path.normpath(path)) or not real.is_file():
        raise Forbidden(f"item {item_id}: {path} now points outside what was indexed; not served")
    return real


def _item_json(handle: Handle, item_id: int) -> dict:
    row = handle.col.item(item_id)
    tags = handle.col.tags_of([row.id]).get(row.id, [])
    has_thumb = row.modality == "image" or row.parent_id is not None
    return {"id": row.id, "path": row.path, "name": Path(row.path).name, "folder": str(Path(row.path).parent),
            "modality": row.modality, "text": row.text, "size": row.size,
            "mtime": datetime.fromtimestamp(row.mtime_ns / 1e9).isoformat(timespec="seconds") if row.mtime_ns else None,
            "width": row.width, "height": row.height, "duration": row.duration, "sample_rate": row.sample_rate,
            "parent_id": row.parent_id, "t": row.t, "tags": [{"tag": t, "score": round(s, 6)} for t, s in tags],
            "file_url": f"/api/items/{row.id}/file?collection={handle.name}",
            "thumbnail_url": f"/api/items/{row.id}/thumbnail?collection={handle.name}" if has_thumb else None}


def _text_vectors(handle: Handle, texts: list[str]) -> np.ndarray:
    """Text embeddings (always as text: a string is never read as a server-side file path)."""
    return np.stack([handle.col.embed(text=t) for t in texts])


def _entries(handle: Handle, entries: list[Union[int, str]]) -> tuple[np.ndarray, list[str]]:
    """Vectors and labels of a mixed list of texts and item ids."""
    ids = [e for e in entries if isinstance(e, int)]
    stored = dict(zip(ids, handle.col.vectors([handle.col.item(i).id for i in ids]))) if ids else {}
    texts = [e for e in entries if isinstance(e, str)]
    embedded = dict(zip(texts, _text_vectors(handle, texts))) if texts else {}
    vecs = np.stack([stored[e] if isinstance(e, int) else embedded[e] for e in entries])
    labels = [f"#{e} {Path(handle.col.item(e).path).name}" if isinstance(e, int) else e for e in entries]
    return vecs, labels
