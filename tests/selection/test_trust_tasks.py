"""Pseudo-label trust on ACDC volumes (every slice of the validation volumes) and on change
pairs (the unchanged and changed classes of the change mask), in eval.py's results and in the
values a training run logs, on hand-made probabilities (expected values worked out by hand)."""

from types import SimpleNamespace

import pytest
import torch
from test_trust_callback import Fixed  # a network that predicts given probabilities

from semiseg.selection.trust_callback import PseudoLabelTrust
from semiseg.tasks import build_task


def uncertain(shape):
    """A network that is never confident (uniform over the classes)."""
    return Fixed(torch.full(shape, 1.0 / shape[1]))


def probs_of(pixels, n, h, w):
    """(n, C, h, w) from per-pixel distributions listed item by item, row by row."""
    return torch.tensor(pixels).reshape(n, h, w, -1).permute(0, 3, 1, 2).contiguous()


# ACDC: one volume of 2 slices of 2 x 2 pixels, 3 classes, tau 0.8 (crop_size 2: the slices are
# predicted at their own size, so the probabilities reach the counts unresized).
#   slice 0: p0 (.9 .05 .05) gt 0: pseudo 0, right     p1 (.1 .86 .04) gt 1: pseudo 1, right
#            p2 (.1 .82 .08) gt 2: pseudo 1, wrong     p3 (.3 .3 .4)   gt 2: not confident
#   slice 1: p4 (.05 .05 .9) gt 2: pseudo 2, right     p5 (.6 .3 .1)   gt 0: not confident
#            p6 (.95 .03 .02) gt 1: pseudo 0, wrong    p7 (.5 .25 .25) gt 255: counts nowhere
VOLUME_PROBS = probs_of(
    [
        [0.9, 0.05, 0.05], [0.1, 0.86, 0.04], [0.1, 0.82, 0.08], [0.3, 0.3, 0.4],
        [0.05, 0.05, 0.9], [0.6, 0.3, 0.1], [0.95, 0.03, 0.02], [0.5, 0.25, 0.25],
    ],
    2, 2, 2,
)  # fmt: skip
VOLUME_GT = torch.tensor([[[0, 1], [2, 2]], [[2, 0], [1, 255]]])
ACDC_CLASSES = ["background", "right_ventricle", "myocardium"]
# precision: background {p0 right, p6 wrong} 1/2; right_ventricle {p1 right, p2 wrong} 1/2;
#            myocardium {p4} 1/1
# coverage:  background gt {p0, p5}, p0 confident: 1/2; right_ventricle gt {p1, p6}: 2/2;
#            myocardium gt {p2, p3, p4}, p2 and p4 confident: 2/3
# ECE, 15 bins of 1/15: (.8667, .9333] holds p0 .9, p4 .9, both right: 2 |1 - .9| = .2;
# (.8, .8667] holds p1 .86 right, p2 .82 wrong: |1 - 1.68| = .68; p3 .4 right, p5 .6 right and
# p6 .95 wrong each alone: .6 + .4 + .95; (.2 + .68 + .6 + .4 + .95) / 7 = 2.83 / 7 = 40.43 %
ACDC_PRECISION = {"background": 50.0, "right_ventricle": 50.0, "myocardium": 100.0}
ACDC_COVERAGE = {"background": 50.0, "right_ventricle": 100.0, "myocardium": 66.67}
ACDC_ECE = 40.43

# Change pair: a 2 x 3 change mask, classes unchanged / changed, tau 0.9.
#   p0 (.97 .03) gt 0: pseudo unchanged, right    p1 (.95 .05) gt 1: pseudo unchanged, wrong
#   p2 (.2 .8)   gt 1: not confident              p3 (.08 .92) gt 1: pseudo changed, right
#   p4 (.06 .94) gt 0: pseudo changed, wrong      p5 (.99 .01) gt 0: pseudo unchanged, right
PAIR_PROBS = probs_of(
    [[0.97, 0.03], [0.95, 0.05], [0.2, 0.8], [0.08, 0.92], [0.06, 0.94], [0.99, 0.01]], 1, 2, 3
)
PAIR_GT = torch.tensor([[[0, 1, 1], [1, 0, 0]]])
# precision: unchanged {p0, p1, p5}, 2 right: 2/3; changed {p3, p4}, 1 right: 1/2
# coverage:  unchanged gt {p0, p4, p5}, all confident: 1; changed gt {p1, p2, p3}: 2/3
# ECE: (.9333, 1] holds .97 R, .95 W, .94 W, .99 R: |2 - 3.85| = 1.85; (.8667, .9333] .92 R:
# .08; .8 R alone: .2; (1.85 + .08 + .2) / 6 = 35.5 %
PAIR_PRECISION = {"unchanged": 66.67, "changed": 50.0}
PAIR_COVERAGE = {"unchanged": 100.0, "changed": 66.67}
PAIR_ECE = 35.5


def volume_task(**trust):
    evaluation = {"mode": "volume", "task": "volume", **trust}
    return build_task(ACDC_CLASSES, evaluation, crop_size=2)


def pair_task(**trust):
    evaluation = {"mode": "original", "task": "change_detection", **trust}
    return build_task(["unchanged", "changed"], evaluation, crop_size=3)


def volume_batch():
    return {"image": torch.zeros(1, 2, 2, 2), "mask": VOLUME_GT[None], "name": ["case"]}


def pair_batch():
    return {"image": torch.zeros(1, 6, 2, 3), "mask": PAIR_GT}


KINDS = {
    "acdc": (volume_task, volume_batch, VOLUME_PROBS, ACDC_PRECISION, ACDC_COVERAGE, ACDC_ECE),
    "change": (pair_task, pair_batch, PAIR_PROBS, PAIR_PRECISION, PAIR_COVERAGE, PAIR_ECE),
}


def validate(task, batch, networks, chosen):
    """One validation as methods/base.py runs it: every network predicts, the task counts."""
    task.start(list(networks), "cpu")
    for name, network in networks.items():
        pred, mask = task.predict(network, batch)
        task.update(name, pred, mask, batch, chosen=name == chosen)
    return task.compute(chosen)


@pytest.mark.parametrize("kind", KINDS)
def test_eval_writes_the_trust_of_the_evaluated_network(kind, tmp_path):
    make_task, make_batch, probs, precision, coverage, ece = KINDS[kind]
    tau = 0.8 if kind == "acdc" else 0.9
    task = make_task(trust_tau=tau)
    # the other network is predicted after the evaluated one: its pixels must not count
    networks = {"student": Fixed(probs), "teacher": uncertain(tuple(probs.shape))}
    results = task.eval_results(validate(task, make_batch(), networks, "student"), tmp_path)
    trusted = results["pseudo_label_trust"]
    assert trusted["precision"] == precision and trusted["coverage"] == coverage
    assert trusted["ece"] == ece and trusted["tau"] == tau
    assert sum(b["count"] for b in trusted["reliability"]) == probs[0, 0].numel() * len(probs) - (
        1 if kind == "acdc" else 0
    )  # every pixel with a ground truth, once
    assert (tmp_path / "reliability.png").stat().st_size > 0
    assert any("pseudo-labels at tau" in line for line in task.eval_lines(results))


@pytest.mark.parametrize("kind", KINDS)
def test_eval_without_trust_writes_none(kind, tmp_path):
    make_task, make_batch, probs, *_ = KINDS[kind]
    task = make_task()
    results = task.eval_results(
        validate(task, make_batch(), {"student": Fixed(probs)}, "student"), tmp_path
    )
    assert "pseudo_label_trust" not in results and not (tmp_path / "reliability.png").exists()


def test_acdc_threshold_for_a_target_precision(tmp_path):
    task = volume_task(trust_tau=0.8, trust_target_precision=0.7)
    results = task.eval_results(
        validate(task, volume_batch(), {"student": Fixed(VOLUME_PROBS)}, "student"), tmp_path
    )
    # kept pixels, right ones: tau .5, .55: p0 p1 p2 p4 p5 p6, 4 right (.67); .6: p5's .6 sits on
    # the threshold, .67 or (3 of 5) .6; .65 .. .8: p0 p1 p2 p4 p6, 3 right (.6); .85: p0 p1 p4
    # p6, 3 right (.75): the lowest that reaches .7
    assert results["pseudo_label_trust"]["tau_for_precision"] == {"target": 0.7, "tau": 0.85}


class Method:
    """What the trust callback reads of a method: its threshold, task, networks and log."""

    eval_network_name = "student"

    def __init__(self, tau, task, networks):
        self.tau, self.task, self.nets, self.logged = tau, task, networks, {}

    def validated_networks(self):
        return {name: name for name in self.nets}

    def log_dict(self, values, sync_dist):
        self.logged.update(values)


@pytest.mark.parametrize("kind", KINDS)
def test_training_logs_the_teachers_trust_per_class(kind):
    make_task, make_batch, probs, precision, coverage, ece = KINDS[kind]
    tau = 0.8 if kind == "acdc" else 0.9
    # the student is never confident; the teacher makes the pseudo-labels and is counted
    networks = {"student": uncertain(tuple(probs.shape)), "teacher": Fixed(probs)}
    method = Method(tau, make_task(), networks)
    callback, trainer = PseudoLabelTrust(), SimpleNamespace(world_size=1, sanity_checking=False)
    callback.on_validation_epoch_start(trainer, method)
    validate(method.task, make_batch(), networks, "student")
    callback.on_validation_epoch_end(trainer, method)
    for name in precision:
        assert method.logged[f"trust/precision_{name}"] == pytest.approx(precision[name], abs=0.01)
        assert method.logged[f"trust/coverage_{name}"] == pytest.approx(coverage[name], abs=0.01)
    assert method.logged["trust/ece"] == pytest.approx(ece, abs=0.01)
    assert method.logged["trust/tau"] == tau and method.task.trust is None
