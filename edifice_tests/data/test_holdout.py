"""data.load(..., holdout_class=K): the class leaves both splits and becomes the out-of-distribution set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edifice import data
from edifice.data import DataSource, images


def test_digits_holdout_removes_the_class_from_both_splits():
    full = data.load("digits")
    src = data.load("digits", holdout_class=3)
    assert src.holdout_class == 3 and full.holdout_class is None and full.ood_x is None
    assert src.num_classes == full.num_classes == 10  # labels keep their values
    assert not bool((src.train_y == 3).any()) and not bool((src.test_y == 3).any())
    # everything else is kept, in order
    keep_tr, keep_te = full.train_y != 3, full.test_y != 3
    assert torch.equal(src.train_x, full.train_x[keep_tr]) and torch.equal(src.train_y, full.train_y[keep_tr])
    assert torch.equal(src.test_x, full.test_x[keep_te]) and torch.equal(src.test_y, full.test_y[keep_te])
    # the held-out TEST images are the OOD set, in data units [0, 1]
    assert torch.equal(src.ood_x, full.test_x[~keep_te]) and bool((src.ood_y == 3).all())
    assert src.ood_x.shape == (int((~keep_te).sum()), 1, 8, 8) and float(src.ood_x.min()) >= 0.0
    # training batches never contain the class
    _, y = src.train_batch(2000, generator=torch.Generator().manual_seed(0))
    assert not bool((y == 3).any())


def test_holdout_of_the_largest_label_keeps_num_classes(tmp_path):
    # num_classes of an npz source is inferred from its labels: holding out the largest must not shrink it.
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 4, 4), dtype=np.uint8)
    y = np.arange(40) % 4
    path = tmp_path / "tiny.npz"
    np.savez(path, x_train=x[:30], y_train=y[:30], x_test=x[30:], y_test=y[30:])
    src = data.load(f"npz:{path}", holdout_class=3)
    assert src.num_classes == 4 and src.holdout_class == 3
    assert src.ood_x.shape == (int((y[30:] == 3).sum()), 1, 4, 4)
    x_test = images.load_npz(path, x_key="x_test", y_key="y_test")[0]
    assert torch.equal(src.ood_x, x_test[torch.from_numpy(y[30:] == 3)])


def test_unlabelled_data_cannot_hold_out_a_class(tmp_path):
    with pytest.raises(ValueError, match=r"holdout_class needs labelled image data, but 'moons' is an unlabelled"):
        data.load("moons", holdout_class=0)
    path = tmp_path / "nolabels.npz"
    np.savez(path, x_train=np.zeros((6, 4, 4), np.uint8), x_test=np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"holdout_class needs labelled images, but 'npz:.*' has no labels"):
        data.load(f"npz:{path}", holdout_class=0)


def test_bad_holdout_class():
    with pytest.raises(ValueError, match=r"holdout_class must be a class of 'digits', in \[0, 9\], got 10"):
        data.load("digits", holdout_class=10)
    with pytest.raises(ValueError, match=r"holdout_class must be an int >= 0, got -1"):
        data.load("digits", holdout_class=-1)
    with pytest.raises(TypeError, match=r"holdout_class must be an int, got bool"):
        data.load("digits", holdout_class=True)
    with pytest.raises(TypeError, match=r"holdout_class must be an int, got str"):
        data.load("digits", holdout_class="3")


def test_datasource_holdout_fields_go_together():
    x = torch.zeros(4, 1, 2, 2)
    with pytest.raises(ValueError, match=r"holdout_class and ood_x go together"):
        DataSource("d", "images", (1, 2, 2), 2, x, None, x, None, holdout_class=1)
    with pytest.raises(ValueError, match=r"holdout_class and ood_x go together"):
        DataSource("d", "images", (1, 2, 2), 2, x, None, x, None, ood_x=x)
