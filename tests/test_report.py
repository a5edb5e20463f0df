"""The pages to look at: an int8 build's report.html and a sweep's index.html, self-contained (nothing fetched), opened
in a real headless browser (Debian's chromium driven by Playwright): no console errors, the expected content, a
screenshot that is not blank. CVZOO_SCREENSHOTS=DIR keeps the screenshots (README's come from here)."""
import re
from pathlib import Path

import pytest

from cvzoo.artifact import Artifact
from cvzoo.report import bar_chart, table
from tests.conftest import not_blank, open_page, screenshot


def _open(browser, html: Path):
    return open_page(browser, html.as_uri())


def _self_contained(urls: list[str], html: Path) -> bool:
    return all(u == html.as_uri() or u.startswith("data:") for u in urls)


@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.xdist_group("effnetv2_generic_int8")
def test_build_report_in_a_browser(browser, effnetv2_generic_int8):
    art, _ = effnetv2_generic_int8
    html = art / "report.html"
    assert "report.html" in Artifact.load(art).manifest.files  # hashed with the rest: a changed report is refused
    page, errors, urls = _open(browser, html)
    m = Artifact.load(art).manifest
    assert errors == [] and _self_contained(urls, html), (errors, urls)
    assert page.locator("#verdict").inner_text() == "meets its target"
    assert page.locator("h2", has_text="Error per layer").count() == 1
    bars = page.locator("h2:has-text('Error per layer') + p + svg rect")
    assert bars.count() == len(m.build.quantization.layer_sqnr_db) > 20
    photos = page.locator("figure img")  # the photos that stood out, shown, not just named
    g = m.build.guard  # calibration outliers, then the held-out photos the guard set apart
    assert photos.count() == min(12, len(g.calibration_outliers)) + min(12, len(g.held_out_beyond_ranges)) > 0
    assert page.locator("h2", has_text="Held-out photos set apart").count() == (len(g.held_out_beyond_ranges) > 0)
    assert all(photos.nth(i).evaluate("i => i.naturalWidth") > 0 for i in range(photos.count()))
    assert page.get_by_text("indigo_bunting", exact=False).count() >= 1
    assert not_blank(screenshot(page, "build_report.png"))


@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.xdist_group("local_sweep")
def test_sweep_index_in_a_browser(browser, local_sweep):
    out, table_rows, _ = local_sweep
    html = out / "index.html"
    page, errors, urls = _open(browser, html)
    assert errors == [] and _self_contained(urls, html), (errors, urls)
    rows = page.locator("table.zoo tbody tr")
    assert rows.count() == len(table_rows) == 4  # one row per job
    assert page.locator("svg").count() >= 1  # the Pareto plot, inline
    top1 = lambda: [float(rows.nth(i).locator("td").nth(3).inner_text()) for i in range(rows.count())]
    page.get_by_role("columnheader", name="top1", exact=True).click()
    assert top1() == sorted(top1())
    page.get_by_role("columnheader", name="top1", exact=True).click()
    assert top1() == sorted(top1(), reverse=True)
    assert page.locator("h3").count() == 4
    int8 = [m for m in (Artifact.load(p.parent).manifest for p in out.rglob("manifest.json")) if m.precision == "int8"]
    assert len(int8) == 2  # each int8 job's section names the form its build chose (which one depends on the CPU)
    assert all(page.get_by_text(f"{m.build.quantization.form}, ", exact=False).count() >= 1 for m in int8)
    assert not_blank(screenshot(page, "sweep_index.png"))


def test_pages_escape_what_they_show():
    html = table(["<b>"], [["<script>alert(1)</script>", 1.5, None, True]]) + bar_chart([("<x>", 2.0)], "ms")
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;x&gt;" in html
    assert re.search(r'<td class="n" data-v="1.5">1.5</td>', html)
