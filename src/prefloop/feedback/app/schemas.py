"""Request and response bodies of the JSON API (they are what /openapi.json documents).

Every field is bounded: ids fit a 32-bit integer column, strings have a maximum length and may
not carry NUL characters or lone surrogates (PostgreSQL rejects both, which would otherwise
surface as a 500 instead of a 4xx).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

MAX_ID = 2**31 - 1


def clean_text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("text must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


Id = Annotated[int, Field(ge=1, le=MAX_ID)]
Text = Annotated[str, AfterValidator(clean_text)]
Choice = Literal["a", "b", "tie", "both_bad"]
Side = Literal["a", "b"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginIn(Strict):
    code: Annotated[Text, Field(min_length=1, max_length=200)]


class LoginOut(BaseModel):
    token: str
    name: str
    role: str


class Me(BaseModel):
    id: int
    name: str
    role: str
    kind: str


class Turn(BaseModel):
    role: str
    content: str


class Task(BaseModel):
    """One view of a comparison. `left`/`right` are the responses in the order shown;
    `shown_left` says which stored response (a or b) is on the left: send it back with the
    label. `view_id` is a fresh random key to use as the label's idempotency key."""

    comparison_id: int
    prompt: str
    messages: list[Turn] | None
    left: str
    right: str
    shown_left: Side
    view_id: str


class Progress(BaseModel):
    labeled: int = Field(description="labels you have given")
    available: int | None = Field(
        description="comparisons still short of labels (all annotators); recounted every few "
        "seconds in the background, null until the first count"
    )


class TaskOut(BaseModel):
    task: Task | None
    progress: Progress


class LabelIn(Strict):
    comparison_id: Id
    choice: Choice = Field(description="about the stored responses a and b, not screen sides")
    shown_left: Side
    strength: Literal["slight", "much"] | None = None
    reason: Annotated[Text, Field(max_length=2000)] | None = None
    seconds: Annotated[float, Field(ge=0, le=86400)] | None = None
    idempotency_key: Annotated[
        str, Field(min_length=8, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    ] = Field(description="unique per label; a retried post with the same key is not a duplicate")


class LabelOut(BaseModel):
    id: int
    comparison_id: int
    choice: Choice
    shown_left: Side | None
    strength: Literal["slight", "much"] | None
    reason: str | None
    seconds: float | None
    created_at: str


class LabelPosted(BaseModel):
    label: LabelOut
    duplicate: bool = Field(description="true when this idempotency key was already stored")


class LabelBatchIn(Strict):
    labels: list[LabelIn] = Field(min_length=1, max_length=100)


class BatchItem(BaseModel):
    status: Literal["created", "duplicate", "conflict", "not_found"]
    label_id: int | None = None
    detail: str | None = None


class LabelBatchOut(BaseModel):
    results: list[BatchItem] = Field(description="one per posted label, in order")


class UndoOut(BaseModel):
    undone: LabelOut | None
    task: Task | None
    progress: Progress


class LabelList(BaseModel):
    labels: list[LabelOut]


class AnnotatorIn(Strict):
    name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.@-]+$")]
    role: Literal["admin", "annotator"] = "annotator"


class AnnotatorCreated(BaseModel):
    id: int
    name: str
    role: str
    token: str
    login_path: str


class AnnotatorPatch(Strict):
    disabled: bool


class AnnotatorStats(BaseModel):
    id: int
    name: str
    kind: str
    role: str
    disabled: bool
    labels: int
    gold_labels: int
    gold_accuracy: float | None
    peer_agreement: float | None
    cohen_kappa: float | None
    median_seconds: float | None
    left_rate: float | None


class QualityOut(BaseModel):
    annotators: list[AnnotatorStats]
    labels: int
    comparisons: int
    fleiss_kappa: float | None


class LinkOut(BaseModel):
    login_path: str


class ExportRow(BaseModel):
    comparison_id: int
    source: str
    prompt: str
    messages: list[Any] | None
    chosen: str
    rejected: str
    p_chosen: float = Field(description="aggregated probability that `chosen` is better")
    votes: int
    agreement: float


class ExportOut(BaseModel):
    method: Literal["majority", "bradley_terry"]
    rows: list[ExportRow]
    dropped_balanced: int = Field(description="comparisons whose votes were exactly balanced")
