"""tools/corpus_report.py on tiny nets of our own: a net protonet and OpenCV both run (and agree
on, from the same caffemodel), a refusal sorted as right to refuse, one sorted as a gap, and an
OpenCV comparison that notices a wrong output."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2", reason="OpenCV (opencv-python-headless==4.10.*, the test extra) is not installed")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import corpus_report as cr  # noqa: E402  (tools/corpus_report.py)

SMALL = """name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 12 dim: 12 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""

PYTHON_LAYER = """name: "py"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }
layer { name: "mine" type: "Python" bottom: "data" top: "out"
        python_param { module: "os" layer: "system" } }
"""

UNKNOWN_FIELD = """name: "field"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 no_schema_has_this: 1 } }
"""


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_a_net_both_run_is_verified_and_agrees_with_opencv(tmp_path):
    res = cr.check_file(_write(tmp_path, "small.prototxt", SMALL), tmp_path)
    assert res["status"] == "verified" and res["verify_rel"] <= 1
    assert res["inputs"] == {"data": [1, 3, 12, 12]}  # batch 1, whatever the file says
    assert res["opencv"] == "runs"
    assert set(res["opencv_rel"]) == {"prob"}
    assert res["opencv_max_rel"] <= cr.AGREE
    # every layer is compared too (fusion off in OpenCV): conv1, bn1, sc1, relu1, pool1, fc, prob
    assert res["opencv_layers"] == 7 and res["opencv_layer_max_rel"] <= cr.AGREE
    # the caffemodel OpenCV read holds protonet's random weights, not zeros: the output varies
    net = cv2.dnn.readNetFromCaffe(str(tmp_path / "small.prototxt"), str(tmp_path / "random.caffemodel"))
    net.setInput(np.random.default_rng(0).standard_normal((1, 3, 12, 12)).astype(np.float32))
    prob = net.forward()
    assert prob.shape == (1, 5) and np.ptp(prob) > 1e-3 and abs(prob.sum() - 1) < 1e-5


def test_the_opencv_comparison_notices_a_wrong_output(tmp_path):
    from protonet.build import BuildOptions
    from protonet.export import export
    from protonet.pipeline import compile_net, random_inputs, save_caffemodel
    from protonet.runtime import make_session

    path = _write(tmp_path, "small.prototxt", SMALL)
    c = compile_net(path, options=BuildOptions(batch=1, init="random"))
    save_caffemodel(c.graph, tmp_path / "w.caffemodel")
    feeds = random_inputs(c.graph, seed=3)
    blobs = make_session(export(c.graph, expose_all=True, check=False), "cpu").run(feeds)
    good = cr._opencv_run(path, str(tmp_path / "w.caffemodel"), c.graph, feeds, blobs)
    assert cr.cv_worst(good) <= cr.AGREE
    wrong = {**blobs, "prob": blobs["prob"][:, ::-1].copy()}  # the classes in the wrong order
    bad = cr._opencv_run(path, str(tmp_path / "w.caffemodel"), c.graph, feeds, wrong)
    assert bad["opencv_max_rel"] > 100 and bad["opencv_layer_worst"] == "prob"
    # a wrong hidden layer is seen even where the output agrees
    fc = c.graph.node("pool1").outputs[0].name
    hidden = {**blobs, fc: blobs[fc] * 1.01}
    res = cr._opencv_run(path, str(tmp_path / "w.caffemodel"), c.graph, feeds, hidden)
    assert res["opencv_max_rel"] <= cr.AGREE and res["opencv_layer_worst"] == "pool1"
    assert cr.cv_worst(res) > 10  # 1% off: about 100 times the tolerance


AXPY = """name: "se"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 3 dim: 3 } } }
layer { name: "gap" type: "Pooling" bottom: "data" top: "gap" pooling_param { pool: AVE global_pooling: true } }
layer { name: "gate" type: "Sigmoid" bottom: "gap" top: "gate" }
layer { name: "branch" type: "Convolution" bottom: "data" top: "branch"
        convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "sum" type: "Axpy" bottom: "gate" bottom: "branch" bottom: "data" top: "sum" }
"""


def test_an_opencv_departure_from_the_fork_source_is_named(tmp_path):
    """SENet's axpy_layer.cpp: top = a * bottom[1] + bottom[2] (the gate scales the residual
    branch); OpenCV 4.10 scales bottom[2] instead. The report finds the layer the difference
    starts at and names OpenCV's departure; protonet's output is the hand formula."""
    from protonet.build import BuildOptions
    from protonet.pipeline import compile_net, random_inputs

    path = _write(tmp_path, "se.prototxt", AXPY)
    res = cr.check_file(path, tmp_path)
    assert res["status"] == "verified" and res["opencv"] == "runs"
    assert (res["opencv_first_diff"], res["opencv_first_diff_type"]) == ("sum", "Axpy")
    assert res["opencv_diverges"] == cr.OPENCV_DIVERGES["Axpy"].why and res["opencv_max_rel"] > 100
    # protonet's Axpy against the formula, on the same weights the report wrote
    c = compile_net(path, tmp_path / "random.caffemodel", options=BuildOptions(batch=1))
    x = random_inputs(c.graph, seed=1)["data"].astype(np.float64)
    branch = np.einsum("oc,nchw->nohw", c.graph.node("branch").weights["weight"][:, :, 0, 0], x) \
        + c.graph.node("branch").weights["bias"].reshape(1, 2, 1, 1)
    gate = 1 / (1 + np.exp(-x.mean(axis=(2, 3), keepdims=True)))
    from protonet.reference import ReferenceInterpreter
    got = ReferenceInterpreter(c.graph).run({"data": x.astype(np.float32)})["sum"]
    np.testing.assert_allclose(got, gate * branch + x, rtol=1e-5, atol=1e-6)


LRN_K2 = """name: "lrn"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 1 dim: 1 } } }
layer { name: "norm" type: "LRN" bottom: "data" top: "norm" lrn_param { local_size: 3 alpha: 0.3 beta: 0.75 k: %s } }
"""


@pytest.mark.parametrize("k, departs", [(2, True), (1, False)])
def test_opencv_lrn_ignores_k(tmp_path, k, departs):
    """Caffe's LRN: x / (k + alpha/n * sum of squares over n channels)^beta; by hand for x = 1, 2, 3,
    n = 3 (zero-padded), alpha 0.3, beta 0.75. OpenCV 4.10 adds 1 whatever k is."""
    from protonet.pipeline import compile_net
    from protonet.reference import ReferenceInterpreter

    path = _write(tmp_path, "lrn.prototxt", LRN_K2 % k)
    x = np.array([1.0, 2.0, 3.0], np.float32).reshape(1, 3, 1, 1)
    sq = np.array([1 + 4, 1 + 4 + 9, 4 + 9])
    hand = np.array([1.0, 2.0, 3.0]) / (k + 0.3 / 3 * sq) ** 0.75
    got = ReferenceInterpreter(compile_net(path).graph).run({"data": x})["norm"].ravel()
    np.testing.assert_allclose(got, hand, rtol=1e-6)
    net = cv2.dnn.readNetFromCaffe(path)
    net.setInput(x)
    np.testing.assert_allclose(net.forward().ravel(), np.array([1.0, 2.0, 3.0]) / (1 + 0.3 / 3 * sq) ** 0.75,
                               rtol=1e-5)
    res = cr.check_file(path, tmp_path)
    assert res["opencv"] == "runs" and ("opencv_diverges" in res) == departs
    assert (res.get("opencv_first_diff") == "norm") == departs


PRIORBOX = """name: "pb"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 100 dim: 100 } } }
layer { name: "feat" type: "Convolution" bottom: "data" top: "feat"
        convolution_param { num_output: 2 kernel_size: 100 } }
layer { name: "pb" type: "PriorBox" bottom: "feat" bottom: "data" top: "pb"
        prior_box_param { min_size: %s variance: 0.1 offset: 0.5 } }
"""


@pytest.mark.parametrize("size, departs", [("21.5", True), ("21", False)])
def test_opencv_priorbox_keeps_fractional_sizes(tmp_path, size, departs):
    """SSD's prior_box_layer.cpp: ``int min_size_ = min_sizes_[s]``, so 21.5 acts as 21: one 1x1 cell
    of a 100x100 image, centre 50, box (50 -/+ 10.5) / 100. OpenCV 4.10 keeps 21.5."""
    from protonet.pipeline import compile_net
    from protonet.reference import ReferenceInterpreter

    path = _write(tmp_path, "pb.prototxt", PRIORBOX % size)
    x = np.zeros((1, 3, 100, 100), np.float32)
    got = ReferenceInterpreter(compile_net(path).graph).run({"data": x})["pb"]
    np.testing.assert_allclose(got[0, 0], [0.395, 0.395, 0.605, 0.605], rtol=1e-6)
    res = cr.check_file(path, tmp_path)
    assert res["opencv"] == "runs" and ("opencv_diverges" in res) == departs
    if departs:
        assert res["opencv_first_diff"] == "pb"
        net = cv2.dnn.readNetFromCaffe(path, str(tmp_path / "random.caffemodel"))
        net.setInput(x)
        assert np.allclose(net.forward().reshape(2, 4)[0], [0.3925, 0.3925, 0.6075, 0.6075])


def test_a_python_layer_is_a_located_refusal_and_right_to_refuse(tmp_path):
    path = _write(tmp_path, "py.prototxt", PYTHON_LAYER)
    res = cr.check_file(path, tmp_path)
    assert res["status"] == "refused"
    assert res["message"].startswith(f"{path}:3: layer 'mine' (Python)")
    assert (res["reason"], res["gap"]) == ("python-layer", False)
    assert (res["cli_rc"], res["cli_lines"], res["cli_traceback"]) == (2, 1, False)
    assert res["opencv"] == "refuses" and res["opencv_error"] == "no layer type Python"  # OpenCV has none either


def test_opencv_layer_probe(tmp_path):
    assert cr.opencv_knows("Convolution", tmp_path) and cr.opencv_knows("PriorBox", tmp_path)
    assert not cr.opencv_knows("Python", tmp_path) and not cr.opencv_knows("NoSuchLayerType", tmp_path)


def test_a_field_no_schema_has_is_refused_with_its_line(tmp_path):
    path = _write(tmp_path, "field.prototxt", UNKNOWN_FIELD)
    res = cr.check_file(path, tmp_path)
    assert res["status"] == "refused"
    assert f"{path}:4" in res["message"] and "no_schema_has_this" in res["message"]
    assert res["reason"] == "unknown-field"


@pytest.mark.parametrize("message, opencv_imports, key, gap", [
    ("n.prototxt:3: Message type \"caffe.PoolingParameter\" has no field named \"ceil_mode\".", True,
     "unknown-field", True),
    ("n.prototxt:3: unknown field 'ceil_mode' of PoolingParameter; give the fork's schema with --caffe-proto", False,
     "unknown-field", True),
    ("n.prototxt: unsupported layer types: Interp (layer 'interp', line 9)", True, "layer-type", True),
    ("n.prototxt:3106:9: in layer 'prob': '  type: \"Softmax\"': Enum type \"caffe.V1LayerParameter.LayerType\" has no "
     "value named \"Softmax\"; if your Caffe fork defines it, give that fork's caffe.proto with --caffe-proto FORK.proto",
     False, "bad-enum-value", False),
    ("n.prototxt: unsupported layer types: Foo (layer 'f', line 9)", False, "fork-layer-type", False),
    ("n.prototxt:2: layer 'mnist' (Data): cannot tell the shape of input 'data': give the input shape with "
     "--input-shape data=N,C,H,W", False, "input-shape", False),
    ("n.prototxt:7: layer 'x' (Flatten): bottom 'data' is not produced by any earlier layer", False, "other", False),
    ("n.prototxt:7: layer 'x' (Flatten): bottom 'data' is not produced by any earlier layer", True, "other", True),
])
def test_classification(message, opencv_imports, key, gap):
    reason = cr.classify(message, opencv_imports)
    assert (reason.key, reason.gap) == (key, gap)


def test_input_shape_column():
    assert cr.parse_shapes("data=1,1,28,28;pair_data=1,2,28,28") == {"data": (1, 1, 28, 28),
                                                                     "pair_data": (1, 2, 28, 28)}
    assert cr.parse_shapes("") == {}


def test_big_inputs_are_tried_smaller():
    assert cr._reduced((1, 3, 473, 473)) == [(1, 3, 120, 120), (1, 3, 240, 240)]
    assert cr._reduced((1, 3, 360, 480)) == [(1, 3, 96, 120), (1, 3, 184, 240)]
    assert cr._reduced((1, 3, 224, 224)) == [] and cr._reduced((1, 10)) == []


def test_detections_are_compared_as_caffe_rows_in_one_order():
    """protonet keeps Caffe's order (class by class, each by score) and pads with -1 rows;
    OpenCV orders by score across classes and pads with 0 rows: the same detections compare equal."""
    import numpy as np

    a = [0, 1, 0.9, 0.1, 0.1, 0.2, 0.2]
    b = [0, 1, 0.5, 0.3, 0.3, 0.4, 0.4]
    c = [0, 2, 0.7, 0.5, 0.5, 0.6, 0.6]
    ours = np.array([a, b, c, [-1] * 7])  # label 1 (by score), then label 2
    theirs = np.array([a, c, b, [0] * 7])  # by score
    assert cr.detections(ours).tolist() == cr.detections(theirs, opencv=True).tolist() == [a, b, c]
    assert cr.detections(np.array([a, [-1] * 7, [-1] * 7])).shape == (1, 7)


def test_a_prior_count_mismatch_is_a_fork_priorbox():
    r = cr.classify("deploy.prototxt:1756: layer 'detection_out' (DetectionOutput): bottom 0 (loc) holds 25600 "
                    "values per image; 1000 priors × 1 location class(es) × 4 = 4000 expected", True)
    assert r.key == "prior-count" and not r.gap and "FaceBoxes" in r.why
