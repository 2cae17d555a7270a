"""Draw nets as HTML pages and check them in a real headless browser (Chromium).

    python tools/draw_check.py [--out docs] [NET ...]     (default: nets/lenet and nets/googlenet)

For each net: ``protonet draw NET -o NAME.html`` (in a temporary folder) and ``-o OUT/NAME.svg``;
Chromium (``apt-get install chromium``) loads the page from disk (through a dead proxy, so that
nothing could be fetched), runs its script and (1) dumps the DOM: the page's script
writes, after fitting the drawing to the window, how many boxes lie wholly inside the view
(``data-visible``), which must be every box; (2) opens ``NAME.html#LAYER`` and finds that layer's
details in the side panel; (3) takes a screenshot, in which every layer colour
the net uses must appear. The SVGs and screenshots go to ``--out`` (``docs/`` holds GoogLeNet's:
``docs/googlenet.svg`` and ``docs/googlenet-chromium.png``). Exits 1 when a check fails.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WINDOW = (1280, 900)


def browser() -> str:
    """The Chromium binary, or an error saying how to get one."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    raise RuntimeError("no Chromium found (tried " + ", ".join(BROWSERS) + "): apt-get install chromium")


def _chromium(page: Path, *flags: str, hash_: str = "") -> subprocess.CompletedProcess[str]:
    from urllib.parse import quote

    with tempfile.TemporaryDirectory(prefix="protonet-chromium-") as profile:
        return subprocess.run([browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                               "--no-first-run", f"--user-data-dir={profile}", "--proxy-server=127.0.0.1:9",
                               f"--window-size={WINDOW[0]},{WINDOW[1]}", *flags,
                               page.resolve().as_uri() + (f"#{quote(hash_)}" if hash_ else "")],
                              capture_output=True, text=True, timeout=120)


def check_page(page: Path, shot: Path) -> list[str]:
    """Load ``page`` in Chromium; returns the problems found (empty: every box is in view after
    the page fitted itself, and the screenshot shows every fill colour the drawing uses)."""
    from PIL import Image

    html = page.read_text()
    boxes = len(re.findall(r'<g class="(?:node|blob)" id=', html))
    problems = []
    dom = _chromium(page, "--dump-dom").stdout
    body = re.search(r"<body([^>]*)>", dom)
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(1))) if body else {}
    if attrs.get("data-ready") != "1":
        problems.append(f"{page.name}: the page's script did not run to its end")
    elif int(attrs.get("data-visible", -1)) != boxes:
        problems.append(f"{page.name}: {attrs.get('data-visible')} of {boxes} boxes in view after fitting")
    first = re.search(r'data-layer="([^"]*)"', html)
    if first:  # the details panel, opened through the page's #LAYER link
        name = first.group(1)
        info = re.search(r'<aside id="info">(.*?)</aside>', _chromium(page, "--dump-dom", hash_=name).stdout, re.S)
        if not info or f"<h2>{name}</h2>" not in info.group(1) or "<td>type</td>" not in info.group(1):
            problems.append(f"{page.name}#{name}: the details panel does not show layer {name!r}")
    r = _chromium(page, f"--screenshot={shot.resolve()}")
    if not shot.exists():
        return problems + [f"{page.name}: no screenshot ({r.stderr.strip().splitlines()[-1:]})"]
    colors = {c.upper() for c in re.findall(r'<rect [^>]*fill="(#[0-9A-Fa-f]{6})"', html)} - {"#FFFFFF"}
    img = Image.open(shot).convert("RGB")
    seen = {"#%02X%02X%02X" % rgb for _, rgb in img.getcolors(maxcolors=1 << 20)}
    missing = sorted(colors - seen)
    if missing:
        problems.append(f"{shot.name}: no pixel of the layer colour(s) {', '.join(missing)}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("nets", nargs="*", default=[str(ROOT / "nets" / "lenet.prototxt"),
                                                 str(ROOT / "nets" / "googlenet.prototxt")])
    ap.add_argument("--out", default=str(ROOT / "docs"), help="folder for the SVGs and screenshots")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = []
    pages = Path(tempfile.mkdtemp(prefix="protonet-draw-"))
    for net in args.nets:
        stem = Path(net).stem
        page, shot = pages / f"{stem}.html", out / f"{stem}-chromium.png"
        from protonet.cli import main as cli

        if cli(["draw", net, "-o", str(page)]) != 0 or cli(["draw", net, "-o", str(out / f"{stem}.svg")]) != 0:
            failed.append(f"{net}: protonet draw failed")
            continue
        problems = check_page(page, shot)
        print(f"{stem}: " + ("; ".join(problems) if problems else f"every box in view; screenshot {shot}"))
        failed += problems
    shutil.rmtree(pages)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
