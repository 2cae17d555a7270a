"""--embed-preprocess: the graph's own preprocessing equals protonet.images.preprocess_image
followed by the plain model, for fixed image sizes (the taps as constants) and any image size (the
taps computed in the graph from the image's shape): OpenCV's 8-bit resize in int32 nodes."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from protonet.cli import main
from protonet.errors import ProtonetError
from protonet.frontend.preprocess import Preprocess
from protonet.images import preprocess_image

NET = """name: "tiny"
input: "data"
input_shape { dim: 1 dim: 3 dim: 8 dim: 10 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } }
"""


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    d = tmp_path_factory.mktemp("embed")
    (d / "net.prototxt").write_text(NET)
    assert main(["compile", str(d / "net.prototxt"), "-o", str(d / "plain.onnx")]) == 0
    return d


def _image(h, w, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


CASES = [  # flags, image size
    (["--mean", "104,117,123", "--resize", "8,10"], (37, 53)),  # enlarge/shrink to exactly 8x10
    (["--mean", "1,2,3", "--scale", "0.017", "--resize", "12,14", "--crop", "8,10", "--channels", "RGB"], (5, 4)),
    (["--scale", "1/255", "--resize", "12", "--crop", "8,10"], (41, 23)),  # shorter side by a factor
    (["--mean", "128"], (8, 10)),  # the net's size: no resize
]


@pytest.mark.parametrize("flags,size", CASES)
def test_fixed_size_equals_numpy_then_plain_model(plain, tmp_path, flags, size):
    out = tmp_path / "e.onnx"
    assert main(["compile", str(plain / "net.prototxt"), "-o", str(out), "--embed-preprocess",
                 "--image-size", f"{size[0]},{size[1]}", *flags]) == 0
    model = onnx.load(str(out))
    meta = Preprocess.from_json({p.key: p.value for p in model.metadata_props}["protonet.preprocess"])
    assert meta.embedded
    inp = model.graph.input[0]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, *size, 3]
    img = _image(*size)
    got = _session(out).run(None, {"data": img[None]})[0]
    x = preprocess_image(img, meta, (1, 3, 8, 10))
    want = _session(plain / "plain.onnx").run(None, {"data": x})[0]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("flags", [["--mean", "104,117,123", "--resize", "8,10"],
                                   ["--scale", "0.5", "--resize", "11", "--crop", "8,10", "--channels", "RGB"],
                                   ["--mean", "7"]])  # no resize given: to the net's 8x10
def test_any_size_computes_the_taps_from_the_image(plain, tmp_path, flags):
    out = tmp_path / "d.onnx"
    assert main(["compile", str(plain / "net.prototxt"), "-o", str(out), "--embed-preprocess", *flags]) == 0
    model = onnx.load(str(out))
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, "height", "width", 3]
    meta = Preprocess.from_json({p.key: p.value for p in model.metadata_props}["protonet.preprocess"])
    sess = _session(out)
    for size in [(37, 53), (8, 10), (3, 100), (100, 3), (11, 11)]:
        img = _image(*size, seed=size[0])
        got = sess.run(None, {"data": img[None]})[0]
        x = preprocess_image(img, meta, (1, 3, 8, 10))
        want = _session(plain / "plain.onnx").run(None, {"data": x})[0]
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_infer_feeds_the_photo_to_an_embedded_model(plain, tmp_path, capsys):
    out = tmp_path / "e.onnx"
    assert main(["compile", str(plain / "net.prototxt"), "-o", str(out), "--embed-preprocess", "--image-size",
                 "20,30", "--mean", "104,117,123"]) == 0
    img = _image(20, 30)
    Image.fromarray(img).save(tmp_path / "p.png")
    capsys.readouterr()
    assert main(["infer", str(out), "--input", str(tmp_path / "p.png"), "-o", str(tmp_path / "o.npz")]) == 0
    said = capsys.readouterr().out
    assert "preprocessing: data: resize to 8x10, BGR, mean 104,117,123, scale 1 (in the graph" in said
    Image.fromarray(_image(21, 30)).save(tmp_path / "q.png")
    assert main(["infer", str(out), "--input", str(tmp_path / "q.png")]) == 2
    assert "the model takes 20x30 images" in capsys.readouterr().err


def test_nothing_to_embed_is_an_error(plain, tmp_path, capsys):
    assert main(["compile", str(plain / "net.prototxt"), "-o", str(tmp_path / "x.onnx"), "--embed-preprocess"]) == 2
    assert "no preprocessing to embed" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("flags,message", [
    (["--mean", "1,2,3", "--mean-file", "m.binaryproto"], "give --mean or --mean-file, not both"),
    (["--mean", "1,2"], "--mean gives 2 values for a 3-channel input 'data'; give 1 or 3"),
    (["--crop", "5,5"], "--crop 5,5: input 'data' is 8x10"),
    (["--mean-file", "missing.binaryproto"], "missing.binaryproto"),
    (["--image-size", "4,4"], "--image-size is the size of the image an embedded preprocessing takes"),
    (["--embed-preprocess", "--resize", "6,20"], "resized to 6x20 is smaller than the input's 8x10"),
    (["--embed-preprocess", "--resize", "9", "--mean", "1"], "shorter side resized to 9 is smaller than the input's 8x10"),
    (["--embed-preprocess", "--mean-file", "m.binaryproto", "--resize", "12"], "m.binaryproto"),
])
def test_bad_preprocessing_flags(plain, tmp_path, capsys, flags, message):
    out = tmp_path / "x.onnx"
    assert main(["compile", str(plain / "net.prototxt"), "-o", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("flag,value", [("--mean", "1,x"), ("--scale", "0"), ("--resize", "1,2,3"),
                                        ("--channels", "BRG"), ("--scale", "inf")])
def test_unparsable_flags_exit_2(plain, tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as e:
        main(["compile", str(plain / "net.prototxt"), "-o", str(tmp_path / "x.onnx"), flag, value])
    assert e.value.code == 2 and flag in capsys.readouterr().err


def test_mean_file_under_the_crop(plain, tmp_path):
    """A 12x14 mean image, the photo resized to 12x14 and cropped to 8x10 at (2, 2): the mean's
    pixels at the same offset are subtracted, in the graph as in numpy."""
    from protonet.frontend.schema import pb

    mean = np.arange(3 * 12 * 14, dtype=np.float32).reshape(3, 12, 14) / 7
    blob = pb.BlobProto()
    blob.shape.dim.extend([1, 3, 12, 14])
    blob.data.extend(mean.ravel().tolist())
    (tmp_path / "mean.binaryproto").write_bytes(blob.SerializeToString())
    out = tmp_path / "m.onnx"
    assert main(["compile", str(plain / "net.prototxt"), "-o", str(out), "--mean-file", str(tmp_path / "mean.binaryproto"),
                 "--resize", "12,14", "--crop", "8,10", "--embed-preprocess", "--image-size", "30,20"]) == 0
    model = onnx.load(str(out))
    meta = Preprocess.from_json({p.key: p.value for p in model.metadata_props}["protonet.preprocess"])
    img = _image(30, 20)
    x = preprocess_image(img, meta, (1, 3, 8, 10))
    from protonet.images import resize_bilinear_u8

    np.testing.assert_array_equal(x[0], resize_bilinear_u8(img, (12, 14))[2:10, 2:12, ::-1].transpose(2, 0, 1)
                                  - mean[:, 2:10, 2:12])
    got = _session(out).run(None, {"data": img[None]})[0]
    want = _session(plain / "plain.onnx").run(None, {"data": x})[0]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_api_run_feeds_a_photo_to_an_embedded_model(plain, tmp_path):
    import protonet

    out = tmp_path / "e.onnx"
    assert main(["compile", str(plain / "net.prototxt"), "-o", str(out), "--embed-preprocess", "--mean", "9"]) == 0
    img = _image(13, 17)
    Image.fromarray(img).save(tmp_path / "p.png")
    got = protonet.load(str(out)).run(str(tmp_path / "p.png"))["fc"]
    np.testing.assert_array_equal(got, _session(out).run(None, {"data": img[None]})[0])


TRAIN_VAL = """name: "tv"
layer { name: "data" type: "Data" top: "data" top: "label"
        transform_param { crop_size: 8 mean_value: 1 mean_value: 2 mean_value: 3 scale: 0.5 }
        data_param { source: "db" batch_size: 1 } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""


def test_flags_replace_what_the_data_layer_said(tmp_path, capsys):
    (tmp_path / "tv.prototxt").write_text(TRAIN_VAL)
    out = tmp_path / "tv.onnx"
    assert main(["compile", str(tmp_path / "tv.prototxt"), "-o", str(out), "--mean", "4,5,6", "--channels", "RGB"]) == 0
    assert "preprocessing: data: centre crop 8x8, RGB, mean 4,5,6, scale 0.5" in capsys.readouterr().out
    meta = Preprocess.from_json({p.key: p.value for p in onnx.load(str(out)).metadata_props}["protonet.preprocess"])
    assert (meta.mean_value, meta.scale, meta.crop_hw, meta.channel_order, meta.source) == \
        ((4.0, 5.0, 6.0), 0.5, (8, 8), "RGB", "Data")


GREY = NET.replace("dim: 3", "dim: 1")


def test_grey_net_embedded(tmp_path):
    (tmp_path / "g.prototxt").write_text(GREY)
    plain, out = tmp_path / "p.onnx", tmp_path / "g.onnx"
    assert main(["compile", str(tmp_path / "g.prototxt"), "-o", str(plain)]) == 0
    assert main(["compile", str(tmp_path / "g.prototxt"), "-o", str(out), "--embed-preprocess", "--mean", "100",
                 "--scale", "0.01"]) == 0
    meta = Preprocess.from_json({p.key: p.value for p in onnx.load(str(out)).metadata_props}["protonet.preprocess"])
    img = _image(19, 23)[:, :, :1]
    got = _session(out).run(None, {"data": img[None]})[0]
    want = _session(plain).run(None, {"data": preprocess_image(img, meta, (1, 1, 8, 10))})[0]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_api_embed_preprocess_equals_the_plain_model_on_a_photo(plain, tmp_path):
    """Model.embed_preprocess (the API's --embed-preprocess): fed the same photo, the embedded model
    (uint8 image in) and the plain model (the numpy preprocessing) give the same outputs, and the
    embedded one saves what compile --embed-preprocess writes."""
    import protonet

    m = protonet.compile(str(plain / "net.prototxt"), mean=(9.0,), scale=0.5)
    e = m.embed_preprocess()
    img = _image(13, 17)
    Image.fromarray(img).save(tmp_path / "p.png")
    assert e.preprocess is not None and e.preprocess.embedded
    np.testing.assert_allclose(e.run(str(tmp_path / "p.png"))["fc"], m.run(str(tmp_path / "p.png"))["fc"],
                               rtol=1e-5, atol=1e-6)
    e.save(tmp_path / "api.onnx")
    assert main(["compile", str(plain / "net.prototxt"), "-o", str(tmp_path / "cli.onnx"), "--embed-preprocess",
                 "--mean", "9", "--scale", "0.5"]) == 0
    np.testing.assert_array_equal(_session(tmp_path / "api.onnx").run(None, {"data": img[None]})[0],
                                  _session(tmp_path / "cli.onnx").run(None, {"data": img[None]})[0])
    with pytest.raises(protonet.ProtonetError, match="carries no preprocessing"):
        protonet.compile(str(plain / "net.prototxt")).embed_preprocess()
