"""A real browser for dashboard tests: Debian's chromium driven by Playwright.

No browser is downloaded (``playwright install`` is never run): Playwright launches the
system's chromium (``apt-get install chromium``; ``GPUNET_CHROMIUM`` names another). Without
it the tests skip saying why, except under CI (``CI=true``), where they fail."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.conftest import missing as requirement_missing

CHROMIUM = os.environ.get("GPUNET_CHROMIUM", "/usr/bin/chromium")


def missing() -> str | None:
    """Why no browser can run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} not found: install it with apt-get install chromium"
    return None


def require_browser() -> None:
    why = missing()
    if why is not None:
        requirement_missing(f"a browser: {why}")


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless chromium (Playwright's ``Browser``), closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # --no-sandbox: tests run as root, where chromium's own sandbox refuses to start
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def sign_in(browser: Any, url: str, token: str) -> Any:
    """A new browser context (its own cookies) signed in with ``token``; returns its page."""
    page = browser.new_context().new_page()
    page.set_default_timeout(30_000)
    page.goto(url + "/")
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")
    page.wait_for_selector("#who")
    return page
