"""Hostile files and streams: every input refused before it is allocated (exit 2, one located line,
no traceback, no stray file), outputs that never replace links or devices, and files a command
reads that it never overwrites. CLI cases run through a subprocess."""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest

from protonet.frontend.schema import pb
from protonet import cli
from protonet.errors import Location, ProtonetError
from protonet.fileio import temp_prefix
from protonet.frontend import load_caffemodel, wire
from protonet.frontend.preprocess import Preprocess

ROOT = Path(__file__).resolve().parent.parent
LENET = ROOT / "nets" / "lenet.prototxt"
TINY = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 3 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 2 } }
"""


def run(*args: str, cwd: Path | None = None, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    return subprocess.run([sys.executable, "-m", "protonet", *args], cwd=cwd, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, **kw)


class Result:
    """What an in-process ``cli.main`` run gave (the shape of a CompletedProcess)."""

    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli_run(capsys, monkeypatch, tmp_path):
    """``cli.main`` in this process, in tmp_path (the cases that need no fresh process)."""
    monkeypatch.chdir(tmp_path)

    def call(*args: str) -> Result:
        capsys.readouterr()
        code = cli.main(list(args))
        out, err = capsys.readouterr()
        return Result(code, out, err)
    return call


def refused(r: subprocess.CompletedProcess | Result, pattern: str) -> str:
    """Exit 2 with one located line matching ``pattern`` on stderr, no traceback."""
    err = r.stderr.decode() if isinstance(r.stderr, bytes) else r.stderr
    lines = err.strip().splitlines()
    assert r.returncode == 2, err
    assert len(lines) == 1 and "Traceback" not in err and "internal error" not in err, err
    import re
    assert re.search(pattern, lines[0]), (lines[0], pattern)
    return lines[0]


def no_temp_files(d: Path) -> bool:
    return not [p for p in os.listdir(d) if p.endswith(".tmp") or p.startswith(".")]


def tiny_weights(extra: list[tuple[str, bytes]] = ()) -> bytes:
    """A caffemodel for TINY (ip: 2x18 weights, 2 biases), then ``extra`` raw layer payloads."""
    net = pb.NetParameter(name="tiny")
    ip = net.layer.add(name="ip", type="InnerProduct", bottom=["data"], top=["ip"])
    ip.inner_product_param.num_output = 2
    for shape in ((2, 18), (2,)):
        b = ip.blobs.add()
        b.shape.dim.extend(shape)
        b.data.extend(np.arange(np.prod(shape), dtype=np.float32).tolist())
    out = net.SerializeToString()
    for _, payload in extra:
        out += wire.encode_len_field(wire.NET_LAYER, payload)
    return out


# -- outputs: links, devices, standard output ----------------------------------------------------------

def test_output_symlink_is_written_through_never_replaced(cli_run, tmp_path: Path):
    (tmp_path / "net.prototxt").write_text(TINY)
    target = tmp_path / "models" / "v1.onnx"
    target.parent.mkdir()
    target.write_bytes(b"old")
    (tmp_path / "out.onnx").symlink_to(target)
    r = cli_run("compile", "net.prototxt", "-o", "out.onnx")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out.onnx").is_symlink() and os.readlink(tmp_path / "out.onnx") == str(target)
    onnx.checker.check_model(onnx.load(target))
    # a dangling link is not followed into a new file, nor replaced
    (tmp_path / "dangling.onnx").symlink_to(tmp_path / "nowhere" / "x.onnx")
    refused(cli_run("compile", "net.prototxt", "-o", "dangling.onnx"),
            r"^dangling.onnx: cannot write: No such file or directory$")
    assert (tmp_path / "dangling.onnx").is_symlink()
    # a link to a device (as /dev/stdout is a link): the device is written, the link stays
    (tmp_path / "null.onnx").symlink_to("/dev/null")
    assert cli_run("compile", "net.prototxt", "-o", "null.onnx").returncode == 0
    assert os.readlink(tmp_path / "null.onnx") == "/dev/null"
    assert no_temp_files(tmp_path) and no_temp_files(target.parent)


def test_output_to_standard_output_is_a_stream(tmp_path: Path):
    """``-o -``, and a link to /proc/self/fd/1 (what /dev/stdout is), with standard output a pipe
    and a regular file: the model goes through the stream, the messages to stderr, nothing is
    renamed."""
    (tmp_path / "net.prototxt").write_text(TINY)
    (tmp_path / "stdout.onnx").symlink_to("/proc/self/fd/1")
    r = run("compile", "net.prototxt", "-o", "-", cwd=tmp_path)  # stdout: a pipe
    assert r.returncode == 0 and b"wrote" in r.stderr, r.stderr
    onnx.checker.check_model(onnx.load_from_string(r.stdout))
    with open(tmp_path / "captured", "wb") as f:  # stdout: a regular file
        r = run("compile", "net.prototxt", "-o", "stdout.onnx", cwd=tmp_path, stdout=f)
    assert r.returncode == 0 and b"wrote" in r.stderr, r.stderr
    onnx.checker.check_model(onnx.load(tmp_path / "captured"))
    assert os.readlink(tmp_path / "stdout.onnx") == "/proc/self/fd/1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["captured", "net.prototxt", "stdout.onnx"]


def test_full_disk_and_closed_pipe_on_standard_output(tmp_path: Path, capsys, monkeypatch):
    (tmp_path / "net.prototxt").write_text(TINY)
    with open("/dev/full", "wb") as full:
        r = run("layers", "--format", "names", stdout=full, stderr=subprocess.PIPE)
    refused(r, r"^protonet: cannot write to standard output: No space left on device$")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["compile", "net.prototxt", "-o", "/dev/full"]) == 2
    assert capsys.readouterr().err.strip().endswith("/dev/full: cannot write: No space left on device")
    # a reader that stops early: no traceback, no 'Exception ignored'
    p = subprocess.Popen(f"{sys.executable} -m protonet compile net.prototxt -o - | head -c 10 >/dev/null",
                         shell=True, cwd=tmp_path, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    _, err = p.communicate(timeout=300)
    assert b"Traceback" not in err and b"Exception" not in err, err
    assert no_temp_files(tmp_path)


def test_output_names_up_to_255_bytes(cli_run, tmp_path: Path):
    (tmp_path / "net.prototxt").write_text(TINY)
    name = "m" * 250 + ".onnx"  # 255 bytes: the temporary file's name must still fit
    assert len(temp_prefix(name)) < 70 and len(temp_prefix("é" * 100).encode()) <= 66
    r = cli_run("compile", "net.prototxt", "-o", name)
    assert r.returncode == 0, r.stderr
    onnx.checker.check_model(onnx.load(tmp_path / name))
    assert no_temp_files(tmp_path)


# -- inputs: devices, pipes, size limits -----------------------------------------------------------------

def test_devices_and_oversized_net_text_are_refused(cli_run, tmp_path: Path):
    for dev in ("/dev/zero", "/dev/urandom"):
        refused(cli_run("compile", dev, "-o", "m.onnx"),
                rf"^{dev}: cannot read the net definition: a device, not a file or a pipe$")
    # the limit, raised or lowered through the environment (read at import: a fresh process)
    refused(run("compile", str(LENET), "-o", str(tmp_path / "m.onnx"), env={"PROTONET_MAX_NET_TEXT_BYTES": "1000"}),
            r"lenet.prototxt: the net definition of [\d,]+ bytes is over protonet's limit of 1,000 "
            r"\(raise it with PROTONET_MAX_NET_TEXT_BYTES\)$")
    assert no_temp_files(tmp_path)


def test_a_long_run_of_blanks_is_refused_before_protobuf_parses_it(cli_run, tmp_path: Path):
    """20 MB of spaces cost protobuf's tokenizer ~2.9 GB; refused at the scanner, located."""
    (tmp_path / "ws.prototxt").write_bytes(b'name: "x"\n  input: ' + b" " * (20 << 20) + b'"data"\n')
    t0 = time.perf_counter()
    refused(cli_run("compile", "ws.prototxt", "-o", "m.onnx"),
            r"^ws.prototxt:2:9: a run of 20,971,521 blanks, over protonet's limit of 65,536 "
            r"\(PROTONET_MAX_BLANK_RUN\)$")
    assert time.perf_counter() - t0 < 60
    (tmp_path / "tabs.prototxt").write_bytes(b'name: "x"\n  input: ' + b" \t" * 40000 + b'"data"\n')
    refused(cli_run("compile", "tabs.prototxt", "-o", "m.onnx"),
            r"^tabs.prototxt:2:9: a run of 80,001 blanks, over protonet's limit of 65,536")
    # many short runs are fine (and cheap)
    from protonet.frontend.reader import scan_layer_blocks
    assert scan_layer_blocks(("layer { name: 'a' }" + " " * 60000 + "\n") * 50) != []


def _pipe(data: bytes) -> str:
    """A /dev/fd/N path reading ``data`` from a pipe, as the shell's ``<(...)`` gives one."""
    import threading

    r, w = os.pipe()

    def feed() -> None:
        with os.fdopen(w, "wb") as f:
            f.write(data)
    threading.Thread(target=feed, daemon=True).start()
    return f"/dev/fd/{r}"


def test_pipes_are_read_once_and_a_fifo_without_writer_does_not_hang(cli_run, tmp_path: Path, monkeypatch):
    from google.protobuf import text_format

    # a text net, and a caffemodel sniffed from the same bytes, each through a pipe
    assert cli_run("compile", _pipe(TINY.encode()), "-o", "a.onnx").returncode == 0
    whole, trained = pb.NetParameter(), pb.NetParameter.FromString(tiny_weights())
    text_format.Parse(TINY, whole)
    whole.layer[1].CopyFrom(trained.layer[0])  # the net with its weights, as Caffe saves it
    r = cli_run("compile", _pipe(whole.SerializeToString()), "-o", "b.onnx")
    assert r.returncode == 0, r.stderr
    w = [onnx.numpy_helper.to_array(t) for t in onnx.load(tmp_path / "b.onnx").graph.initializer]
    assert any(a.size == 36 and np.array_equal(a.ravel(), np.arange(36)) for a in w)
    # standard input, through a real process
    r = run("compile", "/dev/stdin", "-o", str(tmp_path / "c.onnx"), input=TINY.encode())
    assert r.returncode == 0, r.stderr
    # a named pipe nobody writes to: an error after FIFO_WAIT_SECONDS, not a hang
    monkeypatch.setenv("PROTONET_FIFO_WAIT_SECONDS", "1")
    os.mkfifo(tmp_path / "fifo")
    t0 = time.perf_counter()
    refused(cli_run("compile", "fifo", "-o", "m.onnx"),
            r"^fifo: cannot read the net definition: nothing arrived from the pipe in 1 s")
    assert time.perf_counter() - t0 < 30
    # a named pipe as the output, with no reader: refused, not blocked
    (tmp_path / "net.prototxt").write_text(TINY)
    refused(cli_run("compile", "net.prototxt", "-o", "fifo"), r"^fifo: cannot write: no process is reading this pipe$")
    assert sorted(os.listdir(tmp_path)) == ["a.onnx", "b.onnx", "c.onnx", "fifo", "net.prototxt"]


def test_a_huge_mean_file_is_refused_before_reading(cli_run, tmp_path: Path):
    with open(tmp_path / "mean.binaryproto", "wb") as f:
        f.truncate(65 << 20)  # sparse: no disk, no memory
    (tmp_path / "train.prototxt").write_text("""
layer { name: "data" type: "Data" top: "data" top: "label"
  transform_param { crop_size: 2 mean_file: "mean.binaryproto" } data_param { source: "x" batch_size: 1 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 3 } }
""")
    refused(cli_run("compile", "train.prototxt", "-o", "m.onnx"),
            r"mean.binaryproto: the mean file of 68,157,440 bytes is over protonet's limit of 67,108,864 "
            r"\(raise it with PROTONET_MAX_MEAN_FILE_BYTES\)$")


# -- files a command reads are never overwritten -----------------------------------------------------

def test_every_file_a_command_reads_is_protected(cli_run, tmp_path: Path):
    mean = pb.BlobProto(num=1, channels=3, height=4, width=4)
    mean.data.extend([1.0] * 48)
    (tmp_path / "mean.binaryproto").write_bytes(mean.SerializeToString())
    (tmp_path / "train.prototxt").write_text("""
layer { name: "data" type: "Data" top: "data" top: "label"
  transform_param { crop_size: 2 mean_file: "mean.binaryproto" } data_param { source: "x" batch_size: 1 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 3 } }
""")
    (tmp_path / "plugin.py").write_text("# no layers\n")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    refused(cli_run("compile", "train.prototxt", "-o", "mean.binaryproto"),
            r"^mean.binaryproto: refusing to overwrite an input file$")
    refused(cli_run("--plugin", "plugin.py", "compile", "train.prototxt", "-o", "plugin.py"),
            r"^plugin.py: refusing to overwrite an input file$")
    (tmp_path / "my.proto").write_text((ROOT / "proto" / "caffe.proto").read_text())  # --caffe-proto's schema
    before["my.proto"] = (tmp_path / "my.proto").read_bytes()
    (tmp_path / "net.prototxt").write_text(TINY)
    refused(cli_run("compile", "net.prototxt", "--caffe-proto", "my.proto", "-o", "my.proto"),
            r"^my.proto: refusing to overwrite an input file$")
    # upgrade X -o X of a current file: nothing written, comments kept
    (tmp_path / "cur.prototxt").write_text("# my comment\n" + TINY)
    r = cli_run("upgrade", "cur.prototxt", "-o", "cur.prototxt")
    assert r.returncode == 0 and "cur.prototxt left unchanged" in r.stdout, r.stderr
    assert (tmp_path / "cur.prototxt").read_text() == "# my comment\n" + TINY
    assert all((tmp_path / n).read_bytes() == b for n, b in before.items())
    assert no_temp_files(tmp_path)


# -- signals ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_write_leaves_no_temporary_file(tmp_path: Path, sig: int):
    """A plugin (user code) holds the write after the temporary file is complete, before it is
    renamed into place; the signal arrives then: exit 128+N (130 for SIGINT), no ``.out.onnx.*.tmp`` left."""
    (tmp_path / "net.prototxt").write_text(TINY)
    (tmp_path / "slow.py").write_text("""
import os, sys, time
_replace = os.replace
def replace(src, dst, **kw):  # the temporary file is complete; wait before moving it into place
    print("WRITTEN", file=sys.stderr, flush=True)
    time.sleep(120)
    _replace(src, dst, **kw)
os.replace = replace
""")
    p = subprocess.Popen([sys.executable, "-m", "protonet", "--plugin", "slow.py", "compile", "net.prototxt",
                          "-o", "out.onnx"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    line = p.stderr.readline()
    assert line.strip() == b"WRITTEN", line + p.stderr.read()
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]  # the temporary file exists now
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == (130 if sig == signal.SIGINT else 128 + sig), err
    assert b"Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["__pycache__", "net.prototxt", "slow.py"] or \
        sorted(os.listdir(tmp_path)) == ["net.prototxt", "slow.py"]


# -- messages --------------------------------------------------------------------------------------------

def test_names_with_control_characters_are_escaped_in_messages(cli_run, tmp_path: Path):
    (tmp_path / "evil.prototxt").write_text(TINY.replace(
        'name: "ip" type: "InnerProduct" bottom: "data"',
        'name: "ip\\nevil.prototxt:1: error: forged\\033[2J" type: "InnerProduct" bottom: "nowhere"'))
    line = refused(cli_run("compile", "evil.prototxt", "-o", "m.onnx"),
                   r"^evil.prototxt:3: layer 'ip\\nevil.prototxt:1: error: forged\\x1b\[2J' \(InnerProduct\): "
                   r"bottom 'nowhere' is not produced by any earlier layer$")
    assert "\x1b" not in line
    err = ProtonetError("blob 'a\rb\x07' " + "x" * 5000, Location("f\n.prototxt", 3, layer="l\x1b"))
    text = str(err)
    assert text.isprintable() and text.startswith("f\\n.prototxt:3: layer 'l\\x1b': blob 'a\\rb\\x07' ")
    assert len(text) < 2100 and "characters ...]" in text


# -- caffemodels -----------------------------------------------------------------------------------------

def _layer(name: bytes, blob: bytes) -> bytes:
    return wire.encode_len_field(1, name) + wire.encode_len_field(2, b"InnerProduct") + \
        wire.encode_len_field(wire.LAYER_BLOBS, blob)


def test_a_huge_blob_in_a_layer_the_net_does_not_use_is_never_read(tmp_path: Path):
    """A 3 GB blob (sparse: no disk) in 'junk', which TINY does not have: the load reads the 36+2
    values of 'ip' only, in well under the memory the blob would take."""
    big = 3 << 30
    head = tiny_weights()
    shape = wire.encode_len_field(wire.BLOB_SHAPE, wire.encode_varint((1 << 3) | 0) + wire.encode_varint(big // 4))
    data_tag = wire.encode_varint((wire.BLOB_DATA << 3) | 2) + wire.encode_varint(big)
    blob = shape + data_tag
    layer = wire.encode_len_field(1, b"junk") + wire.encode_varint((wire.LAYER_BLOBS << 3) | 2) + \
        wire.encode_varint(len(blob) + big)
    layer_bytes = layer + blob
    path = tmp_path / "w.caffemodel"
    with open(path, "wb") as f:
        f.write(head)
        f.write(wire.encode_varint((wire.NET_LAYER << 3) | 2) + wire.encode_varint(len(layer_bytes) + big))
        f.write(layer_bytes)
        f.truncate(f.tell() + big)
    (tmp_path / "net.prototxt").write_text(TINY)
    code = ("import resource, sys; from protonet.pipeline import compile_net; "
            "c = compile_net('net.prototxt', 'w.caffemodel'); "
            "print(c.report.ignored, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    ignored, rss_mb = r.stdout.rsplit(" ", 1)
    assert ignored == "['junk']" and int(rss_mb) < 1000, r.stdout
    w = load_caffemodel(path, only={"ip"})
    assert list(w.layers) == ["ip"] and w.skipped == ["junk"]
    np.testing.assert_array_equal(w.layers["ip"][0].data, np.arange(36, dtype=np.float32))


def test_unpacked_floats_are_one_strided_chunk(tmp_path: Path):
    """A writer that tags every float (5 bytes a value): scanned with numpy into one chunk per run,
    values equal to protobuf's own parse."""
    n = 300_000
    vals = np.random.default_rng(0).standard_normal(n).astype("<f4")
    tag = wire.encode_varint((wire.BLOB_DATA << 3) | wire.FIXED32)
    unpacked = b"".join(tag + v.tobytes() for v in vals[:1000])
    body = np.empty((n, 5), np.uint8)
    body[:, 0] = tag[0]
    body[:, 1:] = vals.view(np.uint8).reshape(n, 4)
    assert body[:1000].tobytes() == unpacked
    blob = wire.encode_len_field(wire.BLOB_SHAPE, wire.encode_varint(8) + wire.encode_varint(n)) + body.tobytes()
    path = tmp_path / "u.caffemodel"
    path.write_bytes(wire.encode_len_field(wire.NET_LAYER, _layer(b"ip", blob)))
    rec = wire.scan_net(memoryview(path.read_bytes()))
    assert rec.layers[0].blobs[0].chunks == [(rec.layers[0].blobs[0].chunks[0][0], n, "<f4", 5)]
    fast, slow = load_caffemodel(path), load_caffemodel(path, method="protobuf")
    np.testing.assert_array_equal(fast.layers["ip"][0].data, vals)
    np.testing.assert_array_equal(slow.layers["ip"][0].data, vals)


def test_caffemodel_names_that_are_not_utf8_and_mmap_failures(cli_run, tmp_path: Path, monkeypatch):
    blob = wire.encode_len_field(wire.BLOB_SHAPE, wire.encode_varint(8) + wire.encode_varint(1)) + \
        wire.encode_len_field(wire.BLOB_DATA, struct.pack("<f", 1.0))
    path = tmp_path / "bad.caffemodel"
    path.write_bytes(wire.encode_len_field(wire.NET_LAYER, _layer(b"ip\xff", blob)))
    (tmp_path / "net.prototxt").write_text(TINY)
    pattern = r"bad.caffemodel: layer '#0': name b'ip\\xff' is not valid UTF-8 text$"
    refused(cli_run("compile", "bad.caffemodel", "-o", "m.onnx"), pattern)
    refused(cli_run("compile", "net.prototxt", "-w", "bad.caffemodel", "-o", "m.onnx"), pattern)
    good = tmp_path / "good.caffemodel"
    good.write_bytes(tiny_weights())
    import mmap

    def no_map(*a, **k):
        raise OSError(12, "Cannot allocate memory")
    monkeypatch.setattr(mmap, "mmap", no_map)
    with pytest.raises(ProtonetError, match=r"good.caffemodel: cannot map the file into memory: Cannot allocate"):
        load_caffemodel(good)


# -- arrays and images -----------------------------------------------------------------------------------

def _npy_header(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    import io
    f = io.BytesIO()
    np.lib.format.write_array_header_1_0(f, {"descr": dtype, "fortran_order": False, "shape": shape})
    return f.getvalue()


def test_arrays_are_checked_from_their_header(cli_run, tmp_path: Path):
    (tmp_path / "net.prototxt").write_text(TINY)
    # a member declaring 1x3x20000x20000 (4.8 GB) with no data behind it: refused from the header
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("data.npy", _npy_header((1, 3, 20000, 20000)))
    refused(cli_run("infer", "net.prototxt", "--input", "bomb.npz"),
            r"^protonet: bomb.npz: input 'data' has shape \(1, 3, 20000, 20000\), the model expects \(1, 2, 3, 3\)$")
    with zipfile.ZipFile(tmp_path / "raw.npz", "w") as z:
        z.writestr("data", b"\x00" * 72)
    refused(cli_run("infer", "net.prototxt", "--input", "raw.npz"),
            r"raw.npz: no array for input\(s\) data \(has data\); member 'data' is not a .npy array$")
    np.save(tmp_path / "x.npy", np.zeros((1, 2, 3, 3), np.float32))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROTONET_MAX_ARRAY_BYTES", "8")
        r = cli_run("infer", "net.prototxt", "--input", "x.npy")
    refused(r,
            r"x.npy: array 'data' of shape \(1, 2, 3, 3\) declares 72 bytes, over protonet's limit of 8")
    (tmp_path / "short.npy").write_bytes(_npy_header((1, 2, 3, 3)) + b"\x00" * 10)
    refused(cli_run("infer", "net.prototxt", "--input", "short.npy"),
            r"short.npy: array 'data' of shape \(1, 2, 3, 3\) needs 72 bytes; the file holds 10$")
    (tmp_path / "obj.npy").write_bytes(_npy_header((1, 2, 3, 3), "|O"))
    refused(cli_run("infer", "net.prototxt", "--input", "obj.npy"),
            r"obj.npy: array 'data' has dtype object; give a real numeric array$")
    r = cli_run("infer", "net.prototxt", "--input", "x.npy")
    assert r.returncode == 0, r.stderr


def _png(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (its pixels are never there)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 4)) + \
        chunk(b"IEND", b"")


def test_images_other_formats_and_bombs_are_refused(cli_run, tmp_path: Path, monkeypatch):
    (tmp_path / "net.prototxt").write_text(TINY.replace("dim: 2 dim: 3 dim: 3", "dim: 3 dim: 3 dim: 3"))
    # EPS named .png: never handed to Ghostscript (a fake gs on PATH would leave a mark)
    (tmp_path / "photo.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gs").write_text(f"#!/bin/sh\ntouch {tmp_path}/GHOSTSCRIPT_RAN\n")
    (bin_dir / "gs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    refused(cli_run("infer", "net.prototxt", "--input", "photo.png"),
            r"^photo.png: cannot read image: not a JPEG, PNG or BMP image \(the formats protonet reads\)$")
    assert not (tmp_path / "GHOSTSCRIPT_RAN").exists()
    (tmp_path / "big.png").write_bytes(_png(9000, 9000))  # under Pillow's warning, over protonet's limit
    refused(cli_run("infer", "net.prototxt", "--input", "big.png"),
            r"^big.png: image of 9000x9000 pixels is over protonet's limit of 67,108,864 pixels")
    (tmp_path / "bomb.png").write_bytes(_png(100_000, 100_000))  # over Pillow's own error threshold
    refused(cli_run("infer", "net.prototxt", "--input", "bomb.png"),
            r"^bomb.png: cannot read image: Image size \(10000000000 pixels\) exceeds limit")
    # a real small PNG still works
    from PIL import Image
    Image.new("RGB", (3, 3), (10, 20, 30)).save(tmp_path / "ok.png")
    r = cli_run("infer", "net.prototxt", "--input", "ok.png")
    assert r.returncode == 0 and "Warning" not in r.stderr, r.stderr


@pytest.mark.parametrize("field,value,message", [
    ("resize", [1 << 20, 1 << 20], r"'resize' is 1048576, not an integer in \[1, 65536\]"),
    ("crop_size", -4, r"'crop_size' is -4, not an integer"),
    ("scale", "x", r"'scale' is 'x', not a finite number"),
    ("shape", [1, 3, -7, 4], r"'shape' is -7"),
    ("mean_shape", [3, 1000, 1000], r"'mean_image' does not hold the 3000000 values"),
    ("channels", 7, r"'channels' is 7"),
    ("channel_order", "XYZ", r"'channel_order' is 'XYZ'"),
    ("mean_value", [1.0] * 100, r"'mean_value' is not a list of at most 4"),
    ("version", "2", r"'version' is '2'"),
])
def test_crafted_preprocessing_metadata_is_refused(field: str, value: object, message: str):
    good = Preprocess(input="data", shape=(1, 3, 4, 4)).to_json()
    assert Preprocess.from_json(good) == Preprocess(input="data", shape=(1, 3, 4, 4))
    bad = json.dumps({**json.loads(good), field: value})
    with pytest.raises(ProtonetError, match=rf"^m.onnx: invalid preprocessing metadata: {message}"):
        Preprocess.from_json(bad, "m.onnx")


def test_crafted_metadata_in_an_onnx_file_is_exit_2(cli_run, tmp_path: Path):
    (tmp_path / "net.prototxt").write_text(TINY.replace("dim: 2 dim: 3 dim: 3", "dim: 3 dim: 3 dim: 3"))
    assert cli_run("compile", "net.prototxt", "-o", "m.onnx").returncode == 0
    model = onnx.load(tmp_path / "m.onnx")
    from PIL import Image
    Image.new("RGB", (3, 3)).save(tmp_path / "ok.png")
    for resize, message in (((100_000, 5), r"^m.onnx: invalid preprocessing metadata: 'resize' is 100000"),
                            ((30_000, 30_000), r"^ok.png: image after resizing of 30000x30000 pixels is over")):
        meta = Preprocess(input="data", shape=(1, 3, 3, 3), resize=resize)
        del model.metadata_props[:]
        model.metadata_props.add(key="protonet.preprocess", value=meta.to_json())
        onnx.save(model, tmp_path / "m.onnx")
        refused(cli_run("infer", "m.onnx", "--input", "ok.png"), message)


# -- numbers on the command line -------------------------------------------------------------------------

@pytest.mark.parametrize("args,option", [
    (["--seed", "-1"], "--seed"), (["--seed", "1e3"], "--seed"), (["--batch", "0"], "--batch"),
    (["--opset", str(10 ** 30)], "--opset")])
def test_bad_numbers_on_the_command_line(capsys, tmp_path: Path, args: list[str], option: str):
    with pytest.raises(SystemExit) as e:
        cli.main(["compile", str(LENET), "-o", str(tmp_path / "m.onnx"), *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"error: argument {option}:" in err and "Traceback" not in err, err
    assert not (tmp_path / "m.onnx").exists()


def test_names_in_report_lines_are_escaped(cli_run, tmp_path: Path):
    """infer's and verify's tables print blob names read from the file: escaped there too."""
    (tmp_path / "net.prototxt").write_text(TINY.replace('top: "ip"', 'top: "ip\\n\\033[1mfake"'))
    r = cli_run("infer", "net.prototxt", "--input", "random")
    assert r.returncode == 0, r.stderr
    assert "output 'ip\\n\\x1b[1mfake': shape (1, 2)" in r.stdout and "\x1b" not in r.stdout
    r = cli_run("verify", "net.prototxt")
    assert r.returncode == 0 and "ip\\n\\x1b[1mfake" in r.stdout and "\x1b" not in r.stdout, r.stdout
