"""Which network a checkpoint is evaluated with: the one the run validated, or eval.model."""

import pytest
import torch

from semiseg.checkpoints.load import model_from_checkpoint
from semiseg.errors import ConfigError
from semiseg.models import DeepLabV3Plus

MODEL = {
    "_target_": "semiseg.models.deeplabv3plus.DeepLabV3Plus",
    "encoder": "resnet18",
    "pretrained": "imagenet",  # ignored: the checkpoint holds the weights
    "output_stride": 16,
}


def checkpoint_with(networks: dict[str, DeepLabV3Plus], validated: str) -> dict:
    prefixes = {"student": "model", "teacher": "teacher.module"}
    state = {}
    for name, net in networks.items():
        state.update({f"{prefixes[name]}.{k}": v for k, v in net.state_dict().items()})
    return {
        "state_dict": state,
        "semiseg": {
            "config": {"model": MODEL, "method": {"name": "meanteacher"}},
            "class_names": ["a", "b", "c"],
            "networks": {name: prefixes[name] for name in networks},
            "eval_network": validated,
        },
    }


def test_the_validated_network_is_loaded_unless_another_is_asked_for():
    torch.manual_seed(0)
    student, teacher = DeepLabV3Plus(3, "resnet18"), DeepLabV3Plus(3, "resnet18")
    checkpoint = checkpoint_with({"student": student, "teacher": teacher}, validated="teacher")
    for choice, expected in ((None, teacher), ("teacher", teacher), ("student", student)):
        model = model_from_checkpoint(checkpoint, choice)
        for key, value in expected.state_dict().items():
            assert torch.equal(model.state_dict()[key], value), (choice, key)


def test_a_network_the_checkpoint_lacks_is_refused_in_one_line():
    checkpoint = checkpoint_with({"student": DeepLabV3Plus(3, "resnet18")}, validated="student")
    with pytest.raises(ConfigError, match=r"^eval.model=teacher: this checkpoint holds student"):
        model_from_checkpoint(checkpoint, "teacher")
    # checkpoints written before networks were named: the student, under `model.`
    del checkpoint["semiseg"]["networks"], checkpoint["semiseg"]["eval_network"]
    assert isinstance(model_from_checkpoint(checkpoint), DeepLabV3Plus)
