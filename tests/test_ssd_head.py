"""A small SSD-style detection head, end to end: two feature maps, each with a loc branch
(conv + Permute + Flatten), a conf branch (conv + Permute + Flatten), PriorBox; Concat of the
three; conf softmax via Reshape; DetectionOutput. Compiled, run by the reference interpreter and
by onnxruntime, and compared blob by blob (protonet.pipeline.verify_graph)."""
from __future__ import annotations

import numpy as np

from harness import build_text
from protonet.export import export
from protonet.pipeline import verify_graph
from protonet.runtime import make_session

NUM_CLASSES = 3
KEEP_TOP_K = 10


def _branch(src: str, k: str, priors_per_cell: int, prior_param: str) -> str:
    return f"""
layer {{ name: "{k}_loc" type: "Convolution" bottom: "{src}" top: "{k}_loc"
  convolution_param {{ num_output: {4 * priors_per_cell} kernel_size: 3 pad: 1 }} }}
layer {{ name: "{k}_loc_perm" type: "Permute" bottom: "{k}_loc" top: "{k}_loc_perm"
  permute_param {{ order: 0 order: 2 order: 3 order: 1 }} }}
layer {{ name: "{k}_loc_flat" type: "Flatten" bottom: "{k}_loc_perm" top: "{k}_loc_flat"
  flatten_param {{ axis: 1 }} }}
layer {{ name: "{k}_conf" type: "Convolution" bottom: "{src}" top: "{k}_conf"
  convolution_param {{ num_output: {NUM_CLASSES * priors_per_cell} kernel_size: 3 pad: 1 }} }}
layer {{ name: "{k}_conf_perm" type: "Permute" bottom: "{k}_conf" top: "{k}_conf_perm"
  permute_param {{ order: 0 order: 2 order: 3 order: 1 }} }}
layer {{ name: "{k}_conf_flat" type: "Flatten" bottom: "{k}_conf_perm" top: "{k}_conf_flat"
  flatten_param {{ axis: 1 }} }}
layer {{ name: "{k}_priorbox" type: "PriorBox" bottom: "{src}" bottom: "data" top: "{k}_priorbox"
  prior_box_param {{ {prior_param} }} }}
"""


NET = f"""
name: "tiny_ssd"
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 2 dim: 3 dim: 32 dim: 32 }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 8 kernel_size: 3 stride: 4 pad: 1 }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "conv1_norm" type: "Normalize" bottom: "conv1" top: "conv1_norm"
  norm_param {{ across_spatial: false channel_shared: false scale_filler {{ type: "constant" value: 20 }} }} }}
layer {{ name: "pool2" type: "Pooling" bottom: "conv1" top: "pool2"
  pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
{_branch("conv1_norm", "f1", 4, "min_size: 6 max_size: 12 aspect_ratio: 2 flip: true clip: false "
         "variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 step: 4 offset: 0.5")}
{_branch("pool2", "f2", 3, "min_size: 12 aspect_ratio: 2 flip: true clip: true variance: 0.1 variance: 0.1 "
         "variance: 0.2 variance: 0.2")}
layer {{ name: "mbox_loc" type: "Concat" bottom: "f1_loc_flat" bottom: "f2_loc_flat" top: "mbox_loc"
  concat_param {{ axis: 1 }} }}
layer {{ name: "mbox_conf" type: "Concat" bottom: "f1_conf_flat" bottom: "f2_conf_flat" top: "mbox_conf"
  concat_param {{ axis: 1 }} }}
layer {{ name: "mbox_priorbox" type: "Concat" bottom: "f1_priorbox" bottom: "f2_priorbox" top: "mbox_priorbox"
  concat_param {{ axis: 2 }} }}
layer {{ name: "mbox_conf_reshape" type: "Reshape" bottom: "mbox_conf" top: "mbox_conf_reshape"
  reshape_param {{ shape {{ dim: 0 dim: -1 dim: {NUM_CLASSES} }} }} }}
layer {{ name: "mbox_conf_softmax" type: "Softmax" bottom: "mbox_conf_reshape" top: "mbox_conf_softmax"
  softmax_param {{ axis: 2 }} }}
layer {{ name: "mbox_conf_flatten" type: "Flatten" bottom: "mbox_conf_softmax" top: "mbox_conf_flatten"
  flatten_param {{ axis: 1 }} }}
layer {{ name: "detection_out" type: "DetectionOutput" bottom: "mbox_loc" bottom: "mbox_conf_flatten"
  bottom: "mbox_priorbox" top: "detection_out"
  detection_output_param {{ num_classes: {NUM_CLASSES} share_location: true background_label_id: 0
    nms_param {{ nms_threshold: 0.45 top_k: 40 }} code_type: CENTER_SIZE keep_top_k: {KEEP_TOP_K}
    confidence_threshold: 0.4
    save_output_param {{ output_directory: "/nonexistent" }} }} }}
"""

NUM_PRIORS = 8 * 8 * 4 + 4 * 4 * 3


def _graph():
    graph = build_text(NET, seed=3)
    nodes = {n.name: n for n in graph.nodes}
    # conf biases that make some priors confident: class 1 favoured on f1, class 2 on f2, so that
    # detections of both labels survive the 0.4 threshold
    for name, fav, lift in (("f1_conf", 1, 1.0), ("f2_conf", 2, 2.0)):
        b = nodes[name].weights["bias"].reshape(-1, NUM_CLASSES)
        b[:] = 0.0
        b[:, fav] = lift
    return graph


def test_ssd_head_shapes():
    graph = _graph()
    shapes = {v.name: v.shape for v in graph.iter_values()}
    assert shapes["mbox_loc"] == (2, NUM_PRIORS * 4)
    assert shapes["mbox_conf_flatten"] == (2, NUM_PRIORS * NUM_CLASSES)
    assert shapes["mbox_priorbox"] == (1, 2, NUM_PRIORS * 4)
    assert shapes["detection_out"] == (1, 1, 2 * KEEP_TOP_K, 7)


def test_ssd_head_verifies_blob_by_blob_with_detections():
    graph = _graph()
    rng = np.random.default_rng(7)
    feeds = {"data": rng.standard_normal((2, 3, 32, 32)).astype(np.float32)}
    result = verify_graph(graph, feeds, provider="cpu")
    bad = [(b.name, b.result.describe()) for b in result.blobs if not b.ok]
    assert result.ok, f"blobs that differ: {bad}"
    assert "detection_out" in {b.name for b in result.blobs}

    got = make_session(export(graph), "cpu").run(feeds)["detection_out"].reshape(2, KEEP_TOP_K, 7)
    for image in range(2):
        rows = got[image]
        valid = rows[:, 1] >= 0
        assert valid.sum() >= 2, "the head should keep some detections per image"
        assert set(rows[valid, 1].astype(int)) == {1, 2}
        assert np.all(rows[valid, 0] == image)
        assert np.all(rows[valid, 2] > 0.4)
        m = int(valid.sum())
        assert valid[:m].all() and np.all(rows[m:] == -1)  # padding rows last, all -1
        labels, scores = rows[valid, 1], rows[valid, 2]
        order = np.lexsort((-scores, labels))  # Caffe's order: label, then score descending
        np.testing.assert_array_equal(order, np.arange(len(order)))
