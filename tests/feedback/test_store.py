"""PreferenceStore on SQLite and PostgreSQL: schema, writes, label validation, queues, exports."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import select, text

from prefloop.errors import PrefloopError
from prefloop.feedback.models import Comparison, Label
from prefloop.feedback.store import (
    ComparisonIn,
    LabelIn,
    PreferenceStore,
    PromptIn,
    ResponseIn,
    next_task_query,
)

STORE_TABLES = "labels, comparisons, responses, prompts, annotators"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path) -> Iterator[PreferenceStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'preferences.db'}"
    else:
        url = request.getfixturevalue("pg_url")  # conftest.py; emptied below
    st = PreferenceStore(url)
    if request.param == "postgresql":  # the session database is shared: start each test empty
        with st.engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {STORE_TABLES} RESTART IDENTITY CASCADE"))
    yield st
    st.close()


def _seed(store: PreferenceStore, n: int = 3, required: int = 1) -> list[int]:
    """n prompts, two responses each, one comparison each; returns comparison ids."""
    with store.transaction() as tx:
        pids = tx.add_prompts([PromptIn(f"prompt {i}", source="test") for i in range(n)])
        rids = tx.add_responses(
            [ResponseIn(p, f"answer {p}{s}", "sft-v1", {"top_p": 0.9}) for p in pids for s in "ab"]
        )
        return tx.add_comparisons(
            [
                ComparisonIn(p, rids[2 * i], rids[2 * i + 1], "test", required_labels=required)
                for i, p in enumerate(pids)
            ]
        )


def test_migrations_reach_head_and_reopen_is_idempotent(store: PreferenceStore) -> None:
    assert store.revision() is not None
    head = store.revision()
    PreferenceStore(store.url if store.dialect == "sqlite" else str(store.engine.url)).close()
    assert store.revision() == head
    assert store.stats()["comparisons"] == 0


def test_sqlite_pragmas(tmp_path) -> None:
    with PreferenceStore(f"sqlite:///{tmp_path / 'p.db'}") as st, st.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert c.exec_driver_sql("PRAGMA busy_timeout").scalar() > 0


def test_round_trip_plain_and_multi_turn(store: PreferenceStore) -> None:
    convo = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Review this film?"},
    ]
    with store.transaction() as tx:
        p1, p2 = tx.add_prompts([PromptIn("plain"), PromptIn("user: Hi", messages=convo)])
        texts = [(p1, "x"), (p1, "y"), (p2, "z"), (p2, "w")]
        r = tx.add_responses([ResponseIn(p, t, "v2", {"t": 1.0}) for p, t in texts])
        c1, c2 = tx.add_comparisons([ComparisonIn(p1, r[0], r[1]), ComparisonIn(p2, r[2], r[3])])
    views = store.comparisons([c2, c1])
    assert [v.id for v in views] == [c2, c1]
    assert views[0].messages == convo and views[0].response_a == "z"
    assert views[1].messages is None and (views[1].prompt, views[1].response_b) == ("plain", "y")


def test_comparison_validation(store: PreferenceStore) -> None:
    with store.transaction() as tx:
        p1, p2 = tx.add_prompts([PromptIn("p1"), PromptIn("p2")])
        r1, r2, r3 = tx.add_responses(
            [ResponseIn(p1, "a"), ResponseIn(p1, "b"), ResponseIn(p2, "c")]
        )
    with pytest.raises(PrefloopError, match="same response"):
        store.add_comparisons([ComparisonIn(p1, r1, r1)])
    with pytest.raises(PrefloopError, match=f"response {r3} is not a response to prompt {p1}"):
        store.add_comparisons([ComparisonIn(p1, r1, r2), ComparisonIn(p1, r1, r3)])
    assert store.stats()["comparisons"] == 0  # the valid first one was not written either


def test_label_validation_errors_write_nothing(store: PreferenceStore) -> None:
    c1, c2, _ = _seed(store)
    ann = store.ensure_annotator("alice", "human")
    store.add_labels(ann, [LabelIn(c1, "a")])
    cases = [
        (LabelIn(999_999, "a"), "unknown comparison id 999999"),
        (LabelIn(c1, "b"), "'alice' already labelled comparison"),
        (LabelIn(c2, "A better"), "choice must be one of"),
        (LabelIn(c2, "a", strength=3), "strength must be one of"),
        (LabelIn(c2, "a", shown_left="left"), "shown_left must be one of"),
        (LabelIn(c2, "a", seconds=-1.0), "seconds must be >= 0"),
    ]
    for bad, message in cases:
        with pytest.raises(PrefloopError, match=message):
            store.add_labels(ann, [LabelIn(c2, "a"), bad])  # a good label before the bad one
    with pytest.raises(PrefloopError, match="already labelled"):
        store.add_labels(ann, [LabelIn(c2, "a"), LabelIn(c2, "b")])  # twice in one batch
    with pytest.raises(PrefloopError, match="unknown annotator id"):
        store.add_labels(123_456, [LabelIn(c2, "a")])
    assert store.stats()["labels"] == 1
    with store.session() as s:
        assert s.scalar(select(Comparison.label_count).where(Comparison.id == c2)) == 0


def test_disabled_annotator_cannot_label_and_is_excluded(store: PreferenceStore) -> None:
    c1, c2, _ = _seed(store)
    bob = store.ensure_annotator("bob", "human")
    store.add_labels(bob, [LabelIn(c1, "a")])
    store.set_annotator_disabled("bob")
    with pytest.raises(PrefloopError, match="disabled"):
        store.add_labels(bob, [LabelIn(c2, "a")])
    assert store.preferences() == []
    assert len(store.preferences(include_disabled=True)) == 1
    with pytest.raises(PrefloopError, match="unknown annotator 'nobody'"):
        store.set_annotator_disabled("nobody")


def _counts(store: PreferenceStore) -> dict[int, int]:
    with store.session() as s:
        return dict(s.execute(select(Comparison.id, Comparison.label_count)).tuples().all())


def test_disabled_annotators_labels_stop_counting_toward_k(store: PreferenceStore) -> None:
    c1, c2, c3 = _seed(store)
    bob, eve = store.ensure_annotator("bob", "human"), store.ensure_annotator("eve", "human")
    store.add_labels(bob, [LabelIn(c1, "a"), LabelIn(c2, "b")])
    store.add_labels(eve, [LabelIn(c1, "b")])
    assert _counts(store) == {c1: 2, c2: 1, c3: 0}
    store.set_annotator_disabled("bob")
    store.set_annotator_disabled("bob")  # twice: no double subtraction
    assert _counts(store) == {c1: 1, c2: 0, c3: 0}  # c2 is open again for others
    store.set_annotator_disabled("bob", False)
    assert _counts(store) == {c1: 2, c2: 1, c3: 0}


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_migration_0003_recounts_disabled_annotators_labels(
    db: str, tmp_path, request: pytest.FixtureRequest
) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    if db == "postgresql":
        url = request.getfixturevalue("fresh_pg_url")("m3")  # conftest.py
    store = PreferenceStore(url, upgrade=False)
    store.upgrade("0002_app")  # before: a disabled annotator's labels counted
    c1, c2, _ = _seed(store)
    bob, eve = store.ensure_annotator("bob", "human"), store.ensure_annotator("eve", "human")
    store.add_labels(bob, [LabelIn(c1, "a"), LabelIn(c2, "b")])
    store.add_labels(eve, [LabelIn(c1, "b")])
    with store.engine.begin() as conn:  # disabled the old way: the flag alone
        conn.execute(text("UPDATE annotators SET disabled = true WHERE name = 'bob'"))
    store.upgrade()
    assert store.revision() == "0003_disabled"
    assert _counts(store) == {c1: 1, c2: 0, _: 0}
    store.close()


def test_idempotency_key_replays_without_duplicates(store: PreferenceStore) -> None:
    c1, c2, _ = _seed(store)
    ann = store.ensure_annotator("carol", "human")
    first = store.add_labels(ann, [LabelIn(c1, "b", idempotency_key="k-1")])
    again = store.add_labels(ann, [LabelIn(c1, "b", idempotency_key="k-1")])
    assert first == again
    assert store.stats()["labels"] == 1
    with pytest.raises(PrefloopError, match="idempotency key already used"):
        store.add_labels(ann, [LabelIn(c2, "a", idempotency_key="k-1")])
    with store.session() as s:
        assert s.scalar(select(Comparison.label_count).where(Comparison.id == c1)) == 1


def test_queue_overlap_and_next_task(store: PreferenceStore) -> None:
    c1, c2, c3 = _seed(store, required=2)
    a, b, c = (store.ensure_annotator(n, "human") for n in ("ann", "ben", "cat"))
    assert [v.id for v in store.next_comparisons(a, 10)] == [c1, c2, c3]
    store.add_labels(a, [LabelIn(c1, "a"), LabelIn(c2, "tie")])
    # ann never sees what she labelled; others still need c1, c2 (2 labels each)
    assert [v.id for v in store.next_comparisons(a, 10)] == [c3]
    assert [v.id for v in store.next_comparisons(b, 10)] == [c1, c2, c3]
    store.add_labels(b, [LabelIn(c1, "b", strength=2, reason="kinder", shown_left="b", seconds=3)])
    assert [v.id for v in store.next_comparisons(c, 10)] == [c2, c3]  # c1 has its 2 labels
    assert [v.id for v in store.next_comparisons(c, 10, after_id=c2)] == [c3]
    assert [v.id for v in store.pending_comparisons()] == [c2, c3]
    stats = store.stats()
    assert stats["pending"] == 2 and stats["labels"] == 3
    assert stats["labels_by_choice"] == {"a": 1, "b": 1, "tie": 1, "both_bad": 0}


def test_gold_comparisons_are_kept_out_of_the_regular_queue(store: PreferenceStore) -> None:
    (c1,) = _seed(store, n=1)
    with store.transaction() as tx:
        (p,) = tx.add_prompts([PromptIn("gold prompt")])
        r = tx.add_responses([ResponseIn(p, "great"), ResponseIn(p, "awful")])
        (g,) = tx.add_comparisons([ComparisonIn(p, r[0], r[1], is_gold=True, gold_choice="a")])
    ann = store.ensure_annotator("dan", "human")
    assert [v.id for v in store.next_comparisons(ann, 10)] == [c1]
    assert [v.id for v in store.next_comparisons(ann, 10, gold=True)] == [g]
    store.add_labels(ann, [LabelIn(g, "a")])
    assert store.next_comparisons(ann, 10, gold=True) == []
    assert [
        v.id for v in store.next_comparisons(store.ensure_annotator("eve", "human"), 5, gold=None)
    ] == [c1, g]
    assert store.preferences() == []  # gold labels are quality checks, not training data
    with pytest.raises(PrefloopError, match="gold_choice must be one of"):
        store.add_comparisons([ComparisonIn(p, r[0], r[1], gold_choice="left")])


def test_preferences_order_chosen_by_choice_and_filter(store: PreferenceStore) -> None:
    c1, c2, c3 = _seed(store)
    human = store.ensure_annotator("fay", "human")
    sim = store.ensure_annotator("sim", "simulated")
    store.add_labels(human, [LabelIn(c1, "a"), LabelIn(c2, "b", strength=1)])
    store.add_labels(sim, [LabelIn(c3, "tie"), LabelIn(c1, "both_bad")])
    views = {v.id: v for v in store.comparisons([c1, c2, c3])}
    prefs = store.preferences()
    assert [(p.comparison_id, p.choice) for p in prefs] == [(c1, "a"), (c2, "b")]
    assert (prefs[0].chosen, prefs[0].rejected) == (views[c1].response_a, views[c1].response_b)
    assert (prefs[1].chosen, prefs[1].rejected) == (views[c2].response_b, views[c2].response_a)
    assert prefs[1].strength == 1 and prefs[1].annotator_kind == "human"
    with_ties = store.preferences(include_ties=True)
    assert [p.choice for p in with_ties] == ["a", "b", "tie", "both_bad"]
    assert [p.choice for p in store.preferences(kinds=["simulated"], include_ties=True)] == [
        "tie",
        "both_bad",
    ]
    assert store.preferences(sources=["elsewhere"]) == []
    assert len(store.preferences(annotators=["fay"])) == 2


def test_transaction_is_all_or_nothing(store: PreferenceStore) -> None:
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.add_prompts([PromptIn("doomed")])
        tx.ensure_annotator("ghost", "imported")
        raise RuntimeError("crash mid-import")
    stats = store.stats()
    assert stats["prompts"] == 0 and stats["annotators"] == 0


def test_annotators_kinds_roles_and_names(store: PreferenceStore) -> None:
    store.add_annotator("admin1", "human", role="admin", token_hash="h" * 64)
    assert store.annotator("admin1").role == "admin"  # type: ignore[union-attr]
    with pytest.raises(PrefloopError, match="already exists"):
        store.add_annotator("admin1", "human")
    with pytest.raises(PrefloopError, match="kind must be one of"):
        store.add_annotator("x", "robot")
    with pytest.raises(PrefloopError, match="role must be one of"):
        store.add_annotator("x", "human", role="owner")
    with pytest.raises(PrefloopError, match="exists with kind human"):
        store.ensure_annotator("admin1", "simulated")


def test_concurrent_labels_keep_exact_counts(store: PreferenceStore) -> None:
    cids = _seed(store, n=20, required=8)
    annotators = [store.ensure_annotator(f"worker{i}", "human") for i in range(8)]
    errors: list[BaseException] = []

    def work(ann: int) -> None:
        try:
            for cid in cids:
                store.add_labels(ann, [LabelIn(cid, "a", idempotency_key=f"{ann}-{cid}")])
                store.add_labels(ann, [LabelIn(cid, "a", idempotency_key=f"{ann}-{cid}")])  # retry
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(a,)) for a in annotators]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with store.session() as s:
        assert set(s.scalars(select(Comparison.label_count))) == {8}
        assert s.scalar(select(text("count(*)")).select_from(Label)) == 8 * 20
    assert store.pending_comparisons() == []


def test_next_task_query_uses_the_open_queue_index(tmp_path) -> None:
    with PreferenceStore(f"sqlite:///{tmp_path / 'p.db'}") as st, st.engine.connect() as c:
        sql = next_task_query(7, 1).compile(st.engine, compile_kwargs={"literal_binds": True})
        plan = " ".join(str(row) for row in c.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
        assert "USING INDEX ix_comparisons_open" in plan
        assert (
            "SEARCH labels USING INDEX" in plan and "(comparison_id=? AND annotator_id=?)" in plan
        )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "not a database URL"),
        ("mysql://root@localhost/db", "unsupported database"),
        ("postgresql://nobody@127.0.0.1:1/x", "cannot open preference store"),
    ],
)
def test_bad_urls_are_one_line_errors(url: str, message: str) -> None:
    with pytest.raises(PrefloopError, match=message):
        PreferenceStore(url)
