"""Fuzz every operation of the OpenAPI spec with schemathesis (valid admin token; valid and
invalid bodies, ids and query strings): the API answers 4xx with a message, never 5xx.
The token is cached after its first use, so label posts and task fetches also go through the
lean path (app/hot.py) and whatever it hands on to FastAPI.

Schemathesis' pytest plugin does not support pytest 9 yet, so the cases are drawn from its
Hypothesis strategies directly (one strategy per operation and generation mode).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from prefloop.feedback import accounts
from prefloop.feedback.app.main import build_app
from prefloop.feedback.store import PreferenceStore
from tests.feedback.test_app_support import HOT_CACHE_S, SETTINGS, seed

EXAMPLES = 10  # per operation and mode: 14 operations x 2 modes x 10 = ~280 requests


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=str)
def test_fuzz_openapi_no_server_errors(tmp_path: Path, mode: schemathesis.GenerationMode) -> None:
    store = PreferenceStore(f"sqlite:///{tmp_path / 'preferences.db'}")
    seed(store, 20, required=2, gold=2, messages=[{"role": "user", "content": "hi"}])
    token = accounts.add_user(store.engine, "fuzz-admin", "admin").token
    accounts.add_user(store.engine, "someone")
    hot = replace(SETTINGS, auth_cache_s=HOT_CACHE_S)
    schema = schemathesis.openapi.from_asgi("/openapi.json", build_app(hot, store.engine))
    headers = {"Authorization": f"Bearer {token}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    for op in operations:

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(headers={**(case.headers or {}), **headers},
                                   checks=[not_a_server_error])  # fmt: skip

        run()
    store.close()
