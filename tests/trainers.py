"""A Lightning Trainer for tests that drive a module directly: on the CPU, quiet (no logger,
progress bar or model summary), no sanity validation and no checkpoints unless the test asks."""

import lightning as L

QUIET = {
    "accelerator": "cpu",
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
}


def quiet_trainer(**kwargs) -> L.Trainer:
    return L.Trainer(**{**QUIET, **kwargs})
