"""Folders and lists of images (protonet.batchrun): rows equal to single runs, batching with padding,
corrupt files reported and skipped, the exit code, and the progress bar only on a terminal."""
from __future__ import annotations

import csv
import fcntl
import json
import os
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from protonet import cli
from protonet.answers import Reader, output_types
from protonet.answers import Answer
from protonet.batchrun import EXIT_SOME_FAILED, Accuracy, Runner, list_images
from protonet.images import load_image
from protonet.runtime import make_session

ROOT = Path(__file__).resolve().parent.parent

TINY = """name: "tiny"
input: "data"
input_shape { dim: 1 dim: 3 dim: 16 dim: 16 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc"
  inner_product_param { num_output: 10 weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """200 files: 198 random 32x32 JPEGs (some in a sub-folder) and 2 corrupt ones (a truncated
    JPEG, garbage named .png); a tiny net compiled with a fixed batch of 8 (198 = 24 x 8 + 6: the last
    batch is padded); and labels."""
    d = tmp_path_factory.mktemp("batch")
    photos = d / "photos"
    (photos / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(198):
        where = photos / "sub" if i % 10 == 0 else photos
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(where / f"p{i:03d}.jpg", quality=90)
    (photos / "p050_truncated.jpg").write_bytes((photos / "p051.jpg").read_bytes()[:200])
    (photos / "p100_garbage.png").write_bytes(b"not an image at all" * 20)
    (photos / "notes.txt").write_text("not an image: ignored by suffix")
    (d / "net.prototxt").write_text(TINY)
    (d / "labels.txt").write_text("".join(f"n{k:08d} class {k}\n" for k in range(10)))
    assert cli.main(["compile", str(d / "net.prototxt"), "-o", str(d / "m.onnx"), "--batch", "8"]) == 0
    good = sorted(str(p) for p in photos.rglob("p*.jpg") if "truncated" not in p.name)
    return d, photos, good


def single_run(model: Path, path: str) -> np.ndarray:
    """The model's output for one photo, alone (the photo repeated over the fixed batch)."""
    sess = make_session(str(model), "cpu")
    return sess.run({"data": load_image(path, None, (8, 3, 16, 16))})["prob"][0]


def run_cli(*args: str, tty: bool = False, cwd: Path | None = None) -> tuple[int, str, str]:
    """``protonet`` in a fresh process; standard error on a pseudo-terminal of 100 x 24 when ``tty``."""
    cmd = [sys.executable, "-m", "protonet", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if not tty:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd, env=env)
        return r.returncode, r.stdout, r.stderr
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, cwd=cwd, env=env)
    os.close(slave)
    err = bytearray()
    while True:  # drain the terminal while the run goes, so that it never blocks on a full buffer
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the process closed its end
            break
        if not chunk:
            break
        err += chunk
    out = p.stdout.read().decode()
    p.wait(timeout=60)
    os.close(master)
    return p.returncode, out, err.decode(errors="replace")


def test_folder_of_200_with_2_corrupt_progress_bar_csv(folder):
    d, photos, good = folder
    assert len(list_images(photos)) == 200 and len(good) == 198
    code, out, err = run_cli("infer", str(d / "m.onnx"), str(photos), "-o", str(d / "results.csv"), "--labels",
                             str(d / "labels.txt"), tty=True)
    assert code == EXIT_SOME_FAILED, (out, err)
    # the progress bar with images/s, drawn on the terminal
    assert "img/s" in err and "200/200" in err
    # both corrupt files reported, by name, with why
    assert "p050_truncated.jpg: cannot read image" in err and "p100_garbage.png: cannot read image: not a JPEG" in err
    assert "198 of 200 image(s) in" in out and "images/s) on CPU, batch 8; 2 could not be read" in out
    with open(d / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == sorted(good, key=lambda p: (os.path.dirname(p) != str(photos), p))
    assert list(rows[0]) == ["path"] + [f"top{r}_{c}" for r in range(1, 6) for c in ("class", "label", "score")]
    # every row equals the photo's own run (batched with others, or padded in the last batch)
    model = d / "m.onnx"
    sess = make_session(str(model), "cpu")
    for row in rows:
        prob = sess.run({"data": load_image(row["path"], None, (8, 3, 16, 16))})["prob"][0]
        top = np.argsort(-prob, kind="stable")[:5]
        assert [int(row[f"top{r + 1}_class"]) for r in range(5)] == top.tolist(), row["path"]
        assert [row[f"top{r + 1}_label"] for r in range(5)] == [f"n{k:08d} class {k}" for k in top]
        np.testing.assert_allclose([float(row[f"top{r + 1}_score"]) for r in range(5)], prob[top], rtol=1e-5)
    # and the command run on one photo agrees with its row
    last = rows[-1]["path"]
    assert cli.main(["infer", str(model), last, "-o", str(d / "one.npz")]) == 0
    with np.load(d / "one.npz") as z:
        np.testing.assert_allclose(z["prob"][0][int(rows[-1]["top1_class"])], float(rows[-1]["top1_score"]), rtol=1e-5)


def test_not_a_terminal_no_progress_bar_jsonl(folder, capsys):
    d, photos, good = folder
    listing = d / "list.txt"
    rel = [os.path.relpath(p, d) for p in good[:5]]
    listing.write_text("# five photos and one missing\n" + "\n".join(rel[:3]) + "\n\nmissing.jpg\n"
                       + "\n".join(rel[3:]))
    capsys.readouterr()
    code = cli.main(["infer", str(d / "m.onnx"), str(listing), "-o", str(d / "r.jsonl"), "--top-k", "2"])
    out, err = capsys.readouterr()
    assert code == EXIT_SOME_FAILED
    assert "img/s" not in err and "\r" not in err  # quiet: no bar when standard error is not a terminal
    assert err.splitlines()[1:] == [f"protonet: {d / 'missing.jpg'}: cannot read image: [Errno 2] No such file or "
                                    f"directory: '{d / 'missing.jpg'}'"]
    assert "carries no preprocessing: feeding the raw pixels" in err.splitlines()[0]  # said once, not per image
    rows = [json.loads(line) for line in (d / "r.jsonl").read_text().splitlines()]
    assert [r["path"] for r in rows] == [str(d / p) for p in rel]
    for r in rows:
        prob = single_run(d / "m.onnx", r["path"])
        top = np.argsort(-prob, kind="stable")[:2]
        assert [c["class"] for c in r["prob"]] == top.tolist() and set(r) == {"path", "prob"}
        np.testing.assert_allclose([c["score"] for c in r["prob"]], prob[top], rtol=1e-5)


def dynamic_net(path: Path) -> Path:
    """A model with a dynamic batch: the mean of each channel, softmaxed over the 3 channels."""
    nodes = [helper.make_node("ReduceMean", ["data"], ["m"], axes=[2, 3], keepdims=0),
             helper.make_node("Softmax", ["m"], ["prob"], axis=1)]
    g = helper.make_graph(nodes, "dyn", [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 4, 4])],
                          [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 3])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_dynamic_batch_chunks_and_fixed_batch_mismatch(folder, tmp_path: Path, capsys):
    d, photos, good = folder
    sess = make_session(str(dynamic_net(tmp_path / "dyn.onnx")), "cpu")
    seen: list[int] = []
    real_run = sess.run
    sess.run = lambda feeds: (seen.append(len(feeds["data"])), real_run(feeds))[1]
    rows: list[tuple[str, list]] = []
    runner = Runner(sess, "data", (-1, 3, 4, 4), None, Reader({}, top_k=3), batch=5, workers=2)
    summary = runner.run(good[:12], lambda i, a, g: rows.append((good[i], a)))
    assert seen == [5, 5, 2] and summary.done == 12 and not summary.failed  # no padding for a dynamic batch
    for path, (a,) in rows:
        x = load_image(path, None, (1, 3, 4, 4))[0]
        mean = x.reshape(3, -1).mean(axis=1)
        expected = np.exp(mean - mean.max()) / np.exp(mean - mean.max()).sum()
        assert [r.index for r in a.classes] == np.argsort(-expected, kind="stable").tolist()
        np.testing.assert_allclose([r.score for r in a.classes], np.sort(expected)[::-1], rtol=1e-5)
    # a model compiled with a dynamic batch (compile --batch dynamic) gives the fixed-batch model's rows
    dyn = tmp_path / "dyn8.onnx"
    assert cli.main(["compile", str(d / "net.prototxt"), "-o", str(dyn), "--batch", "dynamic"]) == 0
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(good[:11]))
    for model, out in ((dyn, "dyn.csv"), (d / "m.onnx", "fixed.csv")):
        assert cli.main(["infer", str(model), str(listing), "-o", str(tmp_path / out), "--batch", "5"
                         if model == dyn else "8"]) == 0
    assert "11 of 11 image(s)" in capsys.readouterr().out
    with open(tmp_path / "dyn.csv") as a, open(tmp_path / "fixed.csv") as b:
        rows_dyn, rows_fixed = list(csv.reader(a)), list(csv.reader(b))
    assert len(rows_dyn) == 12 and [r[:2] for r in rows_dyn] == [r[:2] for r in rows_fixed]
    np.testing.assert_allclose([float(r[2]) for r in rows_dyn[1:]], [float(r[2]) for r in rows_fixed[1:]], rtol=1e-5)
    # a fixed batch of 8 refuses --batch 4; a .npz result is not a row format
    capsys.readouterr()
    assert cli.main(["infer", str(d / "m.onnx"), str(photos), "-o", str(tmp_path / "r.csv"), "--batch", "4"]) == 2
    assert "--batch 4: the model has a fixed batch of 8" in capsys.readouterr().err
    assert cli.main(["infer", str(d / "m.onnx"), str(photos), "-o", str(tmp_path / "r.npz")]) == 2
    assert "r.npz: results go to a .csv or .jsonl file, not .npz" in capsys.readouterr().err
    assert not (tmp_path / "r.csv").exists()


def test_caffe_list_with_labels_gives_accuracy(folder, tmp_path: Path, capsys):
    """Caffe's ImageData list format, "PATH LABEL": the label is kept in the rows ("truth") and the
    summary gives top-1 and top-k accuracy as Caffe's Accuracy layer counts them."""
    d, photos, good = folder
    model = d / "m.onnx"
    sess = make_session(str(model), "cpu")
    lines, hits1, hits3 = [], 0, 0
    for i, p in enumerate(good[:20]):
        prob = sess.run({"data": load_image(p, None, (8, 3, 16, 16))})["prob"][0]
        order = np.argsort(-prob, kind="stable")
        assert np.all(np.diff(prob[order[:5]]) < 0)  # no ties among the five best: the ranks are unambiguous
        label = int(order[i % 4])  # the 1st, 2nd, 3rd or 4th best class in turn
        hits1 += i % 4 == 0
        hits3 += i % 4 < 3
        lines.append(f"{os.path.relpath(p, tmp_path)} {label}")
    (tmp_path / "val.txt").write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert cli.main(["infer", str(model), str(tmp_path / "val.txt"), "-o", str(tmp_path / "r.csv"),
                     "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    assert (hits1, hits3) == (5, 15)
    assert "output 'prob': top-1 accuracy 0.2500, top-3 0.7500 over 20 labelled image(s)" in out
    with open(tmp_path / "r.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["truth"] for r in rows] == [line.rsplit(" ", 1)[1] for line in lines]
    assert [os.path.normpath(r["path"]) for r in rows] == good[:20]  # joined to the list's folder
    # a label that is not a class: located at its line, before anything runs
    (tmp_path / "bad.txt").write_text(f"{good[0]} 3\n{good[1]} 10\n")
    assert cli.main(["infer", str(model), str(tmp_path / "bad.txt"), "-o", str(tmp_path / "b.csv")]) == 2
    assert capsys.readouterr().err.strip().endswith(f"{tmp_path / 'bad.txt'}:2: label 10 is not a class of "
                                                    f"output 'prob' (10 classes)")
    # ties count as hits, as in Caffe's Accuracy layer (fewer than k classes strictly above the label's)
    acc = Accuracy("prob", 2)
    row = np.float32([0.4, 0.4, 0.2])
    for label in (1, 2):
        acc.add(label, [Answer("prob", "classes", scores=row)])
    assert (acc.seen, acc.top1, acc.topk) == (2, 1, 1)
