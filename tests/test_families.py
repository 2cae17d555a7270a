"""One small net per family of real-world Caffe models, compiled (optimized) and verified blob by
blob: an FCN-style upsampling head (Deconvolution + Crop) and a ShuffleNet unit. (The SSD head is
in test_ssd_head.py, the LSTM over a sequence in test_recurrent.py.)"""
from __future__ import annotations

from pathlib import Path

import pytest

from protonet.build import BuildOptions
from protonet.pipeline import compile_net, random_inputs, verify_compiled

FCN = """
name: "fcn_head"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 16 dim: 16 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "score" type: "Convolution" bottom: "pool1" top: "score" convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "upscore" type: "Deconvolution" bottom: "score" top: "upscore"
        param { lr_mult: 0 }
        convolution_param { num_output: 3 group: 3 kernel_size: 4 stride: 2 bias_term: false
                            weight_filler { type: "bilinear" } } }
layer { name: "crop" type: "Crop" bottom: "upscore" bottom: "data" top: "crop" crop_param { axis: 2 offset: 1 } }
layer { name: "prob" type: "Softmax" bottom: "crop" top: "prob" }
"""

SHUFFLE_UNIT = """
name: "shufflenet_unit"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 12 dim: 8 dim: 8 } } }
layer { name: "gconv1" type: "Convolution" bottom: "data" top: "gconv1"
        convolution_param { num_output: 12 kernel_size: 1 group: 3 bias_term: false } }
layer { name: "bn1" type: "BatchNorm" bottom: "gconv1" top: "gconv1" }
layer { name: "scale1" type: "Scale" bottom: "gconv1" top: "gconv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "gconv1" top: "gconv1" }
layer { name: "shuffle" type: "ShuffleChannel" bottom: "gconv1" top: "shuffle" shuffle_channel_param { group: 3 } }
layer { name: "dwconv" type: "ConvolutionDepthwise" bottom: "shuffle" top: "dwconv"
        convolution_param { num_output: 12 kernel_size: 3 pad: 1 bias_term: false } }
layer { name: "bn2" type: "BatchNorm" bottom: "dwconv" top: "dwconv" }
layer { name: "scale2" type: "Scale" bottom: "dwconv" top: "dwconv" scale_param { bias_term: true } }
layer { name: "gconv2" type: "Convolution" bottom: "dwconv" top: "gconv2"
        convolution_param { num_output: 12 kernel_size: 1 group: 3 bias_term: false } }
layer { name: "bn3" type: "BatchNorm" bottom: "gconv2" top: "gconv2" }
layer { name: "scale3" type: "Scale" bottom: "gconv2" top: "gconv2" scale_param { bias_term: true } }
layer { name: "add" type: "Eltwise" bottom: "data" bottom: "gconv2" top: "add" }
layer { name: "relu_out" type: "ReLU" bottom: "add" top: "add" }
"""


@pytest.mark.parametrize("text,expect", [(FCN, (2, 3, 16, 16)), (SHUFFLE_UNIT, (1, 12, 8, 8))],
                         ids=["fcn_deconv_crop", "shufflenet_unit"])
@pytest.mark.parametrize("init", ["filler", "random"])
def test_family_net_compiles_and_verifies(tmp_path: Path, text: str, expect: tuple, init: str):
    p = tmp_path / "net.prototxt"
    p.write_text(text)
    c = compile_net(p, options=BuildOptions(init=init), optimize=True)
    assert c.graph.outputs[0].shape == expect
    res = verify_compiled(c, random_inputs(c.graph))
    assert res.ok, f"worst {res.worst.name}: {res.worst.ratio:.3g}"
    if text is SHUFFLE_UNIT:  # every BatchNorm+Scale folded into its convolution
        assert not c.graph.nodes_of("BatchNorm", "Scale")
