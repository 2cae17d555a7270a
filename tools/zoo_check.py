"""Development aid: recompute params and MACs of every nets/*.prototxt and compare
them with tests/published_figures.py.

    python tools/zoo_check.py [--tol 0.03] [net ...]

Independent of protonet: a tiny prototxt reader and plain-Python shape
arithmetic (Caffe conventions).  Convolution: Hout = floor((H + 2p - d(k-1) - 1)/s) + 1;
Pooling: Hout = ceil((H + 2p - k)/s) + 1, minus 1 if the last window starts at
or beyond H + p.  Params = conv/FC weights + biases + Scale gamma/beta (BatchNorm
running statistics excluded); MACs = Convolution and InnerProduct multiply-adds
(Cout * Cin/group * kh * kw * Hout * Wout).  Where a figure gives ``macs_input``
the MACs are recomputed with the input re-shaped to it.  Exit status 1 if a net is off by
more than the tolerance (default 3%, 10% for figures marked approximate).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import re
from pathlib import Path
from typing import Any, Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent

_TOKEN = re.compile(r'\s+|#[^\n]*|"(?:[^"\\]|\\.)*"|[{}:]|[^\s{}:"#]+')


def parse_prototxt(text: str) -> Dict[str, List[Any]]:
    """Parse protobuf text format into {field: [values]} (messages are dicts)."""
    tokens = [t for t in _TOKEN.findall(text) if t.strip() and not t.startswith("#")]
    pos = 0

    def value(tok: str) -> Any:
        if tok.startswith('"'):
            return tok[1:-1]
        for cast in (int, float):
            try:
                return cast(tok)
            except ValueError:
                pass
        return {"true": True, "false": False}.get(tok, tok)

    def message(end: str | None) -> Dict[str, List[Any]]:
        nonlocal pos
        out: Dict[str, List[Any]] = {}
        while pos < len(tokens) and tokens[pos] != end:
            key = tokens[pos]
            pos += 1
            if tokens[pos] == ":":
                pos += 1
            if tokens[pos] == "{":
                pos += 1
                val: Any = message("}")
                pos += 1
            else:
                val = value(tokens[pos])
                pos += 1
            out.setdefault(key, []).append(val)
        return out

    return message(None)


def _get(msg: Dict[str, List[Any]], key: str, default: Any = None) -> Any:
    vals = msg.get(key)
    return vals[0] if vals else default


def _hw(p: Dict[str, List[Any]], key: str, default: int) -> Tuple[int, int]:
    if f"{key}_h" in p:
        return _get(p, f"{key}_h"), _get(p, f"{key}_w")
    v = p.get(key, p.get(f"{key}_size"))
    if v:
        return v[0], v[0]
    return default, default


def analyse(text: str, input_shape: Tuple[int, ...] | None = None
            ) -> Tuple[int, int, Dict[str, Tuple[int, ...]]]:
    """Return (params, macs, blob shapes) of a Caffe net (optionally with its
    single Input re-shaped to ``input_shape``)."""
    net = parse_prototxt(text)
    shapes: Dict[str, Tuple[int, ...]] = {}
    params = 0
    macs = 0
    for layer in net.get("layer", []):
        t = _get(layer, "type")
        name = _get(layer, "name")
        bottoms = [shapes[b] for b in layer.get("bottom", [])]
        tops = layer.get("top", [])
        out: Tuple[int, ...]
        if t == "Input":
            out = tuple(input_shape or _get(_get(layer, "input_param"), "shape")["dim"])
        elif t == "Convolution":
            p = _get(layer, "convolution_param")
            n, c, h, w = bottoms[0]
            co = _get(p, "num_output")
            g = _get(p, "group", 1)
            kh, kw = _hw(p, "kernel", 1)
            sh, sw = _hw(p, "stride", 1)
            ph, pw = _hw(p, "pad", 0)
            d = _get(p, "dilation", 1)
            if c % g or co % g:
                raise ValueError(f"{name}: channels {c}->{co} not divisible by group {g}")
            ho = (h + 2 * ph - d * (kh - 1) - 1) // sh + 1
            wo = (w + 2 * pw - d * (kw - 1) - 1) // sw + 1
            wcount = co * (c // g) * kh * kw
            params += wcount + (co if _get(p, "bias_term", True) else 0)
            macs += wcount * ho * wo * n
            out = (n, co, ho, wo)
        elif t == "InnerProduct":
            p = _get(layer, "inner_product_param")
            n = bottoms[0][0]
            k = math.prod(bottoms[0][1:])
            co = _get(p, "num_output")
            params += co * k + (co if _get(p, "bias_term", True) else 0)
            macs += co * k * n
            out = (n, co)
        elif t == "Pooling":
            p = _get(layer, "pooling_param")
            n, c, h, w = bottoms[0]
            if _get(p, "global_pooling", False):
                out = (n, c, 1, 1)
            else:
                kh, kw = _hw(p, "kernel", 1)
                sh, sw = _hw(p, "stride", 1)
                ph, pw = _hw(p, "pad", 0)
                floor = _get(p, "round_mode", "CEIL") == "FLOOR"

                def pooled(x: int, k: int, s: int, pad: int) -> int:
                    if floor:
                        return (x + 2 * pad - k) // s + 1
                    o = -(-(x + 2 * pad - k) // s) + 1
                    if pad and (o - 1) * s >= x + pad:
                        o -= 1
                    return o

                out = (n, c, pooled(h, kh, sh, ph), pooled(w, kw, sw, pw))
        elif t == "Concat":
            axis = _get(_get(layer, "concat_param", {}), "axis", 1)
            ref = bottoms[0]
            for b in bottoms:
                if len(b) != len(ref) or any(b[i] != ref[i] for i in range(len(ref)) if i != axis):
                    raise ValueError(f"{name}: concat shape mismatch {bottoms}")
            out = ref[:axis] + (sum(b[axis] for b in bottoms),) + ref[axis + 1:]
        elif t == "Eltwise":
            if any(b != bottoms[0] for b in bottoms):
                raise ValueError(f"{name}: eltwise shape mismatch {bottoms}")
            out = bottoms[0]
        elif t == "Scale":
            c = bottoms[0][1]
            params += c * (2 if _get(_get(layer, "scale_param", {}), "bias_term", False) else 1)
            out = bottoms[0]
        elif t == "Flatten":
            out = (bottoms[0][0], math.prod(bottoms[0][1:]))
        elif t in ("ReLU", "Sigmoid", "BatchNorm", "Dropout", "Softmax", "LRN", "ShuffleChannel"):
            out = bottoms[0]
            if t == "ShuffleChannel" and bottoms[0][1] % _get(_get(layer, "shuffle_channel_param"), "group"):
                raise ValueError(f"{name}: channels not divisible by shuffle group")
        else:
            raise ValueError(f"{name}: layer type {t} not handled by zoo_check")
        for top in tops:
            shapes[top] = out
    return params, macs, shapes


def _load_published() -> Dict[str, dict]:
    spec = importlib.util.spec_from_file_location("_pf", ROOT / "tests" / "published_figures.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.PUBLISHED


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("nets", nargs="*")
    ap.add_argument("--tol", type=float, default=0.03, help="relative tolerance (exact figures)")
    ap.add_argument("--tol-approx", type=float, default=0.10, help="relative tolerance (approximate figures)")
    args = ap.parse_args()
    published = _load_published()
    files = sorted((ROOT / "nets").glob("*.prototxt"))
    keys = args.nets or [f.stem for f in files]
    bad = 0
    print(f"{'net':<22}{'params':>14}{'published':>14}{'d%':>7}{'MACs':>10}{'published':>11}{'d%':>7}  output")
    for key in keys:
        text = (ROOT / "nets" / f"{key}.prototxt").read_text()
        params, macs, shapes = analyse(text)
        last = list(shapes.values())[-1]
        pub = published.get(key)
        if pub is None:
            print(f"{key:<22}{params:>14,}{'-':>14}{'':>7}{macs / 1e9:>9.3f}G{'-':>11}  {last}  NO PUBLISHED ENTRY")
            bad += 1
            continue
        at = ""
        if pub.get("macs_input"):
            macs = analyse(text, tuple(pub["macs_input"]))[1]
            at = f"  (MACs at {'x'.join(map(str, pub['macs_input'][2:]))})"
        dp = (params - pub["params"]) / pub["params"] * 100
        dm = (macs - pub["macs"]) / pub["macs"] * 100
        tol = (args.tol_approx if pub["approx"] else args.tol) * 100
        flag = "" if abs(dp) <= tol and abs(dm) <= tol else "  <-- OFF"
        bad += bool(flag)
        approx = "~" if pub["approx"] else " "
        print(f"{key:<22}{params:>14,}{approx}{pub['params']:>13,}{dp:>7.1f}"
              f"{macs / 1e9:>9.3f}G{approx}{pub['macs'] / 1e9:>9.3f}G{dm:>7.1f}  {last}{at}{flag}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
