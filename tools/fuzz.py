"""protonet's own fuzzer: seeded mutations of the files a stranger can hand it, each run through
the command line's code path in a forked, memory-capped, time-limited worker.

    python tools/fuzz.py --cases 2000                      # every target, 2000 cases each
    python tools/fuzz.py --target prototxt --cases 100000 --out benchmarks/fuzz.md
    python tools/fuzz.py --target caffemodel --seed 1 --case 417 --show DIR   # one case, files kept

Targets and what is mutated (1 to 3 mutations per case, chosen by the case's own seed):

* ``prototxt``: the registry's layer examples (every layer type) and lenet as seed nets; numbers
  (0, -1, 2^31, 2^63-1, nan, inf, ...), quoted names, identifiers (fields, enum values, layer
  types), braces, truncation, duplication of a line or a layer block, and splicing in a layer
  block from the zoo (``nets/``) rewired to a blob of the net. Run as ``compile`` (most),
  ``summary`` or ``verify``.
* ``caffemodel``: caffemodels written from seed nets with random weights (the definition and the
  blobs): bit flips, bytes set to varint/length extremes, truncation, field-number changes,
  chunk duplication. Run alone (``compile W.caffemodel``) or as ``-w`` of its prototxt.
* ``npz`` and ``image``: a valid input for a seed net, then byte mutations or semantic ones
  (shape, dtype, NaN, extra or misnamed members); run with ``infer --input``.

Outcomes: ``ok`` (exit 0), ``bad input`` (exit 2: a ProtonetError), and FAULT: any other exit
(1: internal error, a signal), a hang (over ``--timeout`` seconds), memory over the cap (the
worker's address space is capped with ``resource.setrlimit``; a MemoryError counts), a stray
file (the output folder must hold exactly the output on success and nothing on failure; the
inputs must be unchanged). The workers run with protonet's size limits lowered
(:data:`FUZZ_LIMITS`) so that a net inside the limits fits inside the cap: memory over the cap
is then a real failure to bound it. A verification mismatch (exit 3) is reported apart.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import random
import re
import resource
import select
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from protonet import cli  # noqa: E402


def preload() -> None:
    """Import once, before forking, what the commands import lazily (each worker would else
    import it again: seconds per case)."""
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    from PIL import Image  # noqa: F401

    import protonet.analysis  # noqa: F401
    import protonet.export  # noqa: F401
    import protonet.images  # noqa: F401
    import protonet.passes  # noqa: F401
    import protonet.pipeline  # noqa: F401
    import protonet.runtime  # noqa: F401
    from protonet.frontend import preprocess  # noqa: F401

TARGETS = ("prototxt", "caffemodel", "npz", "image")
DEFAULT_OUT = ROOT / "benchmarks" / "fuzz.md"
#: the worker's address-space cap (numpy, onnx and onnxruntime loaded take about 1.5 GB of it)
MEMORY_CAP = 4 << 30
#: protonet's size limits inside the workers (see protonet/limits.py): small enough that any net
#: they admit is compiled, verified and run well inside MEMORY_CAP
FUZZ_LIMITS = {"PROTONET_MAX_BLOB_ELEMENTS": str(1 << 24), "PROTONET_MAX_TOTAL_ELEMENTS": str(1 << 26),
               "PROTONET_MAX_WEIGHT_ELEMENTS": str(1 << 24), "PROTONET_MAX_CONSTANT_ELEMENTS": str(1 << 22)}

INTERESTING_NUMBERS = ("0", "-1", "1", "2", "3", "-2147483648", "2147483647", "2147483648", "4294967295",
                       "4294967296", "9223372036854775807", "-9223372036854775808", "18446744073709551615",
                       "1e38", "3.5e38", "-1e38", "1e-45", "nan", "inf", "-inf", "0.5", "-0.5", "65536",
                       "100000", "30000", "1e9", "0x10", "007")
NAMES = ("", "data", "x", "in0", "out", "prob", "a\\nb", "a\\033[31mred", "\\377\\376", "é", "a" * 300, "#",
         "in0#0", "data/1", "..", "../../etc/passwd")


@dataclass(frozen=True)
class Seed:
    """A seed net: its prototxt text and the 4-D input shape an image can feed (if any)."""

    name: str
    text: str


@dataclass
class Case:
    target: str
    seed: int
    index: int
    argv: list[str]
    files: dict[str, bytes]  # name in the input folder -> content
    output: str | None  # the output file name the command writes on success (in the output folder)
    notes: str = ""


@dataclass
class Outcome:
    kind: str  # ok, bad input, mismatch, FAULT
    detail: str = ""
    seconds: float = 0.0


# -- seed nets ---------------------------------------------------------------------------------------

def _example_text(ex) -> str:
    lines = []
    for i, shape in enumerate(ex.inputs):
        dims = " ".join(f"dim: {d}" for d in shape)
        lines.append(f'layer {{ name: "input{i}" type: "Input" top: "in{i}" input_param {{ shape {{ {dims} }} }} }}')
    return "\n".join(lines + [ex.prototxt]) + "\n"


def seed_nets() -> list[Seed]:
    """Every layer example of the registry as a tiny net, and lenet."""
    from protonet.layers import registry

    seeds = []
    for name in sorted(registry.all_types()):
        layer = registry.get(name)
        for k, ex in enumerate(getattr(layer, "examples", ())):
            if ex.int_inputs:  # index inputs: random noise would be refused, which tests little
                continue
            seeds.append(Seed(f"{name}.{ex.name or k}", _example_text(ex)))
    seeds.append(Seed("lenet", (ROOT / "nets" / "lenet.prototxt").read_text()))
    return seeds


_BLOCK = re.compile(r"^layer \{.*?^\}\n", re.S | re.M)


def zoo_blocks() -> list[str]:
    """Top-level layer blocks of the zoo nets (for splicing), at most 40 per net."""
    out = []
    for p in sorted((ROOT / "nets").glob("*.prototxt")):
        out.extend(_BLOCK.findall(p.read_text())[:40])
    return out


# -- text mutations ----------------------------------------------------------------------------------

_TOK = re.compile(r'"(?:[^"\\\n]|\\.)*"|-?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf)\b|[A-Za-z_][A-Za-z0-9_]*|[{}]')


def _tokens(text: str) -> list[re.Match]:
    return list(_TOK.finditer(text))


def _replace(text: str, m: re.Match, new: str) -> str:
    return text[:m.start()] + new + text[m.end():]


def mutate_text(text: str, rng: random.Random, zoo: list[str], idents: list[str]) -> tuple[str, str]:
    toks = _tokens(text)
    kind = rng.choice(("number", "number", "name", "ident", "ident", "brace", "truncate", "dup_line",
                       "del_line", "dup_block", "splice", "splice"))
    if kind == "number":
        nums = [m for m in toks if m.group(0)[0] in "-0123456789" or m.group(0) in ("nan", "inf")]
        if nums:
            m = rng.choice(nums)
            new = rng.choice(INTERESTING_NUMBERS) if rng.random() < 0.7 else str(
                int(m.group(0)) + rng.choice((-2, -1, 1, 2, 10)) if m.group(0).lstrip("-").isdigit() else m.group(0))
            return _replace(text, m, new), f"number {m.group(0)} -> {new}"
    if kind == "name":
        strs = [m for m in toks if m.group(0).startswith('"')]
        if strs:
            m = rng.choice(strs)
            new = rng.choice(NAMES) if rng.random() < 0.5 else rng.choice(strs).group(0)[1:-1]
            return _replace(text, m, f'"{new}"'), f"name {m.group(0)} -> \"{new[:20]}\""
    if kind == "ident":
        ids = [m for m in toks if m.group(0)[0].isalpha() or m.group(0)[0] == "_"]
        if ids:
            m = rng.choice(ids)
            new = rng.choice(idents)
            return _replace(text, m, new), f"ident {m.group(0)} -> {new}"
    if kind == "brace":
        braces = [m for m in toks if m.group(0) in "{}"]
        if braces and rng.random() < 0.5:
            m = rng.choice(braces)
            return _replace(text, m, ""), f"brace removed at {m.start()}"
        pos = rng.randrange(len(text) + 1)
        ch = rng.choice("{}")
        return text[:pos] + ch + text[pos:], f"brace {ch} inserted at {pos}"
    if kind == "truncate":
        pos = rng.randrange(len(text) + 1)
        return text[:pos], f"truncated at {pos}"
    lines = text.splitlines(keepends=True)
    if kind == "dup_line" and lines:
        i = rng.randrange(len(lines))
        j = rng.randrange(len(lines) + 1)
        return "".join(lines[:j] + [lines[i]] + lines[j:]), f"line {i + 1} copied to {j + 1}"
    if kind == "del_line" and lines:
        i = rng.randrange(len(lines))
        return "".join(lines[:i] + lines[i + 1:]), f"line {i + 1} deleted"
    blocks = _BLOCK.findall(text)
    if kind == "dup_block" and blocks:
        b = rng.choice(blocks)
        return text + b, "layer block duplicated"
    if zoo:  # splice a zoo layer, its bottoms rewired to blobs of this net
        block = rng.choice(zoo)
        tops = re.findall(r'top: "([^"]*)"', text) or ["data"]
        block = re.sub(r'bottom: "[^"]*"', lambda _: f'bottom: "{rng.choice(tops)}"', block)
        return text + block, "zoo layer spliced in"
    return text, "unchanged"


def identifiers(seeds: list[Seed], zoo: list[str]) -> list[str]:
    words = set()
    for t in [s.text for s in seeds] + zoo[:400]:
        words.update(m.group(0) for m in _tokens(t) if m.group(0)[0].isalpha())
    return sorted(words)


# -- binary mutations --------------------------------------------------------------------------------

def mutate_bytes(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    b = bytearray(data)
    if not b:
        return bytes([rng.randrange(256)]), "one random byte"
    kind = rng.choice(("bitflip", "bitflip", "byte", "varint", "length", "truncate", "field", "dup", "delete"))
    i = rng.randrange(len(b))
    if kind == "bitflip":
        bit = rng.randrange(8)
        b[i] ^= 1 << bit
        return bytes(b), f"bit {bit} of byte {i} flipped"
    if kind == "byte":
        b[i] = rng.randrange(256)
        return bytes(b), f"byte {i} = {b[i]}"
    if kind == "varint":  # a varint that never ends, or a maximal one
        n = rng.randrange(1, 11)
        b[i:i + n] = bytes([0xFF] * (n - 1) + [rng.choice((0x7F, 0x01, 0xFF))])
        return bytes(b), f"{n}-byte varint at {i}"
    if kind == "length":
        b[i] = rng.choice((0x00, 0x7F, 0x80, 0xFF, 0x01))
        return bytes(b), f"length byte {i} = {b[i]}"
    if kind == "truncate":
        return bytes(b[:i]), f"truncated at {i}"
    if kind == "field":  # a tag byte: another field number, same or other wire type
        b[i] = (rng.randrange(1, 16) << 3) | rng.choice((0, 1, 2, 5))
        return bytes(b), f"tag byte {i} = field {b[i] >> 3} wire type {b[i] & 7}"
    if kind == "dup":
        j = min(len(b), i + rng.randrange(1, 64))
        k = rng.randrange(len(b) + 1)
        return bytes(b[:k] + b[i:j] + b[k:]), f"bytes {i}:{j} copied to {k}"
    j = min(len(b), i + rng.randrange(1, 64))
    return bytes(b[:i] + b[j:]), f"bytes {i}:{j} deleted"


# -- case generation ---------------------------------------------------------------------------------

class Generator:
    """Makes case ``index`` of ``target`` under ``seed`` (the same case every time)."""

    def __init__(self) -> None:
        preload()
        self.seeds = seed_nets()
        self.zoo = zoo_blocks()
        self.idents = identifiers(self.seeds, self.zoo)
        self._models: dict[str, tuple[bytes, list]] = {}

    def rng(self, target: str, seed: int, index: int) -> random.Random:
        h = hashlib.sha256(f"{target}:{seed}:{index}".encode()).digest()
        return random.Random(int.from_bytes(h[:8], "little"))

    def case(self, target: str, seed: int, index: int) -> Case:
        rng = self.rng(target, seed, index)
        return getattr(self, f"_{target}")(rng, Case(target, seed, index, [], {}, None))

    def _prototxt(self, rng: random.Random, c: Case) -> Case:
        s = rng.choice(self.seeds)
        text, notes = s.text, [s.name]
        for _ in range(rng.choice((1, 1, 2, 3))):
            text, what = mutate_text(text, rng, self.zoo, self.idents)
            notes.append(what)
        c.files["net.prototxt"] = text.encode("utf-8", "surrogatepass")
        c.notes = "; ".join(notes)
        command = rng.choices(("compile", "summary", "verify"), (7, 2, 1))[0]
        if command == "compile":
            c.argv, c.output = ["compile", "{in}/net.prototxt", "-o", "{out}/out.onnx"], "out.onnx"
        elif command == "summary":
            c.argv = ["summary", "{in}/net.prototxt"]
        else:
            c.argv = ["verify", "{in}/net.prototxt"]
        return c

    def _model(self, s: Seed) -> tuple[bytes, list]:
        """A full caffemodel for seed net ``s`` (definition and random weights), and its input names."""
        if s.name not in self._models:
            from protonet.build import BuildOptions
            from protonet.frontend import load_net
            from protonet.build import build_graph

            loaded = load_net(s.name + ".prototxt", text=s.text)
            graph, _ = build_graph(loaded, None, BuildOptions(init="random"))
            net = type(loaded.net)()
            net.CopyFrom(loaded.net)
            weights = {n.name: list(n.weights.values()) for n in graph.nodes}
            for layer in net.layer:
                for arr in weights.get(layer.name, []):
                    blob = layer.blobs.add()
                    blob.shape.dim.extend(arr.shape)
                    blob.data.extend(np.asarray(arr, np.float32).reshape(-1).tolist())
            self._models[s.name] = (net.SerializeToString(), [v.name for v in graph.inputs])
        return self._models[s.name]

    def _weighted_seeds(self) -> list[Seed]:
        return [s for s in self.seeds if "weight" in s.text or "num_output" in s.text or s.name == "lenet"]

    def _caffemodel(self, rng: random.Random, c: Case) -> Case:
        s = rng.choice(self._weighted_seeds())
        data, _ = self._model(s)
        notes = [s.name]
        for _ in range(rng.choice((1, 1, 2, 3))):
            data, what = mutate_bytes(data, rng)
            notes.append(what)
        c.notes = "; ".join(notes)
        c.files["w.caffemodel"] = data
        if rng.random() < 0.5:
            c.argv = ["compile", "{in}/w.caffemodel", "-o", "{out}/out.onnx"]
        else:
            c.files["net.prototxt"] = s.text.encode()
            c.argv = ["compile", "{in}/net.prototxt", "-w", "{in}/w.caffemodel", "-o", "{out}/out.onnx"]
        c.output = "out.onnx"
        return c

    def _input_seed(self, rng: random.Random, image: bool) -> tuple[Seed, dict[str, tuple[int, ...]]]:
        from protonet.build import BuildOptions, build_graph
        from protonet.frontend import load_net

        while True:
            s = rng.choice(self.seeds)
            loaded = load_net(s.name + ".prototxt", text=s.text)
            g, _ = build_graph(loaded, None, BuildOptions(init="random"))
            shapes = {v.name: v.shape for v in g.inputs}
            if shapes and not image or (len(shapes) == 1 and len(next(iter(shapes.values()))) == 4
                             and next(iter(shapes.values()))[1] in (1, 3)):
                return s, shapes

    def _npz(self, rng: random.Random, c: Case) -> Case:
        s, shapes = self._input_seed(rng, image=False)
        arrays = {n: np.random.default_rng(rng.randrange(1 << 30)).standard_normal(sh).astype(np.float32)
                  for n, sh in shapes.items()}
        notes = [s.name]
        kind = rng.choice(("bytes", "bytes", "shape", "dtype", "nan", "member", "extra"))
        name = rng.choice(sorted(arrays))
        if kind == "shape":
            arrays[name] = np.zeros(tuple(rng.choice((0, 1, 2, 7)) for _ in range(rng.randrange(0, 5))), np.float32)
        elif kind == "dtype":
            arrays[name] = arrays[name].astype(rng.choice((np.float64, np.int8, np.complex64, np.bool_, "U3", object)))
        elif kind == "nan":
            arrays[name].reshape(-1)[0] = rng.choice((np.nan, np.inf, -np.inf))
        elif kind == "member":
            arrays[name + "_x"] = arrays.pop(name)
        elif kind == "extra":
            arrays["extra"] = np.ones(3, np.float32)
        buf = io.BytesIO()
        try:
            np.savez(buf, **arrays)
        except ValueError:  # an object array needs pickling: write the plain ones
            np.savez(buf, **{k: v for k, v in arrays.items() if v.dtype != object})
        data = buf.getvalue()
        notes.append(kind)
        if kind == "bytes":
            for _ in range(rng.choice((1, 2))):
                data, what = mutate_bytes(data, rng)
                notes.append(what)
        c.notes = "; ".join(notes)
        c.files["net.prototxt"] = s.text.encode()
        c.files["x.npz"] = data
        c.argv = ["infer", "{in}/net.prototxt", "--input", "{in}/x.npz", "-o", "{out}/y.npz"]
        c.output = "y.npz"
        return c

    def _image(self, rng: random.Random, c: Case) -> Case:
        from PIL import Image

        s, shapes = self._input_seed(rng, image=True)
        fmt, ext = rng.choice((("PNG", "png"), ("JPEG", "jpg"), ("BMP", "bmp")))
        size = (rng.randrange(1, 40), rng.randrange(1, 40))
        pixels = np.random.default_rng(rng.randrange(1 << 30)).integers(0, 256, (size[1], size[0], 3), np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).convert(rng.choice(("RGB", "L", "RGB"))).save(buf, format=fmt)
        data = buf.getvalue()
        notes = [s.name, fmt]
        for _ in range(rng.choice((0, 1, 1, 2, 3))):
            data, what = mutate_bytes(data, rng)
            notes.append(what)
        c.notes = "; ".join(notes)
        c.files["net.prototxt"] = s.text.encode()
        c.files[f"x.{ext}"] = data
        c.argv = ["infer", "{in}/net.prototxt", "--input", f"{{in}}/x.{ext}", "-o", "{out}/y.npz"]
        c.output = "y.npz"
        return c


# -- running one case --------------------------------------------------------------------------------

def _child(argv: list[str], err_fd: int, cap: int) -> None:
    """In the forked worker: cap memory, silence stdout, run the CLI, exit with its code."""
    try:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(err_fd, 2)
        sys.stdout = open(1, "w", closefd=False)
        sys.stderr = open(2, "w", closefd=False)
        os.environ.update(FUZZ_LIMITS)
        code = cli.main(argv)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 0)
    except SystemExit as e:  # argparse: a usage error is exit 2
        os._exit(e.code if isinstance(e.code, int) else 1)
    except BaseException as e:  # noqa: BLE001 -- escaped the CLI: a fault
        try:
            os.write(err_fd, f"escaped: {type(e).__name__}: {e}".encode()[:2000])
        finally:
            os._exit(70)


def run_case(case: Case, timeout: float, cap: int = MEMORY_CAP) -> Outcome:
    """Run one case in a forked worker and classify it."""
    with tempfile.TemporaryDirectory(prefix="protonet-fuzz-") as tmp:
        ind, outd = Path(tmp) / "in", Path(tmp) / "out"
        ind.mkdir()
        outd.mkdir()
        for name, data in case.files.items():
            (ind / name).write_bytes(data)
        argv = [a.replace("{in}", str(ind)).replace("{out}", str(outd)) for a in case.argv]
        r, w = os.pipe()
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # pragma: no cover -- the worker
            os.close(r)
            _child(argv, w, cap)
        os.close(w)
        err = bytearray()
        deadline = t0 + timeout
        hung = False
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                hung = True
                os.kill(pid, signal.SIGKILL)
                break
            ready, _, _ = select.select([r], [], [], left)
            if ready:
                chunk = os.read(r, 65536)
                if not chunk:
                    break
                if len(err) < 100_000:
                    err.extend(chunk)
        os.close(r)
        _, status = os.waitpid(pid, 0)
        secs = time.perf_counter() - t0
        text = err.decode("utf-8", "replace").strip()
        last = text.splitlines()[-1] if text else ""
        if hung:
            return Outcome("FAULT", f"hang (over {timeout:g} s)", secs)
        if os.WIFSIGNALED(status):
            return Outcome("FAULT", f"killed by signal {os.WTERMSIG(status)}: {last[:300]}", secs)
        code = os.WEXITSTATUS(status)
        left_over = sorted(p.name for p in outd.iterdir())
        changed = [n for n, d in case.files.items() if (ind / n).read_bytes() != d]
        if changed:
            return Outcome("FAULT", f"input file(s) changed: {', '.join(changed)}", secs)
        if code == 0:
            want = [case.output] if case.output else []
            if left_over != want:
                return Outcome("FAULT", f"exit 0 but the output folder holds {left_over} (expected {want})", secs)
            return Outcome("ok", "", secs)
        if left_over:
            return Outcome("FAULT", f"exit {code} left files behind: {left_over}: {last[:300]}", secs)
        if "out of memory" in text or "MemoryError" in text:
            return Outcome("FAULT", f"memory over the cap ({cap >> 20} MiB): {last[:300]}", secs)
        if code == 2 and "Traceback" not in text:
            return Outcome("bad input", last[:300], secs)
        if code == 3:
            return Outcome("mismatch", last[:300], secs)
        return Outcome("FAULT", f"exit {code}: {last[:300]}", secs)


# -- campaigns ---------------------------------------------------------------------------------------

@dataclass
class Report:
    target: str
    seed: int
    cases: int = 0
    counts: Counter = field(default_factory=Counter)
    faults: list[tuple[int, str, str]] = field(default_factory=list)  # (case index, detail, notes)
    mismatches: list[tuple[int, str, str]] = field(default_factory=list)
    seconds: float = 0.0
    slowest: float = 0.0


def campaign(gen: Generator, target: str, seed: int, cases: int, timeout: float, start: int = 0,
             budget_s: float | None = None, progress: bool = False) -> Report:
    """Run cases ``start .. start + cases - 1`` of ``target`` (stopping early past ``budget_s``)."""
    rep = Report(target, seed)
    t0 = time.perf_counter()
    for i in range(start, start + cases):
        if budget_s is not None and time.perf_counter() - t0 > budget_s:
            break
        case = gen.case(target, seed, i)
        out = run_case(case, timeout)
        rep.cases += 1
        rep.counts[out.kind] += 1
        rep.slowest = max(rep.slowest, out.seconds)
        if out.kind == "FAULT":
            rep.faults.append((i, out.detail, case.notes))
            if progress:
                print(f"FAULT {target} seed {seed} case {i}: {out.detail} [{case.notes}]", flush=True)
        elif out.kind == "mismatch":
            rep.mismatches.append((i, out.detail, case.notes))
        if progress and rep.cases % 500 == 0:
            print(f"{target}: {rep.cases} cases, {dict(rep.counts)}, {time.perf_counter() - t0:.0f} s", flush=True)
    rep.seconds = time.perf_counter() - t0
    return rep


def render(reports: list[Report], command: str, timeout: float) -> str:
    sys.path.insert(0, str(ROOT / "tools"))
    from machine import markdown

    total = sum(r.cases for r in reports)
    faults = sum(len(r.faults) for r in reports)
    lines = ["# Fuzzing protonet", "",
             f"Command: `{command}` (one process, `nice -n 19`). Each case runs the command line's code path "
             "in a forked worker", f"with its address space capped at {MEMORY_CAP >> 30} GiB "
             f"(`resource.setrlimit(RLIMIT_AS)`), a time limit of {timeout:g} s, and protonet's size limits "
             "lowered to " + ", ".join(f"`{k}={v}`" for k, v in FUZZ_LIMITS.items()) + ".",
             "Outcomes: ok (exit 0), bad input (exit 2, one located message), mismatch (exit 3), FAULT (anything "
             "else: exit 1, a signal, a hang, memory over the cap, a stray or missing output file, a changed "
             "input).", "", "Machine:", "", *markdown(), "",
             f"**{total:,} cases, {faults} fault(s).**", "",
             "| target | seed | cases | ok | bad input | mismatch | FAULT | cases/s | slowest case (s) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in reports:
        rate = r.cases / r.seconds if r.seconds else 0.0
        lines.append(f"| {r.target} | {r.seed} | {r.cases:,} | {r.counts['ok']:,} | {r.counts['bad input']:,} | "
                     f"{r.counts['mismatch']:,} | {r.counts['FAULT']:,} | {rate:.1f} | {r.slowest:.1f} |")
    lines.append("")
    for title, attr in (("Faults", "faults"), ("Verification mismatches", "mismatches")):
        rows = [(r, i, d, n) for r in reports for i, d, n in getattr(r, attr)]
        if rows:
            lines += [f"## {title} (reproduce: `python tools/fuzz.py --target T --seed S --case I --show DIR`)", "",
                      "| target | seed | case | what | mutations |", "|---|---:|---:|---|---|"]
            for r, i, d, n in rows[:200]:
                lines.append(f"| {r.target} | {r.seed} | {i} | {d.replace('|', '/')} | {n.replace('|', '/')} |")
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", action="append", choices=TARGETS, help="default: every target")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cases", type=int, default=1000, help="cases per target")
    ap.add_argument("--start", type=int, default=0, help="first case index")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per case")
    ap.add_argument("--budget", type=float, help="stop each target after this many seconds")
    ap.add_argument("--target-cases", action="append", default=[], metavar="TARGET=N",
                    help="cases for one target (overrides --cases)")
    ap.add_argument("--case", type=int, help="run one case and print it")
    ap.add_argument("--show", metavar="DIR", help="with --case: write its files to DIR")
    ap.add_argument("--out", help=f"write the report (e.g. {DEFAULT_OUT.relative_to(ROOT)})")
    args = ap.parse_args(argv)
    gen = Generator()
    targets = args.target or list(TARGETS)
    if args.case is not None:
        for t in targets:
            case = gen.case(t, args.seed, args.case)
            out = run_case(case, args.timeout)
            print(f"{t} seed {args.seed} case {args.case}: {out.kind} {out.detail}\n  mutations: {case.notes}")
            if args.show:
                d = Path(args.show) / t
                d.mkdir(parents=True, exist_ok=True)
                for name, data in case.files.items():
                    (d / name).write_bytes(data)
                cmd = [a.replace("{in}", str(d)).replace("{out}", str(d / "out")) for a in case.argv]
                print("  files in", d, "\n  command: protonet", " ".join(cmd))
        return 0
    reports = []
    per_target = {t: int(n) for t, _, n in (x.partition("=") for x in args.target_cases)}
    for t in targets:
        reports.append(campaign(gen, t, args.seed, per_target.get(t, args.cases), args.timeout, args.start,
                                args.budget, progress=True))
        r = reports[-1]
        print(f"{t}: {r.cases} cases in {r.seconds:.0f} s: {dict(r.counts)}", flush=True)
    if args.out:
        cmd = "python tools/fuzz.py " + " ".join(argv if argv is not None else sys.argv[1:])
        Path(args.out).write_text(render(reports, cmd, args.timeout) + "\n")
        print(f"wrote {args.out}")
    return 1 if any(r.faults for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
