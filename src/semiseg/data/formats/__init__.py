"""One module per data format: how a split becomes the labeled, unlabeled and validation sets.

Each module has `setup(datamodule, folder, num_classes)` (training), `val_set(dataset_cfg,
num_classes)` (eval.py), the `AUGMENT` it takes and whether it takes a `source=` dataset. A new
format is a module here and one entry in FORMATS.
"""

from semiseg.data.formats import h5, natural, pairs

FORMATS = {"images": natural, "h5": h5, "cd": pairs}
