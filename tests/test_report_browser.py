"""report.html in a real browser at a phone's width (390 px) and a desktop's (1280 px): a screenshot is taken,
and the page is no wider than the window (wide tables scroll inside their own box). Needs a headless Chromium
on PATH (Debian: `apt-get install chromium`); skipped without one."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from slimlm.experiments import report as rep
from test_report import make_run

BROWSER = next((p for n in ("chromium", "chromium-browser", "google-chrome", "chrome") if (p := shutil.which(n))), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no chromium binary on PATH (apt-get install chromium)")
PNG = b"\x89PNG\r\n\x1a\n"
# An outer page that holds the report in a frame of the width under test (a headless window has a minimum
# width above 390 px; a frame has none) and writes the frame's page widths into its own DOM once all has loaded.
PROBE = """<!DOCTYPE html><html><body style="margin:0">
<iframe id="f" src="{page}" style="width:{width}px;height:900px;border:0"></iframe>
<script>addEventListener("load", () => {{
  const d = document.getElementById("f").contentDocument.documentElement;
  document.body.dataset.scroll = d.scrollWidth; document.body.dataset.client = d.clientWidth;
}})</script></body></html>"""


def chromium(tmp_path, *args: str) -> str:
    """One headless run, its own profile; stdout (the DOM for --dump-dom)."""
    profile = tmp_path / "profile"
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}"]
    done = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def page_widths(tmp_path, folder, page: str, width: int) -> tuple[int, int]:
    """(scrollWidth, clientWidth) of `page` laid out `width` px wide."""
    probe = folder / f"probe-{width}.html"
    probe.write_text(PROBE.format(page=page, width=width), encoding="utf-8")
    dom = chromium(
        tmp_path,
        "--allow-file-access-from-files",
        "--window-size=1400,1000",
        "--virtual-time-budget=5000",
        "--dump-dom",
        probe.as_uri(),
    )
    found = re.search(r'data-scroll="(\d+)" data-client="(\d+)"', dom)
    assert found, dom[-2000:]
    return int(found[1]), int(found[2])


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A temperature sweep's report with its plots: the widest tables any report has and a real figure."""
    run = make_run(tmp_path_factory.mktemp("browser") / "run", "temperature")
    rep.write_report(run)
    return run


@pytest.mark.parametrize("width", [390, 1280])
def test_report_fits_the_window_and_screenshots(tmp_path, written, width):
    shot = tmp_path / f"report-{width}.png"
    chromium(tmp_path, f"--window-size={width},2000", f"--screenshot={shot}", (written / "report.html").as_uri())
    data = shot.read_bytes()
    assert data.startswith(PNG) and int.from_bytes(data[16:20], "big") == width  # the PNG header's width
    scroll, client = page_widths(tmp_path, written, "report.html", width)
    assert client == width and scroll <= client, f"page {scroll} px wide in a {client} px window"


def test_the_probe_sees_a_page_wider_than_the_window(tmp_path, written):
    """The check above can fail: a page with a fixed-width block is measured wider than the window."""
    html = (written / "report.html").read_text(encoding="utf-8")
    (written / "wide.html").write_text(html.replace("<body>", '<body><div style="width:900px">x</div>'))
    scroll, client = page_widths(tmp_path, written, "wide.html", 390)
    assert client == 390 and scroll > 390
