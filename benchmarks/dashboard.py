"""Make the published asv dashboard work offline, and look at it in headless Chromium.

    python benchmarks/dashboard.py vendor [--html-dir results/html]
    python benchmarks/dashboard.py screenshot [--html-dir results/html] [--out DIR]

asv's `index.html` loads jQuery, Flot, Bootstrap, stupidtable and blueimp-md5 from public
CDNs; on a machine or CI runner without internet access the page shows only "Can not
determine continental origin of swallow". `vendor` puts the same libraries, taken from
the npm registry with `npm pack` (cached under ~/.cache/samedevice/dashboard-assets),
into `<html-dir>/vendor/` and points the page at them. Versions are asv's, except
stupidtable (cdnjs 1.0.1; npm has only stupid-table-plugin 1.1.3, the same plugin API).

`screenshot` serves the directory on 127.0.0.1 (Python's http.server) and saves PNGs of
the benchmark grid and of the decode-throughput and d2h-per-token graphs.

Not an asv benchmark module: asv imports every file in benchmarks/, so this one defines
no `time_`/`track_` names and does nothing on import.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
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


def screenshots(html_dir: Path, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with serve(html_dir) as url:
        for name, fragment in [("grid", ""), *[(g.rsplit(".", 1)[1], f"#{g}") for g in GRAPHS]]:
            path = out / f"dashboard-{name}.png"
            chromium_run(url + fragment, screenshot=path)
            written.append(path)
    return written


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
        for line in vendor(args.html_dir):
            print(f"dashboard: {line}")
        return 0
    for path in screenshots(args.html_dir, args.out):
        print(f"dashboard: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
