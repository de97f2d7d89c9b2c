"""The labeling page in a real browser (Debian's Chromium via Playwright): label by mouse and
by keyboard, skip, undo; hostile model output executes nothing. A screenshot is saved to
test-artifacts/ when a check fails."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from prefloop.feedback import accounts
from prefloop.feedback.app.main import build_app
from prefloop.feedback.app.tables import labels
from prefloop.feedback.store import PreferenceStore
from tests.feedback.test_app_support import SETTINGS, free_port, seed

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        shutil.which("chromium") is None, reason="Debian's chromium is not installed"
    ),
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
HOSTILE = (
    "<script>window.__pwned = 'script'</script>\n\n"
    "<img src=x onerror=\"window.__pwned = 'img'\">\n\n"
    "[click me](javascript:window.__pwned='link') and **bold** and `code`\n\n"
    "```python\nprint('<b>not bold</b>')\n```"
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, PreferenceStore]]:
    import uvicorn

    store = PreferenceStore(f"sqlite:///{tmp_path / 'preferences.db'}")
    seed(store, 1, texts=(HOSTILE, "A plain answer."))
    seed(store, 3)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(build_app(SETTINGS, store.engine), host="127.0.0.1",
                                        port=port, log_level="warning"))  # fmt: skip
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", store
    srv.should_exit = True
    thread.join(timeout=10)
    store.close()


@pytest.fixture
def page(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=shutil.which("chromium"),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        pg = browser.new_page(viewport={"width": 1200, "height": 900})
        dialogs: list[str] = []
        pg.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        pg.dialogs = dialogs  # type: ignore[attr-defined]
        yield pg
        if _failed(request):
            ARTIFACTS.mkdir(exist_ok=True)
            pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
        browser.close()


def _failed(request: pytest.FixtureRequest) -> bool:
    # pytest keeps no per-test outcome for fixtures; the test body records it (see _checked)
    return bool(getattr(request.node, "_app_failed", False))


def _current_id(pg) -> int:  # type: ignore[no-untyped-def]
    return int(pg.get_attribute("#task", "data-comparison"))


def test_label_mouse_keyboard_skip_undo_and_no_xss(server, page, request) -> None:  # type: ignore[no-untyped-def]
    base, store = server
    new = accounts.add_user(store.engine, "ann")
    try:
        page.goto(f"{base}{new.login_path}")
        page.wait_for_url(f"{base}/")
        page.wait_for_selector("#task:not([hidden])")
        first = _current_id(page)
        # hostile output is shown as text: no script ran, no <img>, no javascript: link
        html = page.inner_html("#task")
        assert page.evaluate("window.__pwned") is None and page.dialogs == []
        assert page.locator(".pane img").count() == 0 and page.locator(".pane script").count() == 0
        assert page.locator(".pane a").count() == 0  # the javascript: link stayed text
        assert "&lt;script&gt;" in html and "javascript:window.__pwned" in page.inner_text("#task")
        assert (
            page.locator(".pane strong").count() == 1
            and page.locator(".pane pre code").count() == 1
        )
        # mouse: "A is better" (the left pane), then Submit
        page.click(".choice[data-choice=left]")
        page.click("#submit")
        page.wait_for_selector(f"#task:not([data-comparison='{first}'])")
        second = _current_id(page)
        # keyboard: 2 (B is better), Enter
        page.keyboard.press("2")
        page.keyboard.press("Enter")
        page.wait_for_selector(f"#task:not([data-comparison='{second}'])")
        third = _current_id(page)
        page.keyboard.press("s")  # skip the third
        page.wait_for_selector(f"#task:not([data-comparison='{third}'])")
        page.keyboard.press("u")  # undo the keyboard label: the second comparison comes back
        page.wait_for_selector(f"#task[data-comparison='{second}']")
        assert "labeled" in page.inner_text("#progress")
        with store.engine.connect() as conn:
            rows = conn.execute(select(labels)).all()
        assert [r.comparison_id for r in rows] == [first]  # the undone label is gone
        assert rows[0].choice == rows[0].shown_left  # "left is better" = the response shown left
        assert page.evaluate("window.__pwned") is None and page.dialogs == []
    except BaseException:
        request.node._app_failed = True
        raise


def test_admin_page_disables_and_narrow_screen_stacks(server, page, request) -> None:  # type: ignore[no-untyped-def]
    base, store = server
    admin = accounts.add_user(store.engine, "boss", "admin")
    worker = accounts.add_user(store.engine, "worker")
    try:
        page.goto(f"{base}/login")
        page.fill("#token-input", admin.token)  # the paste-a-token path of the login page
        page.click("#token-form button[type=submit]")
        page.wait_for_url(f"{base}/admin")
        row = page.locator("tr[data-annotator='worker']")
        row.wait_for()
        assert "active" in row.inner_text()
        row.locator("button").click()
        page.wait_for_selector("tr[data-annotator='worker'].disabled")
        assert accounts.authenticate(store.engine, worker.token) is None
        # the labeling page on a phone-sized screen: B goes below A
        page.set_viewport_size({"width": 500, "height": 900})
        page.goto(f"{base}/")
        page.wait_for_selector("#task:not([hidden])")
        left, right = page.locator("#left").bounding_box(), page.locator("#right").bounding_box()
        assert left and right and right["y"] >= left["y"] + left["height"] - 1
        assert page.evaluate("window.__pwned") is None
    except BaseException:
        request.node._app_failed = True
        raise
