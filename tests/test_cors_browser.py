"""server.cors_origins in a real browser: a page on another origin calls a live ``coserve serve``.

Debian's headless Chromium through Playwright, as tests/test_ui_browser.py (skipped, with the reason, where
either is absent). The page comes from a second HTTP server on loopback (another port: another origin; a
page the browser answers itself would count as public, and Chromium keeps public pages off loopback), so
the API call crosses origins: a preflight (JSON body, an Authorization header), then the chat request.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from live import LiveServer
from test_ui_browser import browser  # noqa: F401  (a fixture: the module skips where Chromium is absent)

CALL = """async (url) => {
  try {
    const r = await fetch(url + "/v1/chat/completions", {
      method: "POST",
      headers: {"Content-Type": "application/json", "Authorization": "Bearer sk-page"},
      body: JSON.stringify({model: "coserve", messages: [{role: "user", content: "Name a colour."}], max_tokens: 4}),
    });
    const body = await r.json();
    return {status: r.status, expert: r.headers.get("x-coserve-expert"), answer: body.choices[0].message.content};
  } catch (e) {
    return {blocked: String(e)};
  }
}"""


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!doctype html><title>app</title>"
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture(scope="module")
def page_origin() -> Iterator[str]:
    """A web app's origin: a plain HTTP server on loopback whose page calls coserve."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _call_from_page(chromium: Any, origin: str, server: LiveServer) -> dict[str, Any]:
    context = chromium.new_context()
    try:
        page = context.new_page()
        page.goto(f"{origin}/")
        result: dict[str, Any] = page.evaluate(CALL, server.url)
        return result
    finally:
        context.close()


def test_a_page_on_a_named_origin_gets_the_answer_and_who_gave_it(
    browser: Any,  # noqa: F811
    page_origin: str,
    tmp_path: Path,
) -> None:
    with LiveServer(tmp_path, server={"cors_origins": [page_origin]}, shutdown_timeout=5.0) as server:
        result = _call_from_page(browser, page_origin, server)
    assert result.get("status") == 200, result
    assert result["expert"] in {"small", "coder", "big"} and result["answer"]


def test_by_default_the_browser_blocks_the_page(browser: Any, page_origin: str, tmp_path: Path) -> None:  # noqa: F811
    with LiveServer(tmp_path, shutdown_timeout=5.0) as server:
        result = _call_from_page(browser, page_origin, server)
    assert "blocked" in result and "Failed to fetch" in result["blocked"], result
