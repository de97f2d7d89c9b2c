"""initial preference store schema

Revision ID: 0001
Revises:
Create Date: 2026-11-25 10:02:50

The tables of prefloop.feedback.models as first released (see models.py for their meaning).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "annotators",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.String(length=200), nullable=True),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "kind IN ('human', 'end_user', 'simulated', 'imported')", name="ck_annotators_kind"
        ),
        sa.CheckConstraint("role IN ('admin', 'annotator')", name="ck_annotators_role"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_table(
        "prompts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("messages", sa.JSON(), nullable=True),
        sa.Column("source", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "responses",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("prompt_id", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("model_version", sa.String(length=300), nullable=True),
        sa.Column("sampling", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["prompt_id"], ["prompts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_responses_prompt_id"), "responses", ["prompt_id"], unique=False)

    op.create_table(
        "comparisons",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("prompt_id", sa.Integer(), nullable=False),
        sa.Column("response_a_id", sa.Integer(), nullable=False),
        sa.Column("response_b_id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=200), nullable=False),
        sa.Column("required_labels", sa.Integer(), nullable=False),
        sa.Column("label_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("is_gold", sa.Boolean(), nullable=False),
        sa.Column("gold_choice", sa.String(length=16), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "gold_choice IS NULL OR gold_choice IN ('a', 'b', 'tie', 'both_bad')",
            name="ck_comparisons_gold",
        ),
        sa.CheckConstraint("required_labels >= 1", name="ck_comparisons_required"),
        sa.CheckConstraint("response_a_id <> response_b_id", name="ck_comparisons_distinct"),
        sa.ForeignKeyConstraint(["prompt_id"], ["prompts.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["response_a_id"], ["responses.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["response_b_id"], ["responses.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_comparisons_gold",
        "comparisons",
        ["id"],
        unique=False,
        sqlite_where=sa.text("is_gold"),
        postgresql_where=sa.text("is_gold"),
    )
    op.create_index(
        "ix_comparisons_open",
        "comparisons",
        ["id"],
        unique=False,
        sqlite_where=sa.text("label_count < required_labels"),
        postgresql_where=sa.text("label_count < required_labels"),
    )
    op.create_index(op.f("ix_comparisons_prompt_id"), "comparisons", ["prompt_id"], unique=False)
    op.create_index(op.f("ix_comparisons_source"), "comparisons", ["source"], unique=False)

    op.create_table(
        "labels",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("comparison_id", sa.Integer(), nullable=False),
        sa.Column("annotator_id", sa.Integer(), nullable=False),
        sa.Column("choice", sa.String(length=16), nullable=False),
        sa.Column("strength", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("shown_left", sa.String(length=1), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("choice IN ('a', 'b', 'tie', 'both_bad')", name="ck_labels_choice"),
        sa.CheckConstraint("shown_left IS NULL OR shown_left IN ('a', 'b')", name="ck_labels_left"),
        sa.CheckConstraint("strength IS NULL OR strength IN (1, 2)", name="ck_labels_strength"),
        sa.ForeignKeyConstraint(["annotator_id"], ["annotators.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["comparison_id"], ["comparisons.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("comparison_id", "annotator_id", name="uq_labels_comparison_annotator"),
        sa.UniqueConstraint("idempotency_key"),
    )
    op.create_index("ix_labels_annotator", "labels", ["annotator_id", "id"], unique=False)


def downgrade() -> None:
    # dropping a table drops its indexes
    for table in ("labels", "comparisons", "responses", "prompts", "annotators"):
        op.drop_table(table)
