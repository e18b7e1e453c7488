"""Pseudo-label trust logged at validation, and the threshold set from the calibration curve, on
hand-made confidences (values worked out by hand below)."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from semiseg.errors import ConfigError
from semiseg.selection.trust import TAU_GRID
from semiseg.selection.trust_callback import PseudoLabelTrust
from semiseg.tasks.segmentation import SegmentationTask

# 12 pixels (3 x 4), 2 classes. The teacher's top class and confidence, and the truth:
#   4 pixels class 1 at 0.97, truth 1 (right);
#   4 pixels class 1 at 0.80, truth 1, 1, 1, 0 (3 right);
#   4 pixels class 0 at 0.60, truth 0, 0, 1, 1 (2 right).
TOP = torch.tensor([1] * 8 + [0] * 4)
CONF = torch.tensor([0.97] * 4 + [0.80] * 4 + [0.60] * 4)
TRUTH = torch.tensor([1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1])


def teacher_probs() -> torch.Tensor:
    p1 = torch.where(TOP == 1, CONF, 1 - CONF)
    return torch.stack([1 - p1, p1]).reshape(1, 2, 3, 4)


class Fixed(nn.Module):
    """A network that predicts the same probabilities for any image (logits = log p)."""

    def __init__(self, probs):
        super().__init__()
        self.register_buffer("logits", probs.log())

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1, -1, -1)


class Method:
    """What the callback reads of a method: its threshold, task and networks, and its log."""

    eval_network_name = "student"

    def __init__(self, tau, networks):
        self.tau = tau
        self.task = SegmentationTask(["background", "thing"], {"mode": "original"}, 4)
        self.nets = networks
        self.logged = {}

    def validated_networks(self):
        return {name: name for name in self.nets}

    def log_dict(self, values, sync_dist):
        self.logged.update(values)

    def validate(self, callback):
        trainer = SimpleNamespace(world_size=1, sanity_checking=False)
        callback.on_validation_epoch_start(trainer, self)
        self.task.start(list(self.nets), "cpu")
        batch = {"image": torch.zeros(1, 3, 3, 4), "mask": TRUTH.reshape(1, 3, 4)}
        for name, network in self.nets.items():
            pred, mask = self.task.predict(network, batch)
            self.task.update(name, pred, mask, batch, chosen=name == self.eval_network_name)
        callback.on_validation_epoch_end(trainer, self)


def uncertain_student():
    return Fixed(torch.full((1, 2, 3, 4), 0.5))  # never confident: nothing pseudo-labeled


def test_logs_the_teachers_precision_coverage_and_ece_at_the_methods_threshold():
    method = Method(0.95, {"student": uncertain_student(), "teacher": Fixed(teacher_probs())})
    method.validate(PseudoLabelTrust())
    logged = method.logged
    # at 0.95 only the 4 pixels at 0.97 are pseudo-labeled: class 1, all right
    assert logged["trust/precision_thing"] == pytest.approx(100.0)
    assert logged["trust/precision_background"] != logged["trust/precision_background"]  # NaN
    # coverage: 4 of the 9 truth-1 pixels, 0 of the 3 truth-0 pixels
    assert logged["trust/coverage_thing"] == pytest.approx(100.0 * 4 / 9)
    assert logged["trust/coverage_background"] == pytest.approx(0.0)
    # ECE: one bin per group: 4 |1 - 0.97| + 4 |3/4 - 0.8| + 4 |2/4 - 0.6| over 12 = 0.06
    assert logged["trust/ece"] == pytest.approx(6.0, abs=1e-4)
    assert logged["trust/tau"] == 0.95 and method.tau == 0.95  # no target: the threshold stays
    assert method.task.trust is None  # the next validation counts afresh


@pytest.mark.parametrize(
    "target, tau",
    [
        # precision of all pseudo-labels: tau <= 0.60 keeps 12 (9 right, 0.75); 0.65 .. 0.80
        # keeps 8 (7 right, 0.875); 0.85 .. 0.95 keeps 4 (all right); 0.99 keeps none
        (0.7, 0.5),
        (0.85, 0.65),
        (0.9, 0.85),
        (1.0, 0.85),
    ],
)
def test_target_precision_sets_the_lowest_threshold_that_reaches_it(target, tau):
    method = Method(0.95, {"student": uncertain_student(), "teacher": Fixed(teacher_probs())})
    callback = PseudoLabelTrust(target_precision=target)
    method.validate(callback)
    assert method.tau == tau and method.logged["trust/tau"] == tau
    assert callback.state_dict() == {"tau_set": tau}  # kept in the checkpoint


def test_without_a_reachable_precision_the_threshold_stays():
    # the evaluated network alone (no teacher): its 0.5 pixels reach no threshold of the grid
    method = Method(0.9, {"student": uncertain_student()})
    callback = PseudoLabelTrust(target_precision=0.99)
    method.validate(callback)
    assert method.tau == 0.9 and callback.tau_set is None
    assert method.logged["trust/coverage_thing"] == 0.0


def test_a_resumed_run_goes_on_with_the_threshold_it_had_set():
    callback = PseudoLabelTrust(target_precision=0.9)
    callback.load_state_dict({"tau_set": 0.7})
    method = Method(0.95, {"student": uncertain_student()})
    callback.on_train_start(None, method)
    assert method.tau == 0.7


def test_methods_without_a_threshold_log_nothing():
    method = Method(0.95, {"student": uncertain_student()})
    del method.tau
    method.validate(PseudoLabelTrust(target_precision=0.9))
    assert method.logged == {}


@pytest.mark.parametrize("value", [0, 1.5, "high", True])
def test_bad_target_precision_is_one_line(value):
    with pytest.raises(ConfigError, match=r"^trust.target_precision=.*give a precision in"):
        PseudoLabelTrust(target_precision=value)


@pytest.mark.slow  # two tiny training runs
def test_training_writes_trust_columns_into_the_csv_metrics(toy_root, tmp_path):
    import csv
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from cli import train_on_toy

    run = tmp_path / "run"
    train_on_toy(
        toy_root,
        "method=fixmatch",
        "logger=csv",
        "trust.target_precision=0.5",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        f"hydra.run.dir={run}",
    )
    with open(run / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("trust/ece")]
    assert len(rows) == 1
    classes = (toy_root / "classes.txt").read_text().split()
    for name in classes:
        assert f"trust/precision_{name}" in rows[0] and f"trust/coverage_{name}" in rows[0]
    assert 0.0 <= float(rows[0]["trust/ece"]) <= 100.0
    logged = float(rows[0]["trust/tau"])  # logged as float32
    assert any(abs(logged - t) < 1e-6 for t in (0.95, *TAU_GRID))  # set from the grid, or kept

    supervised = tmp_path / "supervised"
    train_on_toy(toy_root, "method=supervised", "logger=csv", f"hydra.run.dir={supervised}")
    with open(supervised / "csv" / "metrics.csv") as f:
        assert not any(k.startswith("trust/") for k in next(csv.DictReader(f)))
