"""Pseudo-label precision, coverage and calibration on hand-worked pixels."""

import math

import torch

from semiseg.selection.trust import TrustCounts, bin_index, threshold_for_precision


def probs_of(rows):
    """(1, C, 1, W) from per-pixel distributions."""
    return torch.tensor(rows, dtype=torch.float32).T[None, :, None, :]


# Five pixels, 2 classes, tau 0.8:
#   p0 (0.9, 0.1) gt 0: pseudo 0, right      p1 (0.85, 0.15) gt 1: pseudo 0, wrong
#   p2 (0.3, 0.7) gt 1: not confident         p3 (0.05, 0.95) gt 1: pseudo 1, right
#   p4 (0.6, 0.4) gt 255: counts nowhere
PIXELS = probs_of([[0.9, 0.1], [0.85, 0.15], [0.3, 0.7], [0.05, 0.95], [0.6, 0.4]])
GT = torch.tensor([[[0, 1, 1, 1, 255]]])


def test_precision_and_coverage_by_hand():
    counts = TrustCounts(num_classes=2, bins=5, tau=0.8)
    counts.update(PIXELS, GT)
    # class 0: pseudo-labeled p0, p1 -> precision 1/2; gt pixels p0 -> covered 1/1
    # class 1: pseudo-labeled p3 -> precision 1/1; gt pixels p1, p2, p3, confident p1, p3 -> 2/3
    assert torch.allclose(counts.precision(), torch.tensor([0.5, 1.0], dtype=torch.float64))
    assert torch.allclose(counts.coverage(), torch.tensor([1.0, 2 / 3], dtype=torch.float64))


def test_threshold_is_inclusive_and_empty_classes_are_nan():
    counts = TrustCounts(num_classes=3, bins=5, tau=0.9)
    counts.update(PIXELS, GT)  # p0's 0.9 is kept (conf >= tau, as the losses)
    precision, coverage = counts.precision(), counts.coverage()
    assert precision[0] == 1.0 and precision[1] == 1.0
    assert math.isnan(precision[2]) and math.isnan(coverage[2])


def test_reliability_bins_and_ece_by_hand():
    counts = TrustCounts(num_classes=2, bins=5, tau=0.8)
    counts.update(PIXELS, GT)
    # top confidences 0.9 (right), 0.85 (wrong), 0.7 (right), 0.95 (right); bins of 0.2:
    # (0.6, 0.8]: 0.7 right -> conf 0.7, acc 1; (0.8, 1.0]: 0.9, 0.85, 0.95 -> conf 0.9, acc 2/3
    rows = counts.reliability()
    assert [r["count"] for r in rows] == [0, 0, 0, 1, 3]
    assert abs(rows[3]["confidence"] - 0.7) < 1e-6 and rows[3]["accuracy"] == 1.0
    assert abs(rows[4]["confidence"] - 0.9) < 1e-6 and abs(rows[4]["accuracy"] - 2 / 3) < 1e-9
    assert rows[0]["confidence"] is None
    # ECE = 1/4 * |1 - 0.7| + 3/4 * |2/3 - 0.9| = 0.075 + 0.175 = 0.25
    assert abs(counts.ece() - 0.25) < 1e-6


def test_counts_add_over_images():
    once, twice = TrustCounts(2, 5, 0.8), TrustCounts(2, 5, 0.8)
    once.update(torch.cat([PIXELS, PIXELS]), torch.cat([GT, GT]))
    twice.update(PIXELS, GT)
    twice.update(PIXELS, GT)
    assert torch.equal(once.bin_count, twice.bin_count) and once.ece() == twice.ece()


def test_bin_edges_belong_to_the_lower_bin():
    # (0, 0.2], (0.2, 0.4], ...: 0.2 is in bin 0, 0.2001 in bin 1, 1.0 in the last, 0 in the first
    conf = torch.tensor([0.0, 0.2, 0.2001, 0.6, 1.0], dtype=torch.float64)
    assert bin_index(conf, 5).tolist() == [0, 0, 1, 2, 4]


def test_threshold_for_a_target_precision():
    by_tau = {}
    for tau in (0.5, 0.8, 0.9):
        by_tau[tau] = TrustCounts(2, 5, tau)
        by_tau[tau].update(PIXELS, GT)
    # tau 0.5: pseudo p0 (ok), p1 (wrong), p2 (ok), p3 (ok) -> 3/4; 0.8: 2/3; 0.9: p0, p3 -> 1
    assert threshold_for_precision(by_tau, 0.75) == 0.5
    assert threshold_for_precision(by_tau, 0.9) == 0.9
    assert threshold_for_precision(by_tau, 1.01) is None


class FixedLogits(torch.nn.Module):
    """A network whose logits are given (the log of PIXELS), whatever the image."""

    def forward(self, image):
        return PIXELS.log().expand(image.shape[0], -1, -1, -1)


def test_eval_writes_the_trust_of_the_evaluated_network(tmp_path):
    from semiseg.tasks import build_task

    evaluation = {"mode": "original", "task": "segmentation", "trust_tau": 0.8}
    task = build_task(["a", "b"], evaluation, crop_size=5)
    task.start(["student", "teacher"], "cpu")
    batch = {"image": torch.zeros(1, 3, 1, 5), "mask": GT}
    # the other network is predicted after the chosen one: its pixels must not count
    pred, mask = task.predict(FixedLogits(), batch)
    task.update("student", pred, mask, batch, chosen=True)
    pred, mask = task.predict(lambda image: torch.ones(1, 2, 1, 5), batch)
    task.update("teacher", pred, mask, batch, chosen=False)
    results = task.eval_results(task.compute("student"), tmp_path)
    trusted = results["pseudo_label_trust"]
    assert trusted["precision"] == {"a": 50.0, "b": 100.0}
    assert trusted["coverage"] == {"a": 100.0, "b": 66.67}
    # 15 bins of 1/15: each pixel alone, |1 - 0.7| + |0 - 0.85| + |1 - 0.9| + |1 - 0.95| = 1.3
    assert trusted["ece"] == 32.5 and trusted["tau"] == 0.8
    assert (tmp_path / "reliability.png").stat().st_size > 0


def test_eval_without_trust_writes_none(tmp_path):
    from semiseg.tasks import build_task

    task = build_task(["a", "b"], {"mode": "original", "task": "segmentation"}, crop_size=5)
    assert task.trust is None


def test_eval_reports_the_threshold_for_a_target_precision(tmp_path):
    from semiseg.tasks import build_task

    evaluation = {"mode": "original", "trust_tau": 0.8, "trust_target_precision": 0.75}
    task = build_task(["a", "b"], evaluation, crop_size=5)
    task.start(["student"], "cpu")
    batch = {"image": torch.zeros(1, 3, 1, 5), "mask": GT}
    pred, mask = task.predict(FixedLogits(), batch)
    task.update("student", pred, mask, batch, chosen=True)
    trusted = task.eval_results(task.compute("student"), tmp_path)["pseudo_label_trust"]
    # tau 0.5: 3 of 4 pseudo-labels right (0.75, see test_threshold_for_a_target_precision)
    assert trusted["tau_for_precision"] == {"target": 0.75, "tau": 0.5}
    assert "tau_for_precision" not in task_without_target(tmp_path)


def task_without_target(tmp_path):
    from semiseg.tasks import build_task

    task = build_task(["a", "b"], {"mode": "original", "trust_tau": 0.8}, crop_size=5)
    task.start(["student"], "cpu")
    batch = {"image": torch.zeros(1, 3, 1, 5), "mask": GT}
    pred, mask = task.predict(FixedLogits(), batch)
    task.update("student", pred, mask, batch, chosen=True)
    return task.eval_results(task.compute("student"), tmp_path)["pseudo_label_trust"]
