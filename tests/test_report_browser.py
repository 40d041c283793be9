"""The HTML report in a real headless Chromium, offline, from file://.

The report is loaded as is for a screenshot (must not be blank), and once more with a probe
script appended that drives it like a user: opens the x-axis dropdown and picks an objective,
picks another trial in the operations menu, clicks a table header to sort. The probe writes what
it saw into the DOM, which Chromium dumps (--dump-dom after a virtual-time budget). Console
messages come from --enable-logging=stderr; the report logs nothing, so any message fails.
Static images through kaleido (which drives the same Chromium) are checked here too.
"""
from __future__ import annotations

import json
import re
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from spikeprune import compare_fronts, write_report

from test_ann import ann_study
from test_compare import studies
from test_results import make_study, random_study, toy_trials

pytestmark = pytest.mark.integration  # a browser

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000"]

PROBE = """<script>
window.addEventListener("load", function () {
  const out = {errors: window.__errors || []};
  const done = () => { const pre = document.createElement("pre"); pre.id = "probe";
                       pre.textContent = JSON.stringify(out); document.body.appendChild(pre); };
  try {
    const gd = document.getElementById("pareto");
    out.plots = Array.from(document.querySelectorAll(".js-plotly-plot")).map(d => d.id);
    out.svgs = document.querySelectorAll("svg.main-svg").length;
    out.points = gd.querySelectorAll(".scatterlayer .point").length;
    out.names = gd.data.map(t => t.name);
    const front = gd.data[out.names.indexOf("Pareto front")];
    out.front_before = front.x;
    out.hover = front.text[1];
    gd.querySelector(".updatemenu-header").dispatchEvent(new MouseEvent("click", {bubbles: true}));
    setTimeout(function () {
      try {
        const buttons = Array.from(gd.querySelectorAll(".updatemenu-dropdown-button"));
        out.buttons = buttons.map(b => b.textContent);
        buttons[0].dispatchEvent(new MouseEvent("click", {bubbles: true}));   // x axis := first objective
        out.front_after = gd.data[out.names.indexOf("Pareto front")].x;
        out.xtitle = gd.layout.xaxis.title.text;
        const select = document.getElementById("ops-select");
        out.ops_options = Array.from(select.options).map(o => o.value);
        select.value = "4";
        select.dispatchEvent(new Event("change"));
        out.ops_query = document.getElementById("ops").data.map(t => t.y);
        const th = Array.from(document.querySelectorAll("table.sortable th"));
        const col = th.findIndex(h => h.textContent === "sops");
        th[col].click();
        out.sorted = Array.from(document.querySelectorAll("table.sortable tbody tr")).map(r => r.cells[0].textContent);
        th[col].click();
        out.sorted_desc = Array.from(document.querySelectorAll("table.sortable tbody tr"))
                               .map(r => r.cells[0].textContent);
      } catch (e) { out.errors.push(String(e)); }
      done();
    }, 500);
  } catch (e) { out.errors.push(String(e)); done(); }
});
</script>"""
# Installed first in <head>, so errors thrown while the plots are drawn are caught too.
CATCH = ('<script>window.__errors = []; window.addEventListener("error", '
         'e => window.__errors.push(String(e.message)));</script>')


def run_chromium(binary: Path, tmp: Path, page: Path, *args: str) -> tuple[str, list[str]]:
    """Run headless Chromium on a file:// page; stdout and the page's console messages."""
    proc = subprocess.run(
        [binary, *FLAGS, f"--user-data-dir={tmp / 'profile'}", *args, page.resolve().as_uri()],
        capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, [l for l in proc.stderr.splitlines() if ":CONSOLE" in l]


def run_probe(binary: Path, tmp: Path, page: Path, script: str) -> tuple[dict, list[str]]:
    """Run ``page`` in headless Chromium with ``CATCH`` first in its head and the probe ``script``
    at the end of its body; what the probe wrote into its <pre id="probe">, and the console messages."""
    probe = tmp / f"{page.stem}-probe.html"
    probe.write_text(page.read_text().replace("<head>", "<head>" + CATCH, 1).replace("</body>", script + "</body>", 1))
    dom, console = run_chromium(binary, tmp, probe, "--dump-dom")
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, flags=re.S)
    assert found, dom[-2000:]
    return json.loads(found.group(1).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")), console


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit, non-interlaced RGB/RGBA PNG: width, height, pixels (no PIL needed)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    bpp = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, [row[x:x + bpp] for row in rows for x in range(0, stride, bpp)]


def assert_not_blank(png: bytes, min_colours: int) -> None:
    width, height, pixels = png_pixels(png)
    background = max(set(pixels[::97]), key=pixels[::97].count)
    drawn = sum(p != background for p in pixels) / len(pixels)
    assert len(set(pixels)) >= min_colours and drawn > 0.02, (width, height, len(set(pixels)), drawn)


@pytest.fixture
def report(tmp_path) -> Path:
    return write_report(make_study(toy_trials()), tmp_path / "report.html")[0]


def test_report_runs_in_chromium(chromium_path, report, tmp_path):
    out, console = run_probe(chromium_path, tmp_path, report, PROBE)
    assert out["errors"] == [] and console == []
    assert out["plots"] == ["pareto", "hypervolume", "layers", "ops"] and out["svgs"] >= 8
    assert out["names"] == ["dominated", "early-stopped", "infeasible", "dominated within noise",
                            "Pareto front", "dense baseline"]
    assert out["points"] == 8 + 1  # every complete trial, plus the baseline star
    assert out["hover"].startswith("<b>trial 1</b> (Pareto front)") and "heads: 2 3" in out["hover"]
    # the x-axis dropdown switches every trace from sops to the metric (named accuracy: an SST-2 study)
    assert out["buttons"] == ["accuracy", "sops"]
    assert out["front_before"] == [1000, 500, 200, 100]
    assert out["front_after"] == [0.9, 0.88, 0.85, 0.7] and out["xtitle"] == "accuracy (maximize)"
    # operations menu: front trials first, then the others; picking trial 4 (200 SOPs) restyles the bars
    assert out["ops_options"][:4] == ["0", "1", "4", "8"]
    assert out["ops_query"] == [[60, 60], [40, 40]]
    # table sorted by SOPs numerically (1000 after 900; ties keep their order), failed trial 7
    # (no value) last in both directions
    assert out["sorted"] == ["6", "5", "8", "4", "1", "2", "3", "0", "7"]
    assert out["sorted_desc"] == ["0", "3", "2", "1", "4", "5", "8", "6", "7"]


def test_report_screenshot_is_not_blank(chromium_path, report, tmp_path):
    shot = tmp_path / "shot.png"
    _, console = run_chromium(chromium_path, tmp_path, report, f"--screenshot={shot}", "--window-size=1280,2400")
    assert console == []
    assert_not_blank(shot.read_bytes(), min_colours=50)


def test_static_images_through_kaleido(chromium_path, tmp_path, monkeypatch):
    monkeypatch.setenv("BROWSER_PATH", str(chromium_path))  # choreographer (kaleido) reads it
    files = write_report(random_study(30, 2), tmp_path / "r.html", images=["png", "svg"], image_dir=tmp_path / "img")
    names = sorted(p.name for p in files[1:])
    assert names == sorted(f"r-{n}.{f}" for n in ("pareto", "hypervolume", "layers", "ops", "importance")
                           for f in ("png", "svg"))
    for p in files[1:]:
        if p.suffix == ".png":
            assert_not_blank(p.read_bytes(), min_colours=20)
        else:
            svg = p.read_text()
            assert svg.lstrip().startswith("<svg") and "updatemenu-header" not in svg and ">x axis<" not in svg


ANN_PROBE = """<script>
window.addEventListener("load", function () {
  const out = {errors: window.__errors || []};
  try {
    const gd = document.getElementById("pareto");
    out.names = gd.data.map(t => t.name);
    out.legend = Array.from(gd.querySelectorAll(".legendtext")).map(t => t.textContent);
    out.lines = gd.querySelectorAll(".scatterlayer .trace .js-line").length;
    out.points = gd.querySelectorAll(".scatterlayer .point").length;
    const line = gd.data[out.names.indexOf("fp32 ANN teacher")];
    out.line_x = line.x;
    out.xrange = gd._fullLayout.xaxis.range;
  } catch (e) { out.errors.push(String(e)); }
  const pre = document.createElement("pre"); pre.id = "probe";
  pre.textContent = JSON.stringify(out); document.body.appendChild(pre);
});
</script>"""


def test_report_shows_the_ann_references_in_chromium(chromium_path, tmp_path):
    study, ref = ann_study()
    page = write_report(study, tmp_path / "ann.html")[0]
    out, console = run_probe(chromium_path, tmp_path, page, ANN_PROBE)
    assert out["errors"] == [] and console == []
    ann = ["fp32 ANN teacher", "int8 ANN teacher", "integer twins of the front"]
    assert out["names"][-3:] == ann and set(ann) <= set(out["legend"])
    # Drawn: the two vertical lines, and the 4 trials + baseline star + 3 twins as points.
    assert out["lines"] == 2 and out["points"] == 4 + 1 + 3
    e = ref.teacher.energy_uj
    assert out["line_x"] == pytest.approx([e, e])
    # The x axis (energy) reaches from below the int8 teacher to beyond the fp32 teacher.
    assert out["xrange"][0] < ref.teacher_int8.energy_uj and out["xrange"][1] > 3 * e


COMPARE_PROBE = """<script>
window.addEventListener("load", function () {
  const out = {errors: window.__errors || []};
  const done = () => { const pre = document.createElement("pre"); pre.id = "probe";
                       pre.textContent = JSON.stringify(out); document.body.appendChild(pre); };
  try {
    const gd = document.getElementById("fronts");
    out.plots = Array.from(document.querySelectorAll(".js-plotly-plot")).map(d => d.id);
    out.points = gd.querySelectorAll(".scatterlayer .point").length;
    out.names = gd.data.map(t => t.name);
    out.sst2_before = [gd.data[0].x, gd.data[0].y];
    out.hover = gd.data[1].text[0];
    out.ytitle = gd.layout.yaxis.title.text;
    gd.querySelector(".updatemenu-header").dispatchEvent(new MouseEvent("click", {bubbles: true}));
    setTimeout(function () {
      try {
        const buttons = Array.from(gd.querySelectorAll(".updatemenu-dropdown-button"));
        out.buttons = buttons.map(b => b.textContent);
        buttons[2].dispatchEvent(new MouseEvent("click", {bubbles: true}));   // x axis := energy / dense
        out.sst2_after = gd.data[0].x;
        out.xtitle = gd.layout.xaxis.title.text;
        const th = Array.from(document.querySelectorAll("table.sortable th"));
        const rows = () => Array.from(document.querySelectorAll("table.sortable tbody tr")).map(r => r.cells[0].textContent);
        const col = th.findIndex(h => h.textContent === "SOPs / dense");
        th[col].click();
        out.sorted = rows();
        th[col].click();
        out.sorted_desc = rows();
      } catch (e) { out.errors.push(String(e)); }
      done();
    }, 500);
  } catch (e) { out.errors.push(String(e)); done(); }
});
</script>"""


def test_tasks_compared_relative_to_their_dense_students_in_chromium(chromium_path, tmp_path):
    """Two tasks' fronts side by side, each against its dense student: drawn, switchable, sortable."""
    page = compare_fronts(studies(), tmp_path / "tasks.html", labels=["SST-2", "CoLA"])
    out, console = run_probe(chromium_path, tmp_path, page, COMPARE_PROBE)
    assert out["errors"] == [] and console == []
    assert out["plots"] == ["fronts"] and out["names"] == ["SST-2", "CoLA", "dense student"]
    assert out["points"] == 3 + 3 + 1   # each task's front, and the one star every dense student sits on
    # SST-2's front: 0, -0.5 and -5 points from its dense student at 1, 0.4 and 0.1 of its SOPs
    assert out["sst2_before"][0] == pytest.approx([1.0, 0.4, 0.1]) and out["sst2_before"][1] == pytest.approx([0, -0.5, -5])
    assert out["ytitle"] == "metric − dense student's (points)"
    assert out["hover"].startswith("<b>CoLA</b> (cola)<br>Matthews correlation")
    assert out["buttons"] == ["metric − dense", "SOPs / dense", "energy / dense", "Σ T / dense", "size / dense"]
    assert out["sst2_after"] == pytest.approx([1.0, 0.45, 0.1]) and out["xtitle"] == "energy / dense student's"
    # sorted by the cheapest config's SOPs within 1 point: 0.4 of SST-2's dense student's, 0.8 of CoLA's
    assert out["sorted"] == ["SST-2", "CoLA"] and out["sorted_desc"] == ["CoLA", "SST-2"]
    shot = tmp_path / "shot.png"
    _, console = run_chromium(chromium_path, tmp_path, page, f"--screenshot={shot}", "--window-size=1280,1400")
    assert console == []
    assert_not_blank(shot.read_bytes(), min_colours=50)
