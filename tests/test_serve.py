"""``protonet serve``: a real Triton server (one per module, localhost, free ports) answering
tritonclient over HTTP and gRPC with onnxruntime's own results; bad requests get a clear error and
the server goes on serving; SIGTERM stops it with no process and no workspace left.

Needs protonet[serve] and tritonclient (CI runs these in its serve venv: ``-m serve``); they are
imported inside the tests, so that the main environment (numpy 2, no PyTriton) still collects this
file and leaves its tests out by marker."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from protonet.serve import free_ports

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.serve

MAX_BATCH = 4
INSTANCES = 2
START_TIMEOUT_S = 120


def uint8_model() -> onnx.ModelProto:
    """Takes uint8 images (as a model with embedded preprocessing does): (x - 128) * 0.5, then a
    per-channel mean over H, W."""
    nodes = [helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Sub", ["f", "mean"], ["c"]),
             helper.make_node("Mul", ["c", "scale"], ["s"]),
             helper.make_node("ReduceMean", ["s", "axes"], ["out"], keepdims=0)]
    inits = [helper.make_tensor("mean", TensorProto.FLOAT, [], [128.0]),
             helper.make_tensor("scale", TensorProto.FLOAT, [], [0.5]),
             helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3])]
    g = helper.make_graph(nodes, "u8", [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 8
    return m


class Running:
    def __init__(self, proc: subprocess.Popen, ports: list[int], tmp: Path, models: dict[str, Path]):
        self.proc, self.tmp, self.models = proc, tmp, models
        self.http, self.grpc, self.metrics = ports
        self.out: list[str] = []
        self.stopping = False

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc}"


def serve_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "protonet", "serve", *args]


def env_for(tmp: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "TMPDIR": str(tmp)}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module: LeNet's prototxt (compiled by serve, with a dynamic batch),
    a hand-made uint8 model, and LeNet compiled with --embed-preprocess (uint8 images, its
    batch fixed at 1: served unbatched). The references are the same nets compiled here."""
    import protonet

    d = tmp_path_factory.mktemp("serve")
    net = ROOT / "nets" / "lenet.prototxt"
    lenet = d / "lenet.onnx"
    protonet.compile(net, batch="dynamic").save(lenet)
    u8 = d / "camera-u8.onnx"
    onnx.save(uint8_model(), u8)
    embedded = d / "lenet-embedded.onnx"
    r = subprocess.run([sys.executable, "-m", "protonet", "compile", str(net), "--scale", "0.00390625",
                        "--embed-preprocess", "--image-size", "32,32", "--resize", "28,28", "-o", str(embedded)],
                       capture_output=True, text=True, env=env_for(d), timeout=120)
    assert r.returncode == 0, r.stderr
    tmp = d / "tmp"
    tmp.mkdir()
    ports = free_ports(3)
    proc = subprocess.Popen(
        serve_cmd(str(net), str(u8), str(embedded), "--http-port", str(ports[0]), "--grpc-port", str(ports[1]),
                  "--metrics-port", str(ports[2]), "--max-batch", str(MAX_BATCH), "--instances", str(INSTANCES),
                  "--provider", "cpu", "--queue-delay-us", "100000"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env_for(tmp), cwd=d)
    run = Running(proc, ports, tmp, {"lenet": lenet, "camera-u8": u8, "lenet-embedded": embedded})

    def read() -> None:
        for line in proc.stdout:
            run.out.append(line)
    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not any(line.startswith("serve: ready") for line in run.out):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("protonet serve did not start:\n" + "".join(run.out[-40:]))
        time.sleep(0.2)
    yield run
    (d / "server.log").write_text("".join(run.out))  # for a failure's post-mortem
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(autouse=True)
def server_survives(request):
    """After every test that used the server (before the SIGTERM test stops it), the server
    process is still running; if not, its last output says why."""
    yield
    run = request.node.funcargs.get("server")
    if run is not None and not run.stopping and run.proc.poll() is not None:
        pytest.fail(f"protonet serve exited ({run.proc.returncode}):\n" + "".join(run.out[-40:]))


def ort_run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def lenet_input(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 28, 28)).astype(np.float32)


def server_error() -> type:
    from tritonclient.utils import InferenceServerException

    return InferenceServerException


def http_infer(server: Running, x: np.ndarray, model: str = "lenet", name: str = "data",
               dtype: str = "FP32") -> np.ndarray:
    import tritonclient.http as th

    c = th.InferenceServerClient(server.http_url)
    i = th.InferInput(name, list(x.shape), dtype)
    i.set_data_from_numpy(x)
    r = c.infer(model, [i])
    return r.as_numpy(r.get_response()["outputs"][0]["name"])


def grpc_infer(server: Running, x: np.ndarray, model: str = "lenet", name: str = "data",
               dtype: str = "FP32") -> np.ndarray:
    import tritonclient.grpc as tg

    c = tg.InferenceServerClient(server.grpc_url)
    i = tg.InferInput(name, list(x.shape), dtype)
    i.set_data_from_numpy(x)
    r = c.infer(model, [i])
    return r.as_numpy(r.get_response().outputs[0].name)


def still_serving(server: Running) -> None:
    x = lenet_input(2, seed=99)
    np.testing.assert_allclose(http_infer(server, x), ort_run(server.models["lenet"], x), rtol=0, atol=1e-5)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(text: str, name: str, model: str) -> float:
    m = re.search(rf'^{name}{{[^}}]*model="{re.escape(model)}"[^}}]*}} (\S+)$', text, re.M)
    assert m, f"{name} for {model} not in the metrics"
    return float(m.group(1))


def test_health_readiness_and_config(server):
    import tritonclient.http as th

    base = f"http://{server.http_url}"
    assert get(f"{base}/v2/health/live")[0] == 200
    assert get(f"{base}/v2/health/ready")[0] == 200
    assert get(f"{base}/v2/models/lenet/ready")[0] == 200
    assert get(f"{base}/v2/models/nosuch/ready")[0] != 200
    cfg = th.InferenceServerClient(server.http_url).get_model_config("lenet")
    assert cfg["max_batch_size"] == MAX_BATCH
    assert sum(g["count"] for g in cfg["instance_group"]) == INSTANCES
    assert [(i["name"], i["data_type"], i["dims"]) for i in cfg["input"]] == [("data", "TYPE_FP32", [1, 28, 28])]
    u8 = th.InferenceServerClient(server.http_url).get_model_config("camera-u8")
    assert [(i["name"], i["data_type"]) for i in u8["input"]] == [("image", "TYPE_UINT8")]


@pytest.mark.parametrize("n", [1, 3, MAX_BATCH])
def test_http_and_grpc_answer_as_onnxruntime(server, n):
    x = lenet_input(n, seed=n)
    want = ort_run(server.models["lenet"], x)
    np.testing.assert_allclose(http_infer(server, x), want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(grpc_infer(server, x), want, rtol=0, atol=1e-5)


def test_uint8_images_are_taken_as_they_are(server):
    x = np.random.default_rng(5).integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)
    want = ((x.astype(np.float64) - 128) * 0.5).mean(axis=(2, 3))  # by hand
    np.testing.assert_allclose(http_infer(server, x, "camera-u8", "image", "UINT8"), want, rtol=0, atol=1e-5)
    with pytest.raises(server_error(), match=r"(?i)data.?type|datatype|FP32|UINT8"):
        http_infer(server, x.astype(np.float32), "camera-u8", "image", "FP32")
    still_serving(server)


def test_a_model_with_embedded_preprocessing_takes_uint8_images(server):
    """LeNet compiled with --embed-preprocess: a 32x32 grey uint8 image (N, H, W, C), resized
    and scaled inside the model; served unbatched (its batch is fixed at 1)."""
    import tritonclient.http as th

    cfg = th.InferenceServerClient(server.http_url).get_model_config("lenet-embedded")
    assert cfg.get("max_batch_size", 0) == 0
    assert [(i["name"], i["data_type"], i["dims"]) for i in cfg["input"]] == [("data", "TYPE_UINT8", [1, 32, 32, 1])]
    img = np.random.default_rng(3).integers(0, 256, (1, 32, 32, 1), dtype=np.uint8)
    want = ort_run(server.models["lenet-embedded"], img)
    np.testing.assert_allclose(http_infer(server, img, "lenet-embedded", "data", "UINT8"), want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(grpc_infer(server, img, "lenet-embedded", "data", "UINT8"), want, rtol=0, atol=1e-5)


def test_concurrent_requests_are_batched(server):
    """Eight requests at once, within the 100 ms queue delay: Triton runs them in fewer
    executions than requests (its own counters), and each answer is that request's own."""
    text0 = get(f"http://127.0.0.1:{server.metrics}/metrics")[1]
    count0, exec0 = (metric(text0, n, "lenet") for n in ("nv_inference_count", "nv_inference_exec_count"))
    xs = [lenet_input(1, seed=100 + k) for k in range(8)]
    got: dict[int, np.ndarray] = {}
    threads = [threading.Thread(target=lambda k=k: got.__setitem__(k, http_infer(server, xs[k]))) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for k in range(8):
        np.testing.assert_allclose(got[k], ort_run(server.models["lenet"], xs[k]), rtol=0, atol=1e-5)
    text = get(f"http://127.0.0.1:{server.metrics}/metrics")[1]
    count, execs = (metric(text, n, "lenet") for n in ("nv_inference_count", "nv_inference_exec_count"))
    assert count - count0 == 8
    assert execs - exec0 < 8


@pytest.mark.parametrize("client", [http_infer, grpc_infer])
@pytest.mark.parametrize("x, name, error", [
    (lenet_input(1)[:, :, :27], "data", r"(?i)shape"),
    (lenet_input(MAX_BATCH + 1), "data", r"(?i)batch.?size|exceeds|max"),
    (lenet_input(1), "nosuch", r"(?i)unexpected inference input|nosuch|expected 1 inputs"),
])
def test_bad_requests_get_an_error_and_serving_goes_on(server, client, x, name, error):
    with pytest.raises(server_error(), match=error):
        client(server, x, name=name)
    still_serving(server)


def test_wrong_dtype_and_missing_input(server):
    import tritonclient.http as th

    x = lenet_input(1)
    with pytest.raises(server_error(), match=r"(?i)data.?type|FP64|FP32"):
        http_infer(server, x.astype(np.float64), dtype="FP64")
    c = th.InferenceServerClient(server.http_url)
    with pytest.raises(server_error(), match=r"(?i)expected 1 inputs? but got 0|input|missing"):
        c.infer("lenet", [])
    still_serving(server)


def raw_http(server: Running, payload: bytes, close_early: bool = False) -> bytes:
    with socket.create_connection(("127.0.0.1", server.http), timeout=10) as s:
        s.sendall(payload)
        if close_early:
            return b""
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_garbage_bytes(server):
    body = bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8))
    head = (f"POST /v2/models/lenet/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    reply = raw_http(server, head + body)
    status = int(reply.split(b" ", 2)[1])
    assert status in (400, 500), reply[:300]  # Triton answers an unparsable body with 500 and the reason
    err = json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]
    assert "parse" in err.lower() or "json" in err.lower(), err
    raw_http(server, body)  # not even HTTP: the connection is dropped
    still_serving(server)


def test_client_gone_mid_request(server):
    import tritonclient.grpc as tg
    import tritonclient.http as th

    x = lenet_input(2)
    inp = th.InferInput("data", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    body = json.dumps({"inputs": [inp._get_tensor()]}).encode()
    head = (f"POST /v2/models/lenet/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    raw_http(server, head + body[: len(body) // 2], close_early=True)  # half the body, then gone
    raw_http(server, head + body, close_early=True)  # the whole request, gone before the answer
    ctx = tg.InferenceServerClient(server.grpc_url)
    gi = tg.InferInput("data", list(x.shape), "FP32")
    gi.set_data_from_numpy(x)
    ctx.async_infer("lenet", [gi], callback=lambda *_: None).cancel()  # a gRPC call cancelled in flight
    still_serving(server)


def test_stub_loads_this_interpreters_libpython(server):
    """The python-backend stubs map this Python's libpython (its LIBDIR), not another."""
    libdir = os.path.realpath(sysconfig.get_config_var("LIBDIR"))
    stubs = [p for p in Path("/proc").iterdir() if p.name.isdigit() and b"triton_python_backend_stub"
             in _read(p / "cmdline") and str(server.tmp).encode() in _read(p / "cmdline")]
    assert len(stubs) >= INSTANCES
    for p in stubs:
        libs = {line.split()[-1] for line in _read(p / "maps").decode().splitlines() if "libpython" in line}
        assert libs and all(os.path.realpath(lib).startswith(libdir + os.sep) for lib in libs), libs


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _ours(server: Running) -> list[str]:
    """Processes (tritonserver, stubs) started from the server's workspace."""
    mark = str(server.tmp).encode()
    return [p.name for p in Path("/proc").iterdir() if p.name.isdigit() and mark in _read(p / "cmdline")]


def test_sigterm_stops_cleanly(server):
    """Last in the module: SIGTERM ends it (exit 0), no tritonserver or stub is left, and the
    workspace (under the server's TMPDIR) is gone."""
    assert _ours(server)
    server.stopping = True
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(60) == 0, "".join(server.out[-30:])
    time.sleep(0.5)
    assert _ours(server) == []
    ready = next(line for line in server.out if line.startswith("serve: ready"))
    assert not Path(ready.rsplit("workspace ", 1)[1].strip()).exists()
    # onnxruntime keeps a telemetry cache file, TMPDIR/.ses, in any process that makes a session
    assert [p.name for p in server.tmp.iterdir() if p.name != ".ses"] == []
    # PyTriton's shared-memory regions carry the server's pid
    assert [p.name for p in Path("/dev/shm").iterdir() if str(server.proc.pid) in p.name] == []
    assert any(line.startswith("serve: stopped") for line in server.out)


def test_port_in_use_and_duplicate_names(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run(serve_cmd(str(ROOT / "nets" / "lenet.prototxt"), "--http-port", str(port)),
                           capture_output=True, text=True, env=env_for(tmp_path), timeout=120)
    assert r.returncode == 2
    assert f"--http-port {port}: the port is in use on 127.0.0.1" in r.stderr
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "net.onnx").write_bytes(uint8_model().SerializeToString())
    p1, p2, p3 = free_ports(3)
    r = subprocess.run(serve_cmd(str(a / "net.onnx"), str(b / "net.onnx"), "--http-port", str(p1),
                                 "--grpc-port", str(p2), "--metrics-port", str(p3)),
                       capture_output=True, text=True, env=env_for(tmp_path), timeout=120)
    assert r.returncode == 2
    assert "model name 'net' is taken by" in r.stderr
