"""The FastAPI app of ``mess serve``: routes over :mod:`messai.serve.queries`, audio with byte
ranges, the static listening page, and the guard every request passes (bearer token, body
limit, one log line, errors as one-line JSON and never a stack trace).

Routes (JSON unless said otherwise; ``dataset`` may be left out when one dataset is served):

- ``GET /v1/health`` — no token needed
- ``GET /v1/datasets``
- ``GET /v1/tracks?dataset=&q=&limit=&cursor=`` — search ids and label values, paged
- ``GET /v1/tracks/{id}?dataset=`` — labels, duration, status, audio
- ``GET /v1/tracks/{id}/audio?dataset=`` — the source file, ``Range`` aware (206/416)
- ``GET /v1/tracks/{id}/similar?dataset=&aspect=&space=&layer=&k=&where=&max_per=&explain=&cursor=``
- ``POST /v1/recommend`` — ``{"positive": [...], "negative": [...], ...}``
- ``GET /v1/aspects?dataset=``, ``GET /v1/probe?dataset=``, ``GET /v1/probe/heatmap.{png,svg}``
- ``GET /openapi.json``; ``GET /`` the listening page, ``/static/*`` its files.

Track ids may contain ``/``: send them percent-encoded (``%2F``) or as they are.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from importlib import resources
from typing import Any

from fastapi import Body, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from messai.errors import (
    ConfigError,
    DatasetError,
    MessError,
    SearchIndexError,
    StoreError,
    TrackNotFoundError,
)
from messai.serve import queries
from messai.serve.audio import (
    AudioNotFound,
    AudioUnplayable,
    RangeNotSatisfiable,
    audio_file,
    parse_range,
    read_chunks,
)
from messai.serve.live import DatasetNotServed, Registry, ServeConfig

log = logging.getLogger("messai.serve")

#: ranges up to this many bytes are read at once, larger ones streamed in chunks
SMALL_RANGE = 1024 * 1024
#: largest request body accepted (bytes)
MAX_BODY = 64 * 1024
#: the cookie the listening page keeps the token in (for <audio src>, which sends no headers)
TOKEN_COOKIE = "mess_token"
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data:; media-src 'self'; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'"
)


class _TooLarge(Exception):
    pass


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(
        queries.json_ready(obj), ensure_ascii=False, separators=(",", ":"), allow_nan=False
    ).encode("utf-8")


class MessJSON(JSONResponse):
    """JSON with NaN/inf as null (like the CLI's JSON)."""

    def render(self, content: Any) -> bytes:
        return _json_bytes(content)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        _json_bytes({"error": message, "status": status}),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def _status_of(exc: MessError) -> int:
    if isinstance(exc, AudioUnplayable):
        return 415
    if isinstance(exc, TrackNotFoundError | AudioNotFound | DatasetNotServed):
        return 404
    if isinstance(exc, ConfigError | DatasetError):
        return 400
    if isinstance(exc, SearchIndexError | StoreError):
        return 503  # a store or index needs the operator (message says what to run)
    return 400


class Guard:
    """Pure ASGI middleware: token on ``/v1/*`` (health exempt), body size limit, one log line
    per request (method, path, status, milliseconds)."""

    def __init__(self, app, *, token: str | None):
        self.app = app
        self.token = token.encode("utf-8") if token else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = {"code": 500}
        method, path = scope.get("method", "?"), scope.get("path", "?")

        async def send_status(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
            guarded = path.startswith("/v1/") and path != "/v1/health"
            if self.token is not None and guarded and not self._authorised(headers):
                await _error(
                    401,
                    "missing or wrong bearer token (Authorization: Bearer TOKEN)",
                    {"WWW-Authenticate": "Bearer"},
                )(scope, receive, send_status)
                return
            length = headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
                await _error(413, f"request body over {MAX_BODY} bytes")(
                    scope, receive, send_status
                )
                return
            seen = 0

            async def bounded_receive():
                nonlocal seen
                message = await receive()
                if message["type"] == "http.request":
                    seen += len(message.get("body", b""))
                    if seen > MAX_BODY:
                        raise _TooLarge
                return message

            try:
                await self.app(scope, bounded_receive, send_status)
            except _TooLarge:
                await _error(413, f"request body over {MAX_BODY} bytes")(
                    scope, receive, send_status
                )
        finally:
            ms = (time.perf_counter() - t0) * 1000
            log.info("%s %s %d %.1fms", method, path, status["code"], ms)

    def _authorised(self, headers: dict[str, bytes]) -> bool:
        assert self.token is not None
        given = b""
        auth = headers.get("authorization", b"")
        if auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        elif "cookie" in headers:
            from http.cookies import SimpleCookie

            jar = SimpleCookie()
            try:
                jar.load(headers["cookie"].decode("latin-1"))
            except Exception:  # a malformed cookie header is just "no token"
                jar = SimpleCookie()
            if TOKEN_COOKIE in jar:
                from urllib.parse import unquote

                given = unquote(jar[TOKEN_COOKIE].value).encode("utf-8", "replace")
        return hmac.compare_digest(given, self.token)


def create_app(config: ServeConfig) -> FastAPI:
    """The app for ``config`` (which datasets, token, CORS, index kind)."""
    from messai import __version__

    registry = Registry(config)
    app = FastAPI(
        title="mess",
        version=__version__,
        description="Music similarity by aspect over MERT features: the library's query path over HTTP.",
        docs_url=None,  # FastAPI's docs pages load their scripts from a CDN: off (offline tool)
        redoc_url=None,
        default_response_class=MessJSON,
    )
    app.state.registry = registry

    # ---------------------------------------------------------------- errors
    @app.exception_handler(MessError)
    async def mess_error(request: Request, exc: MessError):
        headers = None
        if isinstance(exc, RangeNotSatisfiable):
            headers = {"Content-Range": f"bytes */{exc.size}", "Accept-Ranges": "bytes"}
            return _error(416, str(exc), headers)
        status = _status_of(exc)
        if status == 503:
            log.warning("%s %s: %s", request.method, request.url.path, exc)
        return _error(status, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "body"))
        msg = first.get("msg", "invalid request")
        return _error(400, f"{where}: {msg}" if where else msg)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        text = exc.detail if isinstance(exc.detail, str) else "error"
        return _error(exc.status_code, text, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return _error(500, "internal error (the server log has the details)")

    # ---------------------------------------------------------------- helpers
    def snap(dataset: str | None):
        return registry.get(dataset).snapshot()

    def audio_url(request: Request, dataset: str, track_id: str) -> str:
        from urllib.parse import quote

        return f"/v1/tracks/{quote(track_id, safe='')}/audio?dataset={quote(dataset, safe='')}"

    # ---------------------------------------------------------------- routes
    @app.get("/v1/health")
    def health() -> MessJSON:
        """Liveness (no token needed)."""
        return MessJSON({"status": "ok", "version": __version__})

    @app.get("/v1/datasets")
    def datasets() -> MessJSON:
        """The served datasets: model, tracks, layers, dimension, index kind."""
        rows = []
        for name in registry.names():
            try:
                s = registry.get(name).snapshot()
                store = s.store
                rows.append(
                    {
                        "dataset": name,
                        "model": store.model_id,
                        "n_tracks": len(s.recommender("auto").tracks),
                        "n_layers": store.n_layers,
                        "dim": store.dim,
                        "normalize": config.normalize,
                        "kind": config.kind,
                        "has_audio": store.source_root is not None,
                    }
                )
            except MessError as exc:
                rows.append({"dataset": name, "error": str(exc).splitlines()[0]})
        return MessJSON({"datasets": rows})

    @app.get("/v1/tracks")
    def tracks(
        dataset: str | None = None,
        q: str | None = Query(None, max_length=queries.MAX_TEXT),
        limit: int = Query(50, ge=1, le=queries.MAX_K),
        cursor: str | None = Query(None, max_length=200),
    ) -> MessJSON:
        """Stored tracks whose id or a label value contains ``q``, sorted by id, paged."""
        return MessJSON(queries.tracks_page(snap(dataset), q=q, cursor=cursor, limit=limit))

    @app.head("/v1/tracks/{track_id:path}/audio", include_in_schema=False)
    @app.get("/v1/tracks/{track_id:path}/audio")
    def audio(track_id: str, request: Request, dataset: str | None = None):
        """The track's source file; honours ``Range: bytes=...`` (206, or 416 outside it)."""
        s = snap(dataset)
        f = audio_file(s.store, track_id)
        common = {
            "Accept-Ranges": "bytes",
            "Cache-Control": "no-cache",
            "ETag": f'"{f.size:x}-{f.mtime_ns:x}"',
        }
        rng = parse_range(request.headers.get("range"), f.size)
        if rng is None:
            start, end, status = 0, f.size - 1, 200
        else:
            (start, end), status = rng, 206
            common["Content-Range"] = f"bytes {start}-{end}/{f.size}"
        common["Content-Length"] = str(max(0, end - start + 1))
        if request.method == "HEAD" or f.size == 0:
            return Response(status_code=status, headers=common, media_type=f.content_type)
        if end - start < SMALL_RANGE:  # one read here: no thread hop per chunk
            data = b"".join(read_chunks(f.path, start, end))
            common["Content-Length"] = str(len(data))
            return Response(data, status_code=status, headers=common, media_type=f.content_type)
        return StreamingResponse(
            read_chunks(f.path, start, end),
            status_code=status,
            headers=common,
            media_type=f.content_type,
        )

    @app.get("/v1/tracks/{track_id:path}/similar")
    def similar(
        track_id: str,
        dataset: str | None = None,
        aspect: list[str] = Query(["spectral_brightness"], max_length=8),
        space: str = "auto",
        layer: int | None = Query(None, ge=0, le=1000),
        k: int = Query(10, ge=1, le=queries.MAX_K),
        where: str | None = Query(None, max_length=queries.MAX_TEXT),
        max_per: str | None = Query(None, max_length=200, description="LABEL:N"),
        explain: bool = False,
        cursor: str | None = Query(None, max_length=200),
    ) -> MessJSON:
        """The nearest tracks for an aspect (``aspect`` repeated or ``NAME:WEIGHT`` for a mix):
        ``mess recommend --format json``'s answer, with ``next_cursor`` for more."""
        answer = queries.similar(
            snap(dataset),
            track_id,
            aspects=aspect,
            space=space,
            layer=layer,
            k=k,
            where=where,
            max_per=queries.parse_max_per(max_per),
            explain=explain,
            cursor=cursor,
        )
        return MessJSON(answer)

    @app.get("/v1/tracks/{track_id:path}")
    def track(track_id: str, dataset: str | None = None) -> MessJSON:
        """One stored track: labels, duration, status, audio."""
        s = snap(dataset)
        return MessJSON(
            queries.track_info(s, track_id, audio_url=audio_url(None, s.dataset, track_id))
        )

    @app.post("/v1/recommend")
    def recommend(body: Any = Body(...)) -> MessJSON:
        """Playlist shaping: ``{"positive": [ids], "negative": [ids], "aspect": [..], "k": 10,
        "space", "layer", "where", "max_per": "LABEL:N", "explain", "cursor", "dataset"}``."""
        req = _RecommendBody.parse(body)
        answer = queries.examples(
            snap(req["dataset"]),
            req["positive"],
            req["negative"],
            aspects=req["aspect"],
            space=req["space"],
            layer=req["layer"],
            k=req["k"],
            where=req["where"],
            max_per=queries.parse_max_per(req["max_per"]),
            explain=req["explain"],
            cursor=req["cursor"],
        )
        return MessJSON(answer)

    @app.get("/v1/aspects")
    def aspects(dataset: str | None = None) -> MessJSON:
        """Aspect → layer with held-out evidence and validation; fitted aspect spaces."""
        return MessJSON(queries.aspects(snap(dataset)))

    @app.get("/v1/probe")
    def probe(dataset: str | None = None) -> MessJSON:
        """The saved probe results and each target's validation."""
        return MessJSON(queries.probe(snap(dataset)))

    @app.get("/v1/probe/heatmap.{fmt}")
    def heatmap(fmt: str, dataset: str | None = None) -> Response:
        """The probe heat-map (R² and selectivity by layer × target) as PNG or SVG."""
        data = queries.heatmap(snap(dataset), fmt)
        return Response(data, media_type="image/png" if fmt == "png" else "image/svg+xml")

    # ---------------------------------------------------------------- the page
    static = resources.files("messai.serve") / "static"

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        html = (static / "index.html").read_bytes()
        return Response(
            html,
            media_type="text/html; charset=utf-8",
            headers={"Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff"},
        )

    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    app.add_middleware(Guard, token=config.token)
    if config.cors:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Range"],
            expose_headers=["Content-Range", "Accept-Ranges", "Content-Length"],
        )
    return app


class _RecommendBody:
    FIELDS: frozenset[str] = frozenset(
        {
            "dataset",
            "positive",
            "negative",
            "aspect",
            "space",
            "layer",
            "k",
            "where",
            "max_per",
            "explain",
            "cursor",
        }
    )

    @classmethod
    def parse(cls, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ConfigError("the body must be a JSON object")
        unknown = sorted(set(body) - cls.FIELDS)
        if unknown:
            raise ConfigError(
                f"unknown field {unknown[0]!r}; known: {', '.join(sorted(cls.FIELDS))}"
            )

        def ids(name: str) -> list[str]:
            v = body.get(name, [])
            if isinstance(v, str):
                v = [v]
            if not isinstance(v, list) or not all(isinstance(t, str) for t in v):
                raise ConfigError(f"{name} must be a list of track ids")
            return v

        aspect = body.get("aspect", ["spectral_brightness"])
        if isinstance(aspect, str):
            aspect = [aspect]
        if (
            not isinstance(aspect, list)
            or not all(isinstance(a, str) for a in aspect)
            or len(aspect) > 8
        ):
            raise ConfigError("aspect must be a name or a list of at most 8 NAME[:WEIGHT]")

        def opt(name: str, typ, default=None):
            v = body.get(name, default)
            if v is not None and (not isinstance(v, typ) or (isinstance(v, bool) and typ is int)):
                raise ConfigError(f"{name} must be {typ.__name__}")
            return v

        return {
            "dataset": opt("dataset", str),
            "positive": ids("positive"),
            "negative": ids("negative"),
            "aspect": aspect,
            "space": opt("space", str, "auto"),
            "layer": opt("layer", int),
            "k": opt("k", int, 10),
            "where": opt("where", str),
            "max_per": opt("max_per", str),
            "explain": bool(opt("explain", bool, False)),
            "cursor": opt("cursor", str),
        }


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine."""
    import ipaddress

    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def run(config: ServeConfig, *, host: str = "127.0.0.1", port: int = 8750) -> None:
    """Serve ``config`` with uvicorn until interrupted (one process, one event loop)."""
    import uvicorn

    if not is_loopback(host) and not config.token:
        raise ConfigError(
            f"refusing to serve on {host} without a token: pass --token or set MESS_TOKEN (or bind 127.0.0.1)"
        )
    _single_threaded_faiss()
    uvicorn.run(
        create_app(config),
        host=host,
        port=port,
        access_log=False,  # Guard logs one line per request
        log_level="warning",
        server_header=False,
    )


def _single_threaded_faiss() -> None:
    """Requests are the parallelism: FAISS's own OpenMP threads per query would oversubscribe
    the cores (a flat search of one query gains nothing from them)."""
    try:
        import faiss

        faiss.omp_set_num_threads(1)
    except (ImportError, AttributeError):
        pass
