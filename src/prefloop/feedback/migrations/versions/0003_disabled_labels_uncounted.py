"""labels of disabled annotators no longer count toward comparisons.label_count

Revision ID: 0003_disabled
Revises: 0002_app
Create Date: 2026-11-25 13:30:00

From this revision on `label_count` counts the labels of enabled annotators only (store.py
set_disabled keeps it so when an annotator is disabled or re-enabled), so a disabled
annotator's comparisons go back to the open queue. This recounts the comparisons that
annotators disabled before the upgrade had labelled.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003_disabled"
down_revision: str | None = "0002_app"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TOUCHED = (
    "id IN (SELECT l.comparison_id FROM labels l JOIN annotators a ON a.id = l.annotator_id "
    "WHERE a.disabled)"
)


def upgrade() -> None:
    op.execute(
        "UPDATE comparisons SET label_count = (SELECT count(*) FROM labels l "
        "JOIN annotators a ON a.id = l.annotator_id "
        f"WHERE l.comparison_id = comparisons.id AND NOT a.disabled) WHERE {_TOUCHED}"
    )


def downgrade() -> None:
    op.execute(
        "UPDATE comparisons SET label_count = (SELECT count(*) FROM labels l "
        f"WHERE l.comparison_id = comparisons.id) WHERE {_TOUCHED}"
    )
