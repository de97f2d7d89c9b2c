"""Assignment: overlap k with leases, nobody twice, skips, gold rate (SQLite and PostgreSQL)."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import pytest

from prefloop.feedback import accounts, assign
from prefloop.feedback.app.fastpath import read_cursor, write_cursor
from prefloop.feedback.store import LabelIn, PreferenceStore
from tests.feedback.test_app_support import seed


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path) -> Iterator[PreferenceStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'preferences.db'}"
    else:
        url = request.getfixturevalue("fresh_pg_url")("assign")  # conftest.py
    st = PreferenceStore(url)
    yield st
    st.close()


def take(store: PreferenceStore, who: int, **kw: object) -> int | None:
    """Pick + lease in one write transaction, as the app does."""
    with write_cursor(store.engine) as cur:
        return assign.take(cur, who, 60, **kw)  # type: ignore[arg-type]


def test_overlap_leases_and_nobody_twice(store: PreferenceStore) -> None:
    ids = seed(store, 3, required=2)
    a, b, c = (accounts.add_user(store.engine, n).id for n in ("a", "b", "c"))
    assert [take(store, a), take(store, b), take(store, c)] == [ids[0], ids[0], ids[1]]
    assert take(store, a) == ids[0]  # asking again returns what you hold
    store.add_labels(a, [LabelIn(ids[0], "a")])
    assert take(store, a) == ids[1]  # never the one you labelled
    # leases expire: in 2 minutes b's and c's holds are gone
    with read_cursor(store.engine) as cur:
        later = time.time() + 120
        assert assign.next_comparison(cur, c, now=later) == ids[0]


def test_skip_and_unknown(store: PreferenceStore) -> None:
    ids = seed(store, 2)
    a = accounts.add_user(store.engine, "a").id
    with write_cursor(store.engine) as cur:
        assign.skip(cur, ids[0], a)
        assign.skip(cur, ids[0], a)  # twice is fine
    assert take(store, a) == ids[1]
    with pytest.raises(Exception, match="unknown comparison"), write_cursor(store.engine) as cur:
        assign.skip(cur, 999_999, a)


def test_gold_rate_and_gold_once_each(store: PreferenceStore) -> None:
    ids = seed(store, 5, gold=2)
    regular, gold = ids[:5], ids[5:]
    a, b = (accounts.add_user(store.engine, n).id for n in ("a", "b"))
    rng = random.Random(0)
    assert take(store, a, gold_rate=1.0, rng=rng) == gold[0]
    store.add_labels(a, [LabelIn(gold[0], "a")])
    assert take(store, b, gold_rate=1.0, rng=rng) == gold[0]  # gold is for everyone
    assert take(store, a, gold_rate=0.0) == regular[0]  # rate 0: never gold
    store.add_labels(a, [LabelIn(gold[1], "a")])
    assert take(store, a, gold_rate=1.0, rng=rng) == regular[0]  # no gold left for a
    # the rate is honoured statistically
    with read_cursor(store.engine) as cur:
        picks = [assign.next_comparison(cur, b, gold_rate=0.3, rng=rng) for _ in range(400)]
    share = sum(p in gold for p in picks) / len(picks)
    assert 0.22 < share < 0.38


def test_set_overlap(store: PreferenceStore) -> None:
    ids = seed(store, 2, required=1, gold=1)
    a, b = (accounts.add_user(store.engine, n).id for n in ("a", "b"))
    store.add_labels(a, [LabelIn(ids[0], "a")])
    assert take(store, b) == ids[1]
    assert assign.set_overlap(store.engine, 2) == 2  # the gold comparison is left alone
    assert take(store, b) == ids[1]  # b still holds ids[1]: a reload shows the same task
    c = accounts.add_user(store.engine, "c").id
    assert take(store, c) == ids[0]  # ids[0] is open again: it wants a second label


def test_open_queue_uses_the_partial_index(tmp_path) -> None:
    store = PreferenceStore(f"sqlite:///{tmp_path / 'p.db'}")
    with read_cursor(store.engine) as cur:
        plan = " ".join(
            str(r)
            for r in cur.cur.execute("EXPLAIN QUERY PLAN " + assign.OPEN_QUERY, (1, 1, 1, 0.0))
        )
    assert "ix_comparisons_open" in plan
    store.close()


def test_own_lease_comes_back_first(store: PreferenceStore) -> None:
    ids = seed(store, 2, required=1)
    a, b = (accounts.add_user(store.engine, n).id for n in ("a", "b"))
    assert take(store, a) == ids[0]
    assert take(store, b) == ids[1]
    with write_cursor(store.engine) as cur:  # a's lease on ids[0] ends (as when a skips it)
        assign.release(cur, ids[0], a)
    assert take(store, b) == ids[1]  # b keeps its task rather than also taking ids[0]
    assert take(store, a) == ids[0]


@pytest.mark.postgres
def test_concurrent_takes_lock_different_rows(fresh_pg_url) -> None:
    """Two fetches in flight at once (PostgreSQL): the second skips the row the first picked
    and has not committed yet, so with k = 1 each gets its own comparison."""
    st = PreferenceStore(fresh_pg_url("locks"))
    try:
        ids = seed(st, 2, required=1)
        a, b, c = (accounts.add_user(st.engine, n).id for n in ("a", "b", "c"))
        with write_cursor(st.engine) as first:
            assert assign.take(first, a, 60) == ids[0]  # row locked until this commits
            assert take(st, b) == ids[1]
        assert take(st, c) is None  # both leased: nothing left for a third person
    finally:
        st.close()


@pytest.mark.postgres
def test_a_fetch_waits_for_a_locked_row_that_may_have_room(fresh_pg_url) -> None:
    """k = 2 and one comparison, locked by a fetch in flight: a second fetch finds nothing
    unlocked, so it waits for that row and then takes the place still free (PostgreSQL)."""
    import threading

    st = PreferenceStore(fresh_pg_url("wait"))
    try:
        ids = seed(st, 1, required=2)
        a, b, c = (accounts.add_user(st.engine, n).id for n in ("a", "b", "c"))
        got: list[int | None] = []
        with write_cursor(st.engine) as first:
            assert assign.take(first, a, 60) == ids[0]
            second = threading.Thread(target=lambda: got.append(take(st, b)))
            second.start()
            second.join(timeout=0.5)
            assert second.is_alive(), "the second fetch should wait for the first one's lock"
        second.join(timeout=10)
        assert got == [ids[0]]
        assert take(st, c) is None  # now both places are taken
    finally:
        st.close()
