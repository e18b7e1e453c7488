"""What each method offers strategy=disagreement: its own two predictions of an image."""

import pytest
import torch

from semiseg.methods.augseg import AugSeg
from semiseg.methods.css import CSS
from semiseg.methods.fixmatch import FixMatch
from semiseg.methods.fst import FST
from semiseg.methods.imas import IMAS
from semiseg.methods.meanteacher import MeanTeacher
from semiseg.methods.supervised import Supervised
from semiseg.methods.unimatch import UniMatch
from semiseg.methods.unimatch_v2 import FixMatchV2, UniMatchV2
from semiseg.models.deeplabv3plus import DeepLabV3Plus

OPTIM = {"lr": 0.01, "lr_multi": 1.0, "momentum": 0.9, "weight_decay": 0.0, "poly_power": 0.9}


@pytest.mark.parametrize(
    "method, views",
    [
        (Supervised, None),
        (FixMatch, None),
        (UniMatch, "clean against feature-perturbed stream"),
        *[(m, "teacher against student") for m in (MeanTeacher, IMAS, AugSeg, CSS, FST)],
        (UniMatchV2, "teacher against student"),
        (FixMatchV2, "teacher against student"),
    ],
)
def test_each_method_declares_its_views(method, views):
    assert method.disagreement_views == views


def build(cls):
    torch.manual_seed(0)
    model = DeepLabV3Plus(3, encoder="resnet18", pretrained="scratch")
    return cls(model=model, class_names=["a", "b", "c"], optim=OPTIM,
               evaluation={"mode": "original"}, crop_size=32).eval()  # fmt: skip


def test_teacher_student_pair_is_the_teacher_then_the_student():
    module = build(MeanTeacher)
    with torch.no_grad():
        for p in module.model.parameters():  # the student moves away from its teacher
            p.add_(0.05 * torch.randn_like(p))
    image = torch.randn(1, 3, 32, 32)
    teacher, student = module.prediction_pair(image)
    with torch.no_grad():
        assert torch.equal(teacher, module.teacher.network(image))
        assert torch.equal(student, module.model(image))
    assert not torch.allclose(teacher, student)


def test_unimatch_pair_is_the_clean_and_the_perturbed_stream():
    module = build(UniMatch)
    image = torch.randn(1, 3, 32, 32)
    torch.manual_seed(1)
    clean, perturbed = module.prediction_pair(image)
    with torch.no_grad():
        assert torch.allclose(clean, module.model(image), atol=1e-5)
    assert not torch.allclose(clean, perturbed)
    torch.manual_seed(1)
    assert torch.equal(module.prediction_pair(image)[1], perturbed)  # seeded: repeatable


def test_a_method_with_one_prediction_refuses():
    from semiseg.errors import ConfigError

    with pytest.raises(ConfigError, match="method supervised has one prediction"):
        build(Supervised).prediction_pair(torch.randn(1, 3, 32, 32))
