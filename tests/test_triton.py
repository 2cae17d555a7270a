"""protonet export-triton: every written config.pbtxt is parsed against Triton's own ModelConfig
schema (tritonclient.grpc.model_config_pb2 where it is installed, else the same schema from
tests/data/triton/model_config.desc) and checked against the ONNX model beside it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from protonet.cli import main
from protonet.errors import ProtonetError
from protonet.runtime import make_session
from protonet.triton import RepoModel, TritonOptions, export_triton, preferred_sizes
from test_ssd_head import NET as SSD_NET

ROOT = Path(__file__).resolve().parent.parent
NETS = ROOT / "nets"
SCHEMA = Path(__file__).resolve().parent / "data" / "triton" / "model_config.desc"


def _committed_schema() -> type:
    fds = descriptor_pb2.FileDescriptorSet.FromString(SCHEMA.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for f in fds.file:
        pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


def model_config_class() -> type:
    """Triton's ModelConfig message class: tritonclient's own where it is installed."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return _committed_schema()
    return model_config_pb2.ModelConfig


def parse_config(path: Path):
    """config.pbtxt parsed strictly (an unknown field or a wrong type is an error)."""
    return text_format.Parse(path.read_text(), model_config_class()())


def check_repo_model(folder: Path, batched: bool = True):
    """The config parses, and agrees with the ONNX model beside it: names, element types, dims
    (without the batch when batched) and the batch dimension symbolic."""
    cfg = parse_config(folder / "config.pbtxt")
    assert cfg.name == folder.name and cfg.platform == "onnxruntime_onnx"
    model = onnx.load(folder / "1" / "model.onnx", load_external_data=False)
    types = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.UINT8: "TYPE_UINT8"}
    enum = type(cfg).DESCRIPTOR.fields_by_name["input"].message_type.fields_by_name["data_type"].enum_type
    for declared, values in ((cfg.input, model.graph.input), (cfg.output, model.graph.output)):
        assert [d.name for d in declared] == [v.name for v in values]
        for d, v in zip(declared, values):
            dims = [x.dim_value if x.HasField("dim_value") else -1 for x in v.type.tensor_type.shape.dim]
            assert enum.values_by_number[d.data_type].name == types[v.type.tensor_type.elem_type]
            if batched:
                assert dims[0] == -1 and v.type.tensor_type.shape.dim[0].dim_param == "N"
                dims = dims[1:]
            assert list(d.dims) == dims
    if batched:
        assert cfg.max_batch_size > 0 and cfg.HasField("dynamic_batching")
        assert all(0 < p <= cfg.max_batch_size for p in cfg.dynamic_batching.preferred_batch_size)
    else:
        assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    return cfg


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(capsys):
    """The command line, in this process (protonet.cli.main): exit code and what it printed."""
    def run(*args: str) -> Ran:
        rc = main(list(args))
        out, err = capsys.readouterr()
        return Ran(rc, out, err)
    return run


@pytest.fixture(scope="module")
def lenet_dynamic(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "lenet.onnx"
    assert main(["compile", str(NETS / "lenet.prototxt"), "--batch", "dynamic", "-o", str(out)]) == 0
    return out


def test_export_prototxt_and_onnx_gpu_tensorrt(tmp_path, lenet_dynamic, run_cli):
    repo = tmp_path / "repo"
    r = run_cli("export-triton", str(NETS / "lenet.prototxt"), str(lenet_dynamic), "--repo", str(repo),
                "--kind", "gpu", "--instances", "3", "--max-batch", "16", "--tensorrt")
    assert r.returncode == 2, r.stderr  # both are named 'lenet'
    assert "'lenet' given to more than one model" in r.stderr and not repo.exists()
    r = run_cli("export-triton", str(NETS / "squeezenet1_1.prototxt"), str(lenet_dynamic), "--repo", str(repo),
                "--kind", "gpu", "--instances", "3", "--max-batch", "16", "--tensorrt")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in repo.iterdir()) == ["lenet", "squeezenet1_1"]
    for name in ("lenet", "squeezenet1_1"):
        cfg = check_repo_model(repo / name)
        assert cfg.max_batch_size == 16 and list(cfg.dynamic_batching.preferred_batch_size) == [8, 16]
        assert [(g.count, type(g).Kind.Name(g.kind)) for g in cfg.instance_group] == [(3, "KIND_GPU")]
        acc = cfg.optimization.execution_accelerators.gpu_execution_accelerator
        assert [a.name for a in acc] == ["tensorrt"] and acc[0].parameters["precision_mode"] == "FP16"
    assert (repo / "lenet" / "1" / "model.onnx").read_bytes() == lenet_dynamic.read_bytes()
    cfg = parse_config(repo / "squeezenet1_1" / "config.pbtxt")
    assert list(cfg.input[0].dims) == [3, 227, 227] and list(cfg.output[0].dims) == [1000, 1, 1]
    sess = make_session(repo / "squeezenet1_1" / "1" / "model.onnx", "cpu")  # any batch up to max_batch
    assert sess.run({"data": np.zeros((5, 3, 227, 227), np.float32)})["prob"].shape == (5, 1000, 1, 1)


def test_fixed_batch_onnx_refused(tmp_path, run_cli):
    fixed = tmp_path / "fixed.onnx"
    assert run_cli("compile", str(NETS / "lenet.prototxt"), "-o", str(fixed)).returncode == 0
    r = run_cli("export-triton", str(fixed), "--repo", str(tmp_path / "repo"))
    assert r.returncode == 2
    assert r.stderr.strip() == (f"{fixed}: input 'data' has a fixed batch dimension (1x1x28x28); Triton's batching "
                                "needs a symbolic one: recompile the net with --batch dynamic (or give --max-batch 0 "
                                "to serve it unbatched)")
    assert not (tmp_path / "repo").exists()
    r = run_cli("export-triton", str(fixed), "--repo", str(tmp_path / "repo"), "--max-batch", "0", "--name", "fixed1")
    assert r.returncode == 0, r.stderr
    cfg = check_repo_model(tmp_path / "repo" / "fixed1", batched=False)
    assert list(cfg.input[0].dims) == [1, 1, 28, 28]
    assert [type(g).Kind.Name(g.kind) for g in cfg.instance_group] == ["KIND_CPU"]


def test_failure_leaves_the_repository_as_it_was(tmp_path, lenet_dynamic, run_cli):
    from protonet.frontend import load_net
    from protonet.pipeline import _build, build_model

    repo = tmp_path / "repo"
    export_triton(repo, [RepoModel("keep", str(lenet_dynamic), str(lenet_dynamic))], TritonOptions())
    before = sorted(str(p.relative_to(repo)) for p in repo.rglob("*"))
    loaded = load_net("ssd.prototxt", text=SSD_NET)
    from protonet.build import BuildOptions

    c = _build(loaded, None, BuildOptions(batch=1, dynamic_batch=True), True, None, None, "ssd.prototxt")
    from protonet.pipeline import probe_graph

    c.probe = probe_graph(c)
    ssd = build_model(c)
    with pytest.raises(ProtonetError, match="output 'detection_out' \\(1x1xN\\*10x7\\) does not have the batch"):
        export_triton(repo, [RepoModel("keep", "a.onnx", str(lenet_dynamic)), RepoModel("ssd", "ssd", ssd)],
                      TritonOptions())
    assert sorted(str(p.relative_to(repo)) for p in repo.rglob("*")) == before
    # unbatched, the detection model's rows follow the batch (-1)
    export_triton(repo, [RepoModel("ssd", "ssd", ssd)], TritonOptions(max_batch=0))
    cfg = check_repo_model(repo / "ssd", batched=False)
    assert list(cfg.output[0].dims) == [1, 1, -1, 7] and list(cfg.input[0].dims) == [-1, 3, 32, 32]


def test_embedded_preprocessing_takes_uint8(tmp_path, run_cli):
    net = tmp_path / "tiny.prototxt"
    net.write_text('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n'
                   'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
                   'convolution_param { num_output: 4 kernel_size: 3 } }\n'
                   'layer { name: "prob" type: "Softmax" bottom: "conv" top: "prob" }\n')
    r = run_cli("export-triton", str(net), "--repo", str(tmp_path / "repo"), "--mean", "104,117,123",
                "--embed-preprocess", "--image-size", "8,8")
    assert r.returncode == 0, r.stderr
    cfg = check_repo_model(tmp_path / "repo" / "tiny")
    assert type(cfg.input[0]).DESCRIPTOR.fields_by_name["data_type"].enum_type.values_by_number[
        cfg.input[0].data_type].name == "TYPE_UINT8"
    assert list(cfg.input[0].dims) == [8, 8, 3]
    sess = make_session(tmp_path / "repo" / "tiny" / "1" / "model.onnx", "cpu")
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    batch = sess.run({"data": images})["prob"]
    assert batch.shape == (3, 4, 6, 6)
    for i in range(3):  # each image as at batch 1 (where tests/test_embed.py checks the preprocessing)
        np.testing.assert_allclose(batch[i:i + 1], sess.run({"data": images[i:i + 1]})["prob"], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("args,message", [
    (["--tensorrt"], "--tensorrt is the TensorRT accelerator of GPU instances (fp16 or fp32): give --kind gpu"),
    (["--batch", "4"], "--batch 4 fixes the batch, and Triton's batching needs a dynamic one"),
    (["--name", "a/b"], "model name 'a/b': use letters, digits"),
])
def test_bad_options(tmp_path, args, message, run_cli):
    r = run_cli("export-triton", str(NETS / "lenet.prototxt"), "--repo", str(tmp_path / "repo"), *args)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert not (tmp_path / "repo").exists()


def test_preferred_sizes():
    assert preferred_sizes(1) == [1] and preferred_sizes(2) == [2] and preferred_sizes(8) == [4, 8]
    assert preferred_sizes(7) == [3, 7]


@pytest.mark.serve
def test_committed_schema_is_tritonclients():
    """The committed schema's messages and fields are among tritonclient's, with the same numbers
    and types (marked ``serve``: it runs in CI's serve venv, where tritonclient is installed)."""
    from tritonclient.grpc import model_config_pb2

    def fields(desc, seen):
        if desc.full_name in seen:
            return
        seen[desc.full_name] = {f.name: (f.number, f.type) for f in desc.fields}
        for f in desc.fields:
            if f.message_type is not None:
                fields(f.message_type, seen)

    ours, theirs = {}, {}
    fields(_committed_schema().DESCRIPTOR, ours)
    fields(model_config_pb2.ModelConfig.DESCRIPTOR, theirs)
    for name, fs in ours.items():
        assert fs.items() <= theirs[name].items(), name


def test_fp16_model_keeps_the_dynamic_batch(tmp_path, run_cli):
    """--precision goes through compile's reduced-precision path; the fp16 model keeps fp32 I/O
    and the symbolic batch, so Triton batches it."""
    r = run_cli("export-triton", str(NETS / "lenet.prototxt"), "--repo", str(tmp_path / "repo"), "--precision", "fp16")
    assert r.returncode == 0, r.stderr
    cfg = check_repo_model(tmp_path / "repo" / "lenet")
    model = onnx.load(tmp_path / "repo" / "lenet" / "1" / "model.onnx")
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    sess = make_session(tmp_path / "repo" / "lenet" / "1" / "model.onnx", "cpu")
    assert sess.run({"data": np.zeros((cfg.max_batch_size, 1, 28, 28), np.float32)})["prob"].shape == (8, 10)
