"""The review web app: FastAPI over a dataset index, a decisions store and a picture cache.

Safe by default (docs/REVIEW.md):

* every request needs a session; a session is opened only by a single-use token (the URL
  ``counterfactory review`` prints, or one a reviewer invites), which is then dropped from
  the address bar by a redirect and replaced by an HttpOnly, SameSite=Strict cookie;
* every state-changing request (POST) must carry the session's CSRF token in ``X-CSRF-Token``;
* no part of a request path is ever joined to a file path: an image request names a sample
  key and a member, both looked up in the index; static files come from a fixed table;
* pages escape what they show (Jinja autoescape; the page script sets ``textContent``
  only), and a Content-Security-Policy allows no inline script.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import importlib.resources
import json
import logging
import os
import secrets
import socket
import threading
import urllib.parse
from typing import Any, Mapping, Optional

import jinja2
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from review.images import VARIANTS, ImageCache
from review.index import IMAGE_TYPES, DatasetIndex, IndexedSample
from review.store import REJECT_REASONS, Action, DecisionStore, Queue
from schemas.sample import Field
from transforms.thresholds import SCORES, Better, Ranking

LOG = logging.getLogger(__name__)

COOKIE = "cf_session"
CSRF_HEADER = "x-csrf-token"
_SAFE_METHODS = frozenset({"GET", "HEAD"})
#: Paths a session without a reviewer name may use: the name form and what it needs.
_BEFORE_LOGIN = frozenset({"/login", "/api/login", "/static/review.css", "/static/login.js"})
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; script-src 'self'; style-src 'self'; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
_IMAGE_CACHE_CONTROL = "private, max-age=604800, immutable"
_STATIC = {"review.js": "text/javascript", "login.js": "text/javascript", "review.css": "text/css"}
#: Keys of the page: what the legend shows, and what review.js binds.
KEYS = {"accept": "a", "skip": "Space", "undo": "u", "previous": "\u2190", "next": "\u2192",
        "pick candidate": "1\u20139", "flicker before/after": "f", "before/after slider": "v, [ ]", "object mask": "m", "repainted region": "r",
        "zoom": "+ / \u2212 / 0",
        "preview next candidate": "c"}


@dataclasses.dataclass(frozen=True)
class ReviewConfig:
    """Where decisions go (``db``; the picture and index cache sits beside it) and where the server listens."""

    db: str
    host: str = "127.0.0.1"
    port: int = 0

    def __post_init__(self) -> None:
        if os.path.isdir(self.db):
            raise ValueError(f"--db {self.db!r} is a folder; give the database file's path")
        folder = os.path.dirname(os.path.abspath(self.db))
        if not os.path.isdir(folder):
            raise ValueError(f"--db {self.db!r}: folder {folder} does not exist")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be in 0..65535 (0: any free port), got {self.port!r}")
        if not self.host:
            raise ValueError("--host must not be empty")

    @property
    def cache_dir(self) -> str:
        """``review.sqlite`` -> ``review.cache/`` beside it: the dataset index and the cached pictures."""
        return os.path.splitext(os.path.abspath(self.db))[0] + ".cache"


@dataclasses.dataclass
class Session:
    csrf: str
    reviewer: Optional[str] = None


class Sessions:
    """Single-use tokens and the sessions they open, in memory: a restarted server asks for a new token."""

    def __init__(self) -> None:
        self._tokens: set[str] = set()
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def invite(self) -> str:
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._tokens.add(token)
        return token

    def redeem(self, token: str) -> Optional[str]:
        """A new session id for an unused token (which is used up), else ``None``."""
        with self._lock:
            match = next((known for known in self._tokens if hmac.compare_digest(known, token)), None)
            if match is None:
                return None
            self._tokens.discard(match)
            session_id = secrets.token_urlsafe(32)
            self._sessions[session_id] = Session(csrf=secrets.token_urlsafe(32))
            return session_id

    def get(self, session_id: Optional[str]) -> Optional[Session]:
        return None if not session_id else self._sessions.get(session_id)


def _reviewer_name(value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value.strip()) <= 64:
        raise HTTPException(400, "a reviewer name is 1 to 64 characters")
    if any(not ch.isprintable() for ch in value):
        raise HTTPException(400, "a reviewer name holds no control characters")
    return value.strip()


def queue_from(params: Mapping[str, str]) -> Queue:
    """The queue a request names (``queue``, ``label``, ``reason``, ``score``, ``low``, ``high``); 400 when wrong."""
    try:
        low, high = (float(params[name]) if params.get(name) not in (None, "") else None for name in ("low", "high"))
        return Queue(name=params.get("queue") or "near", label=params.get("label"), reason=params.get("reason"),
                     score=params.get("score") or None, low=low, high=high)
    except ValueError as error:
        raise HTTPException(400, f"queue: {error}") from None


def _queue_query(queue: Queue) -> str:
    fields = {"queue": queue.name, "label": queue.label, "reason": queue.reason, "score": queue.score,
              "low": queue.low, "high": queue.high}
    return urllib.parse.urlencode({name: value for name, value in fields.items() if value is not None})


def image_url(key: str, member: str, variant: str = "full") -> str:
    return f"/img/{urllib.parse.quote(key, safe='')}/{urllib.parse.quote(member, safe='')}?v={variant}"


class ReviewApp:
    """What the routes share: the index, the store, the picture cache and the sessions."""

    def __init__(self, index: DatasetIndex, store: DecisionStore, images: ImageCache) -> None:
        self.index = index
        self.store = store
        self.images = images
        self.sessions = Sessions()
        self.ranking = Ranking()
        environment = jinja2.Environment(loader=jinja2.PackageLoader("review", "templates"), autoescape=True,
                                         undefined=jinja2.StrictUndefined)
        self.templates = {name: environment.get_template(f"review_{name}.html.j2")
                          for name in ("login", "page", "dashboard", "queue")}
        files = importlib.resources.files("review") / "static"
        self.static = {name: ((files / name).read_bytes(), media) for name, media in _STATIC.items()}

    # ------------------------------------------------------------------ samples

    def indexed(self, key: str) -> IndexedSample:
        sample = self.index.sample(key)
        if sample is None:
            raise HTTPException(404, "no such sample")
        return sample

    def sample_view(self, sample: IndexedSample, reviewer: str) -> dict[str, Any]:
        """Everything the page shows of a sample (JSON); text goes to ``textContent`` only."""
        meta = json.loads(self.index.read(sample, Field.JSON))
        thresholds = self.index.thresholds.bounds
        candidates = []
        for number, image in enumerate(self.index.kind.candidates(meta), start=1):
            scores = []
            for name in SCORES:
                value, bound = image.scores.get(name), thresholds.get(name)
                passed = None if bound is None else value is not None and SCORES[name].passes(value, bound)
                scores.append({"name": name, "value": value, "bound": bound, "passed": passed,
                               "op": "\u2265" if SCORES[name].better is Better.HIGHER else "\u2264"})
            candidates.append({
                "number": number, "index": image.index, "full": image_url(sample.key, image.member),
                "thumb": image_url(sample.key, image.member, "thumb"),
                "region": image_url(sample.key, image.region, "overlay") if image.region in sample.members else None,
                "scores": scores, "combined": self.ranking.combined(image.scores),
                "passed": all(s["passed"] is not False for s in scores), "chosen": image.index == sample.chosen})
        rows = self.store.rows(sample.key)
        return {
            "key": sample.key, "label": sample.label, "kind": self.index.kind_name, "passed": sample.passed,
            "chosen": sample.chosen, "shown": sample.shown, "reason": sample.reason, "margin": sample.margin,
            "detection_score": meta.get("detection", {}).get("score"),
            "source": image_url(sample.key, Field.SRC), "mask": image_url(sample.key, Field.MASK, "overlay"),
            "panels": [{"title": title, "url": image_url(sample.key, member)}
                       for title, member in self.index.kind.panels if member in sample.members],
            "candidates": candidates,
            "decisions": [{"reviewer": r.reviewer, "action": r.action.value, "candidate": r.candidate,
                           "reason": r.reason, "time": r.time, "mine": r.reviewer == reviewer} for r in rows
                          if r.action is not Action.SKIP],
        }

    def image(self, request: Request, key: str, member: str, variant: str) -> Response:
        sample = self.indexed(key)
        extension = member.rpartition(".")[2]
        if member not in sample.members or extension not in IMAGE_TYPES:
            raise HTTPException(404, "no such picture")
        if variant != "full" and variant not in VARIANTS:
            raise HTTPException(404, "no such picture")
        if variant == "overlay" and extension != "png":
            raise HTTPException(404, "no such picture")
        etag = '"' + hashlib.sha256("\0".join((self.index.version, key, member, variant)).encode()).hexdigest()[:32] + '"'
        headers = {"ETag": etag, "Cache-Control": _IMAGE_CACHE_CONTROL}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        if variant == "full":
            return Response(self.index.read(sample, member), media_type=IMAGE_TYPES[extension], headers=headers)
        data = self.images.get(self.index.version, key, member, variant, lambda: self.index.read(sample, member))
        return Response(data, media_type=VARIANTS[variant][0], headers=headers)

    def decide(self, reviewer: str, body: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(body, Mapping):
            raise HTTPException(400, "a decision is a JSON object")
        sample = self.indexed(str(body.get("key", "")))
        try:
            action = Action(body.get("action"))
        except ValueError:
            raise HTTPException(400, f"action must be one of {', '.join(a.value for a in Action)}") from None
        queue = body.get("queue") or "near"
        if queue not in Queue.NAMES:
            raise HTTPException(400, f"unknown queue {queue!r}")
        candidate, reason = body.get("candidate"), body.get("reason")
        if (action is Action.PICK) != (candidate is not None):
            raise HTTPException(400, "a candidate goes with a pick, and only with a pick")
        if (action is Action.REJECT) != (reason is not None):
            raise HTTPException(400, "a reason goes with a reject, and only with a reject")
        if reason is not None and reason not in REJECT_REASONS:
            raise HTTPException(400, f"reason must be one of {', '.join(REJECT_REASONS)}")
        if candidate is not None:
            if isinstance(candidate, bool) or not isinstance(candidate, int):
                raise HTTPException(400, f"candidate must be an integer, got {candidate!r}")
            meta = json.loads(self.index.read(sample, Field.JSON))
            if candidate not in [image.index for image in self.index.kind.candidates(meta)]:
                raise HTTPException(400, f"{sample.key} has no candidate {candidate!r}")
        row = self.store.record(sample.key, action, reviewer, queue, candidate=candidate, reason=reason)
        return {"id": row.id, "key": row.sample_key, "action": row.action.value, "time": row.time}

    # ------------------------------------------------------------------ pages

    def render(self, name: str, **values: Any) -> HTMLResponse:
        return HTMLResponse(self.templates[name].render(version=self.index.version, kind=self.index.kind_name,
                                                        **values))


def create_app(review: ReviewApp) -> FastAPI:
    """The ASGI app; ``review.sessions.invite()`` makes the token of the first URL."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        response = await _guarded(review, request, call_next)
        response.headers.update(_SECURITY_HEADERS)
        return response

    @app.get("/")
    def root() -> RedirectResponse:
        return RedirectResponse("/review", status_code=303)

    @app.get("/login")
    def login_page(request: Request) -> HTMLResponse:
        return review.render("login", csrf=request.state.session.csrf, reviewer=None)

    @app.post("/api/login")
    async def login(request: Request) -> dict[str, str]:
        request.state.session.reviewer = _reviewer_name((await _json(request)).get("reviewer"))
        return {"reviewer": request.state.session.reviewer}

    @app.get("/review")
    def page(request: Request) -> HTMLResponse:
        queue = queue_from(request.query_params)
        key = request.query_params.get("key")
        if key is not None:
            review.indexed(key)
        session = request.state.session
        return review.render("page", csrf=session.csrf, reviewer=session.reviewer, queue=queue,
                             queue_json=json.dumps({"query": _queue_query(queue), "name": queue.name,
                                                    "start": key}),
                             reasons=REJECT_REASONS, keys=KEYS)

    @app.get("/api/next")
    def next_sample(request: Request) -> dict[str, Optional[str]]:
        queue = queue_from(request.query_params)
        after = request.query_params.get("after")
        return {"key": review.store.next_key(request.state.session.reviewer, queue, after)}

    @app.get("/api/sample/{key}")
    def sample(request: Request, key: str) -> dict[str, Any]:
        return review.sample_view(review.indexed(key), request.state.session.reviewer)

    @app.post("/api/decide")
    async def decide(request: Request) -> dict[str, Any]:
        body = await _json(request)
        return review.decide(request.state.session.reviewer, body)

    @app.post("/api/undo")
    def undo(request: Request) -> dict[str, Any]:
        row = review.store.undo(request.state.session.reviewer)
        return {"key": None if row is None else row.sample_key, "action": None if row is None else row.action.value}

    @app.post("/api/invite")
    def invite(request: Request) -> dict[str, str]:
        base = f"{request.url.scheme}://{request.url.netloc}"
        return {"url": f"{base}/?token={review.sessions.invite()}"}

    @app.get("/img/{key}/{member}")
    def image(request: Request, key: str, member: str, v: str = "full") -> Response:
        return review.image(request, key, member, v)

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in review.static:
            raise HTTPException(404, "no such file")
        data, media = review.static[name]
        return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/dashboard")
    def dashboard(request: Request) -> HTMLResponse:
        session = request.state.session
        return review.render("dashboard", csrf=session.csrf, reviewer=session.reviewer, board=review.store.dashboard(),
                             samples=review.index.count, corrupt=review.index.corrupt,
                             labels=review.index.facets("label"),
                             reasons=review.index.facets("reason"), thresholds=review.index.thresholds.to_json(),
                             reject_reasons=REJECT_REASONS, scores=list(SCORES))

    @app.get("/queue")
    def queue_page(request: Request) -> HTMLResponse:
        queue = queue_from(request.query_params)
        rows = review.store.page(queue, request.query_params.get("after"))
        for row in rows:
            row["thumb"] = image_url(row["key"], Field.SRC, "thumb")
            row["open"] = f"/review?{_queue_query(queue)}&key={urllib.parse.quote(row['key'], safe='')}"
        more = f"/queue?{_queue_query(queue)}&after={urllib.parse.quote(rows[-1]['key'], safe='')}" if rows else None
        session = request.state.session
        return review.render("queue", csrf=session.csrf, reviewer=session.reviewer, queue=queue, rows=rows,
                             more=more if len(rows) == 50 else None)

    return app


async def _json(request: Request) -> Mapping[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        raise HTTPException(400, "the body must be JSON") from None
    if not isinstance(body, dict):
        raise HTTPException(400, "the body must be a JSON object")
    return body


async def _guarded(review: ReviewApp, request: Request, call_next) -> Response:
    """Token -> session cookie; no session -> 401; POST without the session's CSRF token -> 403."""
    token = request.query_params.get("token")
    if token is not None:
        session_id = review.sessions.redeem(token)
        if session_id is None:
            return _plain(403, "This link was used already or is wrong: ask for a new one "
                               "(the dashboard's 'invite a reviewer', or restart counterfactory review).")
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, session_id, httponly=True, samesite="strict", path="/")
        return response
    session = review.sessions.get(request.cookies.get(COOKIE))
    if session is None:
        return _plain(401, "Open the address with the token that counterfactory review printed.")
    if request.method not in _SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
            return _plain(403, "missing or wrong CSRF token")
    if session.reviewer is None and request.url.path not in _BEFORE_LOGIN:
        if request.method in _SAFE_METHODS and not request.url.path.startswith(("/api/", "/img/")):
            return RedirectResponse("/login", status_code=303)
        return _plain(403, "give your reviewer name first (/login)")
    request.state.session = session
    return await call_next(request)


def _plain(status: int, text: str) -> Response:
    return Response(text + "\n", status_code=status, media_type="text/plain; charset=utf-8")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, so the printed URL names the port even when ``port`` is 0."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Connections inherit it: without, a response's second small write waits out the client's delayed ACK (40 ms).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


def serve(app: FastAPI, sock: socket.socket) -> None:
    """Run the app on ``sock`` until interrupted (one process; requests on its thread pool)."""
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    server.run(sockets=[sock])
