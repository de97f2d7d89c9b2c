"""The JSON API: thin handlers -> authorization -> service functions."""

from __future__ import annotations

import random
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import IntegrityError

from prefloop.errors import PrefloopError
from prefloop.feedback import accounts
from prefloop.feedback.accounts import Principal
from prefloop.feedback.app import admin, schemas, service
from prefloop.feedback.app.security import retry_after_header

router = APIRouter(prefix="/api")
ComparisonId = Annotated[int, Path(ge=1, le=schemas.MAX_ID)]


bearer = HTTPBearer(auto_error=False, description="token from `prefloop users add` or a login link")


async def current_user(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    # async: a cached token costs no thread hop; only a cache miss goes to the database
    if credentials is None:
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    token, tokens = credentials.credentials, request.app.state.tokens
    user = None
    if 0 < len(token) <= 200:
        user = tokens.cached(token) or await run_in_threadpool(tokens.lookup, token)
    if user is None:
        raise HTTPException(
            401, "invalid or disabled token", headers={"WWW-Authenticate": "Bearer"}
        )
    wait = request.app.state.limiter.retry_after(user.id)
    if wait > 0:
        raise HTTPException(429, "rate limit exceeded", headers=retry_after_header(wait))
    return user


async def admin_user(user: Annotated[Principal, Depends(current_user)]) -> Principal:
    if not user.is_admin:
        raise HTTPException(403, "admin role required")
    return user


User = Annotated[Principal, Depends(current_user)]
Admin = Annotated[Principal, Depends(admin_user)]


def _rng(request: Request) -> random.Random:
    rng: random.Random = request.app.state.rng
    return rng


@router.post("/login", response_model=schemas.LoginOut, tags=["accounts"])
def login(body: schemas.LoginIn, request: Request) -> schemas.LoginOut:
    """Exchange a one-time login code for a session token (rate-limited per client address)."""
    address = request.client.host if request.client else ""
    wait = request.app.state.login_limiter.retry_after(address)
    if wait > 0:
        raise HTTPException(429, "too many login attempts", headers=retry_after_header(wait))
    try:
        user, token = accounts.redeem_login_code(request.app.state.engine, body.code)
    except PrefloopError as e:
        raise HTTPException(401, e.message) from None
    return schemas.LoginOut(token=token, name=user.name, role=user.role)


@router.get("/me", response_model=schemas.Me, tags=["accounts"])
def me(user: User) -> schemas.Me:
    return schemas.Me(id=user.id, name=user.name, role=user.role, kind=user.kind)


@router.get("/tasks/next", response_model=schemas.TaskOut, tags=["labeling"])
def next_task(user: User, request: Request) -> schemas.TaskOut:
    """The next comparison for you (held for you for `lease_s` seconds), or null."""
    return service.next_task_out(request.app.state, user)


@router.post("/tasks/{comparison_id}/skip", status_code=204, tags=["labeling"])
def skip(comparison_id: ComparisonId, user: User, request: Request) -> Response:
    """Never show this comparison to you again."""
    service.skip_task(request.app.state.engine, user, comparison_id)
    return Response(status_code=204)


@router.post(
    "/labels",
    response_model=schemas.LabelPosted,
    status_code=201,
    tags=["labeling"],
    responses={200: {"description": "replay of an already stored idempotency key"}},
)
def post_label(
    body: schemas.LabelIn, user: User, request: Request, response: Response
) -> schemas.LabelPosted:
    """Store your label. Retrying with the same idempotency key returns the stored label
    (200, duplicate=true) instead of storing it twice."""
    out = service.post_label(request.app.state.engine, user, body)
    if out.duplicate:
        response.status_code = 200
    return out


@router.post("/labels/batch", response_model=schemas.LabelBatchOut, tags=["labeling"])
def post_labels(body: schemas.LabelBatchIn, user: User, request: Request) -> schemas.LabelBatchOut:
    """Up to 100 labels in one transaction (for scripts and importers). Every item gets its own
    status: created, duplicate (idempotency key already stored), conflict or not_found; nothing
    is acknowledged before the commit."""
    return service.post_labels(request.app.state.engine, user, body)


@router.post("/labels/undo", response_model=schemas.UndoOut, tags=["labeling"])
def undo(user: User, request: Request) -> schemas.UndoOut:
    """Delete your most recent label (within the undo window); its comparison comes back."""
    st = request.app.state
    undone, task = service.undo_last(st.engine, user, st.settings, _rng(request))
    return schemas.UndoOut(
        undone=undone, task=task, progress=service.progress(st.engine, user, st.open_count)
    )


@router.get("/labels", response_model=schemas.LabelList, tags=["labeling"])
def my_labels(
    user: User,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> schemas.LabelList:
    """Your own labels, newest first (nobody else's)."""
    return schemas.LabelList(
        labels=service.list_labels(request.app.state.engine, user.id, limit, offset)
    )


# ---- admin ----------------------------------------------------------------------------------


@router.get("/admin/annotators", response_model=schemas.QualityOut, tags=["admin"])
def annotator_quality(_: Admin, request: Request) -> schemas.QualityOut:
    """Per-annotator quality: gold accuracy, peer agreement, Cohen's kappa, time, left bias."""
    return admin.quality_report(request.app.state.engine)


@router.post(
    "/admin/annotators", response_model=schemas.AnnotatorCreated, status_code=201, tags=["admin"]
)
def add_annotator(
    body: schemas.AnnotatorIn, _: Admin, request: Request
) -> schemas.AnnotatorCreated:
    """Create an account; its token and one-time login link are shown only in this response."""
    try:
        new = accounts.add_user(request.app.state.engine, body.name, body.role)
    except PrefloopError as e:
        raise service.Conflict(e.message, field="name") from None
    return schemas.AnnotatorCreated(
        id=new.id, name=new.name, role=new.role, token=new.token, login_path=new.login_path
    )


@router.patch("/admin/annotators/{annotator_id}", status_code=204, tags=["admin"])
def patch_annotator(
    annotator_id: Annotated[int, Path(ge=1, le=schemas.MAX_ID)],
    body: schemas.AnnotatorPatch,
    user: Admin,
    request: Request,
) -> Response:
    """Disable (and exclude their labels from exports and training) or re-enable an account."""
    if annotator_id == user.id and body.disabled:
        raise HTTPException(409, "you cannot disable your own account")
    try:
        accounts.set_disabled(request.app.state.engine, annotator_id, body.disabled)
    except PrefloopError as e:
        raise service.NotFound(e.message, field="annotator_id") from None
    request.app.state.tokens.forget(annotator_id)
    return Response(status_code=204)


@router.post(
    "/admin/annotators/{annotator_id}/login-link", response_model=schemas.LinkOut, tags=["admin"]
)
def login_link(
    annotator_id: Annotated[int, Path(ge=1, le=schemas.MAX_ID)], _: Admin, request: Request
) -> schemas.LinkOut:
    """A new one-time login link for an annotator (valid 7 days)."""
    try:
        code = accounts.create_login_code(request.app.state.engine, annotator_id)
    except IntegrityError:  # the foreign key: no such annotator
        raise service.NotFound(f"no annotator with id {annotator_id}") from None
    return schemas.LinkOut(login_path=f"/login#code={code}")


@router.get("/admin/labels", response_model=schemas.LabelList, tags=["admin"])
def annotator_labels(
    annotator_id: Annotated[int, Query(ge=1, le=schemas.MAX_ID)],
    _: Admin,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> schemas.LabelList:
    return schemas.LabelList(
        labels=service.list_labels(request.app.state.engine, annotator_id, limit, offset)
    )


@router.get("/admin/export", response_model=schemas.ExportOut, tags=["admin"])
def export(
    _: Admin,
    request: Request,
    method: Literal["majority", "bradley_terry"] = "majority",
    annotator: Annotated[list[str] | None, Query(max_length=100)] = None,
    source: Annotated[list[str] | None, Query(max_length=100)] = None,
) -> schemas.ExportOut:
    """Labels aggregated per comparison (enabled annotators only, gold left out)."""
    for value in [*(annotator or []), *(source or [])]:
        try:
            schemas.clean_text(value)
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
    return admin.export_aggregated(
        request.app.state.engine, method, annotator_names=annotator, sources=source
    )
