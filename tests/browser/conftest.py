"""Headless Chromium for the browser tests, driven by Playwright's Python API.

The browser is Debian's /usr/bin/chromium (no browser download). Every request to a
host other than 127.0.0.1 is aborted and recorded, so a test never reaches out and
can check that the page did not try to.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

import pytest

CHROMIUM = os.environ.get("ONML_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 1000}
# Milliseconds any single Playwright action or wait may take.
ACTION_TIMEOUT_MS = 30_000


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A Chromium context with a fresh profile; requests leaving 127.0.0.1 are aborted.

    The list of aborted URLs is available as ``context.blocked_urls``.
    """
    if not Path(CHROMIUM).is_file() and shutil.which(CHROMIUM) is None:
        pytest.skip(f"browser test needs Chromium at {CHROMIUM} (Debian package 'chromium')")
    sync_api = pytest.importorskip("playwright.sync_api")

    profile = tmp_path_factory.mktemp("chromium-profile")
    blocked: list[str] = []

    def keep_local(route: Any) -> None:
        if urlparse(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, viewport=VIEWPORT,
            locale="en-US",
        )
        context.set_default_timeout(ACTION_TIMEOUT_MS)
        context.route("**/*", keep_local)
        context.blocked_urls = blocked
        try:
            yield context
        finally:
            context.close()
