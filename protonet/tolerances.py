"""Every numeric tolerance in one place.

Relative error of a blob is ``max|a - b| / max(max|ref|, TINY)``: the largest absolute
difference measured against the blob's own scale, so that values near zero in a blob with
large entries do not dominate.
"""
#: verify: onnxruntime (fp32) vs the float64 reference, per blob
VERIFY_RTOL = 1e-4
#: passes: reference(before) vs reference(after), float64
PASS_RTOL = 1e-5
#: layer tests: ONNX lowering in onnxruntime vs the numpy kernel
LAYER_RTOL = 1e-4
TINY = 1e-12


def relative_error(actual, reference) -> tuple[float, float]:
    """(max abs error, relative error) of ``actual`` against ``reference``."""
    import numpy as np

    a = np.asarray(actual, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if a.shape != r.shape:
        raise ValueError(f"shape {a.shape} vs {r.shape}")
    if a.size == 0:
        return 0.0, 0.0
    both_inf = np.isinf(a) & np.isinf(r) & (np.sign(a) == np.sign(r))
    diff = np.where(both_inf, 0.0, np.abs(a - r))
    diff = np.where(np.isnan(a) & np.isnan(r), 0.0, diff)
    finite = r[np.isfinite(r)]
    scale = float(np.max(np.abs(finite))) if finite.size else 0.0
    mx = float(np.max(diff)) if diff.size else 0.0
    if np.isnan(mx):
        mx = float("inf")
    return mx, mx / max(scale, TINY)
