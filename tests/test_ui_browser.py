"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright for Python,
against a live ``coserve serve`` of fake experts whose map is measured (so the front shows).

Skipped, with the reason, when the ``playwright`` package or ``/usr/bin/chromium`` is absent (CI
installs both: .ci/run). Playwright's own browser download is never used. Set
``COSERVE_UI_SCREENSHOT=docs/img/ui.png`` to keep the screenshot the last test takes.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import HELD_OUT
from live import LiveServer
from test_online_serving import _online_library
from test_trained_routing import CHAT, CODE, trained_dir  # noqa: F401  (a fixture)

from coserve.server.auth import hash_key
from coserve.types import ROUTED_MODEL
from tests.test_measured_map import measured_library

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
KEY = "sk-ui-browser-key"
WAIT_MS = 10_000  # the default wait for a page element (a loaded CI machine is slow, never wrong)

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
expect = sync_api.expect
expect.set_options(timeout=WAIT_MS)
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)


def chat(client: httpx.Client, model: str, text: str) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 4}
    assert client.post("/v1/chat/completions", json=body).status_code == 200


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=60_000)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("ui")
    library = measured_library(folder, budget=0.7)
    data = yaml.safe_load(library.read_text(encoding="utf-8"))
    data["memory"]["active"] = "35MiB"  # small (10) and coder (20) fit together; big (30) alone
    library.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    with LiveServer(folder, library=library, shutdown_timeout=5.0) as server:
        yield server


@pytest.fixture
def api(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=30.0) as client:
        yield client


class Page:
    """A fresh browser context and page that records console errors and failed page scripts."""

    def __init__(self, browser: Any, width: int = 1280, height: int = 800):
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.page = self.context.new_page()
        self.page.set_default_timeout(WAIT_MS)
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def open(self, url: str) -> Any:
        self.page.goto(f"{url}/ui")
        return self.page

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Page]:
    opened = Page(browser)
    try:
        yield opened
    finally:
        opened.close()


def ready(page: Any) -> None:
    """Wait until the page shows every expert and its feed is connected."""
    expect(page.locator("#experts tbody tr")).to_have_count(3)
    expect(page.locator("#feed-status")).to_have_text("feed: live")


def tier(page: Any, expert: str) -> str:
    return str(page.locator(f'#experts tr[data-expert="{expert}"] .tier').get_attribute("data-tier"))


def test_the_page_loads_without_console_errors(page: Page, live: LiveServer) -> None:
    p = page.open(live.url)
    ready(p)
    p.wait_for_selector("#map svg.front")  # the measured library has a front
    assert p.locator("#map tbody tr").count() == 3
    assert p.locator("#server-status").text_content().startswith("serving")
    assert page.errors == []


def test_loading_an_expert_changes_its_tier_on_the_page(page: Page, live: LiveServer, api: httpx.Client) -> None:
    before = api.get("/health").json()["experts"]["coder"]["tier"]
    assert before != "active"
    p = page.open(live.url)
    ready(p)
    assert tier(p, "coder") == before
    chat(api, "coder", "hello")
    expect(p.locator('#experts tr[data-expert="coder"] .tier')).to_have_attribute("data-tier", "active")
    assert p.locator('#experts tr[data-expert="coder"] .tier').text_content() == "ACTIVE"
    assert page.errors == []


def test_a_request_appears_in_the_feed_within_two_seconds(page: Page, live: LiveServer, api: httpx.Client) -> None:
    p = page.open(live.url)
    ready(p)
    chat(api, ROUTED_MODEL, HELD_OUT["math"])
    row = p.wait_for_selector('#feed tbody tr[data-category="math"]', timeout=2_000)
    cells = [cell.text_content() for cell in row.query_selector_all("td")]
    assert cells[1].startswith("math ") and cells[2] == "big" and cells[3] == "routed" and cells[7] == "200"
    share = p.locator('#experts tr[data-expert="big"] td').nth(4)  # "Share of feed": big answered at least once
    expect(share).to_have_text(re.compile(r"^\d+% \([1-9]\d*\)$"), timeout=5_000)
    # The filters: by expert, then by category; "all" shows everything again.
    chat(api, "small", "pinned to the small expert")
    p.wait_for_selector('#feed tbody tr[data-expert="small"]')
    p.get_by_label("Expert", exact=True).select_option("big")
    assert set(p.locator("#feed tbody tr").evaluate_all("rows => rows.map(r => r.dataset.expert)")) == {"big"}
    p.get_by_label("Expert", exact=True).select_option("")
    p.get_by_label("Category", exact=True).select_option("math")
    assert set(p.locator("#feed tbody tr").evaluate_all("rows => rows.map(r => r.dataset.category)")) == {"math"}
    assert page.errors == []


def test_the_prompt_box_shows_the_decision_and_probabilities_by_keyboard(page: Page, live: LiveServer) -> None:
    p = page.open(live.url)
    ready(p)
    for _ in range(30):  # reach the prompt with the keyboard alone
        p.keyboard.press("Tab")
        if p.evaluate("document.activeElement.id") == "prompt":
            break
    assert p.evaluate("document.activeElement.id") == "prompt"
    p.keyboard.type(HELD_OUT["code"])
    p.keyboard.press("Tab")
    assert p.evaluate("document.activeElement.textContent") == "Route"
    p.keyboard.press("Enter")
    assert p.wait_for_selector("#route-expert").text_content() == "coder"
    probabilities = p.get_by_role("list", name="category probabilities").get_by_role("listitem")
    assert sorted(probabilities.all_text_contents()) == ["chat", "code", "math"]
    assert page.errors == []


@pytest.mark.parametrize(
    ("answer", "shown"),
    [  # session 12's walk: "Failed to fetch" (the browser's words) and a JSON SyntaxError on an HTML 502
        (None, "the server is unreachable"),
        ({"status": 502, "content_type": "text/html", "body": "<html>Bad Gateway</html>"}, "HTTP 502"),
    ],
)
def test_the_prompt_box_says_what_went_wrong_when_the_server_does_not_answer(
    page: Page, live: LiveServer, answer: dict[str, Any] | None, shown: str
) -> None:
    p = page.open(live.url)
    ready(p)
    p.route("**/ui/api/route", lambda route: route.abort() if answer is None else route.fulfill(**answer))
    p.fill("#prompt", HELD_OUT["code"])
    p.get_by_role("button", name="Route").click()
    expect(p.locator("#route-result [role=alert]")).to_have_text(shown)


def test_every_control_is_labelled(page: Page, live: LiveServer) -> None:
    p = page.open(live.url)
    ready(p)
    unnamed = p.evaluate(
        """[...document.querySelectorAll('input, select, textarea, button')].filter(c =>
            !(c.labels && c.labels.length) && !c.getAttribute('aria-label') && !c.textContent.trim()
        ).map(c => c.outerHTML)"""
    )
    assert unnamed == []
    assert p.get_by_role("button", name="Route").is_visible()
    assert p.get_by_role("combobox", name="Expert").is_visible()
    assert p.get_by_role("combobox", name="Category").is_visible()
    assert p.get_by_role("textbox", name="Prompt").is_visible()


@pytest.mark.parametrize(("width", "height"), [(1280, 800), (390, 844)])
def test_readable_without_horizontal_overflow(browser: Any, live: LiveServer, width: int, height: int) -> None:
    opened = Page(browser, width, height)
    try:
        p = opened.open(live.url)
        ready(p)
        p.wait_for_selector("#map svg.front")
        assert p.evaluate("document.documentElement.scrollWidth") <= width
        font = p.evaluate("parseFloat(getComputedStyle(document.querySelector('#experts td')).fontSize)")
        assert font >= 12
        assert opened.errors == []
    finally:
        opened.close()


@pytest.mark.usefixtures("trained_dir")  # `coserve train` on separable data, in tmp_path/router
def test_the_budget_line_shows_the_target_and_what_the_window_spent(browser: Any, tmp_path: Path) -> None:
    """``router.online`` (a trained router over small 1 B, mid 3 B and big 7 B; a 7 B budget): the
    code prompt goes to big, the chat prompt to small, so the window spent (7 + 7 + 1) / 3 = 5 B.
    The line is drawn from /ui/api/map's ``budget`` and redrawn as the map is polled."""
    opened = Page(browser)
    try:
        with LiveServer(tmp_path, library=_online_library(tmp_path), shutdown_timeout=5.0) as server:
            p = opened.open(server.url)
            ready(p)
            line = p.locator("#budget")
            expect(line).to_contain_text("target 7.000 B params, realised over the window nothing served yet")
            with httpx.Client(base_url=server.url, timeout=30.0) as client:
                for text in (CODE, CODE, CHAT):
                    chat(client, ROUTED_MODEL, text)
                budget = client.get("/ui/api/map").json()["budget"]
            assert (budget["axis"], budget["target"], budget["realised"]) == ("params", 7.0, 5.0)
            expect(line).to_contain_text(
                f"target {budget['target']:.3f} B params, realised over the window {budget['realised']:.3f} B params"
            )
            expect(line).to_contain_text(f"map version {budget['map_version']}")
            assert opened.errors == []
    finally:
        opened.close()


def test_a_keyed_server_refuses_the_page_without_the_key(browser: Any, tmp_path: Path) -> None:
    opened = Page(browser)
    sent: list[tuple[str, str | None]] = []
    opened.page.on("request", lambda r: sent.append((r.url, r.headers.get("authorization"))))
    try:
        with LiveServer(tmp_path, server={"api_keys": [hash_key(KEY)]}, shutdown_timeout=5.0) as keyed:
            p = opened.open(keyed.url)
            expect(p.locator("#server-status")).to_have_text("locked: API key needed")
            assert p.get_by_label("API key").is_visible()
            assert p.locator("#experts tbody tr").count() == 0  # nothing shown without a key
            p.get_by_label("API key").fill("sk-wrong")
            p.keyboard.press("Enter")
            expect(p.locator("#key-message")).to_have_text("that key was refused")
            assert p.locator("#experts tbody tr").count() == 0
            p.get_by_label("API key").fill(KEY)
            p.keyboard.press("Enter")
            ready(p)
            assert KEY not in p.content() and KEY not in p.url
            assert KEY not in keyed.output()
        data = [(url, auth) for url, auth in sent if "/ui/api/" in url]
        assert all(KEY not in url for url, _ in sent)
        assert (f"{keyed.url}/ui/api/state", None) in data  # the first try, before a key was given
        assert (f"{keyed.url}/ui/api/events", f"Bearer {KEY}") in data
        # The 401s of the refused tries are the browser's own "failed to load" messages, no script error.
        assert all("401" in error for error in opened.errors)
    finally:
        opened.close()


def test_screenshot(browser: Any, live: LiveServer, api: httpx.Client, tmp_path: Path) -> None:
    opened = Page(browser, 1280, 800)
    try:
        p = opened.open(live.url)
        ready(p)
        p.wait_for_selector("#map svg.front")
        for category in ("code", "chat", "math", "code"):
            chat(api, ROUTED_MODEL, HELD_OUT[category])
        p.get_by_role("textbox", name="Prompt").fill("write a python function that parses a date")
        p.get_by_role("button", name="Route").click()
        p.wait_for_selector("#route-expert")
        p.locator("#feed tbody tr").nth(3).wait_for()  # the four requests above (and any earlier ones)
        p.wait_for_timeout(2_000)  # for the picture only: the next state poll shows the tiers after the burst
        target = Path(os.environ.get("COSERVE_UI_SCREENSHOT") or tmp_path / "ui.png")
        shot = tmp_path / "ui.png"
        p.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if target != shot:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, target)
        assert opened.errors == []
    finally:
        opened.close()
