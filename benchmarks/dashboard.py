"""Make the published asv dashboard work offline, and look at it in headless Chromium.

    python benchmarks/dashboard.py vendor [--html-dir results/html]
    python benchmarks/dashboard.py screenshot [--html-dir results/html] [--out DIR]

asv's `index.html` loads jQuery, Flot, Bootstrap, stupidtable and blueimp-md5 from public
CDNs; on a machine or CI runner without internet access the page shows only "Can not
determine continental origin of swallow". `vendor` puts the same libraries, taken from
the npm registry with `npm pack` (cached under ~/.cache/samedevice/dashboard-assets),
into `<html-dir>/vendor/` and points the page at them. Versions are asv's, except
stupidtable (cdnjs 1.0.1; npm has only stupid-table-plugin 1.1.3, the same plugin API).

`vendor` also patches asv's pages (`patch`): a graph opens on parameter values whose every
line has data (asv selects the first values: engines not installed here), is titled with
its pretty name, and thumbnails draw points (one commit is one point, invisible as a line).

`screenshot` serves the directory on 127.0.0.1 (Python's http.server), saves PNGs of
the benchmark grid and of the decode-throughput and d2h-per-token graphs, and checks in the
browser what each drew (`inspect`, `drawn_problems`): exit 1 on an empty graph. Without
Chromium it says so and takes none.

Not an asv benchmark module: asv imports every file in benchmarks/, so this one defines
no `time_`/`track_` names and does nothing on import.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("SAMEDEVICE_CACHE", Path.home() / ".cache" / "samedevice")) / "dashboard-assets"

# CDN address asv 0.6 uses -> (npm package@version, file inside the package)
_CDNJS = {  # cdnjs library name -> (npm package, version override or None)
    "flot": ("flot", None),
    "stupidtable": ("stupid-table-plugin", "1.1.3"),
    "blueimp-md5": ("blueimp-md5", None),
}
_TAG = re.compile(r"<(script|link)\b[^>]*?\b(src|href)=\"(https://[^\"]+)\"[^>]*>", re.IGNORECASE)


def npm_source(url: str) -> tuple[str, str] | None:
    """(package@version, path in the package) for a CDN address, or None if unknown."""
    if m := re.fullmatch(r"https://code\.jquery\.com/jquery-([\d.]+)(\.min)?\.js", url):
        return f"jquery@{m[1]}", f"dist/jquery{m[2] or ''}.js"
    if m := re.fullmatch(r"https://cdn\.jsdelivr\.net/npm/((?:@[^/]+/)?[^/@]+)@([^/]+)/(.+)", url):
        return f"{m[1]}@{m[2]}", m[3]
    if m := re.fullmatch(r"https://cdnjs\.cloudflare\.com/ajax/libs/([^/]+)/([^/]+)/(.+)", url):
        package, version = _CDNJS.get(m[1], (m[1], None))
        path = m[3]
        if package == "flot":  # cdnjs minified flot itself; the npm package ships the sources
            path = path.replace(".min.js", ".js")
        return f"{package}@{version or m[2]}", path
    return None


def _package_dir(spec: str) -> Path:
    """The unpacked npm package (downloaded once with `npm pack`)."""
    target = CACHE / spec.replace("/", "__")
    if (target / "package").is_dir():
        return target / "package"
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(f"npm is needed once to fetch {spec} into {CACHE} (apt-get install npm)")
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        out = subprocess.run([npm, "pack", spec, "--silent"], cwd=tmp, capture_output=True, text=True, check=True)
        tarball = Path(tmp) / out.stdout.strip().splitlines()[-1]
        staging = Path(tmp) / "unpacked"
        with tarfile.open(tarball) as archive:
            archive.extractall(staging, filter="data")
        staging.rename(target)
    return target / "package"


def vendor(html_dir: Path) -> list[str]:
    """Point every CDN <script>/<link> of the published pages at local copies."""
    changed = []
    for page in sorted(html_dir.glob("*.html")):
        text = page.read_text()

        def local(match: re.Match[str]) -> str:
            url = match[3]
            source = npm_source(url)
            if source is None:
                return match[0]
            spec, inner = source
            package = _package_dir(spec)
            relative = Path("vendor") / spec.replace("/", "__") / inner
            destination = html_dir / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(package / inner, destination)
            if inner.endswith(".css"):  # fonts and images the stylesheet names relatively
                for sibling in ("fonts", "img", "images"):
                    source_dir = (package / inner).parent.parent / sibling
                    if source_dir.is_dir():
                        shutil.copytree(source_dir, destination.parent.parent / sibling, dirs_exist_ok=True)
            changed.append(f"{url} -> {relative}")
            rewritten = match[0].replace(url, relative.as_posix())
            rewritten = re.sub(r'\s(integrity|crossorigin|referrerpolicy)="[^"]*"', "", rewritten)
            return rewritten

        new = _TAG.sub(local, text)
        if new != text:
            page.write_text(new)
    return changed


# asv's pages, as asv 0.6 writes them, and what `patch` makes of them (asv has no settings for these).
# Each `old` must be in the file: a changed asv is an error here, not a silently unpatched page.
_PATCHES = (
    # Thumbnails drew lines only: one commit is one point, a blank box. Draw the points.
    ("summarygrid.js",
     "                        lines: {\n                            show: true,\n                            lineWidth: 2\n"
     "                        },\n",
     "                        lines: {\n                            show: true,\n                            lineWidth: 2\n"
     "                        },\n                        points: { show: true, radius: 2 },  /* samedevice */\n"),
    # The graph page was titled with the raw name (bench_scenarios.Scenarios.track_...).
    ("graphdisplay.js",
     '        $("#title").text(bm_name);\n',
     '        $("#title").text(($.asv.main_json.benchmarks[bm_name] || {}).pretty_name || bm_name)'
     '.attr("title", bm_name);  /* samedevice */\n'),
    # asv selects the first values of each parameter (llamacpp, mistralrs: no data here);
    # without a selection in the address, select `default_selection` (written by `patch`).
    ("graphdisplay.js",
     "                var item = [];\n                if (state_selection['p-'+param_name] !== undefined) {\n"
     "                    for (var j = 0; j < param_values.length; ++j) {\n"
     "                        if (state_selection['p-'+param_name].includes(param_values[j])) {\n",
     "                var item = [];\n                var chosen = state_selection['p-'+param_name] || "
     "(index.benchmarks[current_benchmark].default_selection || {})[param_name];  /* samedevice */\n"
     "                if (chosen !== undefined) {\n"
     "                    for (var j = 0; j < param_values.length; ++j) {\n"
     "                        if (chosen.includes(param_values[j])) {\n"),
)
MAX_CURVES = 8  # asv's default number of lines on a graph


def default_selection(params: list[list[str]], with_data: set[tuple[int, ...]]) -> dict[int, list[int]] | None:
    """Value indices per parameter whose every combination has data: the largest such
    selection of at most MAX_CURVES lines (ties: the earlier values). None without data."""
    if not with_data:
        return None
    best: tuple[tuple[int, int], list[list[int]]] | None = None
    candidates = [sorted({combo[k] for combo in with_data}) for k in range(len(params))]

    def subsets(values: list[int], budget: int) -> Iterator[list[int]]:
        for size in range(1, min(budget, len(values)) + 1):
            yield from (list(c) for c in itertools.combinations(values, size))

    def search(chosen: list[list[int]], budget: int) -> None:
        nonlocal best
        if len(chosen) == len(params) - 1:  # the last parameter: every value that fits
            last = [v for v in candidates[-1]
                    if all((*prefix, v) in with_data for prefix in itertools.product(*chosen))][:budget]
            if last:
                pick = [*chosen, last]
                score = (math.prod(len(c) for c in pick), -sum(sum(c) for c in pick))
                if best is None or score > best[0]:
                    best = (score, pick)
            return
        for subset in subsets(candidates[len(chosen)], budget):
            search([*chosen, subset], budget // len(subset))

    search([], MAX_CURVES)
    return dict(enumerate(best[1])) if best else None


def _with_data(html_dir: Path, name: str, params: list[list[str]]) -> set[tuple[int, ...]]:
    """Parameter combinations (as value indices) with a value in any published graph of `name`."""
    combos = list(itertools.product(*[range(len(values)) for values in params]))
    found: set[tuple[int, ...]] = set()
    for graph in html_dir.glob(f"graphs/**/{name}.json"):
        if graph.parent.name == "summary":
            continue
        for point in json.loads(graph.read_text()):  # [revision, values] or [revision, values, errors]
            for combo, value in zip(combos, point[1] or [], strict=False):  # a graph from older params
                if value is not None:
                    found.add(combo)
    return found


def patch(html_dir: Path) -> list[str]:
    """asv's published pages made to open on data: thumbnails draw their points, a graph
    is titled with its benchmark's pretty name, and a graph with parameters opens on a
    selection whose every line has data (`default_selection`, in index.json). Idempotent."""
    changed = []
    for name, old, new in _PATCHES:
        page = html_dir / name
        text = page.read_text()
        if new in text:
            continue
        if old not in text:
            raise RuntimeError(f"{page}: asv's code changed, cannot patch it ({old.strip().splitlines()[0]!r} not found)")
        page.write_text(text.replace(old, new))
        changed.append(f"patched {name}")
    index_path = html_dir / "index.json"
    index = json.loads(index_path.read_text())
    for name, bench in index["benchmarks"].items():
        params = bench.get("params") or []
        if not params:
            continue
        chosen = default_selection(params, _with_data(html_dir, name, params))
        if chosen is None:
            bench.pop("default_selection", None)
            continue
        bench["default_selection"] = {bench["param_names"][k]: [params[k][i] for i in values]
                                      for k, values in chosen.items()}
    index_path.write_text(json.dumps(index, separators=(",", ":")))
    changed.append("index.json: graphs open on the parameter values that have data")
    return changed


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """http://127.0.0.1:<free port>/ serving `directory` until the block ends."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def chromium_run(url: str, *, screenshot: Path | None = None, timeout: float = 60) -> str:
    """Load `url` in headless Chromium (JS given 10 s of virtual time); return the DOM
    (or write a PNG when `screenshot` is given, and return Chromium's output)."""
    browser = chromium()
    if browser is None:
        raise RuntimeError("chromium is not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="samedevice-chromium-") as profile:
        command = [
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--hide-scrollbars", "--window-size=1400,1000",
            "--virtual-time-budget=10000",
        ]
        command += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
        out = subprocess.run([*command, url], capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"chromium exited {out.returncode}: {out.stderr[-2000:]}")
        return out.stdout if not screenshot else out.stderr


GRAPHS = ("bench_scenarios.Scenarios.track_decode_tokens_per_s", "bench_scenarios.Scenarios.track_d2h_per_token")
NO_CHROMIUM = "skipped: chromium not found (apt-get install chromium)"

# Run inside the page (a copy of it): what flot drew, written into the DOM for --dump-dom.
_PROBE = """
(function () {
  function painted(canvas, series) {  // pixels of the canvas in a series' colour
    if (!canvas) { return 0; }
    var colours = series.map(function (s) { return $.color.parse(s.color); });
    var data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data, count = 0;
    for (var i = 0; i < data.length; i += 4) {
      for (var c = 0; c < colours.length; ++c) {
        var k = colours[c];
        if (Math.abs(data[i] - k.r) + Math.abs(data[i + 1] - k.g) + Math.abs(data[i + 2] - k.b) < 60) { count++; break; }
      }
    }
    return count;
  }
  function points(series) {
    var n = 0;
    series.forEach(function (s) { s.data.forEach(function (d) { if (d && d[1] !== null && d[1] !== undefined) { n++; } }); });
    return n;
  }
  function report() {
    var out = {graph: null, thumbnails: []};
    var plot = $('#main-graph').data('plot');
    if (plot && $('#graph-display').is(':visible')) {
      var series = plot.getData();
      out.graph = {title: $('#title').text(), pixels: painted($('#main-graph canvas.flot-base')[0], series),
                   series: series.map(function (s) { return {label: s.label, points: points([s])}; })};
    }
    $('.benchmark-plot:visible').each(function () {
      var p = $(this).data('plot'), series = p ? p.getData() : [];
      out.thumbnails.push({name: this.id.replace('summarygrid-', ''), points: points(series),
                           pixels: painted($(this).find('canvas.flot-base')[0], series)});
    });
    var pre = document.getElementById('samedevice-probe');
    if (!pre) { pre = document.createElement('pre'); pre.id = 'samedevice-probe'; document.body.appendChild(pre); }
    pre.textContent = JSON.stringify(out);
  }
  setInterval(report, 250);
})();
"""
_PROBE_OUT = re.compile(r'<pre id="samedevice-probe">(.*?)</pre>', re.DOTALL)


def inspect(html_dir: Path, fragment: str = "") -> dict:
    """What the page at `#fragment` drew, seen from inside the browser: for a graph its
    lines (label, plotted points) and the pixels in their colours; for the grid each
    thumbnail's points and pixels. The page is a copy with a probe script added."""
    with tempfile.TemporaryDirectory(prefix="samedevice-probe-") as tmp:
        copy = Path(tmp) / "html"
        shutil.copytree(html_dir, copy)
        (copy / "samedevice-probe.js").write_text(_PROBE)
        page = copy / "index.html"
        page.write_text(page.read_text().replace("</body>", '<script src="samedevice-probe.js"></script></body>'))
        with serve(copy) as url:
            dom = chromium_run(url + (f"#{fragment}" if fragment else ""))
    found = _PROBE_OUT.search(dom)
    if found is None:
        return {"graph": None, "thumbnails": [], "error": "the probe did not run (a script failed to load?)"}
    import html

    return json.loads(html.unescape(found[1]))


def drawn_problems(seen: dict, graph: bool) -> list[str]:
    """What is wrong with what a page drew ([] when it shows data): a graph with no
    points, lines selected that have no data, a plot area with nothing in the lines'
    colours; a grid where no thumbnail shows a point."""
    if "error" in seen:
        return [seen["error"]]
    if not graph:
        drawn = [t for t in seen["thumbnails"] if t["points"] and t["pixels"]]
        return [] if drawn else [f"none of the {len(seen['thumbnails'])} thumbnails shows a point"]
    if seen["graph"] is None:
        return ["no graph was drawn"]
    series = seen["graph"]["series"]
    problems = []
    if not any(s["points"] for s in series):
        problems.append(f"the graph has {len(series)} lines and no data point")
    empty = [s["label"] for s in series if not s["points"]]
    if empty and len(empty) < len(series):
        problems.append(f"selected lines without data: {'; '.join(empty)}")
    if seen["graph"]["pixels"] < 20:
        problems.append(f"the plot area has {seen['graph']['pixels']} pixels in the lines' colours")
    return problems


def screenshots(html_dir: Path, out: Path) -> list[tuple[Path, list[str], dict]]:
    """PNGs of the grid and of GRAPHS, each with the problems `drawn_problems` finds in it."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with serve(html_dir) as url:
        for name, fragment in [("grid", ""), *[(g.rsplit(".", 1)[1], g) for g in GRAPHS]]:
            path = out / f"dashboard-{name}.png"
            chromium_run(url + (f"#{fragment}" if fragment else ""), screenshot=path)
            seen = inspect(html_dir, fragment)
            written.append((path, drawn_problems(seen, graph=bool(fragment)), seen))
    return written


def _describe(seen: dict) -> str:
    if seen.get("graph"):
        series = seen["graph"]["series"]
        return f"{seen['graph']['title']!r}: {len(series)} lines, {sum(s['points'] for s in series)} points"
    shown = [t for t in seen.get("thumbnails", []) if t["points"]]
    return f"{len(shown)} of {len(seen.get('thumbnails', []))} thumbnails show data"


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/dashboard.py", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["vendor", "screenshot"])
    parser.add_argument("--html-dir", type=Path, default=REPO / "results" / "html")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "dashboard-screenshots")
    args = parser.parse_args(argv)
    if not (args.html_dir / "index.html").exists():
        print(f"dashboard: no {args.html_dir}/index.html: run `asv publish` (nox -s dashboard) first", file=sys.stderr)
        return 2
    if args.command == "vendor":
        for line in [*vendor(args.html_dir), *patch(args.html_dir)]:
            print(f"dashboard: {line}")
        return 0
    if chromium() is None:
        print(f"dashboard: {NO_CHROMIUM}; no screenshots taken")
        return 0
    failed = False
    for path, problems, seen in screenshots(args.html_dir, args.out):
        print(f"dashboard: {path}: {_describe(seen)}" + (f"; PROBLEM: {'; '.join(problems)}" if problems else ""))
        failed = failed or bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(_main())
