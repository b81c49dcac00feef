"""The published asv dashboard (results/html) works offline and shows the benchmarks in a
real browser (headless Chromium, skipped where it is not installed)."""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    """A vendored copy of the published dashboard (results/html, from `nox -s dashboard`)."""
    if dashboard.chromium() is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    if not (PUBLISHED / "index.json").exists():
        pytest.skip(f"no published dashboard in {PUBLISHED}: run `nox -s bench` then `nox -s dashboard`")
    copy = tmp_path_factory.mktemp("dashboard") / "html"
    shutil.copytree(PUBLISHED, copy)
    try:
        dashboard.vendor(copy)
    except RuntimeError as exc:  # no npm and nothing cached
        pytest.skip(str(exc))
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


def test_a_benchmark_graph_renders_with_its_device_parameters(published, tmp_path):
    graph = "bench_scenarios.Scenarios.track_decode_tokens_per_s"
    shots = Path(os.environ.get("SAMEDEVICE_DASHBOARD_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with dashboard.serve(published) as url:
        dom = dashboard.chromium_run(f"{url}#{graph}")
        dashboard.chromium_run(f"{url}#{graph}", screenshot=shots / "dashboard-graph.png")
    assert 'class="flot-base"' in dom, "no graph canvas was drawn"
    assert f'id="title">{graph}<' in dom, "the graph page is titled with the benchmark"
    for device in ("cpu", "sim:cuda:0"):
        assert f">{device}<" in dom, f"device {device} is not offered on the graph page"
    assert (shots / "dashboard-graph.png").stat().st_size > 10_000, "the screenshot is (nearly) blank"
