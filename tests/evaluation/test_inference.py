import pytest
import torch
from torch import nn

from semiseg.evaluation.inference import center_crop, predict, window_starts
from semiseg.models import DeepLabV3Plus


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DeepLabV3Plus(num_classes=4, encoder="resnet18").eval()


def pointwise_model():
    """Each output pixel depends on its input pixel only: windows cannot change the result."""
    torch.manual_seed(0)
    return nn.Conv2d(3, 7, 1).eval()


def test_window_positions():
    assert window_starts(1024, 801, 534, "align") == [(0, 801), (223, 1024)]
    assert window_starts(2048, 801, 534, "align")[-1] == (1247, 2048)
    assert window_starts(300, 801, 534, "align") == [(0, 300)]
    assert window_starts(1024, 801, 534, "truncate") == [(0, 801), (534, 1024)]


def test_sliding_window_covering_image_equals_whole(model):
    image = torch.randn(1, 3, 65, 97)
    whole = predict(model, image, "original", crop_size=100, num_classes=4)
    slid = predict(model, image, "sliding_window", crop_size=100, num_classes=4)
    assert torch.allclose(whole, slid, atol=1e-5)


@pytest.mark.parametrize("border", ["align", "truncate"])
def test_sliding_window_pointwise_model(border):
    net = pointwise_model()
    image = torch.randn(1, 3, 70, 110)
    whole = predict(net, image, "original", crop_size=32, num_classes=7)
    slid = predict(net, image, "sliding_window", crop_size=32, num_classes=7, border=border)
    # Every pixel is covered, and each window adds the same softmax: slid = k * whole, k >= 1.
    coverage = slid.sum(dim=1, keepdim=True)
    assert coverage.min() >= 1 - 1e-5
    assert torch.allclose(slid / coverage, whole, atol=1e-5)
    assert torch.equal(slid.argmax(1), whole.argmax(1))


def test_sliding_window_real_model_runs(model):
    out = predict(model, torch.randn(1, 3, 90, 130), "sliding_window", crop_size=64, num_classes=4)
    assert out.shape == (1, 4, 90, 130)


def test_center_crop(model):
    image = torch.arange(2 * 3 * 10 * 20.0).reshape(2, 3, 10, 20)
    mask = torch.arange(2 * 10 * 20).reshape(2, 10, 20)
    crop, crop_mask = center_crop(image, mask, 8)
    assert torch.equal(crop, image[..., 1:9, 6:14])
    assert torch.equal(crop_mask, mask[..., 1:9, 6:14])
    crop, crop_mask = center_crop(image, mask, 15)  # clamped to the 10-pixel side
    assert crop.shape[-2:] == (10, 15) and crop_mask.shape[-2:] == (10, 15)
    out = predict(model, torch.randn(1, 3, 40, 50), "center_crop", crop_size=32, num_classes=4)
    assert out.shape == (1, 4, 32, 32)


def test_unknown_mode(model):
    with pytest.raises(ValueError, match="sliding_window"):
        predict(model, torch.randn(1, 3, 8, 8), "tiles", crop_size=8, num_classes=4)


def window_by_window(model, image, crop_size, num_classes, border):
    """The sliding window one window per forward, in row order: what batching must reproduce."""
    stride = int(2 / 3 * crop_size)
    h, w = image.shape[-2:]
    total = torch.zeros((image.shape[0], num_classes, h, w))
    for top, bottom in window_starts(h, crop_size, stride, border):
        for left, right in window_starts(w, crop_size, stride, border):
            logits = model(image[..., top:bottom, left:right])
            total[..., top:bottom, left:right] += logits.float().softmax(dim=1)
    return total


@pytest.mark.parametrize("border", ["align", "truncate"])
@pytest.mark.parametrize(
    "size, crop_size", [((70, 109), 48), ((53, 61), 64), ((40, 130), 48), ((97, 33), 40)]
)
def test_batched_windows_equal_window_by_window(model, border, size, crop_size):
    torch.manual_seed(1)
    image = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected = window_by_window(model, image, crop_size, 4, border)
        for window_batch in (1, 3, 8):
            got = predict(model, image, "sliding_window", crop_size, 4, border, window_batch)
            assert torch.allclose(got, expected, atol=1e-5), (border, size, window_batch)


class BatchRecorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = pointwise_model()
        self.shapes = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return self.net(x)


def test_windows_are_batched_by_shape():
    image = torch.randn(1, 3, 70, 110)
    net = BatchRecorder()
    predict(net, image, "sliding_window", crop_size=32, num_classes=7, border="align")
    assert net.shapes == [(8, 3, 32, 32), (7, 3, 32, 32)]  # 3 rows x 5 columns, 8 at a time
    # truncate: heights 32, 32, 28, 7 x widths 32, 32, 32, 32, 26, 5: 9 shapes
    net.shapes.clear()
    predict(net, image, "sliding_window", 32, 7, "truncate", window_batch=100)
    assert sorted(shape[0] for shape in net.shapes) == [1, 1, 1, 1, 2, 2, 4, 4, 8]
    with pytest.raises(ValueError, match="window_batch"):
        predict(net, image, "sliding_window", 32, 7, "align", window_batch=0)
