"""Size limits (protonet/limits.py) and bad input that used to be internal errors.

Each case goes through the CLI in-process: one located line on stderr, exit code 2, no output
file, and nothing of the refused size allocated (each runs in well under a second).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from protonet import cli, limits
from protonet.errors import InternalError, ProtonetError
from protonet.limits import Limits

POOL_MASK = ('layer { name: "pool" type: "Pooling" bottom: "x" top: "p" top: "m" '
             'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n')

CASES = {
    # sizes: each refused at build time, at its layer, before allocating
    "input_2_62": ('input: "x" input_shape { dim: 4611686018427387904 dim: 1 }\n'
                   'layer { name: "r" type: "ReLU" bottom: "x" top: "y" }\n',
                   r"layer 'input' \(Input\): top 'x' of shape \(4611686018427387904, 1\) has "
                   r"4,611,686,018,427,387,904 values, more than protonet's limit of 2,147,483,648 "
                   r"\(PROTONET_MAX_BLOB_ELEMENTS\)"),
    "concat_overflow": ('input: "x" input_shape { dim: 1 dim: 2000000000 }\n'
                        'layer { name: "c" type: "Concat" bottom: "x" bottom: "x" bottom: "x" top: "y" }\n',
                        r":2: layer 'c' \(Concat\): top 'y' of shape \(1, 6000000000\) has 6,000,000,000 values"),
    "total": ('input: "x" input_shape { dim: 1 dim: 2000000000 }\n'
              + "".join(f'layer {{ name: "r{i}" type: "ReLU" bottom: "x" top: "y{i}" }}\n' for i in range(8)),
              r":9: layer 'r7' \(ReLU\): the net's blobs up to here hold 18,000,000,000 values together, more "
              r"than protonet's limit of 17,179,869,184 \(PROTONET_MAX_TOTAL_ELEMENTS\)"),
    "upsample_mask_30000x": ('input: "x" input_shape { dim: 1 dim: 1 dim: 2 dim: 2 }\n' + POOL_MASK +
                             'layer { name: "up" type: "Upsample" bottom: "p" bottom: "m" top: "u" '
                             'upsample_param { scale: 30000 } }\n',
                             r":3: layer 'up' \(Upsample\): the unpooled output \(scattered into zeros\) of shape "
                             r"\(1, 1, 30000, 30000\) has 900,000,000 values, more than protonet's limit of "
                             r"134,217,728 \(PROTONET_MAX_CONSTANT_ELEMENTS\)"),
    "priorbox_30000_map": ('input: "f" input_shape { dim: 1 dim: 1 dim: 30000 dim: 30000 }\n'
                           'input: "img" input_shape { dim: 1 dim: 3 dim: 300 dim: 300 }\n'
                           'layer { name: "pb" type: "PriorBox" bottom: "f" bottom: "img" top: "out" '
                           'prior_box_param { min_size: 30 } }\n',
                           r"layer 'pb' \(PriorBox\): the prior boxes \(a constant\) of shape \(1, 2, 3600000000\)"),
    "detection_1e8_classes": ('input: "loc" input_shape { dim: 1 dim: 4 }\n'
                              'input: "conf" input_shape { dim: 1 dim: 100000000 }\n'
                              'input: "prior" input_shape { dim: 1 dim: 2 dim: 4 }\n'
                              'layer { name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" '
                              'bottom: "prior" top: "out" detection_output_param { num_classes: 100000000 '
                              'nms_param { nms_threshold: 0.45 } } }\n',
                              r"layer 'det' \(DetectionOutput\): the detection tables \(4 × images × classes × "
                              r"priors\) of shape \(4, 1, 100000000, 1\)"),
    "weight_limit": ('input: "x" input_shape { dim: 1 dim: 100000 }\n'
                     'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
                     'inner_product_param { num_output: 100000 } }\n',
                     r"layer 'ip' \(InnerProduct\): blob 'weight' of shape \(100000, 100000\) has "
                     r"10,000,000,000 values, more than protonet's limit of 536,870,912 "
                     r"\(PROTONET_MAX_WEIGHT_ELEMENTS\)"),
    "lrn_window": ('input: "x" input_shape { dim: 1 dim: 3 dim: 4 dim: 4 }\n'
                   'layer { name: "n" type: "LRN" bottom: "x" top: "y" lrn_param { local_size: 2147483647 } }\n',
                   r":2: layer 'n' \(LRN\): the input padded for local_size 2147483647 of shape "
                   r"\(1, 2147483649, 4, 4\) has 34,359,738,384 values"),  # fuzz prototxt seed 14 case 1914
    # bad values that used to escape as internal errors
    "empty_top": ('input: "x" input_shape { dim: 1 dim: 2 }\n'
                  'layer { name: "r" type: "ReLU" bottom: "x" top: "" }\n',
                  r":2: layer 'r' \(ReLU\): top 0 has an empty name"),
    "uniform_min_gt_max": ('input: "x" input_shape { dim: 1 dim: 2 }\n'
                           'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { '
                           'num_output: 2 weight_filler { type: "uniform" min: 1 max: -1 } } }\n',
                           r":2: layer 'ip' \(InnerProduct\): uniform filler needs finite min <= max"),
    "uniform_nan": ('input: "x" input_shape { dim: 1 dim: 2 }\n'
                    'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { '
                    'num_output: 2 weight_filler { type: "uniform" min: nan max: 1 } } }\n',
                    r"uniform filler needs finite min <= max \(Caffe checks it\), got min nan"),
    "uniform_inf": ('input: "x" input_shape { dim: 1 dim: 2 }\n'
                    'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { '
                    'num_output: 2 bias_filler { type: "uniform" min: -1 max: inf } } }\n',
                    r"uniform filler needs finite min <= max \(Caffe checks it\), got min -1, max inf"),
    "gaussian_std_0": ('input: "x" input_shape { dim: 1 dim: 2 }\n'
                       'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { '
                       'num_output: 2 weight_filler { type: "gaussian" std: 0 } } }\n',
                       r"gaussian filler needs a finite mean and a finite std > 0"),
    "priorbox_min_size_nan": ('input: "f" input_shape { dim: 1 dim: 1 dim: 3 dim: 3 }\n'
                              'input: "img" input_shape { dim: 1 dim: 3 dim: 30 dim: 30 }\n'
                              'layer { name: "pb" type: "PriorBox" bottom: "f" bottom: "img" top: "out" '
                              'prior_box_param { min_size: nan } }\n',
                              r":3: layer 'pb' \(PriorBox\): min_size must be a finite number, got nan"),
    "error_after_last_layer": ('input: "x" input_shape { dim: 1 dim: 2 }\n'
                               'layer { name: "r" type: "ReLU" bottom: "x" top: "y" }\n'
                               'bogus_field: 3\n',
                               r'^net\.prototxt:3:1: Message type "caffe.NetParameter" has no field named '
                               r'"bogus_field"'),  # not "in layer 'r'", the block before the line
}


def run_main(capsys, args: list[str]) -> tuple[int, str]:
    code = cli.main(args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_at_build_time(case: str, tmp_path: Path, capsys, monkeypatch):
    text, want = CASES[case]
    monkeypatch.chdir(tmp_path)
    Path("net.prototxt").write_text(text)
    code, err = run_main(capsys, ["compile", "net.prototxt", "-o", "out.onnx"])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("net.prototxt:"), lines[0]
    assert re.search(want, lines[0]), f"{lines[0]!r} !~ {want!r}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.prototxt"]


def test_limits_are_overridable_from_the_environment(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("net.prototxt").write_text('input: "x" input_shape { dim: 2 dim: 3 }\n'
                                    'layer { name: "r" type: "ReLU" bottom: "x" top: "y" }\n')
    assert limits.current() == Limits()
    monkeypatch.setenv("PROTONET_MAX_BLOB_ELEMENTS", "5")
    code, err = run_main(capsys, ["compile", "net.prototxt", "-o", "out.onnx"])
    assert code == 2 and "top 'x' of shape (2, 3) has 6 values, more than protonet's limit of 5" in err
    monkeypatch.setenv("PROTONET_MAX_BLOB_ELEMENTS", "6")
    assert run_main(capsys, ["compile", "net.prototxt", "-o", "out.onnx"])[0] == 0
    monkeypatch.setenv("PROTONET_MAX_BLOB_ELEMENTS", "lots")
    code, err = run_main(capsys, ["compile", "net.prototxt", "-o", "out.onnx"])
    assert code == 2 and "PROTONET_MAX_BLOB_ELEMENTS='lots': give a positive number" in err


def test_defaults_hold_real_nets():
    """The limits leave room for real nets: GoogLeNet at batch 256 (conv1 alone 205M values)."""
    from protonet.build import BuildOptions
    from protonet.pipeline import compile_net

    root = Path(__file__).resolve().parent.parent
    c = compile_net(root / "nets" / "googlenet.prototxt", options=BuildOptions(batch=256))
    assert max(limits.elements(v.shape) for v in c.graph.values.values()) == 256 * 64 * 112 * 112


def _net(tmp_path: Path, text: str) -> str:
    p = tmp_path / "net.prototxt"
    p.write_text(text)
    return str(p)


def test_cli_option_mistakes(tmp_path: Path, capsys):
    net = _net(tmp_path, 'input: "x" input_shape { dim: 1 dim: 2 }\n'
                         'layer { name: "r" type: "ReLU" bottom: "x" top: "y" }\n'
                         'layer { name: "s" type: "Sigmoid" bottom: "y" top: "z" }\n')
    out = str(tmp_path / "o.onnx")
    code, err = run_main(capsys, ["compile", net, "-o", out, "--output", "y", "--output", "y"])
    assert code == 2 and "--output 'y' given more than once" in err
    code, err = run_main(capsys, ["compile", net, "-o", out, "--no-optimize", "--passes", "dead_code"])
    assert code == 2 and "--passes names passes to run, but optimization is off" in err
    code, err = run_main(capsys, ["summary", net, "--passes", "dead_code"])
    assert code == 2 and "--passes names passes to run, but optimization is off" in err
    assert not Path(out).exists()


def test_global_max_pooling_with_mask_lowers_to_valid_onnx(tmp_path: Path):
    """Caffe's global MAX pooling fills the mask like any window (h * W + w of the first maximum)."""
    from protonet.export import export
    from protonet.pipeline import compile_net
    from protonet.runtime import make_session

    net = _net(tmp_path, 'input: "x" input_shape { dim: 1 dim: 2 dim: 2 dim: 3 }\n'
                         'layer { name: "pool" type: "Pooling" bottom: "x" top: "p" top: "m" '
                         'pooling_param { pool: MAX global_pooling: true } }\n')
    c = compile_net(net)
    x = np.array([[[[1, 5, 2], [0, 5, 3]], [[-1, -2, -3], [-4, -0.5, -6]]]], dtype=np.float32)
    got = make_session(export(c.graph)).run({"x": x})
    np.testing.assert_array_equal(got["p"].reshape(-1), [5, -0.5])
    np.testing.assert_array_equal(got["m"].reshape(-1), [1, 4])  # first maximum of plane 0 at (0, 1)


def test_own_model_onnxruntime_refuses_is_internal():
    import onnx
    from onnx import helper

    from protonet.runtime import make_session

    bad = helper.make_model(helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"])], "g",
                                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]))
    with pytest.raises(InternalError) as e:
        make_session(bad)
    assert e.value.exit_code == 1
    with pytest.raises(ProtonetError) as e:  # the same bytes from a user's file are bad input
        make_session(bad.SerializeToString())
    assert e.value.exit_code == 2


def test_onnxruntime_out_of_memory_is_the_machines_limit():
    """onnxruntime's arena failing to allocate becomes MemoryError (the CLI: exit 2, 'out of
    memory'), other run failures stay what they are."""
    from types import SimpleNamespace

    from protonet.runtime import Session

    def failing(message):
        def run(names, feeds):
            raise RuntimeError(message)
        inputs = [SimpleNamespace(name="x", type="tensor(float)")]
        return Session(SimpleNamespace(run=run, get_inputs=lambda: inputs, get_outputs=lambda: []), "cpu")

    with pytest.raises(MemoryError, match="Failed to allocate memory for requested buffer of size 3600000000"):
        failing("[ONNXRuntimeError] : 1 : FAIL : bfc_arena.cc:360 Failed to allocate memory for requested "
                "buffer of size 3600000000\n").run({"x": np.zeros(1)}, ["y"])
    with pytest.raises(RuntimeError, match="kernel broke"):
        failing("kernel broke").run({"x": np.zeros(1)}, ["y"])
