"""The published asv dashboard (results/html) works offline and shows the benchmarks in a
real browser (headless Chromium, skipped where it is not installed)."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import urllib.request
from pathlib import Path

import pytest

from benchmarks import dashboard

REPO = Path(__file__).resolve().parent.parent
PUBLISHED = Path(os.environ.get("SAMEDEVICE_DASHBOARD_HTML", REPO / "results" / "html"))
ASV_CDN_TAGS = """\
<script src="https://code.jquery.com/jquery-3.3.1.min.js" integrity="sha256-x" crossorigin="anonymous" onerror="js_load_failure()"></script>
<script src="https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.min.js" integrity="sha512-y" crossorigin="anonymous" referrerpolicy="no-referrer" onerror="js_load_failure()"></script>
<script src="https://cdnjs.cloudflare.com/ajax/libs/stupidtable/1.0.1/stupidtable.min.js" onerror="js_load_failure()"></script>
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/bootstrap@3.1.1/dist/css/bootstrap.min.css" integrity="sha256-z" crossorigin="anonymous">
<script src="asv.js"></script>
"""


@pytest.mark.parametrize(("url", "expected"), [
    ("https://code.jquery.com/jquery-3.3.1.min.js", ("jquery@3.3.1", "dist/jquery.min.js")),
    ("https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.time.min.js", ("flot@0.8.3", "jquery.flot.time.js")),
    ("https://cdn.jsdelivr.net/npm/flot-orderbars@1.0.0/js/jquery.flot.orderBars.js",
     ("flot-orderbars@1.0.0", "js/jquery.flot.orderBars.js")),
    ("https://cdnjs.cloudflare.com/ajax/libs/stupidtable/1.0.1/stupidtable.min.js",
     ("stupid-table-plugin@1.1.3", "stupidtable.min.js")),
    ("https://cdnjs.cloudflare.com/ajax/libs/blueimp-md5/2.19.0/js/md5.min.js", ("blueimp-md5@2.19.0", "js/md5.min.js")),
    ("https://cdn.jsdelivr.net/npm/bootstrap@3.1.1/dist/js/bootstrap.min.js", ("bootstrap@3.1.1", "dist/js/bootstrap.min.js")),
    ("https://example.com/other.js", None),
])
def test_asv_cdn_addresses_map_to_npm_packages(url, expected):
    assert dashboard.npm_source(url) == expected


def test_vendor_points_the_page_at_local_copies(tmp_path, monkeypatch):
    packages = tmp_path / "packages"

    def fake_package(spec: str) -> Path:  # what `npm pack` would unpack
        root = packages / spec
        for inner in ("dist/jquery.min.js", "jquery.flot.js", "stupidtable.min.js", "dist/css/bootstrap.min.css",
                      "dist/fonts/glyphicons-halflings-regular.woff"):
            (root / inner).parent.mkdir(parents=True, exist_ok=True)
            (root / inner).write_text(f"/* {spec} {inner} */")
        return root

    monkeypatch.setattr(dashboard, "_package_dir", fake_package)
    html = tmp_path / "html"
    html.mkdir()
    (html / "index.html").write_text(ASV_CDN_TAGS)
    changed = dashboard.vendor(html)
    page = (html / "index.html").read_text()
    assert len(changed) == 4
    for gone in ("https://", "integrity=", "crossorigin"):
        assert gone not in page, gone
    assert '<script src="vendor/jquery@3.3.1/dist/jquery.min.js" onerror="js_load_failure()"></script>' in page
    assert (html / "vendor/bootstrap@3.1.1/dist/css/bootstrap.min.css").exists()
    assert (html / "vendor/bootstrap@3.1.1/dist/fonts/glyphicons-halflings-regular.woff").exists(), "fonts beside the css"
    assert dashboard.vendor(html) == [], "vendoring twice changes nothing"


def test_the_local_server_serves_the_directory(tmp_path):
    (tmp_path / "index.html").write_text("<p>hello</p>")
    with dashboard.serve(tmp_path) as url, urllib.request.urlopen(url + "index.html", timeout=10) as response:
        assert url.startswith("http://127.0.0.1:")
        assert response.read() == b"<p>hello</p>"


# decode tokens/s of a suite of 2 scenarios x 3 engines x 2 devices where only some cases ran.
PARAMS = [["'a'", "'b'"], ["'llamacpp'", "'reference'", "'transformers'"], ["'cpu'", "'sim:cuda:0'"]]
WITH_DATA = {(0, 1, 0), (0, 1, 1), (0, 2, 0), (0, 2, 1), (1, 1, 0)}  # (scenario, engine, device) indices


def test_graphs_open_on_a_selection_whose_every_line_has_data():
    chosen = dashboard.default_selection(PARAMS, WITH_DATA)
    assert chosen == {0: [0], 1: [1, 2], 2: [0, 1]}, "scenario a, reference and transformers, both devices: 4 lines"
    combos = set(itertools.product(*chosen.values()))
    assert combos <= WITH_DATA
    assert dashboard.default_selection(PARAMS, {(1, 0, 1)}) == {0: [1], 1: [0], 2: [1]}
    assert dashboard.default_selection(PARAMS, set()) is None
    many = set(itertools.product(range(2), range(3), range(2)))  # all 12 have data: asv's limit is 8 lines
    assert len(list(itertools.product(*dashboard.default_selection(PARAMS, many).values()))) == 8


def _asv_www(tmp_path: Path) -> Path:
    asv = pytest.importorskip("asv", reason="asv is not installed (pip install 'samedevice[bench]')")
    html = tmp_path / "html"
    shutil.copytree(Path(asv.__file__).parent / "www", html)
    return html


def _published_index(html: Path, values: list) -> None:
    """index.json and one graph of a parameterised benchmark, as asv publish writes them."""
    name = "bench_scenarios.Scenarios.track_decode_tokens_per_s"
    bench = {"name": name, "params": PARAMS, "param_names": ["scenario", "engine", "device"],
             "pretty_name": "decode tokens/s"}
    (html / "index.json").write_text(json.dumps({"benchmarks": {name: bench}}))
    graph = html / "graphs" / "machine-box" / f"{name}.json"
    graph.parent.mkdir(parents=True)
    graph.write_text(json.dumps([[1, values]]))


def test_patch_makes_the_installed_asv_pages_open_on_data(tmp_path):
    html = _asv_www(tmp_path)
    values = [None] * 12
    for s, e, d in WITH_DATA:
        values[s * 6 + e * 2 + d] = 100.0
    _published_index(html, values)
    assert len(dashboard.patch(html)) == 4, "three patches of asv's pages and the selections"
    assert "points: { show: true" in (html / "summarygrid.js").read_text(), "thumbnails draw their points"
    display = (html / "graphdisplay.js").read_text()
    assert ".pretty_name || bm_name)" in display, "a graph is titled with its pretty name"
    assert "default_selection" in display
    index = json.loads((html / "index.json").read_text())
    assert index["benchmarks"]["bench_scenarios.Scenarios.track_decode_tokens_per_s"]["default_selection"] == {
        "scenario": ["'a'"], "engine": ["'reference'", "'transformers'"], "device": ["'cpu'", "'sim:cuda:0'"]}
    assert dashboard.patch(html) == ["index.json: graphs open on the parameter values that have data"], "idempotent"


def test_patch_refuses_an_asv_page_it_does_not_know(tmp_path):
    html = _asv_www(tmp_path)
    _published_index(html, [None] * 12)
    page = html / "graphdisplay.js"
    page.write_text(page.read_text().replace('$("#title").text(bm_name);', '$("#title").html(bm_name);'))
    with pytest.raises(RuntimeError, match="asv's code changed, cannot patch it"):
        dashboard.patch(html)


def test_the_drawn_check_fails_on_empty_graphs_and_blank_grids():
    line = {"label": "device-cpu; engine-reference", "points": 3}
    good = {"graph": {"title": "decode tokens/s", "pixels": 400, "series": [line]}, "thumbnails": []}
    assert dashboard.drawn_problems(good, graph=True) == []
    empty = {"graph": {"title": "t", "pixels": 0, "series": [dict(line, points=0)] * 2}, "thumbnails": []}
    assert "the graph has 2 lines and no data point" in dashboard.drawn_problems(empty, graph=True)
    mixed = {"graph": {"title": "t", "pixels": 400, "series": [line, {"label": "engine-llamacpp", "points": 0}]}}
    assert dashboard.drawn_problems(mixed, graph=True) == ["selected lines without data: engine-llamacpp"]
    assert dashboard.drawn_problems({"graph": None, "thumbnails": []}, graph=True) == ["no graph was drawn"]
    blank = {"graph": None, "thumbnails": [{"name": "x", "points": 0, "pixels": 0}] * 3}
    assert dashboard.drawn_problems(blank, graph=False) == ["none of the 3 thumbnails shows a point"]
    assert dashboard.drawn_problems({"graph": None, "thumbnails": [{"name": "x", "points": 1, "pixels": 9}]},
                                    graph=False) == []


def test_without_chromium_the_screenshot_command_says_so_and_claims_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(dashboard, "chromium", lambda: None)
    (tmp_path / "index.html").write_text("<p>published</p>")
    shots = tmp_path / "shots"
    assert dashboard._main(["screenshot", "--html-dir", str(tmp_path), "--out", str(shots)]) == 0
    assert capsys.readouterr().out == "dashboard: skipped: chromium not found (apt-get install chromium); no screenshots taken\n"
    assert not shots.exists()


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    """A vendored, patched copy of the published dashboard (results/html, from `nox -s dashboard`)."""
    if dashboard.chromium() is None:
        pytest.skip(dashboard.NO_CHROMIUM)
    if not (PUBLISHED / "index.json").exists():
        pytest.skip(f"no published dashboard in {PUBLISHED}: run `nox -s bench` then `nox -s dashboard`")
    copy = tmp_path_factory.mktemp("dashboard") / "html"
    shutil.copytree(PUBLISHED, copy)
    try:
        dashboard.vendor(copy)
    except RuntimeError as exc:  # no npm and nothing cached
        pytest.skip(str(exc))
    dashboard.patch(copy)
    return copy


def test_the_dashboard_lists_the_benchmarks_in_a_real_browser(published):
    with dashboard.serve(published) as url:
        dom = dashboard.chromium_run(url)
    assert "continental origin of swallow" not in dom, "a script failed to load (a CDN dependency?)"
    for name, shown in (("track_decode_tokens_per_s", "decode tokens/s"), ("track_d2h_per_token", "D2H copies per token"),
                        ("track_h2d_per_token", "H2D copies per token"), ("track_d2d_per_token", "D2D copies per token"),
                        ("track_syncs_per_token", "host syncs per token")):
        assert f'href="#bench_scenarios.Scenarios.{name}"' in dom, f"{name} missing from the benchmark grid"
        assert f">{shown}<" in dom, f"the grid names {name} {shown!r} (its pretty_name)"


def test_a_benchmark_graph_opens_on_lines_with_data(published, tmp_path):
    graph = "bench_scenarios.Scenarios.track_decode_tokens_per_s"
    shots = Path(os.environ.get("SAMEDEVICE_DASHBOARD_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with dashboard.serve(published) as url:
        dom = dashboard.chromium_run(f"{url}#{graph}")
        dashboard.chromium_run(f"{url}#{graph}", screenshot=shots / "dashboard-graph.png")
    assert 'class="flot-base"' in dom, "no graph canvas was drawn"
    assert f'id="title" title="{graph}">decode tokens/s<' in dom, "the graph page is titled with the pretty name"
    for device in ("cpu", "sim:cuda:0"):
        assert f">{device}<" in dom, f"device {device} is not offered on the graph page"
    seen = dashboard.inspect(published, graph)
    assert dashboard.drawn_problems(seen, graph=True) == [], seen
    grid = dashboard.inspect(published)
    assert dashboard.drawn_problems(grid, graph=False) == [], grid


def test_the_drawn_check_fails_on_a_graph_without_data(published, tmp_path):
    """The same page with every published value taken out: the check must see it empty."""
    empty = tmp_path / "html"
    shutil.copytree(published, empty)
    for path in empty.glob("graphs/**/bench_*.json"):  # (not the list page's summary.json)
        points = json.loads(path.read_text())
        path.write_text(json.dumps([[p[0], [None] * len(p[1]) if isinstance(p[1], list) else None] for p in points]))
    graph = "bench_scenarios.Scenarios.track_decode_tokens_per_s"
    assert dashboard.drawn_problems(dashboard.inspect(empty, graph), graph=True) != []
    assert dashboard.drawn_problems(dashboard.inspect(empty), graph=False) != []
