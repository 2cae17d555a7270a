"""Tests for protonet/netspec.py and the generated zoo in nets/."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from protonet.netspec import Blob, NetSpec

ROOT = Path(__file__).resolve().parent.parent


def _load_by_path(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen_zoo = _load_by_path("_gen_zoo", ROOT / "tools" / "gen_zoo.py")


TINY_EXPECTED = '''\
# Tiny net
#
# for the netspec test

name: "Tiny"
layer {
  name: "data"
  type: "Input"
  top: "data"
  input_param {
    shape {
      dim: 1
      dim: 3
      dim: 8
      dim: 8
    }
  }
}
layer {
  name: "conv1"
  type: "Convolution"
  bottom: "data"
  top: "conv1"
  convolution_param {
    num_output: 4
    bias_term: false
    pad: 1
    kernel_size: 3
    weight_filler {
      type: "msra"
    }
  }
}
layer {
  name: "bn1"
  type: "BatchNorm"
  bottom: "conv1"
  top: "conv1"
  batch_norm_param {
    use_global_stats: true
  }
}
layer {
  name: "scale1"
  type: "Scale"
  bottom: "conv1"
  top: "conv1"
  scale_param {
    bias_term: true
  }
}
layer {
  name: "relu1"
  type: "ReLU"
  bottom: "conv1"
  top: "conv1"
}
layer {
  name: "conv2"
  type: "Convolution"
  bottom: "data"
  top: "conv2"
  convolution_param {
    num_output: 4
    group: 2
    weight_filler {
      type: "xavier"
    }
    bias_filler {
      type: "constant"
      value: 0.1
    }
    pad_h: 0
    pad_w: 1
    kernel_h: 1
    kernel_w: 3
  }
}
layer {
  name: "sum"
  type: "Eltwise"
  bottom: "conv1"
  bottom: "conv2"
  top: "sum"
  eltwise_param {
    operation: SUM
    coeff: 1.0
    coeff: 0.5
  }
}
layer {
  name: "cat"
  type: "Concat"
  bottom: "sum"
  bottom: "conv1"
  top: "cat"
}
layer {
  name: "pool1"
  type: "Pooling"
  bottom: "cat"
  top: "pool1"
  pooling_param {
    pool: MAX
    kernel_size: 3
    stride: 2
    pad: 1
  }
}
layer {
  name: "norm1"
  type: "LRN"
  bottom: "pool1"
  top: "norm1"
  lrn_param {
    local_size: 5
    alpha: 0.0001
    beta: 0.75
  }
}
layer {
  name: "shuffle1"
  type: "ShuffleChannel"
  bottom: "norm1"
  top: "shuffle1"
  shuffle_channel_param {
    group: 2
  }
}
layer {
  name: "pool2"
  type: "Pooling"
  bottom: "shuffle1"
  top: "pool2"
  pooling_param {
    pool: AVE
    global_pooling: true
  }
}
layer {
  name: "fc"
  type: "InnerProduct"
  bottom: "pool2"
  top: "fc"
  inner_product_param {
    num_output: 10
    weight_filler {
      type: "msra"
    }
  }
}
layer {
  name: "drop"
  type: "Dropout"
  bottom: "fc"
  top: "fc"
  dropout_param {
    dropout_ratio: 0.5
  }
}
layer {
  name: "prob"
  type: "Softmax"
  bottom: "fc"
  top: "prob"
}
'''


def _tiny() -> NetSpec:
    n = NetSpec("Tiny", header=["Tiny net", "", "for the netspec test"], weight_filler="msra")
    x = n.input("data", (1, 3, 8, 8))
    a = n.conv(x, 4, kernel=3, pad=1, bias=False, name="conv1")
    a = n.batchnorm_scale(a, bn_name="bn1", scale_name="scale1")
    a = n.relu(a, name="relu1")
    b = n.conv(x, 4, kernel=(1, 3), pad=(0, 1), group=2, name="conv2",
               weight_filler="xavier", bias_filler=0.1)
    s = n.eltwise([a, b], "SUM", coeff=[1, 0.5], name="sum")
    y = n.concat([s, a], name="cat")
    y = n.pool(y, "MAX", kernel=3, stride=2, pad=1)
    y = n.lrn(y, local_size=5, alpha=1e-4, beta=0.75)
    y = n.shuffle_channel(y, 2)
    y = n.pool(y, "AVE", global_pooling=True)
    y = n.inner_product(y, 10, name="fc")
    y = n.dropout(y, 0.5, name="drop")
    n.softmax(y, name="prob")
    return n


def test_tiny_net_exact_text() -> None:
    assert _tiny().to_prototxt() == TINY_EXPECTED


def test_the_net_is_a_netparameter_message() -> None:
    from protonet.frontend.schema import pb as caffe_pb2

    n = _tiny()
    assert isinstance(n.net, caffe_pb2.NetParameter) and n.net.name == "Tiny"
    conv2 = n.net.layer[5].convolution_param
    assert (conv2.kernel_h, conv2.kernel_w, conv2.pad_h, conv2.pad_w, conv2.group) == (1, 3, 0, 1, 2)
    assert n.net.layer[8].pooling_param.pool == caffe_pb2.PoolingParameter.MAX


def test_generic_layer_params_by_proto_field_names() -> None:
    n = NetSpec("Generic")
    x = n.input("data", (1, 3, 4, 4))
    y = n.layer("ReLU", [x], name="leaky", params={"relu_param": {"negative_slope": 0.25}})
    n.layer("Pooling", [y], name="p", params={"pooling_param": {"pool": "AVE", "kernel_size": 2}})
    assert n.net.layer[1].relu_param.negative_slope == 0.25
    assert n.net.layer[2].pooling_param.pool == 1 and n.net.layer[2].pooling_param.kernel_size == 2
    assert 'pool: AVE' in n.to_prototxt() and 'negative_slope: 0.25' in n.to_prototxt()
    with pytest.raises(Exception, match="no_such_field"):
        n.layer("ReLU", [y], params={"relu_param": {"no_such_field": 1}})
    assert n.layer_names == ["data", "leaky", "p"]


def test_handles_and_names() -> None:
    n = NetSpec("Names")
    x = n.input("data", (1, 1, 4, 4))
    assert x == Blob("data") and str(x) == "data"
    y = n.relu(x, inplace=False)
    assert y.name == "relu1"
    assert n.relu(y).name == "relu1"  # in place keeps the blob name
    assert n.layer_names == ["data", "relu1", "relu2"]
    with pytest.raises(ValueError):
        n.relu(y, name="relu1")
    with pytest.raises(ValueError):
        n.pool(y, "MIN", kernel=2)
    with pytest.raises(ValueError):
        n.eltwise([x, y], "PROD", coeff=[1, 2])


def test_tiny_net_parses() -> None:
    from google.protobuf import text_format

    from protonet.frontend.schema import pb as caffe_pb2

    net = text_format.Parse(TINY_EXPECTED, caffe_pb2.NetParameter())
    assert [layer.name for layer in net.layer][:3] == ["data", "conv1", "bn1"]
    assert net.layer[6].eltwise_param.coeff == [1.0, 0.5]


@pytest.mark.parametrize("key", sorted(gen_zoo.BUILDERS))
def test_zoo_file_is_regenerated_exactly(key: str) -> None:
    path = ROOT / "nets" / f"{key}.prototxt"
    assert path.exists(), f"{path} missing; run python tools/gen_zoo.py"
    assert gen_zoo.generate(key) == path.read_text(), (
        f"nets/{key}.prototxt is stale; run python tools/gen_zoo.py {key}")


def test_every_zoo_net_has_published_figures() -> None:
    published = _load_by_path("_published", ROOT / "tests" / "published_figures.py").PUBLISHED
    assert set(gen_zoo.BUILDERS) <= set(published)
    for key, fig in published.items():
        assert (ROOT / "nets" / f"{key}.prototxt").exists(), key
        for field in ("params", "macs", "source", "convention", "params_include_biases", "input"):
            assert field in fig, (key, field)


@pytest.mark.parametrize("key", sorted(gen_zoo.BUILDERS))
def test_zoo_file_parses_with_caffe_proto(key: str) -> None:
    from google.protobuf import text_format

    from protonet.frontend.schema import pb as caffe_pb2

    net = text_format.Parse((ROOT / "nets" / f"{key}.prototxt").read_text(), caffe_pb2.NetParameter())
    names = [layer.name for layer in net.layer]
    assert len(names) == len(set(names))
    assert net.layer[0].type == "Input" and net.layer[-1].type == "Softmax"
