"""CSS's public unlabeled pipeline (augment/reco.py) against a transcription of the public
`transform_3` (tests/public_css.py) on fixed draws, its random draws against the public ranges
and probabilities, and one whole CSS step through it."""

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semiseg.augment.intensity import from_uint8, to_uint8
from semiseg.augment.mixing import Mixed
from semiseg.augment.reco import (
    Geometry,
    JitterPlan,
    apply_jitter_plan,
    draw_geometry,
    jitter_plan,
    rescale_and_crop,
    rescale_one,
)
from semiseg.data.batch import TrainBatch
from semiseg.methods.contrastive import prototype_similarity, representation_pseudo_labels
from semiseg.models.deeplabv3plus import upsample

sys.path.insert(0, str(Path(__file__).parents[1]))
from public_css import (  # noqa: E402
    public_attention_threshold_loss,
    public_jitter_blur_flip,
    public_rescale_crop,
)
from test_css import _css  # noqa: E402

H, W = 20, 24


def _image(seed, h=H, w=W):
    """A smooth-ish uint8 image (3, h, w): blocks of random colours, upsampled."""
    g = torch.Generator().manual_seed(seed)
    small = torch.randint(0, 256, (1, 3, h // 4, w // 4), generator=g).float()
    return torch.nn.functional.interpolate(small, (h, w), mode="bilinear")[0].to(torch.uint8)


def _pil(image):
    return Image.fromarray(image.permute(1, 2, 0).numpy())


def _array(pil):
    return torch.from_numpy(np.array(pil))


@pytest.mark.parametrize(
    "scale, top, left",
    [
        (0.5, 0, 0),  # padded by half the crop: the reflection reaches the far edge
        (0.26, 0, 0),  # padded by more than the image: the reflection repeats
        (0.73, 0, 0),  # odd sizes
        (1.0, 0, 0),
        (1.5, 10, 12),  # the farthest crop
        (1.37, 3, 1),
    ],
)
def test_rescale_and_crop_equals_the_public_transform(scale, top, left):
    image = _image(0)
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 6, (H, W), generator=g)
    ignore = torch.zeros(H, W, dtype=torch.long)
    ignore[:, -5:] = 255  # the workers' padding
    conf = torch.randint(0, 256, (H, W), generator=g).float() / 255
    public_labels = labels.masked_fill(ignore == 255, 255).to(torch.uint8)
    public = public_rescale_crop(
        _pil(image),
        Image.fromarray(public_labels.numpy()),
        Image.fromarray((conf * 255).round().to(torch.uint8).numpy()),
        (H, W),
        scale,
        top,
        left,
    )
    geometry = Geometry(int(H * scale), int(W * scale), top, left)
    ours, (our_ignore, our_labels, our_conf) = rescale_one(
        image, (ignore, labels, conf), (255, 0, 0.0), geometry
    )
    p_image, p_labels, p_conf = (_array(x) for x in public)
    # labels, confidences and ignored pixels: PIL's NEAREST exactly, padding ignored with conf 0
    assert torch.equal(our_ignore == 255, p_labels == 255)
    assert torch.equal(our_labels[our_ignore != 255], p_labels[p_labels != 255].long())
    assert torch.equal((our_conf * 255).round().to(torch.uint8), p_conf)
    # the image: PIL's bilinear resize (antialiased when shrinking) within one 8-bit level,
    # the reflection padding exactly
    assert (ours.int() - p_image.permute(2, 0, 1).int()).abs().max() <= 1


def test_rescale_and_crop_moves_both_views_and_the_images_alike():
    g = torch.Generator().manual_seed(3)
    images = from_uint8(torch.stack([_image(5), _image(6)]))
    labels = torch.randint(0, 6, (2, H, W), generator=g)
    ignore = torch.zeros(2, H, W, dtype=torch.long)
    a = Mixed(images, labels, labels.float() / 10, ignore)
    b = Mixed(images, 5 - labels, (5 - labels).float() / 10, ignore)
    a2, b2 = rescale_and_crop((a, b), (0.5, 1.5), torch.Generator().manual_seed(0))
    assert torch.equal(a2.images, b2.images) and torch.equal(a2.ignore, b2.ignore)
    kept = a2.ignore != 255
    assert torch.equal(b2.labels[kept], 5 - a2.labels[kept])
    assert torch.equal(a2.conf, a2.labels.float() / 10 * kept)
    assert a2.images.shape == images.shape and a2.labels.shape == labels.shape


def _plan(jitter, blur, flip):
    return JitterPlan(
        jitter=torch.tensor([jitter]),
        order=torch.tensor([[3, 0, 2, 1]]),
        factors=torch.tensor([[1.2, 0.8, 1.1, -0.2]]),
        blur=torch.tensor([blur]),
        sigma=torch.tensor([0.9]),
        flip=torch.tensor([flip]),
    )


@pytest.mark.parametrize(
    "jitter, blur, flip", [(True, True, True), (True, False, False), (False, True, True)]
)
def test_jitter_blur_flip_equals_the_public_order(jitter, blur, flip):
    image = _image(2)
    labels = torch.randint(0, 6, (1, H, W), generator=torch.Generator().manual_seed(4))
    ignore = torch.zeros_like(labels)
    ignore[0, :, :3] = 255
    view = Mixed(from_uint8(image[None]), labels, labels.float() / 6, ignore)
    plan = _plan(jitter, blur, flip)
    (ours,) = apply_jitter_plan((view,), plan)
    p_image, p_labels = public_jitter_blur_flip(
        _pil(image),
        Image.fromarray(labels[0].to(torch.uint8).numpy()),
        plan.order[0].tolist() if jitter else None,
        plan.factors[0].tolist(),
        0.9 if blur else None,
        flip,
    )
    assert torch.equal(to_uint8(ours.images)[0], _array(p_image).permute(2, 0, 1))
    assert torch.equal(ours.labels[0], _array(p_labels).long())
    assert torch.equal(ours.conf, ours.labels.float() / 6)
    assert torch.equal(ours.ignore[0, :, -3:] if flip else ours.ignore[0, :, :3], ignore[0, :, :3])


def test_the_jitter_draws_have_the_public_probabilities_and_ranges():
    n = 20000
    plan = jitter_plan(n, torch.Generator().manual_seed(0))
    # p 0.8 (torch.rand > 0.2), 0.5, 0.5: within 4 standard deviations
    for drawn, p in ((plan.jitter, 0.8), (plan.blur, 0.5), (plan.flip, 0.5)):
        assert abs(drawn.float().mean().item() - p) < 4 * (p * (1 - p) / n) ** 0.5
    for k, (low, high) in enumerate(((0.75, 1.25),) * 3 + ((-0.25, 0.25),)):
        f = plan.factors[:, k]
        assert low <= f.min() < low + 0.01 and high - 0.01 < f.max() <= high
        assert abs(f.mean().item() - (low + high) / 2) < 0.01
    assert 0.15 <= plan.sigma.min() < 0.16 and 1.14 < plan.sigma.max() <= 1.15
    assert torch.equal(plan.order.sort(1).values, torch.arange(4).expand(n, 4))
    # every order is drawn, about equally often (24 of them)
    counts = torch.unique(plan.order, dim=0, return_counts=True)[1]
    assert len(counts) == 24 and counts.min() > n / 24 * 0.8


def test_the_geometry_draws_have_the_public_ranges():
    g = torch.Generator().manual_seed(0)
    draws = [draw_geometry(100, 200, (0.5, 2.0), g) for _ in range(4000)]
    heights = torch.tensor([d.height for d in draws])
    widths = torch.tensor([d.width for d in draws])
    assert heights.min() in (50, 51) and heights.max() in (198, 199)
    assert ((widths - 2 * heights) >= 0).all() and ((widths - 2 * heights) <= 1).all()  # one s
    tops = torch.tensor([d.top for d in draws])
    lefts = torch.tensor([d.left for d in draws])
    assert (tops >= 0).all() and (tops <= (heights - 100).clamp(min=0)).all()
    assert (lefts >= 0).all() and (lefts <= (widths - 200).clamp(min=0)).all()
    # a uniform offset: on the large scales, the mean offset is half the room
    big = heights > 150
    room = (heights[big] - 100).float()
    assert abs((tops[big].float() / room).mean().item() - 0.5) < 0.05


def test_a_whole_css_step_learns_the_public_pipelines_images_and_labels(toy_root):
    """One `cross` step through `unlabeled_aug=public` (no mixing): its unsupervised loss equals
    `Attention_Threshold_Loss` of the student on the images and representation labels that the
    public `transform_3` makes from the same weak crops and the same draws (rescale, crop, then
    jitter, blur, flip), within 3 %: the bilinear resize differs by up to one 8-bit level."""
    random.seed(0)  # the workers' crops and the model's initial weights, whatever ran before
    np.random.seed(0)
    torch.manual_seed(0)
    module, batch = _css(
        toy_root, "method.mix_mode=none", "method.tau=0.5", "method.unlabeled_scale=[0.5,1.5]"
    )
    module.train()
    module.prototypes.copy_(torch.randn(module.prototypes.shape, generator=torch.Generator()))
    parsed = TrainBatch.parse(batch)
    torch.manual_seed(0)
    seen = []  # the images of the student's forwards: labeled, then unlabeled
    hook = module.model.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach()))
    try:
        ours = module.training_losses(parsed)["loss_u"]
    finally:
        hook.remove()

    weak, ignore = parsed.unlabeled.weak, parsed.unlabeled.ignore
    with torch.no_grad():
        rep = module.teacher.with_batch_statistics(weak, outputs=("representation",))
        similarity = upsample(
            prototype_similarity(rep["representation"], module.prototypes), weak.shape[-2:]
        )
        conf, labels = representation_pseudo_labels(similarity, module.rep_temperature)
    conf = conf.masked_fill(ignore == 255, 0)
    labels = labels.masked_fill(ignore == 255, 255)
    n, _, h, w = weak.shape
    torch.manual_seed(0)  # the draws in the step's order: the geometries, then the jitter plan
    geometries = [draw_geometry(h, w, (0.5, 1.5)) for _ in range(n)]
    plan = jitter_plan(n)
    images, targets, confs = [], [], []
    for i, g in enumerate(geometries):
        scale = g.height / h  # recovers s up to int(): the same int(h s), int(w s)
        assert (int(h * scale), int(w * scale)) == (g.height, g.width)
        image, label, c = public_rescale_crop(
            _pil(to_uint8(weak[i : i + 1])[0]),
            Image.fromarray(labels[i].to(torch.uint8).numpy()),
            Image.fromarray(conf[i].numpy(), mode="F"),
            (h, w),
            scale,
            g.top,
            g.left,
        )
        image, label = public_jitter_blur_flip(
            image,
            label,
            plan.order[i].tolist() if plan.jitter[i] else None,
            plan.factors[i].tolist(),
            float(plan.sigma[i]) if plan.blur[i] else None,
            bool(plan.flip[i]),
        )
        c = np.array(c)[:, ::-1] if plan.flip[i] else np.array(c)
        images.append(_array(image).permute(2, 0, 1))
        targets.append(_array(label).long().masked_fill(_array(label) == 255, -1))
        confs.append(torch.from_numpy(c.copy()))
    with torch.no_grad():
        pred = module.model(from_uint8(torch.stack(images)), outputs=("logits",))["logits"]
    public = public_attention_threshold_loss(
        pred, torch.stack(targets), torch.stack(confs), module.tau
    )
    difference = (to_uint8(seen[1]).int() - torch.stack(images).int()).abs()
    assert difference.float().mean() < 0.5 and difference.max() <= 8  # jitter amplifies
    assert public > 0
    torch.testing.assert_close(ours.detach(), public, rtol=3e-2, atol=0)
