"""The EMA teacher against values worked out by hand."""

import pytest
import torch
from torch import nn

from semiseg.methods.teacher import EMATeacher, ema_decay, ema_update


def test_decay_ramps_from_zero_and_is_capped_at_alpha():
    assert ema_decay(0, 0.999) == 0.0
    assert ema_decay(1, 0.999) == 0.5
    assert ema_decay(2, 0.999) == pytest.approx(2 / 3)
    assert ema_decay(9, 0.999) == pytest.approx(0.9)
    # 1 - 1/(t + 1) passes 0.996 at t = 250
    assert ema_decay(249, 0.996) == pytest.approx(0.996)
    assert ema_decay(10_000, 0.996) == 0.996


def test_decay_is_zero_for_the_copy_updates_then_the_ramp_at_the_global_count():
    # the public epoch-0 rule with 5 updates per epoch: copies, then min(1 - 1/(i + 1), alpha)
    assert [ema_decay(t, 0.999, copy_updates=5) for t in range(5)] == [0.0] * 5
    assert ema_decay(5, 0.999, copy_updates=5) == pytest.approx(1 - 1 / 6)
    assert ema_decay(5000, 0.996, copy_updates=5) == 0.996


def bn_net(weight: float) -> nn.Module:
    net = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.BatchNorm2d(1))
    with torch.no_grad():
        net[0].weight.fill_(weight)
        net[1].weight.fill_(weight)
        net[1].bias.fill_(weight)
        net[1].running_mean.fill_(weight)
        net[1].running_var.fill_(weight)
        net[1].num_batches_tracked.fill_(int(weight))
    return net


def test_update_averages_parameters_and_float_buffers_copies_the_counter():
    teacher, student = bn_net(1.0), bn_net(3.0)
    student[1].num_batches_tracked.fill_(7)
    ema_update(teacher, student, decay=0.5, average_buffers=True)
    for p in teacher.parameters():
        assert p.flatten().tolist() == [2.0]
    assert teacher[1].running_mean.tolist() == [2.0]
    assert teacher[1].running_var.tolist() == [2.0]
    assert teacher[1].num_batches_tracked.item() == 7
    assert teacher[1].num_batches_tracked.dtype == torch.long
    # the student is untouched
    assert student[0].weight.flatten().tolist() == [3.0]


def test_update_can_copy_buffers_instead():
    teacher, student = bn_net(1.0), bn_net(3.0)
    ema_update(teacher, student, decay=0.75, average_buffers=False)
    assert teacher[0].weight.flatten().tolist() == [1.5]  # 0.75 * 1 + 0.25 * 3
    assert teacher[1].running_mean.tolist() == [3.0]
    assert teacher[1].running_var.tolist() == [3.0]


def test_own_buffers_are_left_to_the_teacher_and_move_only_with_its_train_mode_forwards():
    """U2PL's and CSS's teacher: the EMA covers parameters; BatchNorm statistics come from the
    teacher's own forwards with batch statistics."""
    teacher, student = EMATeacher(bn_net(1.0), 0.9, average_buffers="own"), bn_net(3.0)
    teacher.update(student, step=100)  # decay alpha = 0.9
    assert teacher.network[0].weight.flatten().tolist() == [pytest.approx(1.2)]  # 0.9 + 0.3
    assert teacher.network[1].running_mean.tolist() == [1.0]
    assert teacher.network[1].num_batches_tracked.item() == 1
    x = torch.full((4, 1, 2, 2), 2.0) + torch.arange(4.0).view(4, 1, 1, 1)
    out = teacher.with_batch_statistics(x)
    # batch statistics: the normalised output has mean 0 whatever the running statistics
    assert (out - teacher.network[1].bias).mean().abs() < 1e-5
    assert teacher.network[1].running_mean.item() != 1.0  # momentum 0.1 towards the batch mean
    assert not teacher.network.training and out.grad_fn is None
    before = teacher.network[1].running_mean.clone()
    teacher(x)  # an ordinary teacher forward: eval mode, nothing moves
    assert torch.equal(teacher.network[1].running_mean, before)


def test_decay_zero_makes_the_teacher_the_student_exactly():
    teacher, student = bn_net(1.0), bn_net(1.0)
    with torch.no_grad():
        for p in student.parameters():
            p.copy_(torch.randn_like(p))
    ema_update(teacher, student, decay=ema_decay(0, 0.99), average_buffers=True)
    for t, s in zip(teacher.state_dict().values(), student.state_dict().values(), strict=True):
        assert torch.equal(t, s)


def test_teacher_is_a_frozen_copy_and_updates_with_the_ramp():
    student = bn_net(3.0)
    teacher = EMATeacher(student, alpha=0.99)
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    assert teacher.network[0].weight.data_ptr() != student[0].weight.data_ptr()
    with torch.no_grad():
        student[0].weight.fill_(1.0)
    assert teacher.update(student, step=1) == 0.5
    assert teacher.network[0].weight.item() == 2.0  # 0.5 * 3 + 0.5 * 1


def test_teacher_gets_no_gradient_and_gives_none():
    student = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2))
    teacher = EMATeacher(student, alpha=0.99)
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    out = teacher(x)
    assert not out.requires_grad
    loss = student(x).sum() + out.sum()
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    # and it stays out of an optimizer built from the trainable parameters
    parent = nn.ModuleDict({"model": student, "teacher": teacher})
    trainable = [p for p in parent.parameters() if p.requires_grad]
    assert len(trainable) == len(list(student.parameters()))


class Parent(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2), nn.Dropout(0.5))
        self.teacher = EMATeacher(self.model, alpha=0.99)


def test_teacher_predicts_in_eval_mode_while_the_parent_trains():
    parent = Parent()
    parent.train()
    assert parent.model.training and not parent.teacher.network.training
    stats_before = parent.teacher.network[1].running_mean.clone()
    x = torch.randn(4, 3, 5, 5) * 3 + 2
    a, b = parent.teacher(x), parent.teacher(x)
    # eval mode: running statistics untouched, dropout off (two calls agree)
    assert torch.equal(parent.teacher.network[1].running_mean, stats_before)
    assert torch.equal(a, b)
    # even if someone sets the inner network to train mode, prediction runs in eval mode
    parent.teacher.network.train()
    c = parent.teacher(x)
    assert torch.equal(a, c)
    assert parent.teacher.network.training  # and the mode it was in is restored


def test_teacher_is_in_the_parent_state_dict_and_round_trips():
    parent = Parent()
    with torch.no_grad():
        for p in parent.model.parameters():
            p.add_(1.0)
    parent.teacher.update(parent.model, step=5)
    state = parent.state_dict()
    teacher_keys = [k for k in state if k.startswith("teacher.network.")]
    assert len(teacher_keys) == len(parent.teacher.network.state_dict())
    restored = Parent()
    restored.load_state_dict(state)
    for k, v in state.items():
        assert torch.equal(restored.state_dict()[k], v), k
    # the restored teacher continues exactly like the original
    parent.teacher.update(parent.model, step=6)
    restored.teacher.update(restored.model, step=6)
    for a, b in zip(
        parent.teacher.state_dict().values(), restored.teacher.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
