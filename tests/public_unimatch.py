"""The training iteration of the public UniMatch V1 code (unimatch.py of LiheYoung/UniMatch),
written out for the tests: the optimizer it builds, one pass of its loop body and the poly
learning rate it sets afterwards. One process stands for its DDP run (SyncBatchNorm on one
process is BatchNorm). The network is any module with `backbone` parameters and the public
DeepLabV3+ call convention: `model(x)` gives logits, `model(x, True)` gives (logits,
logits of the dropout-perturbed features).

Batches use the project's keys: batch["labeled"] = {image, mask}; batch["unlabeled"] = {weak,
strong1, strong2, ignore, box1, box2} for the loader's batch and mix_{weak, strong1, strong2,
ignore} for the second pass of the same loader (the CutMix partner)."""

import torch
from torch import nn


def public_sgd(model: nn.Module, lr: float, lr_multi: float) -> torch.optim.SGD:
    """SGD with momentum 0.9 and weight decay 1e-4 (fixed in the script): the backbone at lr,
    every parameter whose name lacks 'backbone' at lr * lr_multi."""
    head = [p for name, p in model.named_parameters() if "backbone" not in name]
    groups = [
        {"params": model.backbone.parameters(), "lr": lr},
        {"params": head, "lr": lr * lr_multi},
    ]
    return torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=1e-4)


def public_poly(optimizer, lr: float, lr_multi: float, iters: int, total_iters: int) -> None:
    """Set after the step of iteration `iters` (counted from 0), as the loop does."""
    new_lr = lr * (1 - iters / total_iters) ** 0.9
    optimizer.param_groups[0]["lr"] = new_lr
    optimizer.param_groups[1]["lr"] = new_lr * lr_multi


def box_pixels(box: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The CutMix box as a boolean index shaped like `like` (images: the box on every channel)."""
    if like.dim() == 4:
        return box.unsqueeze(1).expand(like.shape) == 1
    return box == 1


def masked_unsup_loss(criterion_u, logits, labels, conf, ignore, thresh):
    """Per-pixel CE kept where conf >= thresh and not padded, summed, then divided by the
    number of non-padded pixels (a Python number: `.item()` there)."""
    kept = (conf >= thresh) & (ignore != 255)
    return torch.sum(criterion_u(logits, labels) * kept) / torch.sum(ignore != 255).item()


def boxed_targets(box, labels_w, conf_w, ignore, u, labels_mix, conf_mix):
    """The pseudo-labels of one strong view: the weak view's outside the CutMix box, the
    partner's (its labels, confidences and padding) inside it."""
    labels, conf, ign = labels_w.clone(), conf_w.clone(), ignore.clone()
    labels[box == 1] = labels_mix[box == 1]
    conf[box == 1] = conf_mix[box == 1]
    ign[box == 1] = u["mix_ignore"][box == 1]
    return labels, conf, ign


def mask_ratio(conf_w, ignore, thresh) -> float:
    """The logged share of non-padded weak-view pixels at or above the threshold."""
    return ((conf_w >= thresh) & (ignore != 255)).sum().item() / (ignore != 255).sum().item()


def public_unimatch_iteration(model, optimizer, batch, conf_thresh: float) -> dict:
    """One pass of the loop body, up to and including optimizer.step(). The inputs are cloned
    (the script pastes into its strong views in place). Returns the loss terms as tensors."""
    img_x, mask_x = batch["labeled"]["image"], batch["labeled"]["mask"]
    u = {k: v.clone() for k, v in batch["unlabeled"].items()}
    criterion_l = nn.CrossEntropyLoss(ignore_index=255)  # the CELoss config: ignore_index 255
    criterion_u = nn.CrossEntropyLoss(reduction="none")

    # The partner's pseudo-labels: BatchNorm on running statistics, no gradient.
    with torch.no_grad():
        model.eval()
        pred_mix = model(u["mix_weak"]).detach()
        conf_mix = pred_mix.softmax(dim=1).max(dim=1)[0]
        labels_mix = pred_mix.argmax(dim=1)

    # The partner's strong views pasted inside each view's own box, in place.
    s1, s2 = u["strong1"], u["strong2"]
    s1[box_pixels(u["box1"], s1)] = u["mix_strong1"][box_pixels(u["box1"], s1)]
    s2[box_pixels(u["box2"], s2)] = u["mix_strong2"][box_pixels(u["box2"], s2)]

    model.train()
    n_l, n_u = img_x.shape[0], u["weak"].shape[0]
    preds, preds_fp = model(torch.cat((img_x, u["weak"])), True)
    pred_x, pred_w = preds.split([n_l, n_u])
    pred_w_fp = preds_fp[n_l:]
    pred_s1, pred_s2 = model(torch.cat((s1, s2))).chunk(2)

    pred_w = pred_w.detach()
    conf_w = pred_w.softmax(dim=1).max(dim=1)[0]
    labels_w = pred_w.argmax(dim=1)
    ignore = u["ignore"]

    targets = [
        boxed_targets(box, labels_w, conf_w, ignore, u, labels_mix, conf_mix)
        for box in (u["box1"], u["box2"])
    ]

    loss_x = criterion_l(pred_x, mask_x)
    loss_s1 = masked_unsup_loss(criterion_u, pred_s1, *targets[0], conf_thresh)
    loss_s2 = masked_unsup_loss(criterion_u, pred_s2, *targets[1], conf_thresh)
    loss_fp = masked_unsup_loss(criterion_u, pred_w_fp, labels_w, conf_w, ignore, conf_thresh)
    loss = (loss_x + loss_s1 * 0.25 + loss_s2 * 0.25 + loss_fp * 0.5) / 2.0

    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

    return {
        "loss": loss.detach(),
        "loss_x": loss_x.detach(),
        "loss_s1": loss_s1.detach(),
        "loss_s2": loss_s2.detach(),
        "loss_fp": loss_fp.detach(),
        "mask_ratio": mask_ratio(conf_w, ignore, conf_thresh),
        "conf_w": conf_w,
    }
