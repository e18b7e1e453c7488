"""The reference's Xception-65: its forward semantics, its weight-file layout, its size."""

import pytest
import torch
from torch import nn

from semiseg.errors import ConfigError
from semiseg.models import DeepLabV3Plus, build_encoder
from semiseg.models.xception import Xception65


def count(params):
    return sum(p.numel() for p in params)


# --- the public code's forward, transcribed with its in-place ReLUs -------------------------


def reference_separable(conv, x, activate_first=True, inplace=True):
    """The reference SeparableConv2d.forward: a leading ReLU, or one after each BN."""
    if activate_first:
        x = torch.relu_(x) if inplace else torch.relu(x)
    x = conv.bn1(conv.depthwise(x))
    if not activate_first:
        x = torch.relu_(x)
    x = conv.bn2(conv.pointwise(x))
    if not activate_first:
        x = torch.relu_(x)
    return x


def reference_block(block, inp, last_inplace=True, aliased_residual=True):
    """The reference Block.forward: (output, hook_layer).

    Without a skip conv the residual is the input tensor itself, and the first ReLU is in-place,
    so the residual becomes relu(input). aliased_residual=False is the naive reading (adds input).
    """
    if block.skip is not None:
        skip = block.skipbn(block.skip(inp))
    else:
        skip = inp if aliased_residual else inp.clone()
    x = reference_separable(block.sepconv1, inp, inplace=block.skip is None)
    x = reference_separable(block.sepconv2, x)
    hook = x
    x = reference_separable(block.sepconv3, x, inplace=last_inplace)
    x += skip
    return x, hook


def reference_forward(net, x, aliased_residual=True, block2_last_inplace=False):
    """The reference Xception.base_forward: (block2.hook_layer, last feature).

    block2 builds its third ReLU out of place, which keeps its hook un-rectified;
    block2_last_inplace=True is the naive reading (the hook gets rectified).
    """
    x = torch.relu_(net.bn1(net.conv1(x)))
    x = torch.relu_(net.bn2(net.conv2(x)))
    x, _ = reference_block(net.block1, x, aliased_residual=aliased_residual)
    x, low = reference_block(
        net.block2, x, last_inplace=block2_last_inplace, aliased_residual=aliased_residual
    )
    for i in range(3, 21):
        x, _ = reference_block(getattr(net, f"block{i}"), x, aliased_residual=aliased_residual)
    for conv in (net.conv3, net.conv4, net.conv5):
        x = reference_separable(conv, x, activate_first=False)
    return low, x


def randomise_batch_norms(net):
    """Eval-mode BatchNorms that shift and scale, so each ReLU cuts something."""
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.5)
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 1.5)


@pytest.mark.parametrize("output_stride", [16, 8])
def test_forward_matches_reference_semantics(output_stride):
    torch.manual_seed(0)
    net = Xception65(output_stride).eval()
    randomise_batch_norms(net)
    x = torch.randn(2, 3, 33, 47)
    with torch.no_grad():
        low, high = net(x.clone())
        ref_low, ref_high = reference_forward(net, x.clone())
        # The two quirks change the result, so the comparison above can tell them apart.
        naive_high = reference_forward(net, x.clone(), aliased_residual=False)[1]
        naive_low = reference_forward(net, x.clone(), block2_last_inplace=True)[0]
    assert torch.equal(low, ref_low)
    assert torch.equal(high, ref_high)
    assert not torch.allclose(high, naive_high)
    assert not torch.allclose(low, naive_low)
    assert (low < 0).any()  # the stride-4 feature is a BatchNorm output, not rectified
    assert low.shape == (2, 256, 9, 12)  # stride 4 of 33x47
    assert high.shape == {16: (2, 2048, 3, 3), 8: (2, 2048, 5, 6)}[output_stride]


# --- the public weight file's layout -------------------------------------------------------


def reference_layout() -> dict:
    """Key -> shape of the reference Xception-65's state dict, written from its constructor."""
    shapes = {}

    def batch_norm(name, ch):
        for buffer in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.{buffer}"] = (ch,)
        shapes[f"{name}.num_batches_tracked"] = ()

    def separable(name, cin, cout):
        shapes[f"{name}.depthwise.weight"] = (cin, 1, 3, 3)
        batch_norm(f"{name}.bn1", cin)
        shapes[f"{name}.pointwise.weight"] = (cout, cin, 1, 1)
        batch_norm(f"{name}.bn2", cout)

    def block(i, cin, cout, stride=1, grow_first=True):
        if cin != cout or stride != 1:
            shapes[f"block{i}.skip.weight"] = (cout, cin, 1, 1)
            batch_norm(f"block{i}.skipbn", cout)
        mid = cout if grow_first else cin
        separable(f"block{i}.sepconv1", cin, mid)
        separable(f"block{i}.sepconv2", mid, cout)
        separable(f"block{i}.sepconv3", cout, cout)

    shapes["conv1.weight"] = (32, 3, 3, 3)
    batch_norm("bn1", 32)
    shapes["conv2.weight"] = (64, 32, 3, 3)
    batch_norm("bn2", 64)
    block(1, 64, 128, 2)
    block(2, 128, 256, 2)
    block(3, 256, 728, 2)
    for i in range(4, 20):
        block(i, 728, 728)
    block(20, 728, 1024, grow_first=False)
    separable("conv3", 1024, 1536)
    separable("conv4", 1536, 1536)
    separable("conv5", 1536, 2048)
    return shapes


def reference_file(tmp_path, edit=None):
    """A randomly initialised weight file in the reference layout, with the bookkeeping entries
    the reference skips on loading (keys containing 'itr', 'tmp' or 'track')."""
    torch.manual_seed(1)
    state = {}
    for key, shape in reference_layout().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1234)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape) + 0.5
        else:
            state[key] = torch.randn(shape)
    state["block4.sepconv1.bn1.itr_count"] = torch.tensor(7)
    state["conv3.tmp"] = torch.zeros(3)
    if edit:
        edit(state)
    torch.save(state, tmp_path / "xception.pth")
    return state, tmp_path / "xception.pth"


def test_loads_reference_layout_key_for_key(tmp_path):
    state, path = reference_file(tmp_path)
    model = DeepLabV3Plus(num_classes=3, encoder="xception65", pretrained=str(path))
    loaded = model.backbone.state_dict()
    weights = {k for k in state if "itr" not in k and "tmp" not in k and "track" not in k}
    assert weights == {k for k in loaded if not k.endswith("num_batches_tracked")}
    for key in weights:
        assert torch.equal(loaded[key], state[key]), key
    # The reference drops the batch counters; ours stay at their initial value too.
    assert all(v == 0 for k, v in loaded.items() if k.endswith("num_batches_tracked"))


def test_wrong_key_fails_in_one_line(tmp_path):
    def rename(state):
        state["block7.sepconv2.pointwise_conv.weight"] = state.pop(
            "block7.sepconv2.pointwise.weight"
        )

    _, path = reference_file(tmp_path, rename)
    with pytest.raises(ConfigError) as err:
        DeepLabV3Plus(num_classes=3, encoder="xception65", pretrained=str(path))
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message
    assert "1 missing (block7.sepconv2.pointwise.weight)" in message
    assert "1 unexpected (block7.sepconv2.pointwise_conv.weight)" in message


# --- the encoder interface and the full model ----------------------------------------------


@pytest.fixture(scope="module")
def coco_model():
    torch.manual_seed(0)
    return DeepLabV3Plus(num_classes=81, encoder="xception65")


def test_paper_parameter_count(coco_model):
    # The reference's COCO logs report "Total params: 54.7M" (81 classes).
    assert count(coco_model.parameters()) / 1e6 == pytest.approx(54.7, rel=0.01)


@pytest.mark.parametrize("name", ["xception65", "xception"])
def test_encoder_names(name):
    encoder = build_encoder(name, deep_stem=False)
    assert isinstance(encoder, Xception65)
    assert encoder.channels == (256, 2048)
    momenta = {m.momentum for m in encoder.modules() if isinstance(m, nn.BatchNorm2d)}
    assert momenta == {0.0003}


def test_unsupported_output_stride():
    with pytest.raises(ValueError, match="output_stride must be 8 or 16, got 32"):
        build_encoder("xception65", output_stride=32)


def test_odd_size_forward_and_backward(coco_model):
    coco_model.train()
    logits, logits_fp = coco_model(torch.randn(2, 3, 65, 97), feature_perturbation=True)
    assert logits.shape == logits_fp.shape == (2, 81, 65, 97)
    (logits.mean() + logits_fp.mean()).backward()
    assert coco_model.backbone.conv1.weight.grad is not None
    coco_model.zero_grad(set_to_none=True)


def test_output_stride_8_odd_size():
    model = DeepLabV3Plus(num_classes=3, encoder="xception65", output_stride=8).eval()
    with torch.no_grad():
        low, high = model.backbone(torch.randn(2, 3, 65, 97))
        assert low.shape[-2:] == (17, 25) and high.shape[-2:] == (9, 13)
        assert model(torch.randn(2, 3, 65, 97)).shape == (2, 3, 65, 97)
