"""The preference store's tables (SQLAlchemy 2.x ORM).

    annotators   who labels: human | end_user | simulated | imported; role admin | annotator
    prompts      a single-turn prompt (`text`) or a conversation (`messages`, TRL/OpenAI style)
    responses    one model answer to a prompt, with the model version and sampling settings
    comparisons  two responses to one prompt, waiting for `required_labels` labels
    labels       one annotator's verdict on one comparison: a | b | tie | both_bad

`comparisons.label_count` is kept by the store in the same transaction as each label insert, so
"what can annotator X label next?" is an index walk over the partial index `ix_comparisons_open`
(comparisons still short of labels) plus a probe of the `(comparison_id, annotator_id)` unique
index, instead of counting labels per comparison over a million rows.

Changing a table here needs a new migration under `migrations/versions/`. The plain dataclasses
at the end are what PreferenceStore takes and returns (no ORM session attached).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ANNOTATOR_KINDS = ("human", "end_user", "simulated", "imported")
ROLES = ("admin", "annotator")
CHOICES = ("a", "b", "tie", "both_bad")
SIDES = ("a", "b")


def utcnow() -> datetime:
    return datetime.now(UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class Annotator(Base):
    __tablename__ = "annotators"
    __table_args__ = (
        CheckConstraint(_in("kind", ANNOTATOR_KINDS), name="ck_annotators_kind"),
        CheckConstraint(_in("role", ROLES), name="ck_annotators_role"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    role: Mapped[str] = mapped_column(String(16), default="annotator")
    # sha256 (or stronger) of an access token; never the token itself
    token_hash: Mapped[str | None] = mapped_column(String(200), unique=True, default=None)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Prompt(Base):
    __tablename__ = "prompts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # plain prompt text; for a conversation, a readable "role: content" rendering of `messages`
    text: Mapped[str] = mapped_column(Text)
    # multi-turn prompt: [{"role": "user"|"assistant"|"system", "content": str}, ...] or NULL
    messages: Mapped[list[Any] | None] = mapped_column(JSON, default=None)
    source: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Response(Base):
    __tablename__ = "responses"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    text: Mapped[str] = mapped_column(Text)
    model_version: Mapped[str | None] = mapped_column(String(300), default=None)
    sampling: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Comparison(Base):
    __tablename__ = "comparisons"
    __table_args__ = (
        CheckConstraint("response_a_id <> response_b_id", name="ck_comparisons_distinct"),
        CheckConstraint("required_labels >= 1", name="ck_comparisons_required"),
        CheckConstraint(
            f"gold_choice IS NULL OR {_in('gold_choice', CHOICES)}", name="ck_comparisons_gold"
        ),
        # the open queue: comparisons still short of labels, in id (= arrival) order
        Index(
            "ix_comparisons_open",
            "id",
            sqlite_where=text("label_count < required_labels"),
            postgresql_where=text("label_count < required_labels"),
        ),
        Index(
            "ix_comparisons_gold",
            "id",
            sqlite_where=text("is_gold"),
            postgresql_where=text("is_gold"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    response_a_id: Mapped[int] = mapped_column(ForeignKey("responses.id", ondelete="CASCADE"))
    response_b_id: Mapped[int] = mapped_column(ForeignKey("responses.id", ondelete="CASCADE"))
    source: Mapped[str] = mapped_column(String(200), default="", index=True)
    required_labels: Mapped[int] = mapped_column(Integer, default=1)
    # maintained by PreferenceStore.add_labels in the label's transaction (see module docstring)
    label_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)
    gold_choice: Mapped[str | None] = mapped_column(String(16), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Label(Base):
    __tablename__ = "labels"
    __table_args__ = (
        UniqueConstraint("comparison_id", "annotator_id", name="uq_labels_comparison_annotator"),
        CheckConstraint(_in("choice", CHOICES), name="ck_labels_choice"),
        CheckConstraint("strength IS NULL OR strength IN (1, 2)", name="ck_labels_strength"),
        CheckConstraint(f"shown_left IS NULL OR {_in('shown_left', SIDES)}", name="ck_labels_left"),
        Index("ix_labels_annotator", "annotator_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    comparison_id: Mapped[int] = mapped_column(ForeignKey("comparisons.id", ondelete="CASCADE"))
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id", ondelete="CASCADE"))
    choice: Mapped[str] = mapped_column(String(16))
    strength: Mapped[int | None] = mapped_column(Integer, default=None)  # 1 slightly, 2 much
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    shown_left: Mapped[str | None] = mapped_column(String(1), default=None)  # which was on the left
    seconds: Mapped[float | None] = mapped_column(Float, default=None)  # time spent on the label
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# ---- plain records in and out -------------------------------------------------------------
@dataclass(frozen=True)
class PromptIn:
    text: str
    messages: list[dict[str, str]] | None = None  # a multi-turn prompt (TRL conversational)
    source: str = ""


@dataclass(frozen=True)
class ResponseIn:
    prompt_id: int
    text: str
    model_version: str | None = None
    sampling: dict[str, Any] | None = None


@dataclass(frozen=True)
class ComparisonIn:
    prompt_id: int
    response_a_id: int
    response_b_id: int
    source: str = ""
    required_labels: int = 1
    is_gold: bool = False
    gold_choice: str | None = None


@dataclass(frozen=True)
class LabelIn:
    comparison_id: int
    choice: str  # a | b | tie | both_bad
    strength: int | None = None  # 1 slightly better, 2 much better
    reason: str | None = None
    shown_left: str | None = None  # which response ('a' or 'b') was displayed on the left
    seconds: float | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True)
class ComparisonView:
    """A comparison with its texts, as an annotator sees it."""

    id: int
    prompt: str
    messages: list[dict[str, str]] | None
    response_a: str
    response_b: str
    source: str
    is_gold: bool


@dataclass(frozen=True)
class PreferenceRecord:
    """One label turned into a preference: chosen/rejected are responses A/B ordered by choice.

    For ties and both-bad labels (`choice` tie|both_bad) chosen is A and rejected is B.
    """

    label_id: int
    comparison_id: int
    prompt: str
    messages: list[dict[str, str]] | None
    chosen: str
    rejected: str
    choice: str
    strength: int | None
    annotator: str
    annotator_kind: str
    source: str
