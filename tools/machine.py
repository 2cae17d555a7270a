"""Describe the machine a benchmark ran on (shared by the scripts in tools/)."""
from __future__ import annotations

import os
import platform
from pathlib import Path


def _proc_field(path: str, key: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def describe() -> dict[str, str]:
    """CPU model, cores available to this process, RAM, OS and the library versions that matter."""
    import google.protobuf
    import numpy as np
    import onnxruntime as ort
    from google.protobuf.internal import api_implementation

    from protonet.runtime import cuda_available

    mem = _proc_field("/proc/meminfo", "MemTotal")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "CPU": _proc_field("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        "cores available": str(cores),
        "RAM": f"{int(mem.split()[0]) / 1024 / 1024:.1f} GiB" if mem else "unknown",
        "OS": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": f"{ort.__version__} (providers compiled in: {', '.join(ort.get_available_providers())}; "
                       f"CUDA usable here: {'yes' if cuda_available() else 'no'})",
        "protobuf": f"{google.protobuf.__version__} ({api_implementation.Type()} backend)",
    }


def markdown() -> list[str]:
    return [f"- {k}: {v}" for k, v in describe().items()]


def write_report(out: str | Path, title: str, intro: str, results: list[str], notes: list[str],
                 extra: list[str] = ()) -> None:
    """A benchmark's markdown: the title, how it was run, the machine (and ``extra`` lines about
    it), the results, and notes (each a bullet)."""
    lines = [f"# {title}", "", intro + " Machine:", "", *markdown(), *extra, "", "## Results", "", *results]
    if notes:
        lines += ["", "Notes:", "", *(f"- {n}" for n in notes)]
    Path(out).write_text("\n".join(lines) + "\n")
