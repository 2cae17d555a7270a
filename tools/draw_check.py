"""Draw nets as HTML pages and check them in a real headless browser (Chromium).

    python tools/draw_check.py [--out docs] [NET ...]     (default: nets/lenet and nets/googlenet)

For each net: ``protonet draw NET -o NAME.html`` (in a temporary folder) and ``-o OUT/NAME.svg``;
Chromium (``apt-get install chromium``) loads the page from disk (through a dead proxy, so that
nothing could be fetched), runs its script and (1) dumps the DOM: the page's script
writes, after fitting the drawing to the window, how many boxes lie wholly inside the view
(``data-visible``), which must be every box; (2) opens ``NAME.html#LAYER`` and finds that layer's
details in the side panel; (3) drives it through the DevTools protocol with real input events:
the mouse wheel zooms about the cursor, a drag pans by the mouse's travel, a click on a layer
opens its details; (4) takes a screenshot, in which every layer colour
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
from typing import Any

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


class DevTools:
    """Chromium driven through the DevTools protocol over ``--remote-debugging-pipe`` (JSON
    messages ending in NUL on file descriptors 3 and 4): no driver, no network port."""

    def __init__(self, page: Path) -> None:
        import fcntl
        import os

        to_child, self._w = os.pipe()
        self._r, from_child = os.pipe()
        a, b = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_child, from_child))
        os.close(to_child)
        os.close(from_child)

        def child_fds() -> None:
            os.dup2(a, 3)
            os.dup2(b, 4)

        self._profile = tempfile.TemporaryDirectory(prefix="protonet-chromium-")
        self._proc = subprocess.Popen(
            [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             "--remote-debugging-pipe", f"--user-data-dir={self._profile.name}", "--proxy-server=127.0.0.1:9",
             f"--window-size={WINDOW[0]},{WINDOW[1]}", page.resolve().as_uri()],
            pass_fds=(3, 4), preexec_fn=child_fds, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(a)
        os.close(b)
        self._buf, self._n = b"", 0
        target = next(t["targetId"] for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self._session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    def call(self, method: str, params: dict | None = None, page: bool = False) -> dict:
        import json
        import os

        self._n += 1
        msg = {"id": self._n, "method": method, "params": params or {}}
        if page:
            msg["sessionId"] = self._session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self._buf:
                chunk = os.read(self._r, 1 << 16)
                if not chunk:
                    raise RuntimeError("Chromium closed the DevTools pipe")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._n:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def eval(self, expr: str) -> Any:
        return self.call("Runtime.evaluate", {"expression": expr, "returnByValue": True}, page=True)["result"].get("value")

    def mouse(self, kind: str, x: float, y: float, **more: object) -> None:
        self.call("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, **more}, page=True)

    def close(self) -> None:
        import os

        try:
            self.call("Browser.close")
        except RuntimeError:
            pass
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        os.close(self._w)
        os.close(self._r)
        self._profile.cleanup()


def _transform(tools: DevTools) -> tuple[float, float, float]:
    text = str(tools.eval("document.getElementById('scene').getAttribute('transform')"))
    tx, ty, k = (float(v) for v in re.findall(r"-?[0-9.]+(?:e-?[0-9]+)?", text))
    return tx, ty, k


def check_interaction(page: Path, layer: str) -> list[str]:
    """Drive the page with real input events: the mouse wheel zooms in about the cursor (the point
    under it stays put), a drag pans by exactly the mouse's travel, and a click on ``layer``'s box
    opens its details. Returns the problems found."""
    import time

    tools = DevTools(page)
    problems = []
    try:
        last, same = None, 0
        for _ in range(200):  # loaded, and fitted for good (a resize at start-up fits again)
            now = tools.eval("document.readyState === 'complete' && document.body.getAttribute('data-ready') === '1'"
                             " && document.getElementById('scene').getAttribute('transform')")
            same = same + 1 if now and now == last else 0
            if same >= 3:
                break
            last = now
            time.sleep(0.1)
        left, top = tools.eval("[document.querySelector('#view svg').getBoundingClientRect().left, "
                               "document.querySelector('#view svg').getBoundingClientRect().top]")
        x, y = 300.0, 400.0
        tx, ty, k = _transform(tools)
        tools.mouse("mouseWheel", x, y, deltaX=0, deltaY=-300)
        tx2, ty2, k2 = _transform(tools)
        before, after = ((x - left - tx) / k, (y - top - ty) / k), ((x - left - tx2) / k2, (y - top - ty2) / k2)
        if not k2 > k * 1.2 or max(abs(b - a) for a, b in zip(before, after)) > 1e-3:
            problems.append(f"{page.name}: the wheel did not zoom in about the cursor (scale {k:.3g} -> {k2:.3g}, "
                            f"point under it {before} -> {after})")
        tools.mouse("mousePressed", x, y, button="left", buttons=1, clickCount=1)
        tools.mouse("mouseMoved", x + 100, y + 50, button="left", buttons=1)
        tools.mouse("mouseReleased", x + 100, y + 50, button="left", buttons=0, clickCount=1)
        tx3, ty3, k3 = _transform(tools)
        if abs(tx3 - tx2 - 100) > 1e-6 or abs(ty3 - ty2 - 50) > 1e-6 or k3 != k2:
            problems.append(f"{page.name}: a drag of (100, 50) moved the drawing by ({tx3 - tx2:g}, {ty3 - ty2:g})")
        tools.eval("document.getElementById('fit').click()")
        cx, cy = tools.eval("(function () { var b = [].slice.call(document.querySelectorAll('.layer')).filter("
                            f"function (e) {{ return e.getAttribute('data-layer') === {json_str(layer)}; }})[0]"
                            ".getBoundingClientRect(); return [b.left + b.width / 2, b.top + b.height / 2]; })()")
        tools.mouse("mousePressed", cx, cy, button="left", buttons=1, clickCount=1)
        tools.mouse("mouseReleased", cx, cy, button="left", buttons=0, clickCount=1)
        shown = tools.eval("[].map.call(document.querySelectorAll('#info h2'), function (h) { return h.textContent; })")
        if not isinstance(shown, list) or layer not in shown:  # a box's details: every layer folded in it
            problems.append(f"{page.name}: a click on {layer!r} showed {shown!r}")
    finally:
        tools.close()
    return problems


def json_str(text: str) -> str:
    import json

    return json.dumps(text)


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
    layers = re.findall(r'data-layer="([^"]*)"', html)
    if layers:
        problems += check_interaction(page, layers[len(layers) // 2])
    r = _chromium(page, f"--screenshot={shot.resolve()}")
    if not shot.exists():
        return problems + [f"{page.name}: no screenshot ({r.stderr.strip().splitlines()[-1:]})"]
    colors = {c.upper() for c in re.findall(r'<rect [^>]*fill="(#[0-9A-Fa-f]{6})"', html)} - {"#FFFFFF"}
    img = Image.open(shot).convert("RGB")
    seen = {"#%02X%02X%02X" % tuple(rgb) for _, rgb in img.getcolors(maxcolors=img.width * img.height) or ()}  # type: ignore[arg-type]
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
