"""Browser fixtures for the UI tests: Debian's chromium driven by Playwright, one tab per test."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from browser import CHROMIUM, CHROMIUM_ARGS


@pytest.fixture(scope="module")
def browser_context() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1360, "height": 900})
        yield context
        context.close()


@pytest.fixture
def page(browser_context: Any) -> Iterator[Any]:
    """A tab that records script errors, console errors (CSP violations among them) and dialogs."""
    tab = browser_context.new_page()
    tab.problems = []
    tab.dialogs = []
    tab.on("pageerror", lambda exc: tab.problems.append(f"pageerror: {exc}"))
    tab.on("console", lambda msg: msg.type == "error" and tab.problems.append(f"console: {msg.text}"))
    tab.on("dialog", lambda dialog: (tab.dialogs.append(dialog.message), dialog.dismiss()))
    yield tab
    problems = tab.problems
    tab.close()
    assert not problems
