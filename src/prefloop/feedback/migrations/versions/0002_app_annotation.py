"""annotation app: sessions, one-time login links, task leases, skips

Revision ID: 0002_app
Revises: 0001
Create Date: 2026-11-25 10:25:00

Times are unix seconds (floats) so expiry checks are plain numeric comparisons on both SQLite
and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_app"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _annotator_fk() -> sa.ForeignKey:
    return sa.ForeignKey("annotators.id", ondelete="CASCADE")


def upgrade() -> None:
    op.create_table(
        "app_sessions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("annotator_id", sa.Integer(), _annotator_fk(), nullable=False, index=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "app_login_links",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("annotator_id", sa.Integer(), _annotator_fk(), nullable=False, index=True),
        sa.Column("code_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("used_at", sa.Float(), nullable=True),
    )
    op.create_table(
        "app_leases",
        sa.Column(
            "comparison_id",
            sa.Integer(),
            sa.ForeignKey("comparisons.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("annotator_id", sa.Integer(), _annotator_fk(), primary_key=True),
        sa.Column("expires_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "app_skips",
        sa.Column("annotator_id", sa.Integer(), _annotator_fk(), primary_key=True),
        sa.Column(
            "comparison_id",
            sa.Integer(),
            sa.ForeignKey("comparisons.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("created_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    for name in ("app_skips", "app_leases", "app_login_links", "app_sessions"):
        op.drop_table(name)
