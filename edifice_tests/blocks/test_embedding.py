"""Tests for edifice.blocks.embedding: sinusoidal convention, TimestepEmbedding, LabelEmbedding."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from edifice.blocks import LabelEmbedding, TimestepEmbedding, condition_vector, sinusoidal_embedding


def test_sinusoidal_zero_time_is_cos_ones_then_sin_zeros():
    emb = sinusoidal_embedding(torch.zeros(3), 8)
    assert emb.shape == (3, 8)
    torch.testing.assert_close(emb[:, :4], torch.ones(3, 4))
    torch.testing.assert_close(emb[:, 4:], torch.zeros(3, 4))


def test_sinusoidal_known_values(f64):
    t = torch.tensor([0.5, 3.0])
    dim, period = 6, 100.0
    emb = sinusoidal_embedding(t, dim, max_period=period)
    assert emb.dtype == torch.float64
    half = dim // 2
    for b, tb in enumerate(t.tolist()):
        for i in range(half):
            f = math.exp(-math.log(period) * i / half)
            assert emb[b, i].item() == pytest.approx(math.cos(tb * f), abs=1e-12)
            assert emb[b, half + i].item() == pytest.approx(math.sin(tb * f), abs=1e-12)
    # the first frequency is 1: column 0 is cos(t), column half is sin(t)
    torch.testing.assert_close(emb[:, 0], torch.cos(t))
    torch.testing.assert_close(emb[:, half], torch.sin(t))


def test_sinusoidal_odd_dim_zero_pads_and_integer_times():
    emb = sinusoidal_embedding(torch.arange(4), 7)
    assert emb.shape == (4, 7) and emb.dtype == torch.float32
    assert torch.all(emb[:, -1] == 0)
    torch.testing.assert_close(emb[:, :6], sinusoidal_embedding(torch.arange(4).float(), 6))


@given(st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=8), st.integers(2, 64))
def test_sinusoidal_pairs_lie_on_unit_circle(ts, dim):
    emb = sinusoidal_embedding(torch.tensor(ts, dtype=torch.float64), dim)
    half = dim // 2
    norms = emb[:, :half] ** 2 + emb[:, half : 2 * half] ** 2
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_sinusoidal_errors():
    with pytest.raises(TypeError, match="t must be a torch.Tensor"):
        sinusoidal_embedding([0.0], 4)
    with pytest.raises(ValueError, match="t must have 1 dimensions"):
        sinusoidal_embedding(torch.zeros(2, 1), 4)
    with pytest.raises(ValueError, match="dim must be an int >= 2, got 1"):
        sinusoidal_embedding(torch.zeros(2), 1)
    with pytest.raises(TypeError, match="dim must be an int"):
        sinusoidal_embedding(torch.zeros(2), 4.0)
    with pytest.raises(ValueError, match="max_period must be in"):
        sinusoidal_embedding(torch.zeros(2), 4, max_period=0.0)


def test_timestep_embedding_shape_scale_and_dtype():
    torch.manual_seed(0)
    emb = TimestepEmbedding(16, freq_dim=32, t_scale=1000.0)
    t = torch.tensor([0.0, 0.25, 1.0])
    out = emb(t)
    assert out.shape == (3, 16) and out.dtype == torch.float32
    # t_scale multiplies t before the sinusoid
    expected = emb.mlp(sinusoidal_embedding(t * 1000.0, 32))
    torch.testing.assert_close(out, expected)
    emb64 = emb.double()
    assert emb64(t.double()).dtype == torch.float64
    assert emb64(torch.tensor([1, 2])).dtype == torch.float64  # integer steps are accepted


def test_timestep_embedding_errors():
    with pytest.raises(ValueError, match="dim must be a positive int, got 0"):
        TimestepEmbedding(0)
    with pytest.raises(ValueError, match="freq_dim must be an int >= 2"):
        TimestepEmbedding(8, freq_dim=1)
    with pytest.raises(ValueError, match="t_scale must be in"):
        TimestepEmbedding(8, t_scale=0.0)
    with pytest.raises(TypeError, match="t_scale must be a number"):
        TimestepEmbedding(8, t_scale="big")
    with pytest.raises(ValueError, match="t must have 1 dimensions"):
        TimestepEmbedding(8)(torch.zeros(2, 2))


def test_label_embedding_null_label_and_range():
    emb = LabelEmbedding(10, 4)
    assert emb.null_label == 10
    assert emb.table.weight.shape == (11, 4)
    out = emb(torch.tensor([0, 9, 10]))
    torch.testing.assert_close(out, emb.table.weight[[0, 9, 10]])
    with pytest.raises(ValueError, match=r"y must hold labels in \[0, 9\] or the null label 10, got 11"):
        emb(torch.tensor([1, 11]))
    with pytest.raises(ValueError, match="got -1"):
        emb(torch.tensor([-1]))
    with pytest.raises(TypeError, match="y must be an integer"):
        emb(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="y must have 1 dimensions"):
        emb(torch.tensor([[1]]))


def test_label_embedding_option_errors():
    with pytest.raises(ValueError, match="num_classes must be a positive int, got 0"):
        LabelEmbedding(0, 4)
    with pytest.raises(TypeError, match="num_classes must be an int"):
        LabelEmbedding(2.5, 4)
    with pytest.raises(ValueError, match="dim must be a positive int"):
        LabelEmbedding(3, 0)


def test_condition_vector_null_label_and_errors():
    torch.manual_seed(0)
    te, le = TimestepEmbedding(8), LabelEmbedding(3, 8)
    t = torch.tensor([1.0, 2.0])
    c_null = condition_vector(te, le, t, None)
    torch.testing.assert_close(c_null, te(t) + le(torch.tensor([3, 3])))
    assert torch.equal(condition_vector(te, None, t, None), te(t))
    with pytest.raises(ValueError, match="y was given but the network was built with num_classes=None"):
        condition_vector(te, None, t, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"y must have shape \(2,\)"):
        condition_vector(te, le, t, torch.tensor([0, 1, 2]))


def test_fourier_time_features_are_fixed_random_frequencies_saved_with_the_module():
    torch.manual_seed(0)
    emb = TimestepEmbedding(8, freq_dim=16, features="fourier", fourier_scale=16.0)
    assert emb.fourier_w.shape == (8,) and not emb.fourier_w.requires_grad
    assert "fourier_w" in emb.state_dict()
    torch.manual_seed(1)
    other = TimestepEmbedding(8, freq_dim=16, features="fourier")
    other.load_state_dict(emb.state_dict())
    t = torch.tensor([-3.0, 0.0, 2.5])
    torch.testing.assert_close(other(t), emb(t))
    assert emb(t).shape == (3, 8)


def test_time_features_must_be_known():
    with pytest.raises(ValueError, match="features"):
        TimestepEmbedding(8, features="wavelet")
