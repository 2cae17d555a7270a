"""Caffe's fork dialects, a user's own caffe.proto (--caffe-proto), and Caffe's lenient corners.

The six failures of real-world files these fix are pinned here one by one: ``ceil_mode: false``
(DenseNet/ResNeXt/DPN conversions), SegNet's ``DenseImageData``, py-faster-rcnn's
``scale_train: false``, HED's repeated layer name, the colorization net's ``Silence`` ending, and
an unnamed ``--input-shape`` on a train_val data layer.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from google.protobuf.descriptor import FieldDescriptor

from protonet.build import BuildOptions, build_graph
from protonet.errors import ProtonetError, SchemaError
from protonet.export import export
from protonet.frontend import load_net, read_net, upgrade_file
from protonet.frontend import schema as schema_mod
from protonet.frontend.schema import is_repeated, load_schema, pb
from protonet.pipeline import compile_net, verify_compiled
from protonet.reference import ReferenceInterpreter

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "dialects"
FORK_PROTO = DATA / "fork.proto"
needs_protoc = pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None,
                                  reason="grpcio-tools (protoc) is not installed")


def _write(tmp_path: Path, text: str, name: str = "net.prototxt") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _run(path: Path, feeds: dict[str, np.ndarray], **kw) -> dict[str, np.ndarray]:
    c = compile_net(path, **kw)
    return ReferenceInterpreter(c.graph).run(feeds)


# -- the forks' fields, by name and number ------------------------------------------------------

#: (message, field) whose number in protonet's schema is not the fork's, and why: the fork's
#: number is BVLC's (or another fork's) there, or protonet had the field at another fork's number
RENUMBERED = {
    ("LayerParameter", "dense_image_data_param"): "BVLC tile_param 138",
    ("LayerParameter", "upsample_param"): "BVLC embed_param 137 (SegNet's number)",
    ("LayerParameter", "adaptive_bias_channel_param"): "BVLC clip_param 148",
    ("LayerParameter", "bias_channel_param"): "upsample_param 149 (YOLO ports)",
    ("LayerParameter", "dense_crf_param"): "BVLC recurrent_param 146",
    ("LayerParameter", "domain_transform_param"): "BVLC swish_param 147",
    ("LayerParameter", "mat_write_param"): "BVLC parameter_param 145",
    ("LayerParameter", "seg_accuracy_param"): "BVLC crop_param 144",
    ("LayerParameter", "interp_param"): "BVLC input_param 143 (PSPNet's number)",
    ("LayerParameter", "bn_param"): "one number for forks that disagree (PSPNet 152, yjxiong 137)",
    ("LayerParameter", "seg_data_param"): "BVLC bias_param 141",
    ("LayerParameter", "video_data_param"): "BVLC elu_param 140 (yjxiong's number; SSD's 207 kept)",
    ("LayerParameter", "roi_pooling_param"): "py-faster-rcnn's 8266711 kept (yjxiong 150)",
    ("LayerParameter", "scale_param"): "BVLC's 142 (yjxiong 160)",
    ("LayerParameter", "bias_param"): "BVLC's 141 (yjxiong 161)",
    ("LayerParameter", "multibox_loss_param"): "proposal_param 201 (OpenCV)",
    ("LayerParameter", "detection_output_param"): "BVLC swish_param 147 (OpenCV's number; SSD's 204 kept)",
    ("LayerParameter", "permute_param"): "BVLC clip_param 148 (OpenCV's number; SSD's 202 kept)",
    ("LayerParameter", "norm_param"): "upsample_param 149 (OpenCV's number; SSD's 206 kept)",
    ("LayerParameter", "prior_box_param"): "PSPNet unique_label_param 150 (OpenCV's number; SSD's 203 kept)",
    ("PoolingParameter", "ceil_mode"): "BVLC round_mode 13 (PR 3057's and OpenCV's number)",
    ("DetectionOutputParameter", "normalized_bbox"): "SSD visualize 10 (OpenCV's number)",
    ("LayerParameter", "reorg_param"): "upsample_param 149 (MobileNet-YOLO's number)",
    ("LayerParameter", "center_loss_param"): "BVLC swish_param 147 (caffe-face's number; happynear's 211 kept)",
    ("LayerParameter", "margin_inner_product_param"): "BVLC swish_param 147 (SphereFace's; happynear's 232 kept)",
    ("TransformationParameter", "scale_factors"): "SSD resize_param 8",
    ("TransformationParameter", "crop_width"): "SSD noise_param 9",
    ("TransformationParameter", "crop_height"): "SSD emit_constraint 10",
    ("TransformationParameter", "fix_crop"): "SSD emit_constraint 10",
    ("TransformationParameter", "multi_scale"): "SSD crop_h 11",
    ("TransformationParameter", "scale_ratios"): "SSD crop_w 12",
    ("TransformationParameter", "max_distort"): "SSD distort_param 13",
    ("TransformationParameter", "is_flow"): "SSD expand_param 14",
    ("LossParameter", "weight_by_label_freqs"): "BVLC normalization 3",
    ("DropoutParameter", "sample_weights_test"): "py-faster-rcnn scale_train 2",
    ("DataParameter", "shuffle"): "BVLC prefetch 10",
    ("ConvolutionParameter", "dilation"): "BVLC's 18 (yjxiong 16)",
    ("ConvolutionParameter", "dilation_h"): "BVLC force_nd_im2col 17",
    ("ConvolutionParameter", "dilation_w"): "BVLC dilation 18",
    ("BNParameter", "bn_mode"): "BNParameter momentum 3 (SegNet's number)",
    ("BNParameter", "scale_filler"): "BNParameter slope_filler 1 (SegNet's number)",
    ("BNParameter", "shift_filler"): "BNParameter bias_filler 2 (SegNet's number)",
    ("VideoDataParameter", "video_type"): "yjxiong source 1 (SSD's number)",
    ("VideoDataParameter", "device_id"): "yjxiong scale 2 (SSD's number)",
    ("VideoDataParameter", "video_file"): "yjxiong mean_file 3 (SSD's number)",
    ("VideoDataParameter", "skip_frames"): "yjxiong batch_size 4 (SSD's number)",
}

KINDS = {"float": FieldDescriptor.TYPE_FLOAT, "double": FieldDescriptor.TYPE_DOUBLE,
         "int32": FieldDescriptor.TYPE_INT32, "int64": FieldDescriptor.TYPE_INT64,
         "uint32": FieldDescriptor.TYPE_UINT32, "uint64": FieldDescriptor.TYPE_UINT64,
         "bool": FieldDescriptor.TYPE_BOOL, "string": FieldDescriptor.TYPE_STRING,
         "bytes": FieldDescriptor.TYPE_BYTES, "enum": FieldDescriptor.TYPE_ENUM,
         "message": FieldDescriptor.TYPE_MESSAGE}


def _fork_fields() -> list[list[str]]:
    with open(DATA / "fork_fields.tsv", newline="") as f:
        return [row for row in csv.reader((l for l in f if not l.startswith("#")), delimiter="\t")]


def _message(name: str):
    cls = pb
    for part in name.split("."):
        cls = getattr(cls, part)
    return cls


def test_every_fork_field_parses_by_name_and_keeps_its_number_unless_documented():
    rows = _fork_fields()
    assert {r[0] for r in rows} == {"alexgkendall/caffe-segnet", "rbgirshick/caffe-fast-rcnn", "hszhao/PSPNet",
                                    "weiliu89/caffe", "yjxiong/caffe", "opencv/opencv", "eric612/MobileNet-YOLO",
                                    "TimoSaemann/caffe-enet", "ydwen/caffe-face", "wy1iu/sphereface",
                                    "happynear/caffe-windows"}
    moved = set()
    for repo, _branch, _commit, msg, name, number, kind in rows:
        fd = _message(msg).DESCRIPTOR.fields_by_name.get(name)
        assert fd is not None, f"{repo}: {msg}.{name} does not parse by name"
        assert fd.type == KINDS[kind], f"{repo}: {msg}.{name} is a {kind} there"
        if fd.number != int(number):
            assert (msg, name) in RENUMBERED, f"{repo}: {msg}.{name} = {number} there, {fd.number} here, undocumented"
            moved.add((msg, name))
    assert moved == set(RENUMBERED)  # no stale entry
    # where the fork's number is free in BVLC's schema, its binaries still read by number
    for alias, name, number in (("bn_param_pspnet", "bn_param", 152), ("scale_param_tsn", "scale_param", 160),
                                ("bias_param_tsn", "bias_param", 161), ("permute_param_happynear", "permute_param", 224),
                                ("proposal_param_happynear", "proposal_param", 219),
                                ("psroi_pooling_param_happynear", "psroi_pooling_param", 220)):
        fields = pb.LayerParameter.DESCRIPTOR.fields_by_name
        assert fields[alias].number == number and fields[alias].message_type is fields[name].message_type
    readme = (ROOT / "README.md").read_text()
    for msg, name in RENUMBERED:
        assert f"{msg}.{name}" in readme, f"README's fork-dialect table lacks {msg}.{name}"


def test_fork_fields_in_text_from_every_fork(tmp_path):
    text = """name: "forks"
layer { name: "d" type: "DenseImageData" top: "data" top: "label"
  dense_image_data_param { source: "l.txt" batch_size: 2 new_height: 6 new_width: 8 shuffle: true }
  transform_param { crop_h: 4 crop_w: 4 scale_factors: 0.5 fix_crop: true resize_param { height: 6 } } }
layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "p" type: "Pooling" bottom: "c" top: "p" pooling_param { pool: MAX kernel_size: 2 stride: 2 ceil_mode: false } }
layer { name: "dr" type: "Dropout" bottom: "p" top: "p" dropout_param { dropout_ratio: 0.5 scale_train: true } }
layer { name: "bn" type: "BatchNorm" bottom: "p" top: "p" batch_norm_param { update_global_stats: false } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "p" bottom: "label" top: "loss"
  loss_param { weight_by_label_freqs: true class_weighting: 0.2 class_weighting: 0.8 } }
layer { name: "mb" type: "MultiBoxLoss" bottom: "p" top: "mb" include { phase: TRAIN }
  multibox_loss_param { num_classes: 21 } }
layer { name: "sl1" type: "SmoothL1Loss" bottom: "p" top: "sl1" include { phase: TRAIN } smooth_l1_loss_param { sigma: 3 } }
"""
    loaded = load_net(_write(tmp_path, text), input_shapes={})
    assert [l.type for l in loaded.net.layer] == ["Input", "Convolution", "Pooling", "Dropout", "BatchNorm", "Softmax"]
    assert list(loaded.net.layer[0].input_param.shape[0].dim) == [2, 3, 6, 8]


# -- ceil_mode: false ---------------------------------------------------------------------------

POOL_NET = """name: "pool"
input: "data"
input_shape {{ dim: 1 dim: 1 dim: {h} dim: {w} }}
layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool" pooling_param {{ {param} }} }}
"""


def test_ceil_mode_false_rounds_down_max(tmp_path):
    # 5x5, kernel 2, stride 2: Caffe's ceil gives 3x3 (a last window over column/row 4), floor 2x2
    x = np.arange(25, dtype=np.float32).reshape(1, 1, 5, 5)
    floor = _run(_write(tmp_path, POOL_NET.format(h=5, w=5, param="pool: MAX kernel_size: 2 stride: 2 "
                                                                   "ceil_mode: false")), {"data": x})["pool"]
    np.testing.assert_array_equal(floor, [[[[6, 8], [16, 18]]]])
    ceil = _run(_write(tmp_path, POOL_NET.format(h=5, w=5, param="pool: MAX kernel_size: 2 stride: 2"), "c.prototxt"),
                {"data": x})["pool"]
    np.testing.assert_array_equal(ceil, [[[[6, 8, 9], [16, 18, 19], [21, 23, 24]]]])


def test_ceil_mode_false_average_with_padding_counts_the_padding(tmp_path):
    # 4x4, AVE kernel 3, stride 2, pad 1: floor gives 2x2 windows starting at -1 and 1; the divisor
    # is the window clipped to [-pad, size + pad) = 9 everywhere, padding included (Caffe's rule)
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    path = _write(tmp_path, POOL_NET.format(h=4, w=4, param="pool: AVE kernel_size: 3 stride: 2 pad: 1 "
                                                           "ceil_mode: false"))
    got = _run(path, {"data": x})["pool"]
    np.testing.assert_allclose(got, np.array([[[[10, 24], [51, 90]]]]) / 9, rtol=1e-12)
    c = compile_net(path)
    assert verify_compiled(c, {"data": x}).ok
    cv2 = pytest.importorskip("cv2")  # OpenCV's importer reads ceil_mode too
    net = cv2.dnn.readNetFromCaffe(str(path))
    net.setInput(x)
    np.testing.assert_allclose(net.forward(), got, rtol=1e-6)


def test_ceil_mode_contradicting_round_mode_is_refused(tmp_path):
    path = _write(tmp_path, POOL_NET.format(h=5, w=5, param="pool: MAX kernel_size: 2 stride: 2 "
                                                           "ceil_mode: false round_mode: CEIL"))
    with pytest.raises(ProtonetError, match=r"net\.prototxt:4: layer 'pool' \(Pooling\): ceil_mode: false "
                                            r"contradicts round_mode: CEIL"):
        compile_net(path)


# -- Dropout scale_train: false ----------------------------------------------------------------

DROPOUT_NET = """name: "drop"
input: "data"
input_shape { dim: 1 dim: 3 }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 3 } }
layer { name: "drop" type: "Dropout" bottom: "fc" top: "fc" dropout_param { dropout_ratio: 0.3 %s } }
"""


def test_scale_train_false_scales_at_test_time(tmp_path):
    x = np.array([[1.0, -2.0, 4.0]], dtype=np.float32)
    path = _write(tmp_path, DROPOUT_NET % "scale_train: false")
    c = compile_net(path, optimize=True)
    fc = ReferenceInterpreter(c.unoptimized).run({"data": x}, keep_all=True)
    # py-faster-rcnn's TEST phase: x * (1 / scale), scale = 1 / (1 - 0.3) stored in float
    alpha = np.float32(1.0 / float(np.float32(1.0 / (1.0 - float(np.float32(0.3))))))
    assert abs(float(alpha) - 0.7) < 1e-7
    np.testing.assert_allclose(fc["fc"], fc["fc#0"] * float(alpha), rtol=1e-12)
    assert any(n.type == "Dropout" for n in c.graph.nodes), "a scaling Dropout must survive the optimizer"
    assert verify_compiled(c, {"data": x}).ok
    plain = compile_net(_write(tmp_path, DROPOUT_NET % "", "plain.prototxt"), optimize=True)
    y = ReferenceInterpreter(plain.unoptimized).run({"data": x}, keep_all=True)
    np.testing.assert_array_equal(y["fc"], y["fc#0"])  # BVLC's TEST-phase Dropout copies


# -- DenseImageData -----------------------------------------------------------------------------

SEGNET_TRAIN = """name: "segnet"
layer { name: "data" type: "DenseImageData" top: "data" top: "label" include { phase: TEST }
  dense_image_data_param { source: "test.txt" batch_size: 1 %s } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "conv" bottom: "label" top: "loss" loss_param { weight_by_label_freqs: true } }
layer { name: "accuracy" type: "Accuracy" bottom: "conv" bottom: "label" top: "accuracy" }
"""


@pytest.mark.parametrize("param,shape", [
    ("new_height: 36 new_width: 48", (1, 3, 36, 48)),
    ("new_height: 36 new_width: 48 crop_height: 20 crop_width: 24", (1, 3, 20, 24)),
    ("is_color: false new_height: 36 new_width: 48", (1, 1, 36, 48)),
])
def test_dense_image_data_becomes_an_input(tmp_path, param, shape):
    loaded = load_net(_write(tmp_path, SEGNET_TRAIN % param))
    inp = loaded.net.layer[0]
    assert inp.type == "Input" and list(inp.top) == ["data"]
    assert tuple(inp.input_param.shape[0].dim) == shape
    assert [l.type for l in loaded.net.layer] == ["Input", "Convolution", "Softmax"]


def test_dense_image_data_without_a_size_takes_an_unnamed_input_shape(tmp_path):
    path = _write(tmp_path, SEGNET_TRAIN % "")
    with pytest.raises(ProtonetError, match=r"net\.prototxt:2: layer 'data' \(DenseImageData\): cannot tell "
                                            r"the shape of input 'data'"):
        load_net(path)
    c = compile_net(path, options=BuildOptions(input_shapes={"": (1, 3, 12, 16)}))
    assert [(v.name, v.shape) for v in c.graph.inputs] == [("data", (1, 3, 12, 16))]


# -- an unnamed --input-shape on a train_val data layer -----------------------------------------

LENET_TRAIN_VAL = """name: "LeNet"
layer { name: "mnist" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { scale: 0.00390625 } data_param { source: "mnist_test_lmdb" batch_size: 100 backend: LMDB } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 4 kernel_size: 5 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "conv1" bottom: "label" top: "loss" }
"""


def test_unnamed_input_shape_applies_to_the_data_layer_of_a_train_val(tmp_path):
    path = _write(tmp_path, LENET_TRAIN_VAL)
    unnamed = compile_net(path, options=BuildOptions(input_shapes={"": (1, 1, 28, 28)}))
    named = compile_net(path, options=BuildOptions(input_shapes={"data": (1, 1, 28, 28)}))
    assert [(v.name, v.shape) for v in unnamed.graph.inputs] == [("data", (1, 1, 28, 28))]
    assert [(v.name, v.shape) for v in named.graph.inputs] == [("data", (1, 1, 28, 28))]
    assert [v.shape for v in unnamed.graph.outputs] == [(1, 4, 24, 24)]


# -- repeated layer names (HED repeats crop) -----------------------------------------------------

HED_LIKE = """name: "hed"
input: "data"
input_shape { dim: 1 dim: 1 dim: 6 dim: 6 }
layer { name: "score" type: "Convolution" bottom: "data" top: "s1" convolution_param { num_output: 1 kernel_size: 1 } }
layer { name: "up" type: "Deconvolution" bottom: "s1" top: "u1" convolution_param { num_output: 1 kernel_size: 2 stride: 2 bias_term: false } }
layer { name: "crop" type: "Crop" bottom: "u1" bottom: "data" top: "c1" crop_param { axis: 2 offset: 3 } }
layer { name: "score" type: "Convolution" bottom: "data" top: "s2" convolution_param { num_output: 1 kernel_size: 1 } }
layer { name: "crop" type: "Crop" bottom: "s2" bottom: "data" top: "c2" }
layer { name: "fuse" type: "Eltwise" bottom: "c1" bottom: "c2" top: "fuse" }
"""


def test_repeated_layer_names_compile_with_unique_node_names(tmp_path):
    path = _write(tmp_path, HED_LIKE)
    c = compile_net(path)
    assert [n.name for n in c.graph.nodes] == ["input", "score", "up", "crop", "score#1", "crop#1", "fuse"]
    assert any("layer name 'crop' repeats (lines 6 and 8)" in n for n in c.loaded.notes)
    model = export(c.graph)
    names = [n.name for n in model.graph.node]
    assert len(names) == len(set(names))
    assert verify_compiled(c, {"data": np.random.default_rng(0).standard_normal((1, 1, 6, 6)).astype(np.float32)}).ok


def test_repeated_layer_name_weights_go_to_the_last_layer_of_that_name(tmp_path):
    # Caffe's CopyTrainedLayersFrom looks layers up by name in a map built in layer order: the last wins
    net = pb.NetParameter(name="w")
    for i, value in enumerate((2.0, 3.0)):
        layer = net.layer.add(name="score", type="Convolution")
        layer.convolution_param.num_output = 1
        blob = layer.blobs.add()
        blob.shape.dim.extend([1, 1, 1, 1])
        blob.data.append(value)
        layer.blobs.add().data.append(0.0)
        layer.blobs[1].shape.dim.append(1)
    weights = tmp_path / "w.caffemodel"
    weights.write_bytes(net.SerializeToString()[:0] + pb.NetParameter(layer=[net.layer[1]]).SerializeToString())
    text = HED_LIKE.replace('convolution_param { num_output: 1 kernel_size: 1 }',
                            'convolution_param { num_output: 1 kernel_size: 1 weight_filler { type: "constant" '
                            'value: 5 } }')
    c = compile_net(_write(tmp_path, text), weights)
    first, second = c.graph.node("score"), c.graph.node("score#1")
    assert float(first.weights["weight"].ravel()[0]) == 5.0  # filler: not the file's
    assert float(second.weights["weight"].ravel()[0]) == 3.0


# -- a net ending in Silence (the colorization net) ----------------------------------------------

COLORIZATION_LIKE = """name: "colorize"
input: "data_l"
input_shape { dim: 1 dim: 1 dim: 4 dim: 4 }
layer { name: "conv" type: "Convolution" bottom: "data_l" top: "conv" convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "class8_ab" type: "Convolution" bottom: "conv" top: "class8_ab" convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "silence" type: "Silence" bottom: "class8_ab" }
"""


def test_blobs_that_only_feed_silence_are_the_outputs(tmp_path):
    path = _write(tmp_path, COLORIZATION_LIKE)
    c = compile_net(path)
    assert [v.name for v in c.graph.outputs] == ["class8_ab"]
    x = np.random.default_rng(1).standard_normal((1, 1, 4, 4)).astype(np.float32)
    res = verify_compiled(c, {"data_l": x})
    assert res.ok and set(res.outputs) == {"class8_ab"}
    picked = compile_net(path, outputs=["conv"], optimize=True)
    assert [v.name for v in picked.graph.outputs] == ["conv"]
    assert [n.name for n in picked.graph.nodes] == ["input", "conv"]


# -- fork fields that protonet does not implement --------------------------------------------------

def test_unimplemented_fork_field_is_one_located_error_unless_ignored(tmp_path):
    text = DROPOUT_NET.replace("dropout_ratio: 0.3 %s", "dropout_ratio: 0.5 sample_weights_test: true")
    path = _write(tmp_path, text)
    with pytest.raises(SchemaError, match=r"net\.prototxt:5: layer 'drop' \(Dropout\): DropoutParameter\."
                                          r"sample_weights_test: True is set, and protonet does not implement it: "
                                          r"Bayesian SegNet samples .*results would differ from your fork; .*"
                                          r"--ignore-field DropoutParameter\.sample_weights_test$"):
        compile_net(path)
    c = compile_net(path, ignore_fields=("DropoutParameter.sample_weights_test",))
    assert [v.name for v in c.graph.outputs] == ["fc"]


def test_yjxiong_dilation_h_w_read_as_dilation(tmp_path):
    text = """name: "dil"
input: "data"
input_shape { dim: 1 dim: 1 dim: 9 dim: 9 }
layer { name: "c" type: "Convolution" bottom: "data" top: "c"
  convolution_param { num_output: 1 kernel_size: 3 dilation_h: 2 dilation_w: 3 bias_term: false
  weight_filler { type: "constant" value: 1 } } }
"""
    c = compile_net(_write(tmp_path, text))
    assert c.graph.outputs[0].shape == (1, 1, 5, 3)  # 9 - 2*2 = 5, 9 - 3*2 = 3
    x = np.arange(81, dtype=np.float32).reshape(1, 1, 9, 9)
    y = ReferenceInterpreter(c.graph).run({"data": x})["c"]
    assert float(y[0, 0, 0, 0]) == sum(x[0, 0, i, j] for i in (0, 2, 4) for j in (0, 3, 6))


# -- the user's own schema (--caffe-proto) -------------------------------------------------------

FORK_TEXT = """name: "forked"
input: "data"
input_shape { dim: 1 dim: 1 dim: 5 dim: 5 }
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 ceil_mode: false } }
layer { name: "up" type: "Interp" bottom: "pool" top: "up" interp_param { zoom_factor: 2 } }
layer { name: "conv" type: "Convolution" bottom: "up" top: "conv"
  convolution_param { num_output: 2 kernel_size: 1 quantize_bits: %d } }
"""


@needs_protoc
def test_caffe_proto_reads_text_by_name_and_refuses_unknown_set_fields(tmp_path):
    path = _write(tmp_path, FORK_TEXT % 8)
    with pytest.raises(SchemaError, match=r"net\.prototxt:7: layer 'conv' \(Convolution\): ConvolutionParameter\."
                                          r"quantize_bits is set \(8\) in your schema, and protonet's schema has no "
                                          r"such field: results would differ from your fork; if it does not change "
                                          r"inference, pass --ignore-field ConvolutionParameter\.quantize_bits$"):
        compile_net(path, schema=FORK_PROTO)
    c = compile_net(path, schema=FORK_PROTO, ignore_fields=("ConvolutionParameter.quantize_bits",))
    assert [(v.name, v.shape) for v in c.graph.values.values() if v.name in ("pool", "up")] == \
        [("pool", (1, 1, 2, 2)), ("up", (1, 1, 3, 3))]  # ceil_mode: false read by name: floor
    default = compile_net(_write(tmp_path, FORK_TEXT % 0, "d.prototxt"), schema=FORK_PROTO)  # default: harmless
    assert default.graph.outputs[0].shape == (1, 2, 3, 3)


@needs_protoc
def test_caffe_proto_reads_binaries_by_the_forks_numbers(tmp_path):
    fork = load_schema(FORK_PROTO)
    net = fork.NetParameter(name="bin", input=["data"])
    net.input_shape.add().dim.extend([1, 1, 5, 5])
    pool = net.layer.add(name="pool", type="Pooling", bottom=["data"], top=["pool"])
    pool.pooling_param.kernel_size, pool.pooling_param.stride, pool.pooling_param.ceil_mode = 2, 2, False
    up = net.layer.add(name="up", type="Interp", bottom=["pool"], top=["up"])
    up.interp_param.zoom_factor = 2
    path = tmp_path / "fork.caffemodel"
    path.write_bytes(net.SerializeToString())
    c = compile_net(path, schema=FORK_PROTO)
    assert c.graph.node("pool").attrs.ceil_mode is False
    assert c.graph.outputs[0].shape == (1, 1, 3, 3)
    # without it, field 13 is BVLC's round_mode, where 0 means CEIL (the collision the README
    # documents), and the Interp's 143 is BVLC's input_param, whose field 3 no schema knows: refused
    plain = read_net(path)
    assert plain.net.layer[0].pooling_param.round_mode == pb.PoolingParameter.CEIL
    with pytest.raises(SchemaError, match=r"layer 'up' \(Interp\): field number 3 of InputParameter is set in "
                                          r"this binary file.*--caffe-proto FORK\.proto"):
        load_net(path, deploy=False)
    # upgrade writes the file in protonet's schema (BVLC's numbers)
    out = tmp_path / "up.prototxt"
    upgrade_file(path, out, FORK_PROTO)
    assert "ceil_mode: false" in out.read_text() and "zoom_factor: 2" in out.read_text()


@needs_protoc
def test_caffe_proto_unknown_layer_parameter_and_dropped_layers(tmp_path):
    head = 'input: "data" input_shape { dim: 1 dim: 1 dim: 8 dim: 8 }\n'
    conv = ('layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" %s '
            'convolution_param { num_output: 1 kernel_size: 1 } }\n')
    loss = 'layer { name: "loss" type: "EuclideanLoss" bottom: "conv1" bottom: "conv1" top: "loss" fancy_param { gain: 3 } }\n'
    path = _write(tmp_path, head + conv % "fancy_param { gain: 2 }")
    with pytest.raises(SchemaError, match=r"net\.prototxt:2: layer 'conv1' \(Convolution\): LayerParameter\.fancy_param "
                                          r"is set \(gain: 2\) in your schema"):
        compile_net(path, schema=FORK_PROTO)
    # a layer the deploy net drops (a loss) may set what it likes
    c = compile_net(_write(tmp_path, head + conv % "" + loss, "loss.prototxt"), schema=FORK_PROTO)
    assert [n.type for n in c.graph.nodes] == ["Input", "Convolution"]


@needs_protoc
def test_caffe_proto_errors(tmp_path, monkeypatch):
    bad = tmp_path / "bad.proto"
    bad.write_text('syntax = "proto2";\npackage caffe;\nmessage NetParameter { optional strin name = 1; }\n')
    with pytest.raises(SchemaError, match=r"bad\.proto: protoc cannot compile this schema: .*strin"):
        load_schema(bad)
    nonet = tmp_path / "nonet.proto"
    nonet.write_text('syntax = "proto2";\npackage caffe;\nmessage Other { optional string name = 1; }\n')
    with pytest.raises(SchemaError, match=r"nonet\.proto: the schema defines no message NetParameter"):
        load_schema(nonet)
    with pytest.raises(SchemaError, match=r"missing\.proto: no such schema file"):
        load_schema(tmp_path / "missing.proto")
    monkeypatch.setattr(schema_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SchemaError, match=r"needs protoc from grpcio-tools, which is not installed: "
                                          r"pip install 'protonet\[proto\]'"):
        schema_mod.compile_proto(FORK_PROTO)


def test_unknown_field_suggests_caffe_proto(tmp_path):
    path = _write(tmp_path, FORK_TEXT % 8)
    with pytest.raises(SchemaError, match=r"net\.prototxt:8:52: in layer 'conv': .*has no field named "
                                          r"\"quantize_bits\"; .* give that fork's caffe\.proto with "
                                          r"--caffe-proto FORK\.proto$"):
        compile_net(path)


@needs_protoc
def test_cli_caffe_proto_and_ignore_field(tmp_path):
    path = _write(tmp_path, FORK_TEXT % 8)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "")
                                                                       .split(os.pathsep) if p]))
    base = [sys.executable, "-m", "protonet", "compile", str(path), "-o", str(tmp_path / "o.onnx"),
            "--caffe-proto", str(FORK_PROTO)]
    res = subprocess.run(base, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "ConvolutionParameter.quantize_bits" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "o.onnx").exists()
    res = subprocess.run(base + ["--ignore-field", "ConvolutionParameter.quantize_bits"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "o.onnx").is_file()


def test_repeated_helper_matches_the_descriptor():
    fields = pb.NetParameter.DESCRIPTOR.fields_by_name
    assert is_repeated(fields["layer"]) and not is_repeated(fields["name"])


# -- more corners real files show -----------------------------------------------------------------

def test_input_field_without_shape_beside_an_input_layer_is_dropped_as_caffe_does(tmp_path):
    # cvjena's deploy files: `input: "data"` and an Input layer producing data (Caffe's
    # UpgradeNetInput strips an input field that has no shape)
    text = """name: "cvgj"
input: "data"
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "relu" type: "ReLU" bottom: "data" top: "out" }
"""
    c = compile_net(_write(tmp_path, text))
    assert [(v.name, v.shape) for v in c.graph.inputs] == [("data", (1, 3, 8, 8))]
    assert any("without a shape dropped" in n for n in c.loaded.notes)
    with pytest.raises(SchemaError, match="input 'other' has no shape"):
        compile_net(_write(tmp_path, text.replace('input: "data"', 'input: "data"\ninput: "other"'), "o.prototxt"))


@pytest.mark.parametrize("param,shape", [
    ("new_length: 1 num_segments: 3 modality: RGB", (1, 9, 224, 224)),
    ("new_length: 5 num_segments: 3 modality: FLOW", (1, 30, 224, 224)),
    ("new_length: 5 num_segments: 1", (1, 10, 224, 224)),  # FLOW is the default modality
])
def test_tsn_video_data_stacks_frames_on_channels(tmp_path, param, shape):
    text = f"""name: "tsn"
layer {{ name: "data" type: "VideoData" top: "data" top: "label"
  video_data_param {{ source: "val.txt" batch_size: 1 {param} }}
  transform_param {{ crop_size: 224 mirror: false }} }}
layer {{ name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param {{ num_output: 2 }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }}
"""
    loaded = load_net(_write(tmp_path, text))
    assert tuple(loaded.net.layer[0].input_param.shape[0].dim) == shape


def test_hed_image_labelmap_data_is_an_image_data_layer(tmp_path):
    text = """name: "hed"
layer { name: "data" type: "ImageLabelmapData" top: "data" top: "label"
  transform_param { mean_value: 104 mean_value: 117 mean_value: 123 }
  image_data_param { source: "pairs.lst" batch_size: 1 new_height: 32 new_width: 48 } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 1 kernel_size: 1 } }
layer { name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "conv" bottom: "label" top: "loss" }
"""
    loaded = load_net(_write(tmp_path, text))
    assert tuple(loaded.net.layer[0].input_param.shape[0].dim) == (1, 3, 32, 48)
    assert [l.type for l in loaded.net.layer] == ["Input", "Convolution"]


def test_corpus_fork_fields_parse_and_their_layers_are_refused_by_name(tmp_path):
    # Reorg and the detection outputs of the YOLO ports are implemented (tests/test_yolo.py)
    head = 'name: "f"\ninput: "data"\ninput_shape { dim: 1 dim: 4 dim: 8 dim: 8 }\n'
    yolo = head + ('layer { name: "reorg" type: "Reorg" bottom: "data" top: "r" reorg_param { stride: 2 } }\n'
                   'layer { name: "det" type: "Yolov3DetectionOutput" bottom: "r" top: "det" '
                   'yolov3_detection_output_param { num_classes: 2 num_box: 2 biases: 10 biases: 14 '
                   'mask: 0 mask: 0 mask_group_num: 1 anchors_scale: 8 } }\n')
    assert compile_net(_write(tmp_path, yolo)).graph.values["det"].shape == (1, 1, 2 * 4 * 4, 7)
    norm = head + 'layer { name: "n" type: "Normalize" bottom: "data" top: "n" normalize_param { normalize_type: "L2" } }\n'
    # happynear's Normalize (normalize_param) and InnerProduct normalize run (tests/test_layers_forks.py)
    n = compile_net(_write(tmp_path, norm, "n.prototxt")).graph.node("n")
    assert n.attrs.normalize_type == "L2" and not n.weights
    face = head + ('layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 3 } }\n'
                   'layer { name: "closs" type: "CenterLoss" bottom: "fc" bottom: "fc" top: "closs" '
                   'center_loss_param { num_output: 3 } loss_weight: 0.01 }\n')
    c = compile_net(_write(tmp_path, face, "face.prototxt"))
    assert [n.type for n in c.graph.nodes] == ["Input", "InnerProduct"]  # the center loss goes with deploy


def test_deeplab_v1_dialect_image_seg_data_hole_and_interp(tmp_path):
    # DeepLab's Caffe never left V1: its own enum values, "hole" (atrous) convolution, strict_dim
    text = """name: "deeplab"
layers { name: "data" type: IMAGE_SEG_DATA top: "data" top: "label"
  image_data_param { source: "val.txt" batch_size: 1 has_label: false }
  transform_param { mean_value: 104 mean_value: 117 mean_value: 123 crop_size: 9 } include: { phase: TEST } }
layers { name: "fc6" type: CONVOLUTION bottom: "data" top: "fc6" strict_dim: false
  blobs_lr: 1 blobs_lr: 2
  convolution_param { num_output: 1 kernel_size: 3 hole: 2 bias_term: false weight_filler { type: "constant" value: 1 } } }
layers { name: "up" type: INTERP bottom: "fc6" top: "up" interp_param { zoom_factor: 2 } }
layers { name: "acc" type: SEG_ACCURACY bottom: "up" bottom: "label" top: "acc" }
"""
    c = compile_net(_write(tmp_path, text))
    assert [(n.name, n.type) for n in c.graph.nodes] == [("data", "Input"), ("fc6", "Convolution"), ("up", "Interp")]
    assert c.graph.inputs[0].shape == (1, 3, 9, 9)
    assert c.graph.node("fc6").outputs[0].shape == (1, 1, 5, 5)  # 9 - 2 * (3 - 1)
    x = np.arange(243, dtype=np.float32).reshape(1, 3, 9, 9)
    y = ReferenceInterpreter(c.graph).run({"data": x}, keep_all=True)["fc6"]
    assert float(y[0, 0, 0, 0]) == sum(float(x[0, ch, i, j]) for ch in range(3) for i in (0, 2, 4) for j in (0, 2, 4))


def test_a_forks_binary_at_its_own_free_number_reads_as_the_named_field(tmp_path):
    # PSPNet writes bn_param at 152 (free in BVLC's schema): field 152 on the wire is its BN layer's param
    net = pb.NetParameter(name="psp", input=["data"])
    net.input_shape.add().dim.extend([1, 2, 3, 3])
    bn = net.layer.add(name="bn", type="BN", bottom=["data"], top=["bn"])
    bn.bn_param_pspnet.eps = 0.25
    data = net.SerializeToString()
    assert bytes([(152 << 3 | 2) & 0x7F | 0x80, (152 << 3 | 2) >> 7]) in data  # tag of field 152, length-delimited
    path = tmp_path / "psp.caffemodel"
    path.write_bytes(data)
    loaded = load_net(path, deploy=False)
    layer = loaded.net.layer[-1]
    assert layer.HasField("bn_param") and not layer.HasField("bn_param_pspnet")
    assert layer.bn_param.eps == pytest.approx(0.25)


def test_a_solver_file_given_as_the_net_says_so(tmp_path):
    path = _write(tmp_path, 'net: "train_val.prototxt"\nbase_lr: 0.01\nsolver_mode: GPU\n', "solver.prototxt")
    with pytest.raises(SchemaError, match=r"solver\.prototxt:1:1: this is a solver definition \('net' is a "
                                          r"SolverParameter field\), not a net: give the net file that it names$"):
        compile_net(path)


def test_a_binary_field_no_schema_knows_is_a_located_error_suggesting_caffe_proto(tmp_path):
    net = pb.NetParameter(name="bin", input=["data"])
    net.input_shape.add().dim.extend([1, 1, 4, 4])
    relu = net.layer.add(name="relu", type="ReLU", bottom=["data"], top=["out"])
    # a fork's ReLUParameter field 90 (varint 3): tag 90 << 3 = 720 = varint d0 05
    relu.relu_param.MergeFromString(bytes([0xD0, 0x05, 3]))
    path = tmp_path / "fork.caffemodel"
    path.write_bytes(net.SerializeToString())
    with pytest.raises(SchemaError, match=r"fork\.caffemodel: layer 'relu' \(ReLU\): field number 90 of ReLUParameter "
                                          r"is set in this binary file and is in no schema protonet knows: .*"
                                          r"--caffe-proto FORK\.proto, or pass --ignore-field ReLUParameter\.90"):
        compile_net(path)
    c = compile_net(path, ignore_fields=("ReLUParameter.90",))
    assert [n.type for n in c.graph.nodes] == ["Input", "ReLU"]


@pytest.mark.parametrize("mode,shape", [("WARP", (2, 3, 30, 40)), ("FIT_LARGE_SIZE_AND_PAD", (2, 3, 30, 40))])
def test_ssd_annotated_data_takes_its_size_from_resize_param(tmp_path, mode, shape):
    text = f"""name: "ssd"
layer {{ name: "data" type: "AnnotatedData" top: "data" top: "label" include {{ phase: TEST }}
  transform_param {{ mean_value: 127.5 scale: 0.007843 resize_param {{ prob: 1 resize_mode: {mode} height: 30 width: 40 }} }}
  data_param {{ source: "test_lmdb" batch_size: 2 backend: LMDB }}
  annotated_data_param {{ batch_sampler {{ }} label_map_file: "labelmap.prototxt" }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param {{ num_output: 2 kernel_size: 1 }} }}
"""
    loaded = load_net(_write(tmp_path, text))
    assert tuple(loaded.net.layer[0].input_param.shape[0].dim) == shape
    meta = json.loads(next(iter(loaded.preprocess.values())))  # the resize is in the preprocessing metadata
    assert meta["resize"] == [30, 40]


def test_a_blob_from_a_layer_of_the_other_phase_is_named_in_the_error(tmp_path):
    text = """name: "train_only"
layer { name: "data" type: "Input" top: "data" include { phase: TRAIN } input_param { shape { dim: 1 dim: 1 dim: 2 dim: 2 } } }
layer { name: "relu" type: "ReLU" bottom: "data" top: "out" }
"""
    with pytest.raises(ProtonetError, match=r"net\.prototxt:3: layer 'relu' \(ReLU\): bottom 'data' is not produced "
                                            r"by any earlier layer \(layer 'data' produces it, but not in the TEST phase\)$"):
        compile_net(_write(tmp_path, text))
