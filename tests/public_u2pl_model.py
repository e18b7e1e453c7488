"""The parts of U2PL's model code that iMAS trains on Cityscapes (ZhenZHAO/iMAS imas/models:
resnet.py `ResNet._make_layer` with `multi_grid`, decoder.py `Aux_Module`, model_helper.py
`ModelBuilder.forward` with `aux_loss`), written out again for the model tests."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn


def public_block_dilations(
    replace_stride_with_dilation=(False, False, True), multi_grid=False, layers=(3, 4, 6, 3)
) -> list[list[int]]:
    """The dilation of each block's 3x3 conv, stage by stage, as `_make_layer` builds them: a
    stage that replaces its stride multiplies the running dilation by 2; its block 0 keeps the
    previous dilation, the others take the new one; with multi_grid (the last stage only) block
    i's is times grids[i] = (2, 2, 4)."""
    dilation = 1
    stages = []
    for stage, blocks in enumerate(layers):
        previous = dilation
        if stage > 0 and replace_stride_with_dilation[stage - 1]:
            dilation *= 2
        grids = [2, 2, 4] if multi_grid and stage == 3 else [1] * blocks
        stages.append([previous * grids[0]] + [dilation * grids[i] for i in range(1, blocks)])
    return stages


class PublicAuxModule(nn.Module):
    """`Aux_Module(in_planes, num_classes)`: 3x3 conv 256 (no bias), BN, ReLU, 1x1 conv."""

    def __init__(self, in_planes: int, num_classes: int):
        super().__init__()
        self.aux = nn.Sequential(
            nn.Conv2d(in_planes, 256, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, num_classes, kernel_size=1, stride=1, padding=0, bias=True),
        )

    def forward(self, feat1, size):
        # ModelBuilder.forward: the aux logits of the third stage, upsampled to the input
        return F.interpolate(self.aux(feat1), size, mode="bilinear", align_corners=True)


def public_sup_loss(criterion, main_pred, aux_pred, target, aux_weight=0.4):
    """`Criterion(Ohem).forward([main, aux], target)`: loss(main) + aux_weight * loss(aux)."""
    return criterion(main_pred, target) + aux_weight * criterion(aux_pred, target)


class PublicDeepStem(nn.Module):
    """`ResNet.__init__`'s stem with deep_stem (U2PL, iMAS, AugSeg, FST resnet.py): three 3x3
    convs 3-64 (stride 2), 64-64, 64-128, no bias, BN and ReLU between; then bn1, ReLU and the
    3x3 max-pool of stride 2, padding 1, in ceil mode."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 128, 3, stride=1, padding=1, bias=False),
        )
        self.bn1 = nn.BatchNorm2d(128)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=True)

    def forward(self, x):
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))
