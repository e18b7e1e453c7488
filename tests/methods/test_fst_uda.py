"""FST's domain adaptation (methods/dacs.py, fst_uda.py, augment/class_mix.py) against
transcriptions of the public functions (usr922/FST: mmseg/models/uda/dacs.py, fst_d.py, fst_w.py,
mmseg/models/utils/dacs_transforms.py, mmseg/utils/utils.py): ClassMix, the pseudo-label quality
weight and crop, the ImageNet feature distance, and the order of the FST-D/W iterations."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semiseg.augment.class_mix import blur_kernel_size, mix, source_class_masks
from semiseg.data.batch import TrainBatch
from semiseg.methods.dacs import (
    DACS,
    crop_rows,
    downscale_labels,
    feature_distance,
    quality_weight,
    weighted_ce,
)
from semiseg.methods.fst_uda import FSTUDA

# ---------------------------------------------------------------------- transcriptions


def public_class_masks(labels, draw):
    """dacs_transforms.get_class_masks, its numpy choice replaced by `draw(n, k)`."""
    masks = []
    for label in labels:
        classes = torch.unique(labels)  # the whole batch's classes, as the public code
        n = classes.shape[0]
        choice = draw(n, int((n + n % 2) / 2))
        chosen = classes[torch.Tensor(choice).long()]
        label_b, classes_b = torch.broadcast_tensors(label, chosen.unsqueeze(1).unsqueeze(2))
        masks.append(label_b.eq(classes_b).sum(0, keepdims=True))
    return masks


def public_one_mix(mask, data):
    stacked, _ = torch.broadcast_tensors(mask[0], data[0])
    return (stacked * data[0] + (1 - stacked) * data[1]).unsqueeze(0)


def public_pseudo_weight(pseudo_prob, threshold, top, bottom):
    """fst_d.forward_train's pseudo-weight block."""
    ps_large_p = pseudo_prob.ge(threshold).long() == 1
    ps_size = np.size(np.array(pseudo_prob.cpu()))
    pseudo_weight = torch.sum(ps_large_p).item() / ps_size
    pseudo_weight = pseudo_weight * torch.ones(pseudo_prob.shape)
    if top > 0:
        pseudo_weight[:, :top, :] = 0
    if bottom > 0:
        pseudo_weight[:, -bottom:, :] = 0
    return pseudo_weight


def public_downscale_label_ratio(gt, scale_factor, min_ratio, n_classes, ignore_index=255):
    out = gt.clone()
    out[out == ignore_index] = n_classes
    out = F.one_hot(out.squeeze(1), num_classes=n_classes + 1).permute(0, 3, 1, 2)
    out = F.avg_pool2d(out.float(), kernel_size=scale_factor)
    gt_ratio, out = torch.max(out, dim=1, keepdim=True)
    out[out == n_classes] = ignore_index
    out[gt_ratio < min_ratio] = ignore_index
    return out


def public_feat_dist(feat, feat_imnet, gt, classes, min_ratio, n_classes):
    """dacs.calc_feat_dist with fdist_classes (before the lambda)."""
    scale_factor = gt.shape[-1] // feat.shape[-1]
    gt_rescaled = public_downscale_label_ratio(gt, scale_factor, min_ratio, n_classes).long()
    fdist_mask = torch.any(gt_rescaled[..., None] == torch.tensor(classes), -1)
    pw = torch.norm(feat - feat_imnet, dim=1, p=2)
    return torch.mean(pw[fdist_mask.squeeze(1)])


# ---------------------------------------------------------------------- ClassMix


@pytest.mark.parametrize("seed", range(4))
def test_class_masks_draw_half_of_the_batch_classes_as_the_public_code(seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 5, (3, 8, 8), generator=g)
    labels[0] = torch.randint(0, 2, (8, 8), generator=g)  # the first image with few classes
    labels[1, :2] = 255  # ignored pixels are one more value to draw
    ours = source_class_masks(labels, torch.Generator().manual_seed(seed))
    replay = torch.Generator().manual_seed(seed)
    theirs = public_class_masks(
        labels, lambda n, k: torch.randperm(n, generator=replay)[:k].tolist()
    )
    for i in range(3):
        assert torch.equal(ours[i], theirs[i][0].bool()), i


def test_class_masks_round_an_odd_class_count_up():
    labels = torch.tensor([[[0, 1, 2]]]).expand(1, 3, 3)
    masks = source_class_masks(labels, torch.Generator().manual_seed(0))
    assert len(torch.unique(labels[masks])) == 2  # ceil(3 / 2)


def test_mix_is_the_public_one_mix():
    g = torch.Generator().manual_seed(0)
    src, trg = torch.randn(3, 6, 6, generator=g), torch.randn(3, 6, 6, generator=g)
    mask = torch.rand(6, 6, generator=g) > 0.5
    theirs = public_one_mix(mask.long().unsqueeze(0).unsqueeze(0), torch.stack((src, trg)))
    assert torch.equal(mix(mask[None], src[None], trg[None]), theirs)
    labels = mix(mask[None], torch.zeros(1, 6, 6), torch.ones(1, 6, 6))
    assert torch.equal(labels[0], (~mask).float())


@pytest.mark.parametrize("size", [64, 512, 720, 760, 1024])
def test_blur_kernel_size_is_the_public_formula(size):
    expected = int(np.floor(np.ceil(0.1 * size) - 0.5 + np.ceil(0.1 * size) % 2))
    assert blur_kernel_size(size) == expected
    assert blur_kernel_size(size) % 2 == 1


# ---------------------------------------------------------------------- pseudo-label weight


@pytest.mark.parametrize("rows", [(0, 0), (15, 120), (2, 15)])
def test_quality_weight_and_crop_equal_the_public_block(rows):
    g = torch.Generator().manual_seed(1)
    conf = torch.rand(2, 128, 16, generator=g)
    conf[0, 0, :4] = 0.968  # the threshold itself counts as confident (ge)
    ours = crop_rows(quality_weight(conf, 0.968).expand_as(conf), *rows)
    theirs = public_pseudo_weight(conf, 0.968, *rows)
    assert torch.allclose(ours, theirs, atol=1e-7, rtol=0)


def test_pseudo_crop_rows_scale_with_the_crop():
    module = _dacs(pseudo_crop=(15, 120), pseudo_crop_at=512)
    assert module.crop_rows(512) == (15, 120)
    assert module.crop_rows(64) == (2, 15)  # round(15 / 8), 120 / 8


def test_weighted_ce_averages_over_all_pixels_as_mmseg():
    logits = torch.randn(1, 3, 2, 2)
    target = torch.tensor([[[0, 1], [255, 2]]])
    weight = torch.tensor([[[1.0, 0.5], [1.0, 0.0]]])
    per_pixel = F.cross_entropy(logits, target, ignore_index=255, reduction="none")
    assert torch.allclose(weighted_ce(logits, target, weight), (per_pixel * weight).sum() / 4)


# ---------------------------------------------------------------------- feature distance


@pytest.mark.parametrize("seed", range(3))
def test_feature_distance_equals_the_public_masked_mean(seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (2, 16, 16), generator=g)
    labels[:, :8, :8] = 3  # whole cells of a thing class
    labels[0, 8:, 8:] = 255
    labels[1, 8:12, 8:12] = 3
    labels[1, 8, 8:12] = 0  # a cell exactly 75% thing: kept (the public `< min_ratio` drops)
    feat, imnet = torch.randn(2, 5, 4, 4, generator=g), torch.randn(2, 5, 4, 4, generator=g)
    ours = feature_distance(feat, imnet, labels, [2, 3], 0.75, 4)
    theirs = public_feat_dist(feat, imnet, labels.unsqueeze(1), [2, 3], 0.75, 4)
    assert torch.allclose(ours, theirs)
    small = downscale_labels(labels, 4, 0.75, 4)
    assert torch.equal(small, public_downscale_label_ratio(labels.unsqueeze(1), 4, 0.75, 4)[:, 0])


def test_feature_distance_without_thing_pixels_is_zero_not_nan():
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    feat = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = feature_distance(feat, torch.randn(1, 3, 2, 2), labels, [1], 0.75, 2)
    assert loss.item() == 0.0
    loss.backward()  # a graph to backward through, zero gradient
    assert torch.equal(feat.grad, torch.zeros_like(feat))


# ---------------------------------------------------------------------- the iterations


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.low = nn.Conv2d(3, 4, 3, padding=1)
        self.high = nn.Sequential(nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4))

    def forward(self, x):
        low = torch.relu(self.low(x))
        return low, torch.relu(self.high(low))


class TinySegNet(nn.Module):
    """A backbone giving (low, high) features, as the project's models, and a 1x1 head."""

    def __init__(self, classes=3):
        super().__init__()
        self.backbone = Encoder()
        self.head = nn.Conv2d(4, classes, 1)

    def forward(self, x):
        return F.interpolate(self.head(self.backbone(x)[1]), size=x.shape[-2:], mode="bilinear")

    def backbone_parameters(self):
        return self.backbone.parameters()

    def head_parameters(self):
        return self.head.parameters()


OPTIM = {"lr": 0.1, "lr_multi": 1.0, "momentum": 0.9, "weight_decay": 0.0, "poly_power": 1.0}


def _dacs(cls=DACS, **kwargs):
    torch.manual_seed(0)
    return cls(
        model=TinySegNet(), class_names=["a", "b", "c"], optim=OPTIM,
        evaluation={"mode": "original"}, crop_size=8, fdist_classes=[1, 2], **kwargs,
    )  # fmt: skip


def _batch(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "labeled": {
            "image": torch.randn(n, 3, 8, 8, generator=g),
            "mask": torch.randint(0, 3, (n, 8, 8), generator=g),
        },
        "unlabeled": {
            "weak": torch.randn(n, 3, 8, 8, generator=g),
            "ignore": torch.zeros(n, 8, 8, dtype=torch.long),
        },
    }


def test_the_dacs_step_gives_finite_losses_and_gradients_to_every_student_layer():
    module = _dacs(fdist_lambda=1.0)
    module.teacher_before_forward()
    losses = module.training_losses(TrainBatch.parse(_batch()))
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.model.parameters())
    assert all(p.grad is None for p in module.teacher.network.parameters())


def test_the_teacher_labels_in_train_mode_with_dropout_off():
    module = _dacs()
    module.teacher.network.head = nn.Sequential(nn.Dropout(0.9), module.teacher.network.head)
    before = module.teacher.network.backbone.high[1].running_mean.clone()
    x = torch.randn(2, 3, 8, 8)
    a, b = module.teacher_train_mode(x), module.teacher_train_mode(x)
    assert torch.equal(a, b)  # no dropout
    assert not torch.equal(before, module.teacher.network.backbone.high[1].running_mean)
    assert not module.teacher.network.training  # back to eval for validation


class Events:
    """What an iteration does, in order: ("ema", t), "init", "forward", "step", "restore"."""

    def __init__(self, module):
        self.log = []
        module.training_losses = self.forward(module.training_losses)
        original_ema, original_restore = module.ema_parameters, module._restore
        original_init = module.teacher_before_forward

        def ema(t, source=None):
            self.log.append(("ema", t))
            original_ema(t, source)

        def init():
            if module.ema_updates == 0:
                self.log.append("init")
            original_init()

        def restore(*args, **kwargs):
            self.log.append("restore")
            original_restore(*args, **kwargs)

        module.ema_parameters, module._restore = ema, restore
        module.teacher_before_forward = init

    def forward(self, losses):
        def record(batch):
            self.log.append("forward")
            return losses(batch)

        return record

    def step(self, optimizer):
        def step(loss, final):
            self.log.append("step")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        return step


def public_fst_d_events(iterations, k):
    """fst_d.NESTEROV.train_step's order, local_iter counting forwards."""
    log, local_iter = [], 0
    for _ in range(iterations):
        if local_iter == 0:
            log += ["init", "forward", "step"]
            local_iter += 1
            log.append(("ema", local_iter))
            continue
        for _ in range(k):
            log += [("ema", local_iter), "forward", "step"]
            local_iter += 1
        log += [("ema", local_iter), "restore", "forward", "step"]
        local_iter += 1
    return log


def public_fst_w_events(iterations, k):
    """fst_w's train_step order: K students (restored before all but the first), the soup's
    EMA update, restore, the real step, an EMA update."""
    log, local_iter = [], 0
    for _ in range(iterations):
        if local_iter == 0:
            log += ["init", "forward", "step"]
            local_iter += 1
            log.append(("ema", local_iter))
            continue
        for i in range(k):
            if i > 0:
                log.append("restore")
            log += ["forward", "step"]
            local_iter += 1
        log += [("ema", local_iter), "restore", "forward", "step"]
        local_iter += 1
        log.append(("ema", local_iter))
    return log


@pytest.mark.parametrize("variant", ["D", "W"])
@pytest.mark.parametrize("k", [1, 3])
def test_fst_iterations_follow_the_public_order_and_ema_count(variant, k):
    module = _dacs(FSTUDA, variant=variant, k=k, fdist_lambda=0.0)
    events = Events(module)
    optimizer = torch.optim.SGD(module.model.parameters(), lr=0.1)
    batch = _batch(n=2 * (k + 1) if variant == "W" else 2)
    for _ in range(3):
        module.iteration(TrainBatch.parse(batch), optimizer, events.step(optimizer))
    expected = (public_fst_d_events if variant == "D" else public_fst_w_events)(3, k)
    assert events.log == expected
    assert module.ema_updates == sum(e == "forward" for e in expected)  # local_iter


def test_k_0_is_dacs_one_ema_update_before_each_forward():
    module = _dacs(FSTUDA, k=0, fdist_lambda=0.0)
    events = Events(module)
    module.teacher_before_forward()
    module.training_losses(TrainBatch.parse(_batch()))
    module.ema_updates += 1
    for _ in range(2):
        module.teacher_before_forward()
        module.training_losses(TrainBatch.parse(_batch()))
        module.ema_updates += 1
    assert events.log == ["init", "forward", ("ema", 1), "forward", ("ema", 2), "forward"]


def test_ema_moves_parameters_only_with_the_public_decay():
    module = _dacs(ema_alpha=0.999)
    teacher = [p.clone() for p in module.teacher.network.parameters()]
    buffers = [b.clone() for b in module.teacher.network.buffers()]
    with torch.no_grad():
        for p in module.model.parameters():
            p.add_(1.0)
        for b in module.model.buffers():
            b.add_(1)
    module.ema_parameters(3)
    decay = min(1 - 1 / 4, 0.999)
    for t, before, s in zip(
        module.teacher.network.parameters(), teacher, module.model.parameters(), strict=True
    ):
        assert torch.allclose(t, decay * before + (1 - decay) * s)
    for b, before in zip(module.teacher.network.buffers(), buffers, strict=True):
        assert torch.equal(b, before)  # the teacher's BatchNorm statistics are its own
    assert math.isclose(module.last_decay, 0.75)


def public_dacs_loss(
    student, teacher, imnet, img, gt, target_img, draw, crop, fd_lambda, threshold
):
    """fst_d.forward_train (= dacs.forward_train) summed over its three backward passes, with
    colour jitter and blur off; mmseg's decode-head loss as a mean over all pixels."""
    seen = []
    hook = student.backbone.register_forward_hook(lambda m, a, out: seen.append(out[-1]))
    clean_loss = F.cross_entropy(student(img), gt, ignore_index=255, reduction="none").mean()
    hook.remove()
    imnet.eval()
    with torch.no_grad():
        feat_imnet = imnet.backbone(img)[-1]
    feat_loss = fd_lambda * public_feat_dist(seen[0], feat_imnet, gt.unsqueeze(1), [1, 2], 0.75, 3)
    teacher.train()  # the UDA module is in train mode; dropout/DropPath off (none here)
    with torch.no_grad():
        ema_logits = teacher(target_img)
    pseudo_prob, pseudo_label = torch.max(torch.softmax(ema_logits.detach(), dim=1), dim=1)
    pseudo_weight = public_pseudo_weight(pseudo_prob, threshold, *crop)
    gt_pixel_weight = torch.ones(pseudo_weight.shape)
    mix_masks = public_class_masks(gt, draw)
    mixed_img, mixed_lbl = [None] * len(img), [None] * len(img)
    for i in range(len(img)):
        mixed_img[i] = public_one_mix(mix_masks[i], torch.stack((img[i], target_img[i])))
        mixed_lbl[i] = public_one_mix(mix_masks[i], torch.stack((gt[i], pseudo_label[i])))
        pseudo_weight[i] = public_one_mix(
            mix_masks[i], torch.stack((gt_pixel_weight[i], pseudo_weight[i]))
        )
    mixed_img, mixed_lbl = torch.cat(mixed_img), torch.cat(mixed_lbl)
    per_pixel = F.cross_entropy(student(mixed_img), mixed_lbl, ignore_index=255, reduction="none")
    return clean_loss + feat_loss + (per_pixel * pseudo_weight).mean()


@pytest.mark.parametrize("confident", [False, True])
def test_the_dacs_loss_equals_the_public_forward_train(confident):
    """One DACS loss (k = 0's whole step) against the transcription on the same inputs and
    class draws: source CE, feature distance, teacher in train mode, quality weight and crop,
    ClassMix, the weighted mixed CE."""
    import copy

    threshold = 0.4 if confident else 0.968  # most pixels confident / none
    module = _dacs(fdist_lambda=0.5, color_jitter_p=1.0, blur=False, pseudo_crop=(1, 2),
                   pseudo_crop_at=8, pseudo_threshold=threshold)  # fmt: skip
    with torch.no_grad():  # a teacher ahead of the student, and an ImageNet copy behind
        for p in module.teacher.network.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for p in module.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = _batch(n=3, seed=3)
    student, teacher = copy.deepcopy(module.model), copy.deepcopy(module.teacher.network)
    imnet = copy.deepcopy(module._imagenet[0])
    torch.manual_seed(11)
    ours = module.training_losses(TrainBatch.parse(batch))["loss"]
    torch.manual_seed(11)
    theirs = public_dacs_loss(
        student, teacher, imnet, batch["labeled"]["image"], batch["labeled"]["mask"],
        batch["unlabeled"]["weak"], lambda n, k: torch.randperm(n)[:k].tolist(), (1, 2), 0.5, threshold,
    )  # fmt: skip
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6), (ours, theirs)
