"""Kernels refuse bad data (indices out of range) with located errors, and verify's generated
inputs are valid for the layers that read them as indices."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from protonet.errors import ProtonetError
from protonet.pipeline import compile_net, random_inputs, verify_compiled
from protonet.reference import ReferenceInterpreter

ROI_NET = ('input: "x" input_shape { dim: 2 dim: 3 dim: 8 dim: 10 }\n'
           'input: "rois" input_shape { dim: 4 dim: 5 }\n'
           'layer { name: "roi" type: "ROIPooling" bottom: "x" bottom: "rois" top: "y" '
           'roi_pooling_param { pooled_h: 2 pooled_w: 2 spatial_scale: 0.5 } }\n')
EMBED_NET = ('input: "i" input_shape { dim: 3 }\n'
             'layer { name: "emb" type: "Embed" bottom: "i" top: "y" embed_param { num_output: 2 input_dim: 5 } }\n')
UNPOOL_NET = ('input: "x" input_shape { dim: 1 dim: 1 dim: 2 dim: 2 }\n'
              'input: "m" input_shape { dim: 1 dim: 1 dim: 2 dim: 2 }\n'
              'layer { name: "up" type: "Upsample" bottom: "x" bottom: "m" top: "y" '
              'upsample_param { scale: 2 } }\n')


def _compile(tmp_path: Path, text: str):
    p = tmp_path / "net.prototxt"
    p.write_text(text)
    return compile_net(p)


def _feeds(c, **over):
    feeds = random_inputs(c.graph, 0)
    feeds.update({k: np.asarray(v, dtype=np.float32) for k, v in over.items()})
    return feeds


@pytest.mark.parametrize("text,over,want", [
    (ROI_NET, {"rois": [[0, 1, 1, 4, 4], [1, 0, 0, 2, 2], [2, 1, 1, 3, 3], [0, 0, 0, 1, 1]]},
     "net.prototxt:3: while executing layer 'roi' (ROIPooling): ROI 2 has batch index 2, outside the batch of 2"),
    (ROI_NET, {"rois": [[0, 1, 1, 4, 4], [np.nan, 0, 0, 2, 2], [1, 1, 1, 3, 3], [0, 0, 0, 1, 1]]},
     "ROI 1 has batch index nan, outside the batch of 2"),
    (ROI_NET, {"rois": [[0, 1, 1, 4, np.inf], [1, 0, 0, 2, 2], [1, 1, 1, 3, 3], [0, 0, 0, 1, 1]]},
     "while executing layer 'roi' (ROIPooling): ROI corners must be finite numbers"),
    (EMBED_NET, {"i": [0, 4, 5]},
     "net.prototxt:2: while executing layer 'emb' (Embed): Embed index out of range [0, 5): got values from 0 to 5"),
    (EMBED_NET, {"i": [-1, 0, 1]}, "Embed index out of range [0, 5): got values from -1 to 1"),
    (UNPOOL_NET, {"m": [[[[0, 3], [16, 2]]]]},
     "net.prototxt:3: while executing layer 'up' (Upsample): mask index out of range [0, 16): got values from 0 to "
     "16; the mask does not fit the output size"),
])
def test_kernels_refuse_bad_indices_with_the_layer_located(tmp_path, text, over, want):
    c = _compile(tmp_path, text)
    with pytest.raises(ProtonetError) as e:
        ReferenceInterpreter(c.graph).run(_feeds(c, **over))
    assert e.value.exit_code == 2
    assert want in str(e.value), str(e.value)


def test_caffe_truncates_roi_batch_index(tmp_path):
    """Caffe converts the float batch index with int(): -0.5 -> 0 and 1.9 -> 1 are in the batch."""
    c = _compile(tmp_path, ROI_NET)
    feeds = _feeds(c, rois=[[-0.5, 1, 1, 4, 4], [1.9, 0, 0, 2, 2], [0, 1, 1, 3, 3], [1, 0, 0, 1, 1]])
    y = ReferenceInterpreter(c.graph).run(feeds)["y"]
    x = feeds["x"].astype(np.float64)
    # ROI 1: batch 1, corners (0, 0)-(1, 1) at scale 0.5 -> a 2x2 ROI, one pixel per bin
    np.testing.assert_array_equal(y[1], x[1, :, 0:2, 0:2])


@pytest.mark.parametrize("text", [ROI_NET, EMBED_NET, UNPOOL_NET])
def test_verify_feeds_valid_indices(tmp_path, text):
    """Plain verify (generated inputs) of a net that reads indices runs and matches."""
    c = _compile(tmp_path, text)
    feeds = random_inputs(c.graph, 3)
    res = verify_compiled(c, feeds)
    assert res.ok and res.blobs
    if "rois" in feeds:
        batch = feeds["rois"][:, 0]
        assert set(batch.tolist()) <= {0.0, 1.0} and (feeds["rois"][:, 1:] >= 0).all()
        assert (feeds["rois"][:, 3] <= 10 / 0.5).all() and (feeds["rois"][:, 1] <= feeds["rois"][:, 3]).all()
