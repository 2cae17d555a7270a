"""Schema checks for proto/caffe.proto, its compiled descriptor set and the classes built from it."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, text_format

from protonet.frontend import schema
from protonet.frontend.schema import pb

ROOT = Path(__file__).resolve().parent.parent


def _gen_proto():
    spec = importlib.util.spec_from_file_location(
        "_gen_proto_under_test", ROOT / "tools" / "gen_proto.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_descriptor_set_is_not_stale(tmp_path):
    pytest.importorskip("grpc_tools")
    if not (ROOT / "tools" / "gen_proto.py").is_file():
        pytest.skip("not a source checkout (sdist): nothing to regenerate from")
    fresh = descriptor_pb2.FileDescriptorSet.FromString(_gen_proto().generate(tmp_path).read_bytes())
    installed = schema.DESCRIPTOR_FILE
    assert installed.is_file(), f"{installed} is missing: run python tools/gen_proto.py"
    # compared as messages: protoc versions may order the bytes of equal descriptors differently
    assert descriptor_pb2.FileDescriptorSet.FromString(installed.read_bytes()) == fresh, (
        f"{installed} is stale: rebuild (pip install -e .) or run python tools/gen_proto.py")


def test_classes_come_from_the_descriptor_set_not_generated_code():
    assert pb.NetParameter.DESCRIPTOR.file.pool is pb.pool
    assert pb.NetParameter.DESCRIPTOR.full_name == "caffe.NetParameter"
    assert pb.Phase.Name(pb.TEST) == "TEST" and pb.Phase.Value("TRAIN") == 0
    with pytest.raises(AttributeError, match="no 'NoSuchMessage'"):
        pb.NoSuchMessage


def _num(msg, field):
    return msg.DESCRIPTOR.fields_by_name[field].number


@pytest.mark.parametrize("msg,field,number", [
    (pb.NetParameter, "layer", 100),
    (pb.NetParameter, "layers", 2),
    (pb.NetParameter, "input_shape", 8),
    (pb.LayerParameter, "blobs", 7),
    (pb.LayerParameter, "convolution_param", 106),
    (pb.LayerParameter, "batch_norm_param", 139),
    (pb.LayerParameter, "scale_param", 142),
    (pb.LayerParameter, "input_param", 143),
    (pb.LayerParameter, "clip_param", 148),
    (pb.LayerParameter, "swish_param", 147),
    (pb.V1LayerParameter, "blobs_lr", 7),
    (pb.V1LayerParameter, "blobs", 6),
    (pb.V1LayerParameter, "layer", 1),
    (pb.V0LayerParameter, "blobs", 50),
    (pb.BlobProto, "data", 5),
    (pb.BlobProto, "shape", 7),
    (pb.BlobProto, "double_data", 8),
    (pb.ConvolutionParameter, "dilation", 18),
    (pb.PoolingParameter, "round_mode", 13),
    # fork extensions
    (pb.LayerParameter, "permute_param", 202),
    (pb.LayerParameter, "prior_box_param", 203),
    (pb.LayerParameter, "detection_output_param", 204),
    (pb.LayerParameter, "norm_param", 206),
    (pb.LayerParameter, "roi_pooling_param", 8266711),
    (pb.LayerParameter, "interp_param", 163),
    (pb.LayerParameter, "upsample_param", 149),
    (pb.LayerParameter, "bn_param", 45),
    (pb.LayerParameter, "shuffle_channel_param", 164),
])
def test_field_numbers(msg, field, number):
    assert _num(msg, field) == number


def test_enums_and_defaults():
    V1 = pb.V1LayerParameter
    assert V1.CONVOLUTION == 4 and V1.DECONVOLUTION == 39 and V1.THRESHOLD == 31
    assert pb.PoolingParameter.CEIL == 0 and pb.PoolingParameter.FLOOR == 1
    assert pb.TEST == 1
    assert pb.BatchNormParameter().eps == pytest.approx(1e-5)
    assert pb.ConvolutionParameter().bias_term is True
    assert pb.LRNParameter().beta == pytest.approx(0.75)
    assert pb.FillerParameter().type == "constant"
    assert pb.PriorBoxParameter().offset == pytest.approx(0.5)
    assert pb.DetectionOutputParameter().code_type == pb.PriorBoxParameter.CORNER
    # every LayerParameter *_param field must be a distinct number (protoc
    # enforces this too; this guards against edits that rename instead).
    nums = [f.number for f in pb.LayerParameter.DESCRIPTOR.fields]
    assert len(nums) == len(set(nums))


PROTOTXT = """
name: "mixed"
input: "data"
input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }
layer {
  name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 }
  convolution_param {
    num_output: 4 kernel_size: 3 pad: 1 stride: 1 dilation: 1
    weight_filler { type: "xavier" }
    engine: CUDNN
  }
  include { phase: TEST }
}
layer {
  name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 round_mode: FLOOR }
}
layer {
  name: "pb" type: "PriorBox" bottom: "pool1" bottom: "data" top: "pb"
  prior_box_param { min_size: 30 aspect_ratio: 2 flip: true variance: 0.1 }
}
layers {
  name: "conv_v1" type: CONVOLUTION bottom: "data" top: "conv_v1"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  convolution_param { num_output: 4 kernel_size: 3 }
}
"""


def test_text_format_current_v1_v0():
    net = text_format.Parse(PROTOTXT, pb.NetParameter())
    assert [l.name for l in net.layer] == ["conv1", "pool1", "pb"]
    conv = net.layer[0]
    assert conv.convolution_param.num_output == 4
    assert list(conv.convolution_param.kernel_size) == [3]
    assert conv.convolution_param.engine == pb.ConvolutionParameter.CUDNN
    assert conv.include[0].phase == pb.TEST
    assert net.layer[1].pooling_param.round_mode == pb.PoolingParameter.FLOOR
    assert list(net.layer[2].prior_box_param.min_size) == [30.0]

    v1 = net.layers[0]
    assert v1.type == pb.V1LayerParameter.CONVOLUTION
    assert list(v1.blobs_lr) == [1.0, 2.0]

    v0 = text_format.Parse(
        'name: "old" layers { layer { name: "c" type: "conv" num_output: 4 '
        'kernelsize: 3 biasterm: false blobs_lr: 1 } bottom: "data" top: "c" }',
        pb.NetParameter())
    old = v0.layers[0].layer
    assert old.type == "conv" and old.num_output == 4 and old.kernelsize == 3
    assert old.biasterm is False


def test_binary_round_trip():
    net = pb.NetParameter(name="rt")
    layer = net.layer.add(name="ip", type="InnerProduct", bottom=["x"], top=["y"])
    layer.inner_product_param.num_output = 2
    blob = layer.blobs.add()
    blob.shape.dim.extend([2, 3])
    blob.data.extend([0.5, -1.0, 2.0, 3.25, 0.0, 1e-3])
    blob.double_data.extend([1.0, 2.0])
    net.layers.add(name="legacy", type=pb.V1LayerParameter.RELU)

    data = net.SerializeToString()
    back = pb.NetParameter.FromString(data)
    assert back == net
    b = back.layer[0].blobs[0]
    assert list(b.shape.dim) == [2, 3]
    assert list(b.data) == pytest.approx([0.5, -1.0, 2.0, 3.25, 0.0, 1e-3])
    assert list(b.double_data) == [1.0, 2.0]
    assert back.layers[0].type == pb.V1LayerParameter.RELU
    # packed encoding for BlobProto.data (tag 5, wire type 2) as Caffe writes it
    assert bytes([5 << 3 | 2]) in b.SerializeToString()


def test_no_module_reads_descriptor_attributes_of_one_protobuf_runtime_only():
    """``FieldDescriptor.is_repeated`` exists from protobuf 6 on, ``label`` until 6: the supported
    range (4.25 to 7.x) needs ``protonet.frontend.schema.is_repeated`` (the CI job on 4.25 runs a
    part of the suite; this catches the rest)."""
    import re

    offenders = []
    for path in sorted((ROOT / "protonet").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bfd\.(is_repeated|label)\b|\.is_repeated\b(?!\()", line) and "getattr(" not in line \
                    and "def is_repeated" not in line and "LABEL_REPEATED" not in line:
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, offenders
