"""The exporter's bytes: shared blobs written once, index tables built at run time instead of
stored, weights streamed from their arrays into the file (a plain ONNX model when read back),
a model check whose cost does not grow with the weights, and output file permissions."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import protonet.export as ex
from harness import build_text, example_inputs, example_net_text
from protonet.export import build, export, save_model, write_model
from protonet.layers import registry
from protonet.reference import ReferenceInterpreter
from protonet.runtime import make_session

SHARED = '''
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "c1" type: "Convolution" bottom: "x" top: "a" param { name: "cw" } param { name: "cb" }
        convolution_param { num_output: 3 kernel_size: 3 pad: 1 } }
layer { name: "c2" type: "Convolution" bottom: "a" top: "b" param { name: "cw" } param { name: "cb" }
        convolution_param { num_output: 3 kernel_size: 3 pad: 1 } }
layer { name: "f1" type: "InnerProduct" bottom: "b" top: "p" param { name: "fw" } inner_product_param { num_output: 192 } }
layer { name: "f2" type: "InnerProduct" bottom: "b" top: "q" param { name: "fw" } inner_product_param { num_output: 192 } }
layer { name: "sum" type: "Eltwise" bottom: "p" bottom: "q" top: "y" }
'''


def _ort_vs_reference(graph, model, feeds) -> None:
    ref = ReferenceInterpreter(graph).run(feeds)
    got = make_session(model, "cpu").run(feeds)
    for name, want in ref.items():
        np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-4)


def test_shared_blobs_are_one_initializer_that_both_layers_read():
    graph = build_text(SHARED)
    assert np.shares_memory(graph.node("c1").weights["weight"], graph.node("c2").weights["weight"])
    model = export(graph)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    weight_inits = [n for n in inits if n.split(".")[-1] in ("weight", "bias")]
    # cw, cb, fw and each InnerProduct's own (unshared) bias: 5, not 8
    assert len(weight_inits) == 5, weight_inits
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 2 and convs[0].input[1:] == convs[1].input[1:]
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
    assert len(gemms) == 2 and gemms[0].input[1] == gemms[1].input[1] and gemms[0].input[2] != gemms[1].input[2]
    np.testing.assert_array_equal(inits[convs[0].input[1]], graph.node("c2").weights["weight"])
    _ort_vs_reference(graph, model, {"x": np.random.default_rng(0).standard_normal((2, 3, 8, 8), np.float32)})


def _examples(type_name: str, with_mask_only: bool = False):
    for e in registry.get(type_name).examples:
        if not with_mask_only or "bottom: \"in1\"" in e.prototxt:
            yield e


@pytest.mark.parametrize("type_name", ["Upsample", "ROIPooling", "DetectionOutput"])
def test_index_tables_are_built_at_run_time_not_stored(type_name):
    """Upsample's unpooling canvas, ROIPooling's all-ones map and DetectionOutput's score table
    and row indices come from ConstantOfShape / Range: no initializer grows with the output."""
    for e in _examples(type_name, with_mask_only=type_name == "Upsample"):
        graph = build_text(example_net_text(e))
        model = export(graph)
        biggest = max((int(np.prod(t.dims)) for t in model.graph.initializer), default=0)
        assert biggest <= 8, (e.prototxt, biggest)
        ops = {n.op_type for n in model.graph.node}
        assert "ConstantOfShape" in ops, e.prototxt
        if type_name == "DetectionOutput":
            assert "Range" in ops
        feeds = example_inputs(graph, e)
        _ort_vs_reference(graph, model, feeds)


def test_segnet_sized_unpooling_stores_no_canvas():
    """SegNet's decoder unpools 64×180×240 maps into 64×360×480: 44 MB of zeros before; now the
    whole model (no weights) is a few hundred bytes."""
    shape = "dim: 1 dim: 64 dim: 180 dim: 240"
    text = "".join(f'layer {{ name: "in{i}" type: "Input" top: "in{i}" input_param {{ shape {{ {shape} }} }} }}\n'
                   for i in range(2))
    text += ('layer { name: "u" type: "Upsample" bottom: "in0" bottom: "in1" top: "out" '
             'upsample_param { upsample_h: 360 upsample_w: 480 } }\n')
    built = build(build_text(text))
    assert not built.large and built.structure.ByteSize() < 2048
    assert 64 * 360 * 480 * 4 > 44_000_000


def _weights_net(n_out: int = 512) -> str:
    return ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 8 dim: 16 dim: 16 } } }\n'
            'layer { name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 32 '
            'kernel_size: 3 pad: 1 } }\n'
            'layer { name: "r" type: "ReLU" bottom: "c" top: "c" }\n'
            f'layer {{ name: "fc" type: "InnerProduct" bottom: "c" top: "y" inner_product_param {{ num_output: {n_out} }} }}\n')


def test_streamed_file_is_the_model_onnx_would_write(tmp_path: Path):
    graph = build_text(_weights_net())
    built = build(graph)
    whole = built.to_model()
    assert set(built.large) == {"c.weight", "fc.weight", "fc.bias"} and built.large_bytes > 32 * 16 * 16 * 512 * 4
    files = write_model(built, tmp_path / "m.onnx")
    assert files == [tmp_path / "m.onnx"]
    back = onnx.load(tmp_path / "m.onnx")
    canonical = whole.SerializeToString(deterministic=True)
    assert back.SerializeToString(deterministic=True) == canonical
    assert onnx.ModelProto.FromString(built.serialize()).SerializeToString(deterministic=True) == canonical
    assert abs((tmp_path / "m.onnx").stat().st_size - len(canonical)) < 64
    onnx.checker.check_model(back, full_check=True)
    np.testing.assert_array_equal(
        numpy_helper.to_array([t for t in back.graph.initializer if t.name == "fc.weight"][0]),
        graph.node("fc").weights["weight"])
    feeds = {"x": np.random.default_rng(1).standard_normal((1, 8, 16, 16), np.float32)}
    _ort_vs_reference(graph, str(tmp_path / "m.onnx"), feeds)
    _ort_vs_reference(graph, built, feeds)


def test_model_check_sees_the_structure_not_the_weight_bytes(monkeypatch):
    seen = []
    real = ex.check_model
    monkeypatch.setattr(ex, "check_model", lambda m: (seen.append(m.ByteSize()), real(m)))
    export(build_text(_weights_net(2048)))  # 8 MB of weights
    assert len(seen) == 1 and seen[0] < 16 * 1024


def test_model_check_still_finds_structural_errors():
    built = build(build_text(_weights_net()))
    built.structure.graph.node[-1].input[1] = "no_such_value"
    with pytest.raises(onnx.checker.ValidationError):
        built.check()
    bad = build(build_text(_weights_net()))
    bad.large["fc.weight"] = bad.large["fc.weight"].astype(np.complex64)
    with pytest.raises(ex.ProtonetError, match="fc.weight.*dtype complex64"):
        bad.check()


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_model_and_external_data_files_get_the_same_permissions(tmp_path: Path, monkeypatch, umask):
    monkeypatch.setattr(ex, "EXTERNAL_DATA_THRESHOLD", 1000)  # stand-in for 1.8 GB
    graph = build_text(_weights_net())
    old = os.umask(umask)
    try:
        files = save_model(export(graph), tmp_path / "m.onnx")
    finally:
        os.umask(old)
    assert [f.name for f in files] == ["m.onnx", "m.onnx.data"]
    modes = {f.name: f.stat().st_mode & 0o777 for f in files}
    assert modes == {"m.onnx": 0o666 & ~umask, "m.onnx.data": 0o666 & ~umask}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    lazy = onnx.load(tmp_path / "m.onnx", load_external_data=False)
    ext = {t.name: {e.key: e.value for e in t.external_data} for t in lazy.graph.initializer
           if t.data_location == onnx.TensorProto.EXTERNAL}
    assert set(ext) == {"c.weight", "fc.weight", "fc.bias"}  # c.bias (128 bytes) stays inline
    assert all(int(e["offset"]) % ex.EXTERNAL_ALIGN == 0 for e in ext.values())
    _ort_vs_reference(graph, str(tmp_path / "m.onnx"),
                      {"x": np.random.default_rng(3).standard_normal((1, 8, 16, 16), np.float32)})


SHARED_1X1 = '''
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 1 dim: 1 dim: 1 } } }
layer { name: "c1" type: "Convolution" bottom: "x" top: "a" param { name: "w" } param { name: "b" }
        convolution_param { num_output: 1 kernel_size: 1 } }
layer { name: "c2" type: "Convolution" bottom: "a" top: "y" param { name: "w" } param { name: "b" }
        convolution_param { num_output: 1 kernel_size: 1 } }
'''


def _caffemodel(path: Path, values: dict[str, tuple[float, float]]) -> Path:
    from protonet.frontend.schema import pb

    net = pb.NetParameter()
    for name, (w, b) in values.items():
        layer = net.layer.add(name=name, type="Convolution")
        for v, shape in ((w, (1, 1, 1, 1)), (b, (1,))):
            blob = layer.blobs.add()
            blob.shape.dim.extend(shape)
            blob.data.append(v)
    path.write_bytes(net.SerializeToString())
    return path


@pytest.mark.parametrize("c1, c2, want", [
    ((3.0, 1.0), (3.0, 1.0), 22.0),  # the usual file: both copies equal; y = (2·3 + 1)·3 + 1
    ((3.0, 0.0), (5.0, 1.0), 56.0),  # copies differ: Caffe's loader writes c2's last, so y = (2·5 + 1)·5 + 1
])
def test_shared_blobs_from_a_caffemodel_are_one_array(tmp_path: Path, c1, c2, want):
    from protonet.pipeline import compile_net

    (tmp_path / "n.prototxt").write_text(SHARED_1X1)
    c = compile_net(tmp_path / "n.prototxt", _caffemodel(tmp_path / "n.caffemodel", {"c1": c1, "c2": c2}))
    g = c.graph
    assert np.shares_memory(g.node("c1").weights["weight"], g.node("c2").weights["weight"])
    feeds = {"x": np.full((1, 1, 1, 1), 2.0, np.float32)}
    assert ReferenceInterpreter(g).run(feeds)["y"].item() == want
    model = export(g)
    assert len(model.graph.initializer) == 2
    assert make_session(model, "cpu").run(feeds)["y"].item() == want


@pytest.mark.slow
def test_a_model_over_2_gb_compiles_verifies_and_runs(tmp_path: Path):
    """Nine 8192×8192 InnerProducts (2.4 GB of weights, over protobuf's 2 GB limit): compile
    writes ONNX external data, verify passes, infer runs the written files."""
    import subprocess
    import sys

    from protonet.frontend.wire import encode_weights_net

    net, weights, model = tmp_path / "big.prototxt", tmp_path / "big.caffemodel", tmp_path / "big.onnx"
    lines = ['layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 8192 } } }']
    rng = np.random.default_rng(0)
    with open(weights, "wb") as f:  # NetParameter fields concatenate: one layer at a time
        prev = "data"
        for i in range(1, 10):
            lines.append(f'layer {{ name: "fc{i}" type: "InnerProduct" bottom: "{prev}" top: "fc{i}" '
                         f'inner_product_param {{ num_output: 8192 }} }}')
            w = rng.standard_normal((8192, 8192), np.float32) * np.float32(1 / 90.5)
            f.write(encode_weights_net({f"fc{i}": [w, rng.standard_normal(8192, np.float32)]}))
            prev = f"fc{i}"
    net.write_text("\n".join(lines) + "\n")
    assert weights.stat().st_size > 2 ** 31

    def cli(*args: str) -> str:
        p = subprocess.run([sys.executable, "-m", "protonet", *args], capture_output=True, text=True,
                           cwd=Path(__file__).parent.parent, timeout=600)
        assert p.returncode == 0, p.stderr
        return p.stdout + p.stderr

    cli("compile", str(net), "-w", str(weights), "-o", str(model))
    data = tmp_path / "big.onnx.data"
    assert model.stat().st_size < 1 << 20 and data.stat().st_size > 2 ** 31
    assert model.stat().st_mode & 0o777 == data.stat().st_mode & 0o777
    lazy = onnx.load(model, load_external_data=False)
    assert {t.name for t in lazy.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL} == \
        {f"fc{i}.{k}" for i in range(1, 10) for k in ("weight", "bias")}
    assert "verify: OK" in cli("verify", str(net), "-w", str(weights))
    out = cli("infer", str(model), "--input", "random")
    assert "output 'fc9': shape (1, 8192)" in out
