"""One rank of test_fst.py's DDP test (run by torchrun): rank 1's second loss is NaN; every rank
writes what it did to <out>/rank<N>.json."""

import json
import os
import sys
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))
from test_fst import Counting, NaNAt, _module, _samples  # noqa: E402


class Module(NaNAt, Counting):
    pass


def main(out: Path) -> None:
    rank = int(os.environ["RANK"])
    Module.calls = Module.backwards = 0
    Module.at = 1 if rank == 1 else -1  # rank 1 only: its second loss (the 2nd virtual step)
    module = _module(Module)
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_steps=2, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, DataLoader(_samples(8), batch_size=2))
    params = torch.cat([p.detach().flatten() for p in module.model.parameters()])
    record = {
        "backwards": Module.backwards,
        "global_step": trainer.global_step,
        "nonfinite_steps": module.nonfinite_steps,
        "ema_updates": module.ema_updates,
        "params": params.tolist(),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
