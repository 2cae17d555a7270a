"""happynear/caffe-windows' layers of AM-Softmax's face nets (github.com/happynear/AMSoftmax):
Normalize with ``normalize_param``, InnerProduct with ``normalize: true`` and Flip. The layers'
hand-computed cases are in tests/test_layers_forks.py; here the optimizer's respect for the
weight normalization and the corpus files (PROTONET_CORPUS, as tests/test_faceboxes.py)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from protonet.build import BuildOptions
from protonet.pipeline import compile_net, verify_graph
from protonet.reference import ReferenceInterpreter

CORPUS = Path(os.environ.get("PROTONET_CORPUS", "/work/corpus"))
AMSOFTMAX_DIR = CORPUS / "happynear__AMSoftmax" / "prototxt"

COSINE_HEAD = """name: "cos"
input: "data"
input_shape { dim: 2 dim: 5 }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
  inner_product_param { num_output: 3 normalize: true weight_filler { type: "gaussian" std: 1 } } }
layer { name: "bn" type: "BatchNorm" bottom: "fc" top: "bn" batch_norm_param { use_global_stats: true } }
layer { name: "sc" type: "Scale" bottom: "bn" top: "out" scale_param { bias_term: true } }
"""


def test_a_batchnorm_does_not_fold_into_a_normalized_inner_product(tmp_path):
    # folding would scale W's rows, and the run-time normalization would divide the scale out again
    path = tmp_path / "cos.prototxt"
    path.write_text(COSINE_HEAD)
    opts = BuildOptions(seed=3, init="random")
    plain = compile_net(path, options=opts)
    opt = compile_net(path, options=opts, optimize=True)
    assert [n.type for n in opt.graph.nodes] == ["Input", "InnerProduct", "Scale"]
    x = {"data": np.random.default_rng(0).standard_normal((2, 5)).astype(np.float32)}
    want = ReferenceInterpreter(plain.graph).run(x)["out"]
    np.testing.assert_allclose(ReferenceInterpreter(opt.graph).run(x)["out"], want, rtol=1e-5, atol=1e-6)


needs_corpus = pytest.mark.skipif(not AMSOFTMAX_DIR.is_dir(),
                                  reason=f"the corpus is not at {CORPUS} (PROTONET_CORPUS)")


@needs_corpus
def test_the_amsoftmax_mirror_deploy_file_compiles_and_verifies():
    # data and its Flip are concatenated on axis 0, run through the ResNet, the two halves' fc5
    # summed and L2-normalized per sample (normalize1: Normalize with normalize_param)
    c = compile_net(AMSOFTMAX_DIR / "face_deploy_mirror_normalize.prototxt",
                    options=BuildOptions(seed=0, batch=1))
    assert [v.name for v in c.graph.outputs] == ["norm1"]
    assert c.graph.values["norm1"].shape == (1, 512, 1, 1)
    x = np.random.default_rng(1).standard_normal((1, 3, 112, 96)).astype(np.float32)
    out = ReferenceInterpreter(c.graph).run({"data": x})["norm1"]
    np.testing.assert_allclose(np.sqrt((out * out).sum()), 1.0, rtol=1e-5)  # sqrt(Σ / (Σ + 1e-6))
    assert verify_graph(c.graph, {"data": x}, provider="cpu").ok


@needs_corpus
def test_the_amsoftmax_train_file_compiles_to_its_cosine_layer():
    # Caffe's TEST phase: the margin (LabelSpecificAdd) and its Scale read the label and go with
    # the losses; fc6_l2 (normalize: true) is the output
    c = compile_net(AMSOFTMAX_DIR / "face_train_test.prototxt",
                    options=BuildOptions(seed=0, input_shapes={"data": (1, 3, 112, 96)}))
    assert [v.name for v in c.graph.outputs] == ["fc6"]
    assert c.graph.node("fc6_l2").attrs.normalize
    assert c.graph.values["fc6"].shape == (1, 10516)
