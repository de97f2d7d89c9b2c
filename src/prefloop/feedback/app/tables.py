"""Tables the annotation app adds to the preference store (migration 0002_app).

Kept in their own MetaData: the store's models stay the store's. Foreign keys live in the
migration; these definitions are only what the app's queries need.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import Column, Float, Integer, MetaData, String, Table

from prefloop.feedback.models import Annotator, Comparison, Label, Prompt, Response

metadata = MetaData()

sessions = Table(
    "app_sessions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("annotator_id", Integer, nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
)

login_links = Table(
    "app_login_links",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("annotator_id", Integer, nullable=False),
    Column("code_hash", String(64), nullable=False, unique=True),
    Column("expires_at", Float, nullable=False),
    Column("used_at", Float),
)

# "annotator X is looking at comparison Y until T": keeps more than k people from being handed
# the same comparison at once
leases = Table(
    "app_leases",
    metadata,
    Column("comparison_id", Integer, primary_key=True),
    Column("annotator_id", Integer, primary_key=True),
    Column("expires_at", Float, nullable=False),
)

skips = Table(
    "app_skips",
    metadata,
    Column("annotator_id", Integer, primary_key=True),
    Column("comparison_id", Integer, primary_key=True),
    Column("created_at", Float, nullable=False),
)

annotators = cast(Table, Annotator.__table__)
prompts = cast(Table, Prompt.__table__)
responses = cast(Table, Response.__table__)
comparisons = cast(Table, Comparison.__table__)
labels = cast(Table, Label.__table__)
