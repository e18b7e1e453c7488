"""A transcription of the public UniMatch V1 Xception-65 (model/backbone/xception.py) on a state
dict of its names: the key shapes its constructor makes (output stride 16, as
model/semseg/deeplabv3plus.py builds it) and its `base_forward` in eval mode, written with
functional ops. What its in-place ReLUs do, spelled out:
- a block without a skip convolution opens with an in-place ReLU on its input, which is also
  the tensor it adds back: its residual is relu(input);
- a block with one opens with an out-of-place ReLU, the skip convolution reads the raw input;
- the third separable conv's opening ReLU is in place (out of place in block2 only) on the second
  one's output, the `hook_layer`: block2's hook, the stride-4 feature, stays unrectified;
- conv3..conv5 (activate_first=False) put a ReLU after each BatchNorm, none before."""

import torch
import torch.nn.functional as F

BN_BUFFERS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# (name, in, out, stride, grow_first) of block1..block20 at output stride 16
BLOCKS = [
    ("block1", 64, 128, 2, True),
    ("block2", 128, 256, 2, True),
    ("block3", 256, 728, 2, True),
    *((f"block{i}", 728, 728, 1, True) for i in range(4, 20)),
    ("block20", 728, 1024, 1, False),
]
EXIT = [("conv3", 1024, 1536), ("conv4", 1536, 1536), ("conv5", 1536, 2048)]


def public_xception_shapes() -> dict[str, tuple]:
    shapes = {}

    def bn(name, ch):
        for buf in BN_BUFFERS:
            shapes[f"{name}.{buf}"] = () if buf == "num_batches_tracked" else (ch,)

    def sep(name, cin, cout):
        shapes[f"{name}.depthwise.weight"] = (cin, 1, 3, 3)
        bn(f"{name}.bn1", cin)
        shapes[f"{name}.pointwise.weight"] = (cout, cin, 1, 1)
        bn(f"{name}.bn2", cout)

    shapes["conv1.weight"] = (32, 3, 3, 3)
    bn("bn1", 32)
    shapes["conv2.weight"] = (64, 32, 3, 3)
    bn("bn2", 64)
    for name, cin, cout, stride, grow_first in BLOCKS:
        if cin != cout or stride != 1:
            shapes[f"{name}.skip.weight"] = (cout, cin, 1, 1)
            bn(f"{name}.skipbn", cout)
        mid = cout if grow_first else cin
        sep(f"{name}.sepconv1", cin, mid)
        sep(f"{name}.sepconv2", mid, cout)
        sep(f"{name}.sepconv3", cout, cout)
    for name, cin, cout in EXIT:
        sep(name, cin, cout)
    return shapes


def public_random(shapes: dict, generator: torch.Generator) -> dict:
    """Weights as the public initialisation draws them (convs N(0, 2 / (k * k * out))), BN
    affine and running statistics random near identity, so 65 layers keep a finite scale."""
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(11)
        elif len(shape) == 4:
            fan_out = shape[0] * shape[2] * shape[3]
            state[key] = torch.randn(shape, generator=generator) * (2.0 / fan_out) ** 0.5
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        elif key.endswith(".weight"):
            state[key] = 1 + 0.1 * torch.randn(shape, generator=generator)
        else:  # bias, running_mean
            state[key] = 0.1 * torch.randn(shape, generator=generator)
    return state


def _bn(x, sd, name):
    return F.batch_norm(
        x, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
        sd[f"{name}.bias"], False, 0.0, 1e-5,
    )  # fmt: skip


def _sep(x, sd, name, stride=1, activate_first=True):
    if activate_first:
        x = F.relu(x)
    channels = x.shape[1]
    x = _bn(
        F.conv2d(x, sd[f"{name}.depthwise.weight"], stride=stride, padding=1, groups=channels),
        sd,
        f"{name}.bn1",
    )
    if not activate_first:
        x = F.relu(x)
    x = _bn(F.conv2d(x, sd[f"{name}.pointwise.weight"]), sd, f"{name}.bn2")
    return x if activate_first else F.relu(x)


def public_xception_forward(sd, x):
    """base_forward: (c1 = block2's hook_layer, stride 4; the conv5 output, stride 16)."""
    x = F.relu(_bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=1), sd, "bn1"))
    x = F.relu(_bn(F.conv2d(x, sd["conv2.weight"], padding=1), sd, "bn2"))
    c1 = None
    for name, _, _, stride, _ in BLOCKS:
        if f"{name}.skip.weight" in sd:
            skip = _bn(F.conv2d(x, sd[f"{name}.skip.weight"], stride=stride), sd, f"{name}.skipbn")
        else:
            skip = F.relu(x)  # the in-place ReLU of sepconv1 rectified the residual too
        hook = _sep(_sep(x, sd, f"{name}.sepconv1"), sd, f"{name}.sepconv2")
        if name == "block2":
            c1 = hook  # its sepconv3 ReLU is out of place: the hook stays as it was
        x = _sep(hook, sd, f"{name}.sepconv3", stride=stride) + skip
    for name, _, _ in EXIT:
        x = _sep(x, sd, name, activate_first=False)
    return c1, x
