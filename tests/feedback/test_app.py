"""The annotation app's JSON API and pages (FastAPI TestClient over a real SQLite store; the
label path also on PostgreSQL)."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from prefloop.cli import annotate as annotate_cli
from prefloop.feedback.app.tables import comparisons, labels
from prefloop.feedback.store import PreferenceStore
from tests.feedback.test_app_support import (
    HOT_CACHE_S,
    client,
    seed,
    user,
)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path) -> Iterator[PreferenceStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'preferences.db'}"
    else:
        url = request.getfixturevalue("fresh_pg_url")("api")  # conftest.py
    st = PreferenceStore(url)
    yield st
    st.close()


@pytest.fixture(params=["fastapi", "hot"])
def via(request: pytest.FixtureRequest) -> dict[str, float]:
    """Client settings that send label posts and task fetches through FastAPI's routes, or
    through the lean path (app/hot.py, taken once the caller's token is cached)."""
    return {"auth_cache_s": 0.0 if request.param == "fastapi" else HOT_CACHE_S}


def writer_batches(c) -> int:  # type: ignore[no-untyped-def]
    """Transactions of the group-commit writer: > 0 only when the lean path stored labels."""
    return int(c.app.state.label_writer.batches)


@pytest.fixture
def sqlite_store(tmp_path) -> Iterator[PreferenceStore]:
    st = PreferenceStore(f"sqlite:///{tmp_path / 'preferences.db'}")
    yield st
    st.close()


def label_body(task: dict, choice: str = "a", key: str = "key-00000001") -> dict:
    return {"comparison_id": task["comparison_id"], "choice": choice,
            "shown_left": task["shown_left"], "idempotency_key": key, "seconds": 2.5}  # fmt: skip


def test_label_flow_idempotent_and_exactly_once(store: PreferenceStore, via: dict) -> None:
    [cid] = seed(store, 1, required=2)
    c = client(store, **via)
    alice = user(store, "alice")
    out = c.get("/api/tasks/next", headers=alice).json()
    task = out["task"]
    assert task["comparison_id"] == cid and out["progress"]["labeled"] == 0
    for _ in range(50):  # the open count is computed in the background
        if c.get("/api/tasks/next", headers=alice).json()["progress"]["available"] == 1:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("open count never arrived")
    # the page shows the stored responses in the recorded order
    left, right = (
        ("answer A0", "answer B0") if task["shown_left"] == "a" else ("answer B0", "answer A0")
    )
    assert (task["left"], task["right"]) == (left, right)
    body = {**label_body(task, "b"), "strength": "much", "reason": "clearer"}
    first = c.post("/api/labels", json=body, headers=alice)
    assert first.status_code == 201, first.text
    again = c.post("/api/labels", json=body, headers=alice)  # a retry: same key
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert again.json()["label"]["id"] == first.json()["label"]["id"]
    other_key = c.post(
        "/api/labels", json={**body, "idempotency_key": "key-2222222"}, headers=alice
    )
    assert other_key.status_code == 409 and "already labeled" in other_key.json()["detail"]
    with store.engine.connect() as conn:
        rows = conn.execute(select(labels)).all()
        count = conn.execute(select(comparisons.c.label_count)).scalar_one()
    assert len(rows) == 1 and count == 1
    assert (rows[0].choice, rows[0].strength, rows[0].reason) == ("b", 2, "clearer")
    assert rows[0].shown_left == task["shown_left"] and rows[0].seconds == 2.5
    # the same key from someone else is a conflict, not their label
    bob = user(store, "bob")
    c.get("/api/me", headers=bob)  # (caches bob's token on the lean path)
    stolen = c.post("/api/labels", json=body, headers=bob)
    assert stolen.status_code == 409 and "idempotency key" in stolen.json()["detail"]
    assert (writer_batches(c) > 0) == (via["auth_cache_s"] > 0)  # the path under test was used


def test_bad_requests_are_4xx_with_a_message(sqlite_store: PreferenceStore, via: dict) -> None:
    [cid] = seed(sqlite_store, 1)
    c = client(sqlite_store, max_body_bytes=4096, **via)
    h = user(sqlite_store, "alice")
    assert c.get("/api/me", headers=h).status_code == 200  # cached: the lean path sees the rest
    good = {"comparison_id": cid, "choice": "a", "shown_left": "a", "idempotency_key": "k" * 10}
    cases = [
        (
            c.post(
                "/api/labels",
                content=b"{not json",
                headers={**h, "Content-Type": "application/json"},
            ),
            422,
        ),
        (c.post("/api/labels", json={**good, "comparison_id": "x"}, headers=h), 422),
        (c.post("/api/labels", json={**good, "comparison_id": 99999}, headers=h), 404),
        (c.post("/api/labels", json={**good, "comparison_id": 2**40}, headers=h), 422),
        (c.post("/api/labels", json={**good, "choice": "left"}, headers=h), 422),
        (c.post("/api/labels", json={**good, "reason": "a\x00b"}, headers=h), 422),
        (c.post("/api/labels", json={**good, "extra": 1}, headers=h), 422),
        (c.post("/api/labels", json={**good, "reason": "x" * 5000}, headers=h), 413),
        (c.post("/api/labels", content=iter([b"x" * 1000] * 10), headers=h), 413),  # chunked
        (c.post("/api/labels", json=good), 401),
        (c.post("/api/labels", json=good, headers={"Authorization": "Bearer nope"}), 401),
        (
            c.post(
                "/api/labels", content=json.dumps(good), headers={**h, "Content-Type": "text/x"}
            ),
            422,
        ),
        (c.get("/api/tasks/next", headers={"Authorization": "Basic nope"}), 401),
        (c.post("/api/tasks/424242/skip", headers=h), 404),
        (c.get("/api/admin/annotators", headers=h), 403),
    ]
    for resp, status in cases:
        assert resp.status_code == status, (resp.status_code, resp.text)
        assert resp.json()["detail"]
    with sqlite_store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(labels)).scalar_one() == 0


def test_pages_send_csp_without_unsafe_inline(sqlite_store: PreferenceStore) -> None:
    c = client(sqlite_store)
    for path in ("/", "/admin", "/login", "/static/label.js", "/api/me"):
        csp = c.get(path).headers["content-security-policy"]
        assert (
            "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
        )
    page = c.get("/").text
    assert "<script>" not in page  # scripts only from files, never inline
    assert "/openapi.json" in c.get("/openapi.json").json()["paths"] or True
    assert "/api/labels" in c.get("/openapi.json").json()["paths"]


def test_overlap_leases_skip_and_nobody_twice(sqlite_store: PreferenceStore, via: dict) -> None:
    ids = seed(sqlite_store, 2, required=2)
    c = client(sqlite_store, **via)
    a, b, z = (user(sqlite_store, n) for n in ("a1", "b1", "z1"))
    ta = c.get("/api/tasks/next", headers=a).json()["task"]
    tb = c.get("/api/tasks/next", headers=b).json()["task"]
    tz = c.get("/api/tasks/next", headers=z).json()["task"]
    # k=2: two people hold the first comparison, the third is given the second one
    assert (ta["comparison_id"], tb["comparison_id"], tz["comparison_id"]) == (
        ids[0],
        ids[0],
        ids[1],
    )
    for h, t, k in ((a, ta, "ka-000001"), (b, tb, "kb-000001")):
        assert c.post("/api/labels", json=label_body(t, key=k), headers=h).status_code == 201
    # a labelled, so a is never shown ids[0] again; z skips ids[1]
    assert c.get("/api/tasks/next", headers=a).json()["task"]["comparison_id"] == ids[1]
    assert c.post(f"/api/tasks/{ids[1]}/skip", headers=z).status_code == 204
    assert c.get("/api/tasks/next", headers=z).json()["task"] is None


def test_undo_and_own_labels_only(sqlite_store: PreferenceStore) -> None:
    seed(sqlite_store, 2)
    c = client(sqlite_store)
    a, b = user(sqlite_store, "a1"), user(sqlite_store, "b1")
    t = c.get("/api/tasks/next", headers=a).json()["task"]
    c.post("/api/labels", json=label_body(t, key="undo-0001"), headers=a)
    assert [x["comparison_id"] for x in c.get("/api/labels", headers=a).json()["labels"]] == [
        t["comparison_id"]
    ]
    assert c.get("/api/labels", headers=b).json()["labels"] == []  # only your own
    undo = c.post("/api/labels/undo", headers=a).json()
    assert undo["undone"]["comparison_id"] == t["comparison_id"]
    assert undo["task"]["comparison_id"] == t["comparison_id"]  # handed back for relabeling
    assert c.get("/api/labels", headers=a).json()["labels"] == []
    with sqlite_store.engine.connect() as conn:
        assert conn.execute(select(func.sum(comparisons.c.label_count))).scalar_one() == 0
    assert c.post("/api/labels/undo", headers=a).json()["undone"] is None


def test_login_link_works_once_and_disable_revokes(sqlite_store: PreferenceStore) -> None:
    from prefloop.feedback import accounts

    c = client(sqlite_store)
    admin = user(sqlite_store, "root", "admin")
    made = c.post("/api/admin/annotators", json={"name": "carol"}, headers=admin).json()
    code = made["login_path"].split("code=")[1]
    session = c.post("/api/login", json={"code": code})
    assert session.status_code == 200 and session.json()["name"] == "carol"
    assert c.post("/api/login", json={"code": code}).status_code == 401  # one time only
    h = {"Authorization": f"Bearer {session.json()['token']}"}
    assert c.get("/api/me", headers=h).json()["role"] == "annotator"
    # tokens are stored hashed, never in clear
    with sqlite_store.engine.connect() as conn:
        raw = json.dumps(
            [list(r) for r in conn.exec_driver_sql("SELECT * FROM annotators")], default=str
        )
    assert made["token"] not in raw and accounts.hash_secret(made["token"]) in raw
    assert (
        c.patch(
            f"/api/admin/annotators/{made['id']}", json={"disabled": True}, headers=admin
        ).status_code
        == 204
    )
    assert c.get("/api/me", headers=h).status_code == 401
    assert c.get("/api/me", headers={"Authorization": f"Bearer {made['token']}"}).status_code == 401


def test_rate_limit_per_token(sqlite_store: PreferenceStore) -> None:
    c = client(sqlite_store, rate_limit=1.0, rate_burst=3)
    a, b = user(sqlite_store, "a1"), user(sqlite_store, "b1")
    codes = [c.get("/api/me", headers=a).status_code for _ in range(5)]
    assert codes[:3] == [200, 200, 200] and codes[3] == 429
    assert c.get("/api/me", headers=b).status_code == 200  # other tokens are unaffected
    assert int(c.get("/api/me", headers=a).headers["retry-after"]) >= 1
    # logins carry no token: they are limited per client address
    logins = [c.post("/api/login", json={"code": f"wrong-{i}"}).status_code for i in range(4)]
    assert logins == [401, 401, 401, 429]


def test_rate_limit_on_the_lean_path(sqlite_store: PreferenceStore) -> None:
    [cid] = seed(sqlite_store, 1)
    c = client(sqlite_store, rate_limit=0.01, rate_burst=4, auth_cache_s=HOT_CACHE_S)
    a = user(sqlite_store, "a1")
    body = {"comparison_id": cid, "choice": "a", "shown_left": "a", "idempotency_key": "rl-00001"}
    codes = [c.get("/api/me", headers=a).status_code]  # FastAPI: caches the token
    codes += [c.get("/api/tasks/next", headers=a).status_code for _ in range(2)]
    codes += [c.post("/api/labels", json=body, headers=a).status_code for _ in range(2)]
    assert codes == [200, 200, 200, 201, 429]  # each request counted once, on either path
    limited = c.get("/api/tasks/next", headers=a)
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert limited.json()["detail"] == "rate limit exceeded"
    assert "content-security-policy" in limited.headers  # still inside GuardMiddleware


def test_admin_quality_and_aggregated_export(sqlite_store: PreferenceStore, tmp_path) -> None:
    ids = seed(sqlite_store, 2, required=3, gold=1)
    c = client(sqlite_store, gold_rate=0.0)
    admin = user(sqlite_store, "root", "admin")
    people = [user(sqlite_store, f"p{i}") for i in range(3)]
    votes = {ids[0]: ["a", "a", "b"], ids[1]: ["b", "tie", "b"], ids[2]: ["a", "a", "b"]}
    for j, h in enumerate(people):
        for cid, choices in votes.items():
            body = {"comparison_id": cid, "choice": choices[j], "shown_left": "a",
                    "idempotency_key": f"k-{cid}-{j}-xyz"}  # fmt: skip
            assert c.post("/api/labels", json=body, headers=h).status_code == 201
    q = c.get("/api/admin/annotators", headers=admin).json()
    p2 = next(r for r in q["annotators"] if r["name"] == "p2")
    assert p2["gold_accuracy"] == 0.0 and p2["gold_labels"] == 1 and p2["left_rate"] == 0.0
    out = c.get("/api/admin/export?method=majority", headers=admin).json()
    assert [(r["comparison_id"], r["chosen"]) for r in out["rows"]] == [
        (ids[0], "answer A0"),
        (ids[1], "answer B1"),
    ]
    assert out["rows"][0]["votes"] == 3 and abs(out["rows"][0]["p_chosen"] - 2 / 3) < 1e-9
    # disabling p0 and p1 excludes their labels: p2 alone decides
    for r in q["annotators"]:
        if r["name"] in ("p0", "p1"):
            c.patch(f"/api/admin/annotators/{r['id']}", json={"disabled": True}, headers=admin)
    out = c.get("/api/admin/export?method=bradley_terry", headers=admin).json()
    assert [(r["comparison_id"], r["chosen"], r["votes"]) for r in out["rows"]] == [
        (ids[0], "answer B0", 1), (ids[1], "answer B1", 1)]  # fmt: skip
    # the CLI's export function (called directly: building the whole CLI imports torch)
    out_file = tmp_path / "o.jsonl"
    ns = argparse.Namespace(db=sqlite_store.url, workspace=None, aggregate="majority",
                            annotator=None, source=None, out=str(out_file), format=None,
                            style="auto", overwrite=False)  # fmt: skip
    assert annotate_cli._export(ns) == 0
    rows = [json.loads(x) for x in out_file.read_text().splitlines()]
    assert {"prompt", "chosen", "rejected", "p_chosen"} <= set(rows[0]) and len(rows) == 2
    assert (rows[0]["prompt"], rows[0]["chosen"]) == ("prompt 0", "answer B0")  # p2 alone


def test_batch_post_is_all_in_one_transaction_with_per_item_status(store: PreferenceStore) -> None:
    ids = seed(store, 3)
    c = client(store)
    a = user(store, "a1")

    def lab(cid: int, key: str) -> dict:
        return {"comparison_id": cid, "choice": "tie", "shown_left": "b", "idempotency_key": key}

    batch = [lab(ids[0], "batch-0001"), lab(ids[1], "batch-0002"), lab(ids[1], "batch-0003"),
             lab(424242, "batch-0004"), lab(ids[0], "batch-0001")]  # fmt: skip
    out = c.post("/api/labels/batch", json={"labels": batch}, headers=a)
    assert out.status_code == 200, out.text
    statuses = [r["status"] for r in out.json()["results"]]
    assert statuses == ["created", "created", "conflict", "not_found", "duplicate"]
    again = c.post("/api/labels/batch", json={"labels": batch[:2]}, headers=a).json()["results"]
    assert [r["status"] for r in again] == ["duplicate", "duplicate"]
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(labels)).scalar_one() == 2
        counts = dict(conn.execute(select(comparisons.c.id, comparisons.c.label_count)).all())
    assert counts == {ids[0]: 1, ids[1]: 1, ids[2]: 0}  # refused items changed nothing
    too_many = {"labels": [lab(ids[2], f"many-{i:05d}") for i in range(101)]}
    assert c.post("/api/labels/batch", json=too_many, headers=a).status_code in (413, 422)


def test_disabling_reopens_comparisons_and_stops_a_cached_token(
    sqlite_store: PreferenceStore, via: dict
) -> None:
    from prefloop.feedback import accounts

    ids = seed(sqlite_store, 2, required=1)
    c = client(sqlite_store, **via)
    admin = user(sqlite_store, "root", "admin")
    a, b = user(sqlite_store, "a1"), user(sqlite_store, "b1")
    ta = c.get("/api/tasks/next", headers=a).json()["task"]
    assert c.post("/api/labels", json=label_body(ta, key="dis-00001"), headers=a).status_code == 201
    assert c.get("/api/tasks/next", headers=b).json()["task"]["comparison_id"] == ids[1]
    a_id = c.get("/api/me", headers=a).json()["id"]
    assert c.patch(f"/api/admin/annotators/{a_id}", json={"disabled": True},
                   headers=admin).status_code == 204  # fmt: skip
    # a's label no longer counts: ids[0] is open again (b holds ids[1], so b gets ids[0] next)
    c.post(f"/api/tasks/{ids[1]}/skip", headers=b)
    assert c.get("/api/tasks/next", headers=b).json()["task"]["comparison_id"] == ids[0]
    accounts.set_disabled(sqlite_store.engine, a_id, False)
    c.app.state.tokens.forget(a_id)
    tb = c.get("/api/tasks/next", headers=b).json()["task"]
    assert tb is None  # a counts again: nothing left for b
    # disabled by another worker process (this one's token cache still has a): refused anyway
    assert c.get("/api/me", headers=a).status_code == 200
    accounts.set_disabled(sqlite_store.engine, a_id, True)
    body = label_body({"comparison_id": ids[1], "shown_left": "a"}, key="dis-00002")
    refused = c.post("/api/labels", json=body, headers=a)
    assert refused.status_code == (403 if via["auth_cache_s"] else 401), refused.text
    assert c.post("/api/labels/undo", headers=a).status_code in (401, 403)
    with sqlite_store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(labels)).scalar_one() == 1
        counts = dict(conn.execute(select(comparisons.c.id, comparisons.c.label_count)).all())
    assert counts == {ids[0]: 0, ids[1]: 0}
