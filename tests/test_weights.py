"""Loading .caffemodel files: the wire scanner, the protobuf path, errors, and weight matching."""
from __future__ import annotations

import numpy as np
import pytest

from protonet.frontend import wire
from protonet.build import BuildOptions, build_graph
from protonet.errors import ProtonetError, WeightsError
from protonet.frontend import load_net
from protonet.frontend.schema import pb
from protonet.frontend import load_caffemodel, looks_like_caffemodel, net_from_caffemodel

CONV_W = np.arange(2 * 1 * 3 * 3, dtype=np.float32).reshape(2, 1, 3, 3) / 10
CONV_B = np.array([0.5, -0.25], dtype=np.float32)
FC_W = np.array([[1, 2, 3, 4, 5, 6, 7, 8], [-1, -2, -3, -4, -5, -6, -7, -8.5]], dtype=np.float32)  # (2, 8)
FC_B = np.array([0.125, 3.0], dtype=np.float32)

NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 4 dim: 4 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 2 kernel_size: 3 } }
layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc" inner_product_param { num_output: 2 } }
"""


def _blob(msg, arr, legacy=False, how="data"):
    arr = np.asarray(arr)
    if legacy:
        dims = (1,) * (4 - arr.ndim) + arr.shape
        msg.num, msg.channels, msg.height, msg.width = dims
    else:
        msg.shape.dim.extend(arr.shape)
    flat = arr.ravel()
    if how == "data":
        msg.data.extend(flat.astype(np.float32).tolist())
    elif how == "double":
        msg.double_data.extend(flat.astype(np.float64).tolist())
    elif how == "fp16":
        msg.raw_data = flat.astype("<f2").tobytes()
        msg.raw_data_type = pb.BlobProto.FLOAT16
    return msg


def write_model(path, fmt="current", conv_how="data", fc_legacy=True, extra_layer=True, fc=True):
    """conv1 with (shape, double/fp16/float) blobs, fc with a legacy (1, 1, 2, 8) weight."""
    net = pb.NetParameter()
    net.name = "tiny"
    if fmt == "current":
        conv = net.layer.add(name="conv1", type="Convolution", bottom=["data"], top=["conv1"])
        conv.convolution_param.num_output = 2
        conv.convolution_param.kernel_size.append(3)
        layers = [conv]
        if fc:
            f = net.layer.add(name="fc", type="InnerProduct", bottom=["conv1"], top=["fc"])
            f.inner_product_param.num_output = 2
            layers.append(f)
        if extra_layer:
            net.layer.add(name="relu_unused", type="ReLU", bottom=["fc"], top=["fc"])
            old = net.layer.add(name="old_fc", type="InnerProduct")
            _blob(old.blobs.add(), np.ones(3, np.float32))
    else:  # V1
        conv = net.layers.add(name="conv1", type=pb.V1LayerParameter.CONVOLUTION, bottom=["data"], top=["conv1"])
        conv.convolution_param.num_output = 2
        conv.convolution_param.kernel_size.append(3)
        layers = [conv]
        if fc:
            f = net.layers.add(name="fc", type=pb.V1LayerParameter.INNER_PRODUCT, bottom=["conv1"], top=["fc"])
            f.inner_product_param.num_output = 2
            layers.append(f)
    _blob(layers[0].blobs.add(), CONV_W, legacy=(fmt != "current"), how=conv_how)
    _blob(layers[0].blobs.add(), CONV_B, legacy=(fmt != "current"), how=conv_how)
    if fc:
        _blob(layers[1].blobs.add(), FC_W, legacy=fc_legacy)
        _blob(layers[1].blobs.add(), FC_B, legacy=fc_legacy)
    path.write_bytes(net.SerializeToString())
    return path


def _values(w):
    return {k: [(tuple(b.shape), b.legacy, b.data.tolist()) for b in v] for k, v in w.layers.items()}


@pytest.mark.parametrize("fmt", ["current", "V1"])
@pytest.mark.parametrize("how", ["data", "double", "fp16"])
def test_values_and_shapes(tmp_path, fmt, how):
    path = write_model(tmp_path / "m.caffemodel", fmt, conv_how=how)
    w = load_caffemodel(path)
    conv = w.layers["conv1"]
    want_shape = (2, 1, 3, 3)
    assert tuple(conv[0].shape) == want_shape and conv[0].legacy == (fmt == "V1")
    assert tuple(conv[1].shape) == ((1, 1, 1, 2) if fmt == "V1" else (2,))
    tol = 1e-3 if how == "fp16" else 0
    np.testing.assert_allclose(conv[0].data, CONV_W.ravel(), atol=tol)
    np.testing.assert_allclose(conv[1].data, CONV_B, atol=tol)
    assert conv[0].data.dtype == np.float32
    fc = w.layers["fc"]
    assert tuple(fc[0].shape) == (1, 1, 2, 8) and fc[0].legacy
    assert fc[0].data.tolist() == FC_W.ravel().tolist()
    # the blob-free, upgraded definition comes along
    assert [l.name for l in w.net.layer][:2] == ["conv1", "fc"]
    assert all(len(l.blobs) == 0 for l in w.net.layer)
    assert w.report.method == "wire" and w.report.blobs == (5 if fmt == "current" else 4)


@pytest.mark.parametrize("fmt", ["current", "V1"])
@pytest.mark.parametrize("how", ["data", "double", "fp16"])
def test_wire_and_protobuf_paths_agree(tmp_path, fmt, how):
    path = write_model(tmp_path / "m.caffemodel", fmt, conv_how=how)
    fast, slow, view = (load_caffemodel(path), load_caffemodel(path, method="protobuf"),
                        load_caffemodel(path, copy=False))
    assert _values(fast) == _values(slow) == _values(view)
    assert fast.net == slow.net
    assert fast.upgrades == slow.upgrades


def test_zero_copy_views_are_read_only(tmp_path):
    w = load_caffemodel(write_model(tmp_path / "m.caffemodel"), copy=False)
    arr = w.layers["fc"][0].data
    assert not arr.flags.writeable
    with pytest.raises(ValueError):
        arr[0] = 1


def test_unpacked_floats_and_repeated_packed_chunks(tmp_path):
    """Writers may emit repeated floats unpacked (one fixed32 per value) or in several packed runs."""
    enc, lf = wire.encode_varint, wire.encode_len_field
    dims = lf(1, enc(2) + enc(3))
    unpacked = b"".join(enc((5 << 3) | 5) + np.float32(v).tobytes() for v in [1, 2, 3, 4, 5, 6])
    blob1 = lf(7, dims) + unpacked
    blob2 = (lf(7, dims) + lf(5, np.float32([1, 2]).tobytes()) + lf(6, np.float32([9] * 6).tobytes())
             + lf(5, np.float32([3, 4, 5, 6]).tobytes()))
    layer = lf(1, b"ip") + lf(2, b"InnerProduct") + lf(7, blob1) + lf(7, blob2)
    path = tmp_path / "u.caffemodel"
    path.write_bytes(lf(1, b"net") + lf(100, layer))
    for method in ("wire", "protobuf"):
        w = load_caffemodel(path, method=method)
        assert [b.data.tolist() for b in w.layers["ip"]] == [[1, 2, 3, 4, 5, 6]] * 2


def test_v0_layers_take_the_protobuf_path(tmp_path):
    net = pb.NetParameter()
    net.input.append("data")
    net.input_dim.extend([1, 1, 4, 4])
    entry = net.layers.add()
    entry.layer.name = "conv1"
    entry.layer.type = "conv"
    entry.layer.num_output = 2
    entry.layer.kernelsize = 3
    _blob(entry.layer.blobs.add(), CONV_W, legacy=True)
    _blob(entry.layer.blobs.add(), CONV_B, legacy=True)
    entry.bottom.append("data")
    entry.top.append("conv1")
    path = tmp_path / "v0.caffemodel"
    path.write_bytes(net.SerializeToString())
    fast, slow = load_caffemodel(path), load_caffemodel(path, method="protobuf")
    assert _values(fast) == _values(slow)
    assert fast.layers["conv1"][0].data.tolist() == CONV_W.ravel().tolist()
    assert [l.type for l in fast.net.layer] == ["Input", "Convolution"] and not fast.net.layer[1].blobs


def _build(tmp_path, wpath, **opts):
    net = tmp_path / "net.prototxt"
    net.write_text(NET)
    return build_graph(load_net(net), load_caffemodel(wpath), BuildOptions(**opts))


def test_legacy_4d_inner_product_blob_matches_2d_weight_and_report(tmp_path):
    g, report = _build(tmp_path, write_model(tmp_path / "m.caffemodel"))
    fc = next(n for n in g.nodes if n.name == "fc")
    np.testing.assert_array_equal(fc.weights["weight"], FC_W)
    np.testing.assert_array_equal(fc.weights["bias"], FC_B)
    conv = next(n for n in g.nodes if n.name == "conv1")
    np.testing.assert_array_equal(conv.weights["weight"], CONV_W)
    assert report.matched == ["conv1", "fc"]
    assert report.missing == []
    assert report.ignored == ["old_fc"]


def test_missing_layer_is_filled_or_strict_error(tmp_path):
    wpath = write_model(tmp_path / "m.caffemodel", fc=False, extra_layer=False)
    _, report = _build(tmp_path, wpath)
    assert report.matched == ["conv1"] and report.missing == ["fc"] and report.ignored == []
    with pytest.raises(WeightsError, match=r"layer 'fc' has no weights in .*m\.caffemodel \(--strict\)"):
        _build(tmp_path, wpath, strict=True)


def test_shape_mismatch_is_located(tmp_path):
    net = pb.NetParameter()
    conv = net.layer.add(name="conv1", type="Convolution")
    _blob(conv.blobs.add(), np.zeros((3, 1, 3, 3), np.float32))
    _blob(conv.blobs.add(), np.zeros(3, np.float32))
    path = tmp_path / "bad.caffemodel"
    path.write_bytes(net.SerializeToString())
    with pytest.raises(WeightsError, match=r"layer 'conv1': blob 0 \(weight\) shape \(3, 1, 3, 3\) does not match "
                                           r"net \(2, 1, 3, 3\)"):
        _build(tmp_path, path)


def test_truncated_file_names_the_layer(tmp_path):
    good = write_model(tmp_path / "m.caffemodel").read_bytes()
    cut = good.find(b"fc") + 40  # inside fc's weight values
    path = tmp_path / "cut.caffemodel"
    path.write_bytes(good[:cut])
    for method in ("wire",):
        with pytest.raises(WeightsError, match=rf"cut\.caffemodel: not a valid caffemodel: truncated at byte {cut} "
                                               rf".* in layer 'fc'"):
            load_caffemodel(path, method=method)
    with pytest.raises(WeightsError, match=r"cut\.caffemodel: not a valid caffemodel \(truncated or corrupt\)"):
        load_caffemodel(path, method="protobuf")


def test_every_truncation_and_corruption_is_a_clean_error(tmp_path):
    good = write_model(tmp_path / "m.caffemodel").read_bytes()
    path = tmp_path / "x.caffemodel"
    rng = np.random.default_rng(0)
    cases = [good[:n] for n in range(1, len(good), 7)]
    for _ in range(150):
        b = bytearray(good)
        for i in rng.integers(0, len(b), size=3):
            b[i] = int(rng.integers(0, 256))
        cases.append(bytes(b))
    for data in cases:
        path.write_bytes(data)
        try:
            w = load_caffemodel(path)
        except ProtonetError as e:
            assert str(e).startswith(str(path))
        else:
            assert isinstance(w.layers, dict)


@pytest.mark.parametrize("data,msg", [
    (b"", "the file is empty"),
    (b'name: "net"\nlayer { name: "a" }\n', "looks like a text prototxt"),
    (b"\x0a\x03net\xa2\x06\x05\x0a\x01a\x3b\x00", r"unsupported wire type 3 .* in layer 'a'"),
    (b"\x0a\x03net\xa2\x06\x04\x0a\x01a\xff", r"truncated at byte 12 in layer 'a'"),
    (b"\x0a\x03net\xa2\x06\x05\x0a\x01a\xff", r"truncated at byte 12 \(the layer at byte 5 needs 5 bytes, 4 left\) "
                                              r"in layer 'a'"),
])
def test_corrupt_files(tmp_path, data, msg):
    path = tmp_path / "c.caffemodel"
    path.write_bytes(data)
    with pytest.raises(WeightsError, match=msg):
        load_caffemodel(path)


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match=r"nope\.caffemodel: cannot read"):
        load_caffemodel(tmp_path / "nope.caffemodel")


def test_blob_count_mismatch(tmp_path):
    net = pb.NetParameter()
    layer = net.layer.add(name="ip", type="InnerProduct")
    b = layer.blobs.add()
    b.shape.dim.extend([2, 3])
    b.data.extend([1, 2, 3])
    path = tmp_path / "n.caffemodel"
    path.write_bytes(net.SerializeToString())
    for method in ("wire", "protobuf"):
        with pytest.raises(WeightsError, match=r"layer 'ip'.*blob.*\(2, 3\) holds 3 values, expected 6"):
            load_caffemodel(path, method=method)


def test_net_from_caffemodel(tmp_path):
    path = write_model(tmp_path / "m.caffemodel", "V1")
    assert looks_like_caffemodel(path)
    proto = tmp_path / "n.prototxt"
    proto.write_text(NET)
    assert not looks_like_caffemodel(proto)
    loaded = net_from_caffemodel(path)
    assert [(l.name, l.type) for l in loaded.net.layer] == [("conv1", "Convolution"), ("fc", "InnerProduct")]
    assert loaded.binary and loaded.upgrades and not any(l.blobs for l in loaded.net.layer)


def test_net_from_caffemodel_input_names_without_shape(tmp_path):
    net = pb.NetParameter()
    net.input.append("data")
    layer = net.layer.add(name="ip", type="InnerProduct", bottom=["data"], top=["ip"])
    layer.inner_product_param.num_output = 2
    _blob(layer.blobs.add(), np.ones((2, 3), np.float32))
    _blob(layer.blobs.add(), np.ones(2, np.float32))
    path = tmp_path / "i.caffemodel"
    path.write_bytes(net.SerializeToString())
    with pytest.raises(WeightsError, match=r"input\(s\) 'data' without a shape; give it with --input-shape"):
        net_from_caffemodel(path)
    loaded = net_from_caffemodel(path, input_shapes={"data": (1, 3)})
    assert loaded.net.layer[0].type == "Input"
    g, report = build_graph(loaded, load_caffemodel(path))
    assert report.matched == ["ip"] and g.outputs[0].shape == (1, 2)


def test_caffemodel_saved_in_train_phase_keeps_its_layers(tmp_path):
    net = pb.NetParameter()
    d = net.layer.add(name="data", type="Data", top=["data", "label"], phase=pb.TRAIN)
    d.include.add(phase=pb.TRAIN)
    net.layer.add(name="ip", type="InnerProduct", bottom=["data"], top=["ip"], phase=pb.TRAIN)
    path = tmp_path / "t.caffemodel"
    path.write_bytes(net.SerializeToString())
    assert [l.name for l in net_from_caffemodel(path).net.layer] == ["data", "ip"]
    assert [l.name for l in net_from_caffemodel(path, phase="TEST").net.layer] == ["ip"]


def test_progress_bar(tmp_path, capsys):
    load_caffemodel(write_model(tmp_path / "m.caffemodel"), progress=True)
    err = capsys.readouterr().err
    assert "loading m.caffemodel" in err and "100%" in err
    load_caffemodel(tmp_path / "m.caffemodel")  # small file, not a terminal: silent
    assert capsys.readouterr().err == ""


def test_written_caffemodel_is_what_protobuf_and_the_loader_read(tmp_path):
    """caffemodel_bytes writes Caffe's layout (layer name, shape.dim, packed data) at the wire level:
    protobuf's own parser and both loader paths read back the same values, a 0-d blob stays 0-d
    and a non-contiguous array is written in C order."""
    from protonet.frontend import caffemodel_bytes

    fc_t = np.asfortranarray(FC_W)
    data = caffemodel_bytes({"conv1": [CONV_W, CONV_B], "fc": [fc_t, FC_B], "prelu": [np.array(0.25)]}, "tiny")
    net = pb.NetParameter()
    net.ParseFromString(data)
    assert net.name == "tiny" and [lp.name for lp in net.layer] == ["conv1", "fc", "prelu"]
    assert list(net.layer[0].blobs[0].shape.dim) == [2, 1, 3, 3]
    assert list(net.layer[1].blobs[0].data) == FC_W.ravel().tolist()
    assert list(net.layer[2].blobs[0].shape.dim) == [] and list(net.layer[2].blobs[0].data) == [0.25]
    path = tmp_path / "w.caffemodel"
    path.write_bytes(data)
    for method in ("wire", "protobuf"):
        w = load_caffemodel(path, method=method)
        assert np.array_equal(w.layers["conv1"][0].data.reshape(2, 1, 3, 3), CONV_W)
        assert np.array_equal(w.layers["fc"][0].data.reshape(2, 8), FC_W)
        assert w.layers["prelu"][0].shape == () and w.layers["prelu"][0].data.tolist() == [0.25]


def test_save_caffemodel_round_trips_a_built_graph(tmp_path):
    from protonet.pipeline import compile_net, save_caffemodel

    net = tmp_path / "n.prototxt"
    net.write_text(NET)
    g = compile_net(net, options=BuildOptions(init="random", seed=4)).graph
    save_caffemodel(g, tmp_path / "w.caffemodel")
    again = compile_net(net, tmp_path / "w.caffemodel").graph
    for node in g.nodes:
        for name, arr in node.weights.items():
            assert np.array_equal(again.node(node.name).weights[name], arr)
    assert any(n.weights for n in g.nodes)
