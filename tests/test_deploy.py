"""Training definitions (train_val) -> TEST-phase deploy nets, and their preprocessing metadata."""
from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

from protonet.build import BuildOptions, build_graph
from protonet.frontend.deploy import METADATA_KEY, needs_deploy, to_deploy
from protonet.errors import ProtonetError
from protonet.frontend import load_net
from protonet.frontend.preprocess import Preprocess
from protonet.frontend.schema import pb

LENET_TRAIN_VAL = """name: "LeNet"
layer {
  name: "mnist" type: "Data" top: "data" top: "label"
  include { phase: TRAIN }
  transform_param { scale: 0.00390625 }
  data_param { source: "examples/mnist/mnist_train_lmdb" batch_size: 64 backend: LMDB }
}
layer {
  name: "mnist" type: "Data" top: "data" top: "label"
  include { phase: TEST }
  transform_param { scale: 0.00390625 }
  data_param { source: "examples/mnist/mnist_test_lmdb" batch_size: 100 backend: LMDB }
}
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 20 kernel_size: 5 stride: 1 } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1" inner_product_param { num_output: 500 } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" inner_product_param { num_output: 10 } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""

LENET_DEPLOY = """name: "LeNet"
layer { name: "mnist" type: "Input" top: "data" input_param { shape { dim: 100 dim: 1 dim: 28 dim: 28 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 20 kernel_size: 5 stride: 1 } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1" inner_product_param { num_output: 500 } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" inner_product_param { num_output: 10 } }
layer { name: "loss" type: "Softmax" bottom: "ip2" top: "loss" }
"""

IMAGENET_TRAIN_VAL = """name: "CaffeNetLike"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { mirror: true crop_size: 227 mean_value: 104 mean_value: 117 mean_value: 123 }
  data_param { source: "ilsvrc12_train_lmdb" batch_size: 256 backend: LMDB } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { mirror: false crop_size: 227 mean_value: 104 mean_value: 117 mean_value: 123 }
  data_param { source: "ilsvrc12_val_lmdb" batch_size: 50 backend: LMDB } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 11 stride: 4 } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc8" type: "InnerProduct" bottom: "pool1" top: "fc8" inner_product_param { num_output: 10 } }
layer { name: "accuracy" type: "Accuracy" bottom: "fc8" bottom: "label" top: "accuracy" include { phase: TEST } }
layer { name: "accuracy_top5" type: "Accuracy" bottom: "fc8" bottom: "label" top: "accuracy_top5"
  include { phase: TEST } accuracy_param { top_k: 5 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc8" bottom: "label" top: "loss" }
"""


def _load(tmp_path, text, name="train_val.prototxt"):
    p = tmp_path / name
    p.write_text(text)
    return load_net(p, deploy=False)


def _deploy(loaded, shapes=None):
    return to_deploy(loaded.net, loaded.loc(), shapes or {}, loaded.layer_lines)


def test_lenet_train_val_becomes_the_deploy_net(tmp_path):
    loaded = _load(tmp_path, LENET_TRAIN_VAL)
    assert needs_deploy(loaded.net)
    net, notes = _deploy(loaded, {"data": (100, 1, 28, 28)})
    assert net == text_format.Parse(LENET_DEPLOY, pb.NetParameter())
    assert not needs_deploy(net)
    assert list(notes) == [
        "dropped top 'label' of Data layer 'mnist' (labels)",
        "Data layer 'mnist' became Input 'data' of shape (100, 1, 28, 28)",
        "dropped Accuracy layer 'accuracy' (training only)",
        "SoftmaxWithLoss 'loss' became Softmax('ip2') -> 'loss'",
    ]
    assert notes.kept == [0, 1, 2, 3, 4, 5, 7]  # indices into the filtered net (accuracy was 6)
    pre = notes.preprocess["data"]
    assert (pre.scale, pre.crop_size, pre.mean_value, pre.channels, pre.shape) == (0.00390625, 0, (), 1, (100, 1, 28, 28))
    assert Preprocess.from_json(notes.metadata()[METADATA_KEY]) == pre


def test_lenet_data_layer_without_crop_needs_an_input_shape(tmp_path):
    loaded = _load(tmp_path, LENET_TRAIN_VAL)
    with pytest.raises(ProtonetError, match=r"train_val\.prototxt:8: layer 'mnist' \(Data\): cannot tell the shape "
                                            r"of input 'data'.*give the input shape with --input-shape data=N,C,H,W"):
        _deploy(loaded)


def test_lenet_train_phase_uses_the_train_layer(tmp_path):
    p = tmp_path / "tv.prototxt"
    p.write_text(LENET_TRAIN_VAL)
    loaded = load_net(p, phase="TRAIN", deploy=False)
    net, _ = _deploy(loaded, {"data": (64, 1, 28, 28)})
    assert [l.type for l in net.layer] == ["Input", "Convolution", "Pooling", "InnerProduct", "ReLU",
                                           "InnerProduct", "Softmax"]


def test_imagenet_train_val_gets_crop_shape_and_mean(tmp_path):
    loaded = _load(tmp_path, IMAGENET_TRAIN_VAL)
    net, notes = _deploy(loaded)
    inp = net.layer[0]
    assert inp.type == "Input" and list(inp.top) == ["data"]
    assert list(inp.input_param.shape[0].dim) == [50, 3, 227, 227]
    assert [l.name for l in net.layer] == ["data", "conv1", "pool1", "fc8", "loss"]
    pre = notes.preprocess["data"]
    assert pre.mean_value == (104.0, 117.0, 123.0) and pre.crop_size == 227 and pre.channel_order == "BGR"
    assert pre.shape == (50, 3, 227, 227)
    # and it builds
    g, _ = build_graph(_with(loaded, net), None, BuildOptions(batch=1))
    assert g.inputs[0].shape == (1, 3, 227, 227) and g.outputs[0].shape == (1, 10)


def _with(loaded, net):
    loaded.net = net
    loaded.layer_lines = None
    return loaded


def test_label_consumers_are_dropped_transitively(tmp_path):
    text = """
layer { name: "d" type: "ImageData" top: "data" top: "label"
  image_data_param { source: "list.txt" batch_size: 4 is_color: false new_height: 32 new_width: 30 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 3 } }
layer { name: "onehot" type: "Power" bottom: "label" top: "lab2" }
layer { name: "scaled" type: "Power" bottom: "lab2" top: "lab3" }
layer { name: "eu" type: "EuclideanLoss" bottom: "ip" bottom: "lab3" top: "l2" }
layer { name: "aux" type: "InnerProduct" bottom: "ip" top: "aux" loss_weight: 0.3 inner_product_param { num_output: 1 } }
layer { name: "out" type: "Sigmoid" bottom: "ip" top: "prob" }
"""
    net, notes = _deploy(_load(tmp_path, text))
    assert [l.name for l in net.layer] == ["d", "ip", "out"]
    assert list(net.layer[0].input_param.shape[0].dim) == [4, 1, 32, 30]
    assert "dropped layer 'onehot' (Power): it reads 'label', which the deploy net does not have" in notes
    assert "dropped layer 'scaled' (Power): it reads 'lab2', which the deploy net does not have" in notes
    assert "dropped EuclideanLoss layer 'eu' (training only)" in notes
    assert "dropped InnerProduct layer 'aux' (training only)" in notes
    assert notes.preprocess["data"].channels == 1 and notes.preprocess["data"].resize == (32, 30)


def test_softmax_with_loss_probability_top_and_axis(tmp_path):
    text = """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 5 } } }
layer { name: "in2" type: "Input" top: "label" input_param { shape { dim: 2 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" top: "prob"
  softmax_param { axis: 1 } }
"""
    net, _ = _deploy(_load(tmp_path, text))
    sm = net.layer[2]
    assert (sm.type, list(sm.bottom), list(sm.top), sm.softmax_param.axis) == ("Softmax", ["x"], ["prob"], 1)


def test_label_kept_when_given_a_shape(tmp_path):
    loaded = _load(tmp_path, IMAGENET_TRAIN_VAL)
    net, _ = _deploy(loaded, {"label": (50,)})
    assert list(net.layer[0].top) == ["data", "label"]
    assert [list(s.dim) for s in net.layer[0].input_param.shape] == [[50, 3, 227, 227], [50]]


def test_hdf5_data_needs_an_input_shape(tmp_path):
    text = """
layer { name: "h" type: "HDF5Data" top: "data" top: "label" hdf5_data_param { source: "f.txt" batch_size: 8 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 3 } }
"""
    loaded = _load(tmp_path, text)
    with pytest.raises(ProtonetError, match=r"an HDF5Data layer's shapes live in its HDF5 files; give the input "
                                            r"shape with --input-shape data=N,C,H,W"):
        _deploy(loaded)
    net, notes = _deploy(loaded, {"data": (8, 6)})
    assert list(net.layer[0].input_param.shape[0].dim) == [8, 6] and not notes.preprocess


def test_mean_file_is_read_and_both_means_refused(tmp_path):
    mean = pb.BlobProto(num=1, channels=3, height=4, width=4)
    mean.data.extend(np.arange(48, dtype=np.float32).tolist())
    (tmp_path / "mean.binaryproto").write_bytes(mean.SerializeToString())
    text = """
layer { name: "data" type: "Data" top: "data" top: "label"
  transform_param { crop_size: 2 mean_file: "mean.binaryproto" } data_param { source: "x" batch_size: 1 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 3 } }
"""
    net, notes = _deploy(_load(tmp_path, text))
    pre = notes.preprocess["data"]
    assert pre.mean_shape == (3, 4, 4)
    np.testing.assert_array_equal(pre.mean_array(), np.arange(48, dtype=np.float32).reshape(3, 4, 4))
    bad = text.replace('mean_file: "mean.binaryproto"', 'mean_file: "mean.binaryproto" mean_value: 1')
    with pytest.raises(ProtonetError, match="both mean_file and mean_value"):
        _deploy(_load(tmp_path, bad, "bad.prototxt"))
    missing = text.replace("mean.binaryproto", "nowhere.binaryproto")
    _, notes = _deploy(_load(tmp_path, missing, "m.prototxt"))
    assert any("mean_file 'nowhere.binaryproto'" in n for n in notes)
    assert notes.preprocess["data"].mean_file == "nowhere.binaryproto" and not notes.preprocess["data"].mean_image


def test_deploy_net_is_unchanged(tmp_path):
    text = """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 5 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 2 } }
"""
    loaded = _load(tmp_path, text)
    assert not needs_deploy(loaded.net)
    net, notes = _deploy(loaded)
    assert net == loaded.net and not notes.changed and notes.metadata() == {}
