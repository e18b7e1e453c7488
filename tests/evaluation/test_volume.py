"""Per-volume Dice (evaluation/volume.py) against values worked out by hand, and the
slice-by-slice prediction of a volume."""

import math

import pytest
import torch

from semiseg.evaluation.volume import dice_per_class, predict_volume, summarise


def test_dice_per_class_by_hand():
    # one volume of 2 slices of 2 x 3 voxels, 4 classes
    target = torch.tensor([[[0, 1, 1], [2, 2, 3]], [[0, 0, 1], [2, 3, 3]]])
    pred = torch.tensor([[[0, 1, 0], [2, 2, 2]], [[0, 0, 1], [3, 3, 3]]])
    # class 0: gt 3 voxels, pred 4, both 3 -> 6/7; class 1: gt 3, pred 2, both 2 -> 4/5
    # class 2: gt 3, pred 3, both 2 -> 4/6; class 3: gt 3, pred 3, both 2 -> 4/6
    dice = dice_per_class(pred, target, 4)
    assert dice.tolist() == pytest.approx([6 / 7, 4 / 5, 2 / 3, 2 / 3])


def test_absent_class_conventions():
    target = torch.tensor([[0, 0, 2, 2]])
    pred = torch.tensor([[0, 2, 2, 2]])
    # class 1: in neither; class 3: in neither; class 2: gt 2, pred 3, both 2 -> 4/5
    skip = dice_per_class(pred, target, 4, absent="skip")
    assert skip[0].item() == pytest.approx(2 * 1 / 3)  # gt 2, pred 1, both 1
    assert math.isnan(skip[1]) and math.isnan(skip[3])
    assert skip[2].item() == pytest.approx(4 / 5)
    assert dice_per_class(pred, target, 4, absent="one")[1].item() == 1.0
    assert dice_per_class(pred, target, 4, absent="zero")[3].item() == 0.0
    # predicted but absent from the ground truth: 0 under every convention
    assert dice_per_class(torch.tensor([1, 0]), torch.tensor([0, 0]), 2)[1].item() == 0.0
    with pytest.raises(ValueError):
        dice_per_class(pred, target, 4, absent="nan")


def test_ignored_voxels_and_labels_out_of_range():
    target = torch.tensor([1, 255, 1])
    pred = torch.tensor([1, 1, 0])
    assert dice_per_class(pred, target, 2)[1].item() == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        dice_per_class(pred, torch.tensor([0, 5, 0]), 2)


def test_summarise_means_over_volumes_then_foreground_classes():
    nan = math.nan
    per_volume = torch.tensor(
        [
            [0.9, 0.5, 0.6, 0.8],
            [0.7, nan, 0.4, 1.0],  # class 1 absent from this volume (skip): left out
        ],
        dtype=torch.float64,
    )
    per_class, mean = summarise(per_volume)
    assert per_class.tolist() == pytest.approx([0.8, 0.5, 0.5, 0.9])
    assert mean == pytest.approx((0.5 + 0.5 + 0.9) / 3)  # background left out
    per_class, mean = summarise(torch.tensor([[1.0, nan, 0.5]], dtype=torch.float64))
    assert math.isnan(per_class[1]) and mean == pytest.approx(0.5)


class _Threshold(torch.nn.Module):
    """Two-class logits from the intensity: class 1 where the voxel is above 0.5."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def forward(self, x):
        self.sizes.append(tuple(x.shape))
        return torch.cat([0.5 - x, x - 0.5], dim=1) * 100


def test_predict_volume_resizes_each_slice_and_back():
    volume = torch.zeros(3, 10, 14)
    volume[:, :, 7:] = 1.0
    model = _Threshold()
    probs = predict_volume(model, volume[None], size=16)
    assert model.sizes == [(3, 1, 16, 16)]  # every slice at once, resized to size x size
    assert probs.shape == (3, 2, 10, 14)
    assert torch.equal(probs.argmax(1), (volume > 0.5).long())
    model.sizes.clear()
    predict_volume(model, volume, size=16, batch=2)
    assert model.sizes == [(2, 1, 16, 16), (1, 1, 16, 16)]
