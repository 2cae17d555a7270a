"""protonet bench: percentiles as numpy defines them, the timing loop, the per-layer mapping of
onnxruntime's profile back to Caffe layers, and the command's table and JSON on tiny nets."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from protonet import bench as B
from protonet.analysis import summarize
from protonet.errors import ProtonetError
from protonet.api import compile as compile_model

ROOT = Path(__file__).resolve().parent.parent
LENET = str(ROOT / "nets" / "lenet.prototxt")

#: conv -> relu, conv, sum -> relu, pool, inner product, softmax: protonet fuses the first ReLU into
#: its convolution; onnxruntime (NCHWc) fuses the sum and its ReLU into the second convolution
TINY = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 12 dim: 12 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "sum" type: "Eltwise" bottom: "conv1" bottom: "conv2" top: "sum" }
layer { name: "relu2" type: "ReLU" bottom: "sum" top: "sum" }
layer { name: "pool" type: "Pooling" bottom: "sum" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc"
  inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "protonet", *args], capture_output=True, text=True, timeout=600)


# -- percentiles ----------------------------------------------------------------------------------

def test_percentile_hand_checked():
    xs = [35.0, 15.0, 50.0, 20.0, 40.0]  # sorted: 15 20 35 40 50
    # linear: h = 4 * 0.4 = 1.6 -> 20 + 0.6 * (35 - 20) = 29
    assert B.percentile(xs, 40) == pytest.approx(29.0)
    assert B.percentile(xs, 50) == 35.0 and B.percentile(xs, 0) == 15.0 and B.percentile(xs, 100) == 50.0
    # nearest rank: the smallest value with rank k, k / 5 >= q / 100
    assert B.percentile(xs, 40, "inverted_cdf") == 20.0  # k = 2 exactly
    assert B.percentile(xs, 41, "inverted_cdf") == 35.0  # k = 3
    assert B.percentile(xs, 100, "inverted_cdf") == 50.0 and B.percentile(xs, 0, "inverted_cdf") == 15.0
    assert B.percentile([7.0], 99) == 7.0


@pytest.mark.parametrize("method", B.PERCENTILE_METHODS)
def test_percentile_matches_numpy(method):
    rng = np.random.default_rng(3)
    for n in (1, 2, 3, 7, 10, 100, 1001):
        xs = rng.exponential(size=n).tolist()
        for q in (0, 1, 10, 25, 50, 90, 99, 99.9, 100):
            assert B.percentile(xs, q, method) == pytest.approx(np.percentile(xs, q, method=method), abs=0, rel=1e-12)


def test_percentile_rejects_bad_arguments():
    with pytest.raises(ValueError):
        B.percentile([], 50)
    with pytest.raises(ValueError):
        B.percentile([1.0], 101)
    with pytest.raises(ValueError):
        B.percentile([1.0], 50, "midpoint")


# -- the timing loop ------------------------------------------------------------------------------

class FakeClock:
    """Each run takes the next duration; the clock only moves inside runs."""

    def __init__(self, durations):
        self.now, self.durations, self.calls = 0.0, list(durations), 0

    def __call__(self):
        return self.now

    def run(self):
        self.calls += 1
        self.now += self.durations.pop(0) if self.durations else 1.0


def test_time_runs_counts_warmup_and_iterations():
    c = FakeClock([9.0, 9.0] + [0.5, 0.25, 0.125])
    times = B.time_runs(c.run, warmup=2, iterations=3, clock=c)
    assert c.calls == 5 and times == [0.5, 0.25, 0.125]  # the warm-up runs are not timed


def test_time_runs_by_duration_keeps_a_minimum():
    c = FakeClock([])  # every run takes 1 s
    assert len(B.time_runs(c.run, warmup=0, seconds=3.5, clock=c)) == B.MIN_RUNS  # 10 s > 3.5 s
    c = FakeClock([])
    assert len(B.time_runs(c.run, warmup=0, seconds=12.0, clock=c)) == 12


def test_latency_throughput_and_json():
    lat = B.Latency(batch=4, warmup=1, runs=(0.1, 0.1, 0.2))
    assert lat.throughput == pytest.approx(4 * 3 / 0.4)  # 30 images/s
    j = lat.to_json()
    assert j["iterations"] == 3 and j["latency_ms"]["p50"] == pytest.approx(100.0)
    assert j["latency_ms"]["p90"] == pytest.approx(180.0)  # h = 1.8: 100 + 0.8 * 100


def test_parse_batches():
    assert B.parse_batches("1,8, 32") == ([1, 8, 32], False)
    assert B.parse_batches("dynamic,2,4") == ([2, 4], True)
    assert B.parse_batches("dynamic") == (list(B.DYNAMIC_SIZES), True)
    for bad in ("0", "1,x", "4,4", "-1", "", "dynamic,0"):
        with pytest.raises(ProtonetError):
            B.parse_batches(bad)


# -- per layer --------------------------------------------------------------------------------------

def _ev(name, ts, dur, op="Conv", cat="Node"):
    return {"cat": cat, "name": name, "ts": ts, "dur": dur, "args": {"op_name": op}}


def test_layer_times_maps_onnxruntime_names_and_skips_warmup():
    """Hand-made profile: one warm-up run and two timed runs. onnxruntime's renamed nodes
    (``_nchwc`` suffix, ``fused `` prefix, a second node of one layer) go to their Caffe layer;
    its own reorder nodes form one row."""
    layer_of = {"conv1": "conv1", "conv1/ReLU": "conv1", "fc": "fc", "fc_1": "fc", "conv1_1x": "conv1_1x"}
    events = [_ev("model_run", 0, 1000, cat="Session"), _ev("conv1_nchwc_kernel_time", 10, 999)]
    for start in (2000, 3000):
        events += [_ev("model_run", start, 900, cat="Session"),
                   _ev("conv1_nchwc_kernel_time", start + 1, 300),
                   _ev("conv1_nchwc_fence_before", start + 1, 50),  # not a kernel: ignored
                   _ev("conv1_1x_kernel_time", start + 2, 100),
                   _ev("fc_kernel_time", start + 3, 40, "Flatten"),
                   _ev("fused fc_1_kernel_time", start + 4, 60, "FusedGemm"),
                   _ev("ReorderOutput_kernel_time", start + 5, 100, "ReorderOutput"),
                   _ev("ReorderOutput_token_3_kernel_time", start + 6, 100, "ReorderOutput")]
    rows, run_ms = B.layer_times(events, 2, layer_of)
    got = {r.layer: (r.time_ms, r.share) for r in rows}
    assert run_ms == pytest.approx(0.9)
    assert got["conv1"] == (pytest.approx(0.3), pytest.approx(300 / 700))
    assert got["conv1_1x"][0] == pytest.approx(0.1)  # its own layer, not conv1's
    assert got["fc"][0] == pytest.approx(0.1)  # Flatten 40 + FusedGemm 60
    assert got["onnxruntime"][0] == pytest.approx(0.2)
    assert [r.type for r in rows if r.layer == "onnxruntime"] == ["ReorderOutput x2"]
    with pytest.raises(ProtonetError, match="3 runs, 4 expected"):
        B.layer_times(events, 4, layer_of)


def test_layer_for():
    m = {"a": "a", "a_1": "a", "a/ReLU": "a", "a_b": "a_b"}
    assert B.layer_for("a_1", m) == "a" and B.layer_for("a_b_nchwc", m) == "a_b" and B.layer_for("a_nchwc", m) == "a"
    assert B.layer_for("fused a/ReLU_x", m) == "a" and B.layer_for("ReorderInput", m) is None
    assert B.layer_for("conv1_nchwc", {}) == "conv1" and B.layer_for("ReorderOutput_token_2", {}) is None


def test_gflops():
    assert B.LayerTime("c", "Convolution", 2.0, 1.0, 1_000_000).gflops == pytest.approx(1.0)  # 2 MFLOP in 2 ms
    assert B.LayerTime("p", "Pooling", 2.0, 1.0, 0).gflops is None


def test_per_layer_table_has_every_layer(tmp_path):
    """Every Caffe layer that became ONNX nodes has a row (in the net's order), with the MACs of
    analysis.summarize; a layer onnxruntime fused away names where it is timed; shares add up."""
    net = tmp_path / "tiny.prototxt"
    net.write_text(TINY)
    (t,) = B.net_targets(lambda b: compile_model(net, batch=b), None)
    opts = B.BenchOptions(provider="cpu", threads=1, warmup=1, iterations=3, per_layer=True)
    res, sess = B.bench_target(t, opts)
    assert sess.provider == "cpu" and len(res.latency.runs) == 3
    caffe = [n for n in t.graph.nodes if n.type != "Input"]
    rows = [r for r in res.layers if r.layer != "onnxruntime"]
    assert [r.layer for r in rows] == [n.name for n in caffe] == ["conv1", "conv2", "sum", "relu2", "pool", "fc", "prob"]
    macs = {s.name: s.macs for s in summarize(t.graph).layers}
    assert all(r.macs == macs[r.layer] for r in rows)
    assert macs["conv1"] == 8 * 12 * 12 * 3 * 9 and macs["fc"] == 5 * 8 * 6 * 6
    types = {r.layer: r.type for r in rows}
    assert types["conv1"] == "Convolution+ReLU" and types["fc"] == "InnerProduct"
    assert sum(r.share for r in res.layers) == pytest.approx(1.0)
    assert all(r.time_ms > 0 for r in rows if "timed in" not in r.type)
    for r in rows:
        if "timed in" in r.type:  # onnxruntime fused the sum (+ReLU) into a convolution
            assert r.time_ms == 0 and r.layer in ("sum", "relu2") and "conv2" in r.type


# -- the command --------------------------------------------------------------------------------------

def test_bench_json_schema(tmp_path):
    r = run("bench", LENET, "--batch", "1,2", "--iterations", "4", "--warmup", "1", "--threads", "1",
            "--provider", "cpu", "--per-layer", "--format", "json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["model"] == LENET and d["provider"] == "cpu" and d["precision"] == "fp32" and d["threads"] == 1
    assert d["io_binding"] is True and d["cuda_graph"] is False
    assert [x["batch"] for x in d["results"]] == [1, 2]
    for x in d["results"]:
        assert x["iterations"] == 4 and x["warmup"] == 1
        lat = x["latency_ms"]
        assert set(lat) == {"p50", "p90", "p99", "mean", "min", "max"}
        assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        # images/s = batch * runs / total time = batch / mean latency
        assert x["throughput_ips"] == pytest.approx(x["batch"] / (lat["mean"] / 1e3), rel=1e-9)
        layers = x["per_layer"]["layers"]
        assert {"layer", "type", "time_ms", "share", "macs", "gflops"} == set(layers[0])
        assert [row["layer"] for row in layers if row["layer"] != "onnxruntime"] == \
            ["conv1", "pool1", "conv2", "pool2", "ip1", "ip2", "prob"]  # relu1 is fused into ip1


def test_bench_table_and_fixed_batch_onnx(tmp_path):
    out = tmp_path / "lenet.onnx"
    assert run("compile", LENET, "-o", str(out)).returncode == 0
    r = run("bench", str(out), "--iterations", "3", "--warmup", "0", "--provider", "cpu", "--per-layer")
    assert r.returncode == 0, r.stderr
    assert "images/s" in r.stdout and "p99 ms" in r.stdout and "CPU" in r.stdout
    assert "conv1" in r.stdout and "GFLOP/s" in r.stdout  # an ONNX file: its nodes by name
    r = run("bench", str(out), "--batch", "1,8", "--provider", "cpu")
    assert r.returncode == 2 and "fixed batch of 1" in r.stderr and "only batch 1" in r.stderr
    assert "Traceback" not in r.stderr


def test_bench_bad_input():
    r = run("bench", LENET, "--batch", "0")
    assert r.returncode == 2 and "--batch" in r.stderr
    r = run("bench", LENET, "--precision", "int3")
    assert r.returncode == 2 and "int3" in r.stderr
    r = run("bench", "missing.onnx")
    assert r.returncode == 2 and "no such file" in r.stderr


def test_bench_peers_writes_its_table(tmp_path):
    """tools/bench_peers.py end to end on a tiny net: both tools ran, the ratio is OpenCV's
    median over protonet's, and both computed the same outputs."""
    net = tmp_path / "tiny.prototxt"
    net.write_text(TINY)
    out = tmp_path / "peers.md"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_peers.py"), "--nets", str(net), "--batches",
                        "1,2", "--rounds", "1", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    lines = out.read_text().splitlines()
    head = [c.strip() for c in next(line for line in lines if line.startswith("| net")).split("|")[1:-1]]
    rows = [dict(zip(head, (c.strip() for c in line.split("|")[1:-1]))) for line in lines if line.startswith("| tiny")]
    assert [int(r["batch"]) for r in rows] == [1, 2]
    for r in rows:
        opencv, ours, q8 = float(r["OpenCV 4.10 ms"]), float(r["protonet fp32 ms"]), float(r["protonet int8 ms"])
        assert float(r["ratio fp32"].rstrip("x")) == pytest.approx(opencv / ours, rel=0.01)
        assert float(r["ratio int8"].strip("()x")) == pytest.approx(opencv / q8, rel=0.01)
        assert r["int8 gate"] in ("passes", "fails") and (r["int8 gate"] == "fails") == r["ratio int8"].startswith("(")
        assert float(r["outputs: max diff / max"].split()[0]) < 1e-5
    assert "int8 accuracy vs fp32 on 5 held-out input(s) (10 used for calibration)" in out.read_text()
    assert "## Machine" in out.read_text() and "1 rounds" in out.read_text()


def test_dynamic_batch_one_model_every_size(tmp_path):
    """--batch dynamic: one model with a symbolic batch runs at each size; its per-layer MACs are
    the batch-1 build's times the batch."""
    net = tmp_path / "tiny.prototxt"
    net.write_text(TINY)
    calls = []

    def at(b):
        calls.append(b)
        return compile_model(net, batch=b)

    targets = list(B.net_targets(at, [1, 3], dynamic=True))
    assert calls == ["dynamic"] and [t.batch for t in targets] == [1, 3]
    assert targets[0].model is targets[1].model
    assert targets[1].feeds["data"].shape == (3, 3, 12, 12)
    opts = B.BenchOptions(provider="cpu", threads=1, warmup=0, iterations=2, per_layer=True)
    res = B.bench(lambda: iter(targets), str(net), opts, dynamic=True)
    assert res.dynamic and res.to_json()["dynamic_batch"] is True
    conv1 = [{r.layer: r.macs for r in b.layers}["conv1"] for b in res.batches]
    assert conv1 == [8 * 12 * 12 * 3 * 9, 3 * 8 * 12 * 12 * 3 * 9]
    assert "one model with a dynamic batch" in res.render_table()


def test_reduced_precisions_run(tmp_path):
    """--precision fp16 and int8 go through protonet.quantize: the timed models are the reduced ones."""
    net = tmp_path / "tiny.prototxt"
    net.write_text(TINY)
    ops = {}
    for precision in ("fp16", "int8"):
        (t,) = B.net_targets(lambda b: compile_model(net, batch=b), None, precision=precision)
        ops[precision] = {n.op_type for n in t.model.graph.node}
        res = B.bench(lambda: iter([t]), str(net), B.BenchOptions(provider="cpu", threads=1, warmup=0, iterations=2,
                                                                  precision=precision))
        assert res.precision == precision and len(res.batches[0].latency.runs) == 2
    assert "Cast" in ops["fp16"] and "QuantizeLinear" in ops["int8"] and "DequantizeLinear" in ops["int8"]


def test_gpu_check_rehearsal_on_the_cpu(tmp_path):
    """tools/gpu_check.sh --dry runs the GPU check's Python steps on the CPU (tiny): a verified
    net, fp32 and fp16 rows at each batch size with fp16's top-1 agreement with fp32."""
    out = tmp_path / "gpu.md"
    r = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), "--dry", str(out), "--verify-nets", "lenet",
                        "--net", "lenet"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert "CPU rehearsal" in text and "| lenet | cpu | 8 |" in text and "| OK |" in text
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith(("| fp32", "| fp16"))]
    assert [(c[0].strip(), int(c[2])) for c in rows] == [("fp32", 1), ("fp32", 2), ("fp16", 1), ("fp16", 2)]
    assert all(float(c[4]) > 0 and float(c[5]) > 0 for c in rows)
    assert [c[6].strip() for c in rows][2:] == ["1.000", "1.000"]  # LeNet's fillers: fp16 keeps every top-1


def test_gpu_check_refuses_without_a_gpu(tmp_path):
    from protonet.runtime import usable_providers

    if "cuda" in usable_providers():
        pytest.skip("a GPU is here: tools/gpu_check.sh itself is the check")
    out = tmp_path / "gpu.md"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py"), "--provider", "cuda", "--out", str(out)],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2 and "cuda provider cannot start here" in r.stderr and not out.exists()
