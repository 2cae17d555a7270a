"""``protonet serve``: compiled models behind a real Triton Inference Server, through PyTriton.

Each model is bound to onnxruntime sessions in this process (one per Triton instance); Triton
itself (PyTriton's bundled ``tritonserver``) speaks HTTP and gRPC in the KServe v2 protocol,
batches requests dynamically up to ``max_batch`` (when the model's batch dimension is dynamic),
checks every request's tensor names, shapes and element types against the model's signature
before it reaches a session, and publishes Prometheus metrics. Inputs are declared with the
element type the model has, so a model compiled with an embedded preprocessing stage takes uint8
images as they are.

The rules:
- a model's name is its file's stem (characters Triton does not allow become ``_``); two models
  with the same name are refused;
- the server listens on ``host`` (localhost unless told otherwise); a port already in use is
  refused before anything starts;
- the python-backend stub that Triton starts loads ``libpython`` by name: the interpreter's own
  library folder goes first on ``LD_LIBRARY_PATH``, or the stub would load the system's Python;
- SIGTERM, SIGINT and SIGHUP stop the server: Triton exits, and the workspace (model store,
  sockets, the server's copy) is removed.

Needs ``pip install 'protonet[serve]'`` (nvidia-pytriton).
"""
from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import signal
import socket
import sysconfig
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .errors import ProtonetError
from .runtime import ORT_TYPES, Session, make_session

log = logging.getLogger(__name__)

#: what PyTriton accepts in a model name
_NAME_OK = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class ServeOptions:
    """How the server runs. ``max_batch``: the largest batch Triton forms (and accepts in one
    request) for a model with a dynamic batch dimension; ``instances``: onnxruntime sessions per
    model, each one Triton instance."""

    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int = 8
    instances: int = 1
    provider: str = "auto"
    queue_delay_us: int = 0  # how long Triton holds a request to gather a batch (0: what is queued)


@dataclass(frozen=True)
class TensorSig:
    """One input or output as Triton sees it: the shape without the batch dimension when the
    model is batched (-1 for a dynamic dimension)."""

    name: str
    dtype: type
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ServedModel:
    """A model ready to bind: its name, where it came from, its signature, and whether Triton
    batches it (its batch dimension is dynamic)."""

    name: str
    source: str
    inputs: tuple[TensorSig, ...]
    outputs: tuple[TensorSig, ...]
    batched: bool
    onnx: Any  # what make_session loads: a path or a protonet Built


def model_name(path: str) -> str:
    """The file's stem, with every character Triton does not allow in a model name as ``_``."""
    return _NAME_OK.sub("_", Path(path).stem) or "model"


def _ort_dims(shape: Sequence[Any]) -> tuple[int, ...]:
    """onnxruntime's shape (ints, or names/None for dynamic dims) with -1 for the dynamic ones."""
    return tuple(d if isinstance(d, int) and d > 0 else -1 for d in shape)


def _sigs(args: Sequence[Any], batched: bool, source: str, kind: str) -> tuple[TensorSig, ...]:
    out = []
    for a in args:
        dtype = ORT_TYPES.get(a.type)
        if dtype is None:
            raise ProtonetError(f"{source}: {kind} '{a.name}' has the element type {a.type}, which is not served")
        dims = _ort_dims(a.shape)
        out.append(TensorSig(a.name, dtype, dims[1:] if batched else dims))
    return tuple(out)


def _is_batched(sess: Any) -> bool:
    """Every input and output has a dynamic first dimension (what Triton's batching needs)."""
    args = list(sess.get_inputs()) + list(sess.get_outputs())
    return bool(args) and all(len(a.shape) > 0 and _ort_dims(a.shape)[0] == -1 for a in args)


def prepare(models: Sequence[str], weights: Sequence[str] = (), provider: str = "auto") -> list[ServedModel]:
    """Load each ``.onnx`` model, and compile each net definition (the ``weights``, if given,
    pair one to one with the definitions in order). Names are the file stems and must differ."""
    from . import api

    nets = [m for m in models if not m.lower().endswith(".onnx")]
    if weights and len(weights) != len(nets):
        raise ProtonetError(f"-w: {len(weights)} weight file(s) for {len(nets)} net definition(s); give one "
                            "-w per definition, in order (ONNX models take none), or none for filler weights")
    pairs = dict(zip(nets, weights))
    out: list[ServedModel] = []
    seen: dict[str, str] = {}
    for path in models:
        name = model_name(path)
        if name in seen:
            raise ProtonetError(f"{path}: its model name '{name}' is taken by {seen[name]} (names are file stems; "
                                "rename one of the files)")
        seen[name] = path
        src: Any = api.load(path).path if path.lower().endswith(".onnx") else _compile(path, pairs.get(path))
        probe = make_session(src, "cpu")
        sess = probe.session
        batched = _is_batched(sess)
        if not batched:
            log.warning("%s: the batch dimension is fixed, so Triton serves it without batching "
                        "(compile it with --batch dynamic to batch requests)", path)
        out.append(ServedModel(name, path, _sigs(sess.get_inputs(), batched, path, "input"),
                               _sigs(sess.get_outputs(), batched, path, "output"), batched, src))
    return out


def _compile(net: str, weights: str | None) -> Any:
    """A net definition compiled with a dynamic batch dimension (``--batch dynamic``), so that
    Triton can batch it; a net whose layers fix the batch is compiled as it is, and says why."""
    from . import api

    try:
        return api.compile(net, weights, batch="dynamic").built
    except ProtonetError as e:
        log.warning("%s: no dynamic batch (%s); compiled at its own batch size", net, e)
        return api.compile(net, weights).built


def _run_fn(session: Session, outputs: Sequence[str]) -> Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]:
    def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        res = session.session.run(list(outputs), {k: np.ascontiguousarray(v) for k, v in feeds.items()})
        return dict(zip(outputs, res))
    return run


def infer_function(model: ServedModel, session: Session) -> Callable[..., Any]:
    """PyTriton's inference callable for one instance: the requests Triton hands over at once
    (already checked against the signature) are concatenated along the batch dimension, run in
    one onnxruntime call and split back (PyTriton's ``@batch``); an unbatched model runs each
    request alone."""
    from pytriton.decorators import batch

    run = _run_fn(session, [o.name for o in model.outputs])
    if model.batched:
        @batch
        def infer_batched(**inputs: np.ndarray) -> dict[str, np.ndarray]:
            return run(inputs)
        return infer_batched

    def infer_each(requests: list[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        return [run(r) for r in requests]
    return infer_each


def check_ports(opts: ServeOptions) -> None:
    """Every port is free on ``host`` (bind and release), so a clash is named before Triton starts."""
    ports = {"--http-port": opts.http_port, "--grpc-port": opts.grpc_port, "--metrics-port": opts.metrics_port}
    if len(set(ports.values())) < len(ports):
        raise ProtonetError(f"the HTTP, gRPC and metrics ports must differ: {ports}")
    for flag, port in ports.items():
        try:
            infos = socket.getaddrinfo(opts.host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise ProtonetError(f"--host {opts.host}: {e.strerror}") from None
        family, _, _, _, addr = infos[0]
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind(addr)
            except OSError as e:
                why = "is in use" if e.errno == errno.EADDRINUSE else f"cannot be opened ({e.strerror})"
                raise ProtonetError(f"{flag} {port}: the port {why} on {opts.host}") from None


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports free on ``host`` at this moment (the kernel's picks), for tests and tools."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def python_library_env() -> None:
    """Put this interpreter's library folder first on LD_LIBRARY_PATH (inherited by Triton and
    its python-backend stub), so that the stub loads this Python's libpython, not the system's."""
    libdir = sysconfig.get_config_var("LIBDIR")
    if not libdir or not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return
    current = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([libdir] + [p for p in current if p != libdir])


def _threads(opts: ServeOptions) -> int:
    return max(1, (os.cpu_count() or 1) // opts.instances)


def make_sessions(models: Sequence[ServedModel], opts: ServeOptions) -> dict[str, list[Session]]:
    """``instances`` onnxruntime sessions per model (on CPU the cores are shared out between them)."""
    return {m.name: [make_session(m.onnx, opts.provider, threads=_threads(opts)) for _ in range(opts.instances)]
            for m in models}


def bind_all(triton: Any, models: Sequence[ServedModel], sessions: Mapping[str, list[Session]],
             opts: ServeOptions) -> None:
    """Bind every model to its sessions: one Triton instance per session."""
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    for m in models:
        config = ModelConfig(batching=m.batched, max_batch_size=opts.max_batch if m.batched else 0,
                             batcher=DynamicBatcher(max_queue_delay_microseconds=opts.queue_delay_us))
        triton.bind(model_name=m.name, infer_func=[infer_function(m, s) for s in sessions[m.name]],
                    inputs=[Tensor(name=t.name, dtype=t.dtype, shape=t.shape) for t in m.inputs],
                    outputs=[Tensor(name=t.name, dtype=t.dtype, shape=t.shape) for t in m.outputs],
                    config=config, strict=False)


#: PyTriton's stub for a model's second and later instances reads the first instance's handshake
#: socket, waiting one second for its file and trying to connect once; Triton starts the instances
#: together, so on a busy machine they miss it (a loaded 2-core machine does, most times). The
#: stub code that PyTriton uploads with each model gets a patient reader appended (it replaces the
#: module's function of that name: the stub imports it after the module has run): it waits up to
#: HANDSHAKE_WAIT_S for the file and for the listener, and reads the whole reply. A start that
#: still fails that way is retried (with a fresh workspace) up to START_ATTEMPTS times in all.
HANDSHAKE_WAIT_S = 60.0
START_ATTEMPTS = 3
_HANDSHAKE_RACE = "Timeout occurred while waiting for config file"
_HANDSHAKE_FN = b"def get_config_from_handshake_server("
_PATIENT_HANDSHAKE = f'''


def get_config_from_handshake_server(socket_path, timeout_s={HANDSHAKE_WAIT_S}):  # protonet serve
    """Wait for the first instance's handshake server (its socket file and its listener), then
    read the whole config it sends (a 4-byte big-endian length, then JSON)."""
    deadline = time.time() + timeout_s
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(max(0.5, deadline - time.time()))
            sock.connect(pathlib.Path(socket_path).as_posix())
            sock.sendall(b"get_config\\n")
            data = b""
            while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionResetError("the handshake server closed the connection early")
                data += chunk
            return json.loads(data[4:4 + int.from_bytes(data[:4], "big")])
        except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError, socket.timeout) as e:
            if time.time() > deadline:
                raise TimeoutError(f"Timeout occurred while waiting for config file {{socket_path}}") from e
            time.sleep(0.02)
        finally:
            sock.close()
'''.encode()


def patient_handshake() -> bool:
    """Append the patient handshake reader to the stub code that PyTriton uploads with every
    model (its ``communication.py``); False when that code has no such function (another
    PyTriton), which is then left as it is."""
    from pytriton.models.model import Model

    original = Model.get_proxy_model_files
    if getattr(original, "_protonet_patient", False):
        return True

    def files(self: Any) -> dict[str, bytes]:
        out = original(self)
        for key, data in out.items():
            if key.endswith("/communication.py") and _HANDSHAKE_FN in data:
                out[key] = data + _PATIENT_HANDSHAKE
        return out
    files._protonet_patient = True  # type: ignore[attr-defined]
    Model.get_proxy_model_files = files
    return True


#: the longest path a Unix socket can have (sun_path, less its NUL); PyTriton's sockets live in
#: the workspace, the longest being WORKSPACE/NAME_0_I-server.sock
SOCKET_PATH_MAX = 107


def _longest_socket(workdir: str, names: Sequence[str], instances: int) -> tuple[int, str]:
    return max((len(f"{workdir}/ws{START_ATTEMPTS}/{n}_0_{instances - 1}-server.sock".encode()), n) for n in names)


def make_workdir(names: Sequence[str], instances: int) -> Path:
    """The server's temporary folder, in the temporary directory when PyTriton's socket paths
    fit there (SOCKET_PATH_MAX), else in /tmp; a model name too long even there is refused."""
    d = tempfile.mkdtemp(prefix="protonet-serve-")
    if _longest_socket(d, names, instances)[0] <= SOCKET_PATH_MAX:
        return Path(d)
    shutil.rmtree(d, ignore_errors=True)
    d = tempfile.mkdtemp(prefix="pn-serve-", dir="/tmp")
    size, name = _longest_socket(d, names, instances)
    if size > SOCKET_PATH_MAX:
        shutil.rmtree(d, ignore_errors=True)
        raise ProtonetError(f"model name '{name}' is {size - SOCKET_PATH_MAX} characters too long for the "
                            "Unix socket paths PyTriton makes of it: rename the file shorter")
    log.info("the temporary directory's path is too long for PyTriton's sockets: the workspace is %s", d)
    return Path(d)


class Server:
    """A running Triton with the models bound: :meth:`start`, then :meth:`wait` until a stop
    signal or :meth:`stop`; the workspace is removed on stop."""

    def __init__(self, models: Sequence[ServedModel], opts: ServeOptions, stop: threading.Event | None = None) -> None:
        self.models = list(models)
        self.opts = opts
        self.providers: list[str] = []
        self._stop = stop or threading.Event()
        self._triton: Any = None
        self.workdir = make_workdir([m.name for m in self.models], opts.instances)

    def start(self) -> None:
        from pytriton.triton import Triton, TritonConfig

        python_library_env()
        patient_handshake()
        o = self.opts
        config = TritonConfig(http_address=o.host, http_port=o.http_port, grpc_address=o.host,
                              grpc_port=o.grpc_port, metrics_address=o.host, metrics_port=o.metrics_port,
                              exit_timeout_secs=10)
        sessions = make_sessions(self.models, o)
        self.providers = [sessions[m.name][0].provider for m in self.models]
        for attempt in range(1, START_ATTEMPTS + 1):
            self._triton = Triton(config=config, workspace=self.workdir / f"ws{attempt}")
            bind_all(self._triton, self.models, sessions, o)
            try:
                self._triton.run()
                return
            except Exception as e:
                logs = self._triton_logs()
                self._triton.stop()
                if _HANDSHAKE_RACE in str(e) + logs and attempt < START_ATTEMPTS and not self._stop.is_set():
                    log.warning("a model instance missed PyTriton's handshake (attempt %d of %d); starting again",
                                attempt, START_ATTEMPTS)
                    continue
                self.stop()
                first = str(e).strip().splitlines()[0][:400] if str(e).strip() else type(e).__name__
                raise ProtonetError(f"Triton did not start: {first}" + (f"\n{logs}" if logs else "")) from None

    def _triton_logs(self) -> str:
        server = getattr(self._triton, "_triton_server", None)
        text = server.logs() if server is not None else ""
        return "\n".join(text.strip().splitlines()[-15:])

    def wait(self, poll_s: float = 1.0) -> bool:
        """Block until stop is asked for (True) or Triton dies (False)."""
        while not self._stop.wait(poll_s):
            if not self._triton.is_alive():
                return False
        return True

    def stop(self) -> None:
        """Stop Triton (it gets SIGINT, and is killed if it outlives its exit timeout) and remove
        the workspace."""
        try:
            if self._triton is not None:
                self._triton.stop()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)


def serve(models: Sequence[str], weights: Sequence[str] = (), opts: ServeOptions = ServeOptions(),
          on_ready: Callable[["Server"], None] | None = None) -> bool:
    """Serve until SIGTERM/SIGINT/SIGHUP; returns False when Triton stopped on its own. Main thread."""
    if opts.instances < 1 or opts.max_batch < 1:
        raise ProtonetError("--instances and --max-batch must be at least 1")
    try:
        import pytriton.triton  # noqa: F401
    except ImportError as e:
        raise ProtonetError(f"protonet serve needs PyTriton ({e}): pip install 'protonet[serve]' "
                            "(Linux x86-64; it needs numpy<2, so a venv of its own is best)") from None
    check_ports(opts)
    served = prepare(models, weights, opts.provider)
    stop = threading.Event()
    old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    server = Server(served, opts, stop)
    try:
        server.start()
        if on_ready is not None:
            on_ready(server)
        return server.wait()
    finally:
        server.stop()
        for s, h in old.items():
            signal.signal(s, h)
