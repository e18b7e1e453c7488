"""Which images to label next (select_images.py) and how far to trust the pseudo-labels.

- `uncertainty`: per-pixel maps (entropy, margin, disagreement) and their per-image means;
- `strategies`: each strategy a pure function from per-image scores or features to the chosen
  pool indices (unit-tested on hand-made scores);
- `scoring`: the checkpoint's network(s) over the unlabeled pool;
- `outputs`: the next round's split, scores.csv, the contact sheet, select.json;
- `label_studio`: the chosen images with the model's prediction as pre-annotations;
- `trust`: pseudo-label precision and coverage per class, reliability bins and ECE.
"""
