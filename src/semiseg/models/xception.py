"""Xception-65 as the public UniMatch code builds it for COCO, loading its `xception.pth`.

The parameter names and shapes are the reference's, so its ImageNet file loads key for key:
`conv1`/`bn1`, `conv2`/`bn2`, `block1`..`block20` (each `sepconv1..3` with `depthwise`, `bn1`,
`pointwise`, `bn2`, plus `skip`/`skipbn` where the shape changes), then `conv3`..`conv5`.

What the reference's forward does, read from its in-place operations, and done here explicitly:
- Every block starts with a ReLU. In blocks without a skip convolution (block4..19) that ReLU is
  in-place on the block input, which is also the tensor the block adds back at the end: the
  residual is relu(input), not input. In blocks with a skip convolution the ReLU is out of place
  and the skip convolution reads the raw input.
- The stride-4 feature for the decoder is block2's second separable conv output, taken before
  the ReLU that opens its third one (block2 alone makes that ReLU out of place, so the kept tensor
  is not overwritten): a BatchNorm output, not rectified.
- A block ends with the residual sum, with no ReLU; the exit flow's conv3 convolves that sum
  directly, and conv3..5 put a ReLU after each of their BatchNorms, so the stride-16 feature is
  rectified.
Output stride 16 downsamples in block1..3; 8 keeps block3 at stride 1 and dilates block4..20 and
conv3..5 by 2 (block3 itself stays undilated, as in the reference).
"""

from torch import nn
from torch.nn import functional as F

# The reference's BatchNorm momentum. PyTorch updates running = (1 - m) * running + m * batch, so
# 0.0003 is TensorFlow DeepLab's decay 0.9997: the running statistics forget with a horizon of
# about 3,300 steps. Kept as is: eval-mode statistics, and so every evaluated number, depend on
# it (after a short run they are still close to the loaded, or initial, ones).
BN_MOMENTUM = 0.0003

NAMES = ("xception65", "xception")


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=BN_MOMENTUM)


class SeparableConv2d(nn.Module):
    """Depthwise 3x3 conv + BN, then pointwise 1x1 conv + BN.

    relu_inside: a ReLU after each BN (the exit flow). Otherwise none here: the blocks apply one
    before each separable conv themselves.
    """

    def __init__(self, in_ch, out_ch, stride=1, dilation=1, relu_inside=False):
        super().__init__()
        self.depthwise = nn.Conv2d(
            in_ch, in_ch, 3, stride, padding=dilation, dilation=dilation, groups=in_ch, bias=False
        )
        self.bn1 = batch_norm(in_ch)
        self.pointwise = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.bn2 = batch_norm(out_ch)
        self.relu_inside = relu_inside

    def forward(self, x):
        x = self.bn1(self.depthwise(x))
        if self.relu_inside:
            x = F.relu(x, inplace=True)
        x = self.bn2(self.pointwise(x))
        if self.relu_inside:
            x = F.relu(x, inplace=True)
        return x


class Block(nn.Module):
    """Three (ReLU, separable conv) steps plus a residual; the last conv carries the stride."""

    def __init__(self, in_ch, out_ch, stride=1, dilation=1, grow_first=True):
        super().__init__()
        if in_ch != out_ch or stride != 1:
            self.skip = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)
            self.skipbn = batch_norm(out_ch)
        else:
            self.skip = None
        mid = out_ch if grow_first else in_ch
        self.sepconv1 = SeparableConv2d(in_ch, mid, dilation=dilation)
        self.sepconv2 = SeparableConv2d(mid, out_ch, dilation=dilation)
        self.sepconv3 = SeparableConv2d(out_ch, out_ch, stride, dilation)

    def forward_with_hook(self, x):
        """(output, the second separable conv's output before the third ReLU)."""
        if self.skip is None:
            # The reference's in-place ReLU makes its residual the rectified input.
            x = residual = F.relu(x)
        else:
            residual = self.skipbn(self.skip(x))
            x = F.relu(x)
        hook = self.sepconv2(F.relu(self.sepconv1(x)))
        return self.sepconv3(F.relu(hook)) + residual, hook

    def forward(self, x):
        return self.forward_with_hook(x)[0]


class Xception65(nn.Module):
    """The encoder: forward(x) gives [stride-4 feature (256 ch), last feature (2048 ch)]."""

    # The reference drops file keys containing these before loading (its load is otherwise
    # strict, except that keys the file lacks keep their initial values; ours refuses those).
    ignored_key_parts = ("itr", "tmp", "track")

    def __init__(self, output_stride: int = 16):
        super().__init__()
        if output_stride not in (8, 16):
            raise ValueError(f"xception65: output_stride must be 8 or 16, got {output_stride}")
        stride3 = 2 if output_stride == 16 else 1
        rate = 16 // output_stride
        self.conv1 = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self.bn1 = batch_norm(32)
        self.conv2 = nn.Conv2d(32, 64, 3, 1, 1, bias=False)
        self.bn2 = batch_norm(64)
        self.block1 = Block(64, 128, 2)
        self.block2 = Block(128, 256, 2)
        self.block3 = Block(256, 728, stride3)
        for i in range(4, 20):  # the middle flow, block4..block19
            setattr(self, f"block{i}", Block(728, 728, 1, rate))
        self.block20 = Block(728, 1024, 1, rate, grow_first=False)
        self.conv3 = SeparableConv2d(1024, 1536, dilation=rate, relu_inside=True)
        self.conv4 = SeparableConv2d(1536, 1536, dilation=rate, relu_inside=True)
        self.conv5 = SeparableConv2d(1536, 2048, dilation=rate, relu_inside=True)
        self.channels = (256, 2048)
        # The reference's initialisation: He normal over fan-out for every conv.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.block1(x)
        x, low = self.block2.forward_with_hook(x)
        for i in range(3, 21):
            x = getattr(self, f"block{i}")(x)
        x = self.conv5(self.conv4(self.conv3(x)))
        return [low, x]
