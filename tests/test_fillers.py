"""Caffe's fillers: distributions and fan rules, deterministic under a seed."""
from __future__ import annotations

import numpy as np
import pytest

from harness import build_text
from protonet.errors import LayerContext, Location, ProtonetError
from protonet.fillers import fill, layer_rng
from protonet.layers.base import Filler

CTX = LayerContext(Location("t.prototxt"))
SHAPE = (64, 32, 3, 3)  # fan_in = 32*9 = 288, fan_out = 64*9 = 576


def draw(f: Filler, shape=SHAPE) -> np.ndarray:
    return fill(f, shape, layer_rng(0, "conv", 0), CTX)


def test_constant_and_uniform():
    assert (draw(Filler("constant", value=0.25)) == 0.25).all()
    u = draw(Filler("uniform", min=-2, max=3))
    assert u.min() >= -2 and u.max() <= 3 and abs(u.mean() - 0.5) < 0.05


def test_gaussian_mean_std():
    g = draw(Filler("gaussian", mean=1.0, std=0.5))
    assert abs(g.mean() - 1.0) < 0.01 and abs(g.std() - 0.5) < 0.01


def test_xavier_bound_is_sqrt_3_over_fan_in():
    x = draw(Filler("xavier"))
    bound = np.sqrt(3 / 288)
    assert np.abs(x).max() <= bound and np.abs(x).max() > 0.99 * bound


@pytest.mark.parametrize("norm,n", [("FAN_IN", 288), ("FAN_OUT", 576), ("AVERAGE", 432)])
def test_msra_std_is_sqrt_2_over_n(norm, n):
    x = draw(Filler("msra", variance_norm=norm))
    assert abs(x.std() / np.sqrt(2 / n) - 1) < 0.02


def test_xavier_variance_norm_fan_out():
    x = draw(Filler("xavier", variance_norm="FAN_OUT"))
    assert abs(np.abs(x).max() / np.sqrt(3 / 576) - 1) < 0.01


def test_bilinear_upsampling_kernel():
    # Caffe's bilinear filler for kernel 4 (upsampling by 2): 1D weights [0.25, 0.75, 0.75, 0.25]
    w = draw(Filler("bilinear"), (1, 1, 4, 4))
    ax = np.array([0.25, 0.75, 0.75, 0.25])
    np.testing.assert_allclose(w[0, 0], np.outer(ax, ax))


def test_unknown_filler_is_located_error():
    with pytest.raises(ProtonetError, match=r"^t.prototxt: unknown filler type 'fancy'"):
        draw(Filler("fancy"))


def test_fillers_are_deterministic_per_layer_and_seed():
    text = ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n'
            'layer { name: "c1" type: "Convolution" bottom: "x" top: "c1" convolution_param { num_output: 4 '
            'kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }\n')
    extra = ('layer { name: "c0" type: "Convolution" bottom: "x" top: "c0" convolution_param { num_output: 4 '
             'kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }\n')
    a = build_text(text, seed=3, init="filler").node("c1").weights["weight"]
    b = build_text(text + extra, seed=3, init="filler").node("c1").weights["weight"]
    c = build_text(text, seed=4, init="filler").node("c1").weights["weight"]
    np.testing.assert_array_equal(a, b)  # adding a layer does not change the others
    assert not np.array_equal(a, c)
    assert (build_text(text, init="filler").node("c1").weights["bias"] == 0).all()  # default constant 0
