"""`alexlabel review`: a local web app where people confirm or correct labels, one image at a time.

Starlette on uvicorn, bound to loopback unless --host says otherwise. A random token in the printed URL is
required on every request. Images are served only for the uris of the queue (read through fsspec, so
gs:// works), and every decision goes to the reviews table through a ReviewLog. The page itself
(review.html) has no external assets and puts data into the page as text only, never as markup.
"""
import asyncio
import hmac
import multiprocessing
import secrets
import socket
import threading
from concurrent.futures import ProcessPoolExecutor
from importlib.resources import files

import duckdb
import fsspec
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from common.errors import UserError, first_line
from common.storage import read_bytes
from output_tools import informative, query
from output_tools.reviews import ACTIONS, ReviewLog, review_row
from schemas.images import jpeg_preview, open_image
from schemas.views import latest_checkpoint, one_version

# Which labels rows a queue holds; those a person already decided on (the `reviewed` view) are left out,
# except in `disagreements`: rows where people did not confirm the model, for a second look.
QUEUES = {"review": "FROM analyzed a ANTI JOIN reviewed USING (uri, model_version) WHERE a.decision = 'review'",
          "all": "FROM analyzed a ANTI JOIN reviewed USING (uri, model_version)",
          "disagreements": "FROM analyzed a SEMI JOIN (SELECT uri, model_version FROM reviewed "
                           "WHERE action <> 'confirm') USING (uri, model_version)"}
ITEM_COLUMNS = "pos, uri, content_sha256, model_version, label, confidence, margin, decision, topk_labels, " \
               "topk_confidences"
BROWSER_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp"}
SHOWN_PX = 2048  # other formats, and images larger than this, are sent as a JPEG this size at most


class ReviewError(UserError):
    """A review that cannot start: no labels, an unknown model version, no class list, a port in use."""


class Queue:
    """The rows to review, in order, held in a DuckDB temp table: opening it is one query, however many
    label rows the output holds (the informative order then reorders the first POOL_CAP rows in numpy), and
    each page of items or image check is a lookup."""

    def __init__(self, output: str, model: str | None, kind: str, order: str):
        self.con = query.connect(output, model)
        self.model_version, self._lock = one_version(self.con, output), threading.Lock()
        if self.model_version is None:
            raise ReviewError(f"{output} has no label rows to review; run `alexlabel label --output {output}` first")
        self.con.execute(f"""CREATE TEMP TABLE queue AS
                             SELECT row_number() OVER (ORDER BY {query.REVIEW_ORDER[order]}) - 1 AS pos, *
                             {QUEUES[kind]} ORDER BY pos""")  # stored in order: a page is a zone-map lookup
        if order == "informative":  # the app has no batch: the whole pool, each next row the most unlike those before
            informative.reorder(self.con, "queue", informative.POOL_CAP, informative.POOL_CAP)
        self.size = self.sql("SELECT count(*) FROM queue")[0][0]

    def sql(self, sql: str, params: list | None = None) -> list[tuple]:
        with self._lock:  # one connection, called from the server's threads
            return self.con.execute(sql, params or []).fetchall()

    def items(self, start: int, count: int) -> list[dict]:
        rows = self.sql(f"SELECT {ITEM_COLUMNS} FROM queue WHERE pos >= $1 AND pos < $2 ORDER BY pos",
                        [start, start + count])
        return [dict(zip(ITEM_COLUMNS.split(", "), row, strict=True)) for row in rows]

    def item(self, pos: int) -> dict | None:
        found = self.items(pos, 1)
        return found[0] if found else None

    def has(self, uri: str) -> bool:
        return bool(self.sql("SELECT 1 FROM queue WHERE uri = $1 LIMIT 1", [uri]))

    def checkpoint(self) -> str | None:
        with self._lock:
            return latest_checkpoint(self.con, self.model_version)


def class_names(checkpoint: str) -> list[str]:
    from schemas.checkpoint import load_checkpoint  # torch: seconds of importing, kept out of the app's process

    return load_checkpoint(checkpoint)[1].class_names


class Classes:
    """The checkpoint's whole class list, for the type-ahead. It needs torch and the weights file, so another
    process loads it: the queue opens at once, and the app answers at full speed meanwhile."""

    def __init__(self, checkpoint: str):
        self.checkpoint, self.names, self.error = checkpoint, None, None
        threading.Thread(target=self._load, daemon=True).start()

    def _load(self) -> None:
        try:
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                self.names = pool.submit(class_names, self.checkpoint).result()
        except Exception as e:  # shown in the app: 1-9, Enter and x still work without the list
            self.error = f"class list unavailable ({first_line(e)}); restart with --checkpoint MODEL.pt"


def find_checkpoint(queue: Queue, given: str | None) -> str:
    checkpoint = given or queue.checkpoint()
    if not checkpoint:
        raise ReviewError(f"no run names the checkpoint of model version {queue.model_version}, which holds the "
                          "class list; pass --checkpoint MODEL.pt")
    fs, path = fsspec.core.url_to_fs(checkpoint)
    if not fs.exists(path):
        raise ReviewError(f"checkpoint {checkpoint} (the class list of model version {queue.model_version}) does "
                          "not exist; pass --checkpoint MODEL.pt")
    return checkpoint


def shown_image(data: bytes) -> tuple[bytes, str]:
    """The bytes a browser shows: the file itself when it can, else a JPEG of it at most SHOWN_PX wide (with the
    labeling path's bomb check, and its EXIF orientation)."""
    header = open_image(data)
    if header.format in BROWSER_FORMATS and max(header.size) <= SHOWN_PX:
        return data, BROWSER_FORMATS[header.format]
    return jpeg_preview(data, SHOWN_PX, quality=90), "image/jpeg"


class ReviewApp:
    """The app's state (queue, class list, this session's log) and its routes."""

    def __init__(self, queue: Queue, classes: Classes, log: ReviewLog, reviewer: str, token: str):
        self.queue, self.classes, self.log, self.reviewer, self.token = queue, classes, log, reviewer, token
        self.positions: list[int] = []  # queue positions of this session's decisions, for undo
        self.seen: dict[int, dict] = {}  # items the page has fetched, by position: a decision needs no query
        self.page = files("output_tools").joinpath("review.html").read_text()

    def starlette(self) -> Starlette:
        app = Starlette(routes=[Route("/", self.index), Route("/api/state", self.state),
                                Route("/api/items", self.items), Route("/image", self.image),
                                Route("/api/decide", self.decide, methods=["POST"]),
                                Route("/api/undo", self.undo, methods=["POST"])])
        app.add_middleware(TokenGate, token=self.token)
        return app

    async def index(self, request: Request) -> Response:
        nonce = secrets.token_urlsafe(12)
        return HTMLResponse(self.page.replace("{{nonce}}", nonce), headers={
            "Content-Security-Policy": f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
                                       "img-src 'self'; connect-src 'self'; frame-ancestors 'none'; "
                                       "base-uri 'none'; form-action 'none'", "Cache-Control": "no-store"})

    async def state(self, request: Request) -> Response:
        return JSONResponse({"queue": self.queue.size, "model_version": self.queue.model_version,
                             "reviewer": self.reviewer, "session": self.log.session_id,
                             "decided": len(self.positions), "classes": self.classes.names,
                             "classes_error": self.classes.error,
                             "saving_error": self.log.error and first_line(self.log.error)})

    async def items(self, request: Request) -> Response:
        try:
            start, count = int(request.query_params.get("start", 0)), int(request.query_params.get("count", 20))
        except ValueError:
            return JSONResponse({"error": "start and count are numbers"}, status_code=400)
        items = await run_in_threadpool(self.queue.items, max(0, start), min(max(0, count), 200))
        self.seen.update((item["pos"], item) for item in items)
        while len(self.seen) > 2000:  # the page's neighbourhood is enough
            del self.seen[next(iter(self.seen))]
        return JSONResponse(items)

    async def image(self, request: Request) -> Response:
        uri = request.query_params.get("uri", "")
        if not await run_in_threadpool(self.queue.has, uri):  # nothing but the queue's own images is reachable
            return JSONResponse({"error": "not an image of this review queue"}, status_code=403)
        try:
            data, media_type = await run_in_threadpool(lambda: shown_image(read_bytes(uri)))
        except Exception as e:  # gone, unreadable or undecodable: the page shows it missing, x marks it unusable
            return JSONResponse({"error": f"cannot show this image: {first_line(e)}"}, status_code=404)
        return Response(data, media_type=media_type, headers={"Cache-Control": "private, max-age=3600"})

    async def decide(self, request: Request) -> Response:
        try:
            body = await request.json()
            pos, action, label = int(body["pos"]), body["action"], body.get("label")
        except (ValueError, TypeError, KeyError, AttributeError):
            body = None
        item = body and (self.seen.get(pos) or await run_in_threadpool(self.queue.item, pos))
        if not item or action not in ACTIONS:
            return JSONResponse({"error": f"a decision is JSON with a queue position (pos) and an action, one of "
                                          f"{', '.join(ACTIONS)}"}, status_code=400)
        # Until the class list has loaded (or if it cannot), a correction can only pick one of the top-k.
        known = self.classes.names if self.classes.names is not None else item["topk_labels"]
        if action == "correct" and label not in known:
            return JSONResponse({"error": f"{label!r} is not a class of this model" if self.classes.names else
                                          f"{label!r} is not among this image's top-k, and the whole class list "
                                          "is not loaded yet"}, status_code=400)
        if action == "correct" and label == item["label"]:
            action = "confirm"
        reviewed = item["label"] if action == "confirm" else label if action == "correct" else None
        self.log.add(review_row(item, action, reviewed, self.reviewer, self.log.session_id))
        self.positions.append(item["pos"])
        return JSONResponse({"decided": len(self.positions), "action": action})

    async def undo(self, request: Request) -> Response:
        if not self.positions or self.log.undo() is None:
            return JSONResponse({"pos": None, "decided": 0})
        return JSONResponse({"pos": self.positions.pop(), "decided": len(self.positions)})


class TokenGate:
    """Every request carries the session's token (the URL's ?token=, or the page's X-Review-Token header), and
    every response says: no sniffing, no referrer (image URLs hold the token)."""

    HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]

    def __init__(self, app, token: str):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.HEADERS]}
            await send(message)

        request = Request(scope)
        given = request.query_params.get("token") or request.headers.get("x-review-token") or ""
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            response = PlainTextResponse("403: open the URL `alexlabel review` printed (it holds the token)",
                                         status_code=403)
            return await response(scope, receive, send_with_headers)
        await self.app(scope, receive, send_with_headers)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket. Made with proto IPPROTO_TCP: asyncio sets TCP_NODELAY only on such sockets, and
    without it each keep-alive response waited ~40 ms on Nagle and the browser's delayed ACK."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise ReviewError(f"cannot listen on {host}:{port} ({first_line(e)}); pick another with --port") from None
    return sock


def serve(app: ReviewApp, sock: socket.socket) -> None:
    """Serve until Ctrl-C (or SIGTERM); the log is flushed on the way out."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app.starlette(), log_level="warning", access_log=False))
    try:
        asyncio.run(server.serve(sockets=[sock]))
    except KeyboardInterrupt:  # uvicorn shuts down gracefully, then re-raises the Ctrl-C: the way out, not a failure
        pass
    finally:
        try:
            app.log.close()
        except Exception as e:
            raise ReviewError(f"could not save the last {len(app.log.pending)} decisions under "
                              f"{app.log.output}/reviews ({first_line(e)}); they are lost") from None


def url(sock: socket.socket, token: str) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/?token={token}"


def open_app(output: str, model: str | None, kind: str, order: str, reviewer: str, checkpoint: str | None,
             session_id: str) -> ReviewApp:
    try:
        queue = Queue(output, model, kind, order)
    except duckdb.Error as e:
        raise ReviewError(f"cannot read the tables under {output} ({first_line(e)})") from None
    classes = Classes(find_checkpoint(queue, checkpoint))
    return ReviewApp(queue, classes, ReviewLog(output, session_id), reviewer, secrets.token_urlsafe(18))
