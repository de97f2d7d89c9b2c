"""The two hottest calls, `POST /api/labels` and `GET /api/tasks/next`, on a lean ASGI path.

Through FastAPI each request pays for routing, dependency injection, a worker-thread hop for
the sync handler and response-model validation: about as much CPU as the whole database work
on a 2-core machine. This layer, placed in front of the FastAPI app (inside GuardMiddleware, so
the body limit and security headers still apply), serves only the plain case: a well-formed
JSON body, a `Bearer` token already in the token cache, a valid label. Anything else -- a
token not cached yet, another content type, a body that fails validation -- goes on to the
FastAPI route unchanged (with the body replayed), so errors, OpenAPI and every other route are
exactly what FastAPI makes of them. The same pydantic models validate and serialize here, and
the same service functions run, so both paths store and answer the same.

Label posts go to the process's LabelWriter (group commit, writer.py): acknowledged only after
their transaction commits.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from prefloop.errors import PrefloopError
from prefloop.feedback.accounts import Principal
from prefloop.feedback.app import fastpath, schemas, service
from prefloop.feedback.app.security import retry_after_header

JSON_TYPE = [(b"content-type", b"application/json")]
ERROR_STATUS = {service.NotFound: 404, service.Conflict: 409, service.Forbidden: 403}
BUSY = {"detail": "database busy or unavailable, retry"}


def error_status(exc: PrefloopError) -> int:
    """The HTTP status of a domain error (also used by the app's exception handler)."""
    return next((code for cls, code in ERROR_STATUS.items() if isinstance(exc, cls)), 400)


class HotPaths:
    def __init__(self, app: Any, state: Any) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            method, path = scope["method"], scope["path"]
            if method == "POST" and path == "/api/labels":
                return await self._post_label(scope, receive, send)
            if method == "GET" and path == "/api/tasks/next":
                user = self._user(scope)
                if user is not None:
                    return await self._next_task(user, send)
        await self.app(scope, receive, send)

    def _user(self, scope: Any) -> Principal | None:
        """The caller if their `Bearer` token is cached; None: let FastAPI authenticate."""
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                token = token.strip()
                if scheme.lower() == "bearer" and 0 < len(token) <= 200:
                    user: Principal | None = self.state.tokens.cached(token)
                    return user
                return None
        return None

    async def _post_label(self, scope: Any, receive: Any, send: Any) -> None:
        user, label = self._user(scope), None
        if user is not None and dict(scope["headers"]).get(b"content-type") == b"application/json":
            body = await _read_body(receive)
            label = _parse_label(body)
            receive = _replay(body, receive)  # for FastAPI, if it gets the request after all
        if user is None or label is None:
            await self.app(scope, receive, send)
            return
        if await self._limited(user, send):
            return
        st = self.state
        values = service.label_values(user, label)
        try:
            new_id = await st.label_writer.insert(values)
            service.raise_if_refused(label, new_id)
            if new_id is None:  # a unique constraint held: a replay or a second label
                out = await run_in_threadpool(service.resolve_replay, st.engine, user, label)
                return await _respond(send, 200, out.model_dump_json().encode())
        except PrefloopError as e:
            return await _respond(send, error_status(e), _json({"detail": str(e)}))
        except fastpath.UNAVAILABLE:
            return await _respond(send, 503, _json(BUSY), [(b"retry-after", b"1")])
        out = schemas.LabelPosted(
            label=service.label_out({**values, "id": new_id}), duplicate=False
        )
        await _respond(send, 201, out.model_dump_json().encode())

    async def _next_task(self, user: Principal, send: Any) -> None:
        if await self._limited(user, send):
            return
        try:
            out = await run_in_threadpool(service.next_task_out, self.state, user)
        except fastpath.UNAVAILABLE:
            return await _respond(send, 503, _json(BUSY), [(b"retry-after", b"1")])
        await _respond(send, 200, out.model_dump_json().encode())

    async def _limited(self, user: Principal, send: Any) -> bool:
        """The per-token rate limit, counted once per request as in routes.current_user."""
        wait = self.state.limiter.retry_after(user.id)
        if wait <= 0:
            return False
        extra = [(k.lower().encode(), v.encode()) for k, v in retry_after_header(wait).items()]
        await _respond(send, 429, _json({"detail": "rate limit exceeded"}), extra)
        return True


def _parse_label(body: bytes) -> schemas.LabelIn | None:
    # json.loads + validate, as FastAPI does (its JSON decoding and pydantic's differ on edge
    # cases, and a failure here must leave the answer to FastAPI)
    try:
        return schemas.LabelIn.model_validate(json.loads(body))
    except (ValueError, ValidationError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None


async def _read_body(receive: Any) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away: nothing to store
            return b"".join(chunks)
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Any) -> Any:
    """A receive that hands the already-read body out again, then defers to the real one."""
    sent = False

    async def replay() -> Any:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _json(content: Any) -> bytes:
    return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()


async def _respond(
    send: Any, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [*JSON_TYPE, (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
