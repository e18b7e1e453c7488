"""The training iteration of the UniMatch authors' FixMatch (fixmatch.py of LiheYoung/UniMatch),
written out for the tests; its optimizer and poly schedule are unimatch.py's (public_unimatch).
Same conventions as public_unimatch: one strong view (strong1) and its box (box1); the second
strong view and box the loader also yields are unused there."""

import torch
from public_unimatch import box_pixels, boxed_targets, mask_ratio, masked_unsup_loss
from torch import nn


def public_fixmatch_iteration(model, optimizer, batch, conf_thresh: float) -> dict:
    """One pass of the loop body, up to and including optimizer.step(), on cloned inputs."""
    img_x, mask_x = batch["labeled"]["image"], batch["labeled"]["mask"]
    u = {k: v.clone() for k, v in batch["unlabeled"].items()}
    criterion_l = nn.CrossEntropyLoss(ignore_index=255)
    criterion_u = nn.CrossEntropyLoss(reduction="none")

    with torch.no_grad():  # the partner's pseudo-labels, BatchNorm in eval mode
        model.eval()
        pred_mix = model(u["mix_weak"]).detach()
        conf_mix = pred_mix.softmax(dim=1).max(dim=1)[0]
        labels_mix = pred_mix.argmax(dim=1)

    strong, box = u["strong1"], u["box1"]
    strong[box_pixels(box, strong)] = u["mix_strong1"][box_pixels(box, strong)]

    model.train()
    n_l, n_u = img_x.shape[0], u["weak"].shape[0]
    pred_x, pred_w = model(torch.cat((img_x, u["weak"]))).split([n_l, n_u])
    pred_s = model(strong)  # a forward of its own: its own BatchNorm statistics

    pred_w = pred_w.detach()
    conf_w = pred_w.softmax(dim=1).max(dim=1)[0]
    labels_w = pred_w.argmax(dim=1)
    ignore = u["ignore"]
    labels, conf, ign = boxed_targets(box, labels_w, conf_w, ignore, u, labels_mix, conf_mix)

    loss_x = criterion_l(pred_x, mask_x)
    loss_s = masked_unsup_loss(criterion_u, pred_s, labels, conf, ign, conf_thresh)
    loss = (loss_x + loss_s) / 2.0

    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

    return {
        "loss": loss.detach(),
        "loss_x": loss_x.detach(),
        "loss_s": loss_s.detach(),
        "mask_ratio": mask_ratio(conf_w, ignore, conf_thresh),
        "conf_w": conf_w,
    }
