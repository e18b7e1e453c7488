"""Change detection (WHU-CD, LEVIR-CD): the changed-class IoU selects best.ckpt, as the public
UniMatch remote-sensing code; F1, precision, recall and overall accuracy come from the same
summed counts (evaluation/change.py). A pair is predicted whole, as one 6-channel image."""

from __future__ import annotations

from semiseg.evaluation import change as change_eval
from semiseg.tasks.segmentation import SegmentationTask


class ChangeTask(SegmentationTask):
    name = "change_detection"
    selection = "iou_changed"
    selection_label = "changed IoU"
    rgb_panels = False  # a pair is not an RGB picture

    def scores(self, confusion):
        out = super().scores(confusion)
        out["change"] = change_eval.change_percent(confusion)
        return out

    def history_entry(self, step, scores):
        return {**super().history_entry(step, scores), **scores["change"]}

    def logged(self, scores):
        return {**super().logged(scores), **{f"val/{k}": v for k, v in scores["change"].items()}}

    def line(self, step, scores, network, best):
        c = scores["change"]
        also = "".join(f", {n} {v:.2f}" for n, v in scores["others"].items())
        return (
            f"step {step}: val changed IoU {c['iou_changed']:.2f}, F1 {c['f1']:.2f}, precision "
            f"{c['precision']:.2f}, recall {c['recall']:.2f}, OA {c['overall_accuracy']:.2f} "
            f"(mIoU {scores['miou']:.2f}; {network}{also}; best changed IoU {best:.2f})"
        )

    def train_results(self, history, last):
        out = super().train_results(history, last)
        out["change_convention"] = change_eval.CONVENTION
        scored = [h for h in history if "iou_changed" in h]
        if not scored:
            return out
        best = self.best_entry(history)
        out.update(
            val_iou_changed=scored[-1]["iou_changed"],
            best_val_iou_changed=best["iou_changed"],
            change_scores={k: scored[-1][k] for k in change_eval.KEYS},
            best_change_scores={"step": best["step"], **{k: best[k] for k in change_eval.KEYS}},
        )
        return out

    def eval_results(self, scores, out_dir):
        results = super().eval_results(scores, out_dir)
        change = scores["change"]
        results.update(
            change_scores=change,
            iou_changed=change["iou_changed"],
            change_convention=change_eval.CONVENTION,
        )
        return results

    def eval_lines(self, results):
        c = results["change_scores"]
        return [
            *super().eval_lines(results)[:1],
            f"changed IoU {c['iou_changed']}, F1 {c['f1']}, precision {c['precision']}, "
            f"recall {c['recall']}, overall accuracy {c['overall_accuracy']}",
            *super().eval_lines(results)[1:],
        ]

    def last_state(self, scores):
        return {**super().last_state(scores), "change": scores["change"]}

    def tables(self, state):
        tables = super().tables(state)
        change = state.get("change", {})
        rows = [[key, change.get(key)] for key in change_eval.KEYS]
        tables["val/change_scores"] = (["score", "value"], rows)
        return tables
