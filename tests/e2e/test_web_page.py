"""The status page in a real headless Chromium (Debian's package, driven by
playwright with `executable_path`; never a downloaded browser) against a real
daemon process.

One browser per module; one daemon over a few hundred Files serves the tests
that only read, another is made to drift by hand.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright  # dev: missing fails

from scripts.screenshot import CHROMIUM_ARGS
from tests.e2e.daemon_harness import DaemonProcess, Daemons, docs, file_doc
from tests.system import ensure_debian

FILES = 240
"""Resources of the shared daemon: a few pages of 50."""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = ensure_debian("chromium", "chromium")
    with sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    context.set_default_timeout(5000)
    yield context.new_page()
    context.close()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A daemon enforcing FILES Files (one of them failing) and one Directory."""
    base = tmp_path_factory.mktemp("web")
    config, root = base / "config", base / "root"
    config.mkdir()
    (root / "app").mkdir(parents=True)
    files = [
        file_doc(f"file-{i:03d}", root / "app" / f"f{i:03d}.conf", f"{i}\n") for i in range(FILES)
    ]
    # a File in a directory that is a file: fails, with an error on the page
    (root / "blocker").write_text("not a directory\n")
    files.append(file_doc("broken", root / "blocker" / "x.conf", "x\n"))
    (config / "files.yaml").write_text(docs(*files))
    with Daemons(base / "daemons") as daemons:
        daemon = daemons.start(config, root=root)
        daemon.wait_until(
            lambda: (
                sum(daemon.status()["resources"].values()) == FILES + 1
                and not daemon.status()["queue"]
            ),
            "every resource recorded",
        )
        yield daemon
        daemon.stop()


def test_the_page_loads_with_its_counts_and_revision(page: Page, shared: DaemonProcess) -> None:
    status = shared.status()
    page.goto(shared.url + "/")
    expect(page).to_have_title("reconciler status")
    counts = page.get_by_role("region", name="Resources by state")
    expect(counts.get_by_role("link", name=f"{FILES + 1} in all")).to_be_visible()
    expect(counts.get_by_role("link", name=f"{FILES} InSync")).to_be_visible()
    expect(counts.get_by_role("link", name="1 Failed")).to_be_visible()
    facts = page.get_by_role("region", name="Revision and source")
    expect(facts).to_contain_text(status["lastGoodRevision"])
    expect(
        page.get_by_role("table", name=re.compile("^Resources: 1\u2013100 of 241,"))
    ).to_be_visible()
    expect(page.get_by_role("table", name=re.compile("latest transitions"))).to_contain_text(
        "File/"
    )


def test_an_unchanged_live_part_is_a_304(shared: DaemonProcess) -> None:
    first = shared.request("GET", "/live?size=10")
    assert first.status == 200 and first.headers["ETag"]
    again = shared.request("GET", "/live?size=10", headers={"If-None-Match": first.headers["ETag"]})
    assert (again.status, again.body) == (304, b"")


def test_landmarks_labels_and_the_table_s_headers(page: Page, shared: DaemonProcess) -> None:
    page.goto(shared.url + "/")
    for role in ("banner", "navigation", "main", "contentinfo", "search"):
        expect(page.get_by_role(role).first).to_be_visible()
    for label in ("Name contains", "State", "Kind", "Sort by", "Order", "Per page"):
        expect(page.get_by_label(label, exact=True)).to_be_visible()
    table = page.get_by_role("table", name=re.compile("^Resources:"))
    expect(table.get_by_role("columnheader", name="Resource")).to_be_visible()
    expect(table.get_by_role("rowheader", name="File/file-000")).to_be_visible()


def test_typing_in_the_filter_narrows_the_table_without_a_reload(
    page: Page, shared: DaemonProcess
) -> None:
    page.goto(shared.url + "/")
    page.evaluate("window.sameDocument = true")
    page.get_by_label("Name contains").fill("file-12")  # file-120..129
    table = page.get_by_role("table", name=re.compile("^Resources:"))
    expect(table).to_have_accessible_name(
        re.compile("^Resources: 1\u201310 of 10 matching the filter")
    )
    expect(page).to_have_url(re.compile(r"\?q=file-12$"))
    page.get_by_label("State", exact=True).select_option("Failed")
    expect(table).to_have_accessible_name(re.compile("^Resources: none matching the filter"))
    assert page.evaluate("window.sameDocument") is True  # no reload happened


def test_sorting_by_a_column_and_back(page: Page, shared: DaemonProcess) -> None:
    page.goto(shared.url + "/")
    table = page.get_by_role("table", name=re.compile("^Resources:"))
    table.get_by_role("link", name="State").click()
    expect(page).to_have_url(re.compile(r"sort=state"))
    expect(table.get_by_role("columnheader", name=re.compile("State"))).to_have_attribute(
        "aria-sort", "ascending"
    )
    first = table.get_by_role("row").nth(1)
    expect(first).to_contain_text("Failed")  # the state that needs a look comes first
    table.get_by_role("link", name=re.compile("State")).click()
    expect(page).to_have_url(re.compile(r"order=desc"))
    expect(table.get_by_role("row").nth(1)).to_contain_text("InSync")
    table.get_by_role("link", name="Resource").click()
    expect(table.get_by_role("rowheader").first).to_have_text("File/broken")


def test_pages_of_a_small_size(page: Page, shared: DaemonProcess) -> None:
    page.goto(shared.url + "/?size=50")
    table = page.get_by_role("table", name=re.compile("^Resources:"))
    pages = page.get_by_role("navigation", name="Pages of resources")
    expect(pages).to_contain_text("Page 1 of 5")
    expect(table.get_by_role("rowheader")).to_have_count(50)
    pages.get_by_role("link", name="Next").click()
    expect(pages).to_contain_text("Page 2 of 5")
    expect(table).to_have_accessible_name(re.compile("^Resources: 51\u2013100 of 241"))
    pages.get_by_role("link", name="Last").click()
    expect(table).to_have_accessible_name(re.compile("^Resources: 201\u2013241 of 241"))
    expect(table.get_by_role("rowheader")).to_have_count(41)
    page.goto(shared.url + "/?size=50&page=99")  # past the end: the last page
    expect(pages).to_contain_text("Page 5 of 5")


def test_without_javascript_the_snapshot_and_the_form_work(
    browser: Browser, shared: DaemonProcess
) -> None:
    context = browser.new_context(java_script_enabled=False)
    context.set_default_timeout(5000)
    try:
        page = context.new_page()
        page.goto(shared.url + "/")
        expect(page.get_by_role("link", name=f"{FILES + 1} in all")).to_be_visible()
        resources = page.get_by_role("table", name=re.compile("^Resources:"))
        expect(resources.get_by_role("rowheader", name="File/broken")).to_be_visible()
        expect(page.get_by_role("table", name=re.compile("latest transitions"))).to_contain_text(
            "File/"
        )
        page.get_by_label("Name contains").fill("broken")
        page.get_by_label("State", exact=True).select_option("Failed")
        page.get_by_role("button", name="Show").click()
        expect(page).to_have_url(re.compile(r"q=broken&state=Failed"))
        table = page.get_by_role("table", name=re.compile("^Resources:"))
        expect(table).to_have_accessible_name(
            re.compile("^Resources: 1\u20131 of 1 matching the filter")
        )
        expect(table).to_contain_text("File/broken")
    finally:
        context.close()


def test_a_phone_s_viewport_does_not_scroll_sideways(
    browser: Browser, shared: DaemonProcess
) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        page = context.new_page()
        page.goto(shared.url + "/")
        expect(page.get_by_role("table", name=re.compile("^Resources:"))).to_be_visible()
        widths = page.evaluate(
            "[document.documentElement.scrollWidth, document.body.scrollWidth, window.innerWidth]"
        )
        assert max(widths[:2]) <= widths[2], widths
    finally:
        context.close()


@pytest.mark.timeout(60)
def test_a_hand_edit_under_drift_warn_shows_as_drifted_within_two_seconds(
    page: Page, config: Path, root: Path, daemons: Daemons
) -> None:
    warned = root / "warned.conf"
    (config / "app.yaml").write_text(
        docs(
            file_doc("warned", warned, "desired\n", {"drift": "warn"}),
            file_doc("other", root / "other.conf", "x\n"),
        )
    )
    daemon = daemons.start(config, root=root)
    daemon.wait_state("File/warned", "InSync")
    daemon.settle()
    page.goto(daemon.url + "/")
    table = page.get_by_role("table", name=re.compile("^Resources:"))
    expect(table.get_by_role("row").filter(has_text="File/warned")).to_contain_text("InSync")
    page.evaluate("window.sameDocument = true")

    warned.write_text("by hand\n")
    edited = time.monotonic()
    row = table.get_by_role("row").filter(has_text="File/warned")
    expect(row).to_contain_text("Drifted", timeout=2000)
    drift = page.get_by_role("table", name=re.compile(r"File.warned: what the system holds"))
    expect(drift).to_contain_text("/content", timeout=100)
    expect(drift).to_contain_text("by hand")
    expect(drift).to_contain_text("desired")
    seen = time.monotonic() - edited
    assert seen <= 2.0, seen
    assert page.evaluate("window.sameDocument") is True
    expect(page.get_by_role("status")).to_contain_text("Updated at")
    daemon.stop()
