"""CSS's labeled crops (data/reco_labeled.py) against a transcription of the public `transform`
(tests/public_css.py) under the same seeds, its random draws against the public ranges and
probabilities, and the settings that choose it."""

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_class, instantiate
from PIL import Image

from semiseg.data import transforms as tf
from semiseg.data.reco_labeled import draw_plan, reco_labeled
from semiseg.errors import ConfigError

sys.path.insert(0, str(Path(__file__).parents[1]))
from cli import REPO, TINY  # noqa: E402
from public_css import public_labeled_transform  # noqa: E402
from test_css import SMALL  # noqa: E402


def _image_and_mask(w, h, seed=0):
    """A smooth-ish RGB image (blocks of random colours, upsampled) and a mask with ignored
    pixels, as PIL images."""
    g = torch.Generator().manual_seed(seed)
    small = torch.randint(0, 256, (1, 3, max(h // 4, 1), max(w // 4, 1)), generator=g).float()
    image = torch.nn.functional.interpolate(small, (h, w), mode="bilinear")[0].to(torch.uint8)
    mask = torch.randint(0, 6, (h, w), generator=g).to(torch.uint8)
    mask[: h // 3, : w // 3] = 255
    return Image.fromarray(image.permute(1, 2, 0).numpy()), Image.fromarray(mask.numpy())


def _seeded(seed, fn, *args):
    random.seed(seed)
    torch.manual_seed(seed)
    return fn(*args)


def _ours(image, mask, crop, scale):
    img, out = reco_labeled(image, mask, crop, scale)
    label = tf.mask_to_tensor(out)
    return tf.normalize(img), label.masked_fill(label == 255, -1)


@pytest.mark.parametrize(
    "w, h, crop, scale",
    [
        (40, 30, 32, (0.5, 1.5)),  # VOC: the rescale sometimes pads, sometimes not
        (7, 5, 16, (0.5, 1.5)),  # the pad exceeds the rescaled image: the reflection repeats
        (48, 24, 20, (1.0, 1.0)),  # Cityscapes: no rescale
        (16, 16, 16, (1.0, 1.0)),  # the crop is the whole image: RandomCrop draws no offset
    ],
)
def test_labeled_crops_equal_the_public_transform_under_the_same_seeds(w, h, crop, scale):
    image, mask = _image_and_mask(w, h)
    plans = []
    for seed in range(12):
        ours = _seeded(seed, _ours, image, mask, crop, scale)
        public = _seeded(seed, public_labeled_transform, image, mask, (crop, crop), scale)
        torch.testing.assert_close(ours[0], public[0], rtol=0, atol=0)
        assert torch.equal(ours[1], public[1])
        plans.append(_seeded(seed, draw_plan, w, h, crop, scale))
    # the seeds reach every branch: with and without jitter, blur, flip and padding
    assert {p.order is None for p in plans} == {True, False}
    assert {p.sigma is None for p in plans} == {True, False}
    assert {p.flip for p in plans} == {True, False}
    if scale != (1.0, 1.0):
        assert {min(p.height, p.width) < crop for p in plans} == (
            {True} if w < crop else {True, False}
        )


def test_the_labeled_draws_have_the_public_probabilities_and_ranges():
    n, w, h, crop = 20000, 200, 100, 64
    random.seed(0)
    torch.manual_seed(0)
    plans = [draw_plan(w, h, crop, (0.5, 1.5)) for _ in range(n)]
    for drawn, p in (
        ([q.order is not None for q in plans], 0.8),
        ([q.sigma is not None for q in plans], 0.5),
        ([q.flip for q in plans], 0.5),
    ):
        assert abs(np.mean(drawn) - p) < 4 * (p * (1 - p) / n) ** 0.5
    heights = np.array([q.height for q in plans])
    widths = np.array([q.width for q in plans])
    assert heights.min() == 50 and heights.max() == 149  # int(100 s), s in [0.5, 1.5)
    assert ((widths - 2 * heights >= 0) & (widths - 2 * heights <= 1)).all()  # one s for both
    assert abs(heights.mean() - 99.5) < 0.6  # s uniform: mean 1
    tops = np.array([q.top for q in plans])
    lefts = np.array([q.left for q in plans])
    room_h, room_w = np.maximum(heights, crop) - crop, np.maximum(widths, crop) - crop
    assert (tops >= 0).all() and (tops <= room_h).all() and (lefts <= room_w).all()
    assert tops[heights < crop].max() == 0  # padded up to the crop: nothing to choose
    big = room_h > 40
    assert abs((tops[big] / room_h[big]).mean() - 0.5) < 0.03  # uniform offsets
    sigmas = np.array([q.sigma for q in plans if q.sigma is not None])
    assert 0.15 <= sigmas.min() < 0.16 and 1.14 < sigmas.max() <= 1.15
    factors = np.array([q.factors for q in plans if q.order is not None])
    for k, (low, high) in enumerate(((0.75, 1.25),) * 3 + ((-0.25, 0.25),)):
        assert low <= factors[:, k].min() < low + 0.01 and high - 0.01 < factors[:, k].max() <= high
    orders = {q.order for q in plans if q.order is not None}
    assert len(orders) == 24  # ColorJitter's random order of its four ops
    # Cityscapes' 1.0: the image keeps its size
    same = [draw_plan(w, h, crop, (1.0, 1.0)) for _ in range(50)]
    assert {(q.height, q.width) for q in same} == {(h, w)}


def test_the_css_data_module_crops_the_labeled_images_as_public(toy_root):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["method=css", f"dataset.root={toy_root}", *TINY, *SMALL])
    needs = get_class(cfg.method._target_).data_requirements(cfg.method)
    assert (needs["labeled_aug"], needs["labeled_scale"]) == ("reco", (0.5, 1.5))
    datamodule = instantiate(cfg.data, **needs)
    datamodule.setup("fit")
    labeled = datamodule.labeled_set
    sample = labeled.samples[0]
    image, mask = tf.load_image(toy_root / sample.image), labeled.read_mask(toy_root / sample.mask)
    for seed in range(4):
        item = _seeded(seed, labeled.__getitem__, 0)
        public = _seeded(seed, public_labeled_transform, image, mask, (64, 64), (0.5, 1.5))
        torch.testing.assert_close(item["image"], public[0], rtol=0, atol=0)
        assert torch.equal(item["mask"].masked_fill(item["mask"] == 255, -1), public[1])


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["experiment=css_pascal"], ("reco", (0.5, 1.5))),
        (["experiment=css_cityscapes"], ("reco", (1.0, 1.0))),
        (["method=css", "method.labeled_aug=unimatch"], ("unimatch", (0.5, 1.5))),
    ],
)
def test_the_labeled_augmentation_settings(overrides, expected):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    needs = get_class(cfg.method._target_).data_requirements(cfg.method)
    assert (needs["labeled_aug"], needs["labeled_scale"]) == expected


def test_an_unknown_labeled_augmentation_is_refused_in_one_line():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["method=css", "method.labeled_aug=reco"])
    with pytest.raises(ConfigError, match=r"method.labeled_aug='reco': use public .* or unimatch"):
        get_class(cfg.method._target_).data_requirements(cfg.method)


def test_image_pairs_keep_their_own_pipelines(capsys):
    """ReCo's crops are for natural RGB images: a change-detection dataset keeps its own pair
    augmentation, labeled and unlabeled, said once."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["method=css", "dataset=whu_cd"])
    needs = get_class(cfg.method._target_).data_requirements(cfg.method)
    datamodule = instantiate(cfg.data, **needs)
    assert datamodule.labeled_aug == datamodule.unlabeled_crop == "unimatch"
    assert "dataset.augment=change keeps its own pipelines" in capsys.readouterr().out


@pytest.mark.parametrize("size", [(20, 14), (90, 70), (64, 64)])
def test_unlabeled_crops_equal_the_public_unlabeled_transform(tmp_path, size):
    """method.unlabeled_crop=public: the weak view is the public datasets' `transform` at scale
    1.0 without augmentation (reflection padding where the image is smaller than the crop, kept
    as image: nothing ignored), under the same seeds; its ground truth padded with 255."""
    from semiseg.data.datasets import UnlabeledDataset
    from semiseg.data.splits import Sample

    image, mask = _image_and_mask(*size, seed=3)
    image.save(tmp_path / "a.png")
    mask.save(tmp_path / "a_mask.png")
    dataset = UnlabeledDataset(
        tmp_path, [Sample("a.png", "a_mask.png")], 64, 1, "none", crop="reco"
    )
    for seed in range(4):
        item = _seeded(seed, dataset.__getitem__, 0)
        public = _seeded(seed, public_labeled_transform, image, mask, (64, 64), (1.0, 1.0), False)
        torch.testing.assert_close(item["weak"], public[0], rtol=0, atol=0)
        assert torch.equal(item["gt"].masked_fill(item["gt"] == 255, -1), public[1])
        assert not item["ignore"].any()  # the reflection is image: labelled and trained


def test_the_css_data_module_crops_the_unlabeled_images_as_public(toy_root):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["method=css", f"dataset.root={toy_root}", *TINY])
    needs = get_class(cfg.method._target_).data_requirements(cfg.method)
    assert needs["unlabeled_crop"] == "reco"
    datamodule = instantiate(cfg.data, **needs)
    datamodule.setup("fit")
    assert datamodule.unlabeled_set.crop == "reco"
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["method=css", "method.unlabeled_crop=unimatch"])
    needs = get_class(cfg.method._target_).data_requirements(cfg.method)
    assert needs["unlabeled_crop"] == "unimatch"
