"""Checkpoints that survive crashes, full disks and preemption, and loading them for inference.

Import from the module of the concern (this package re-exports nothing):
- `io`: atomic writes (`AtomicCheckpointIO`, `copy_atomic`), `peek`, the file names LAST and BEST.
- `preemption`: `Sigterm` turns SIGTERM into `Preempted` (exit status 143), `launcher_signal`.
- `callback`: `RunCheckpoints`, the Lightning callback that keeps last.ckpt and best.ckpt.
- `resume`: `resume_checkpoint` (`resume=auto|PATH`) and `config_mismatch` (IDENTITY_KEYS).
- `load`: a trained checkpoint and its network for eval, predict and export (`load_checkpoint`,
  `model_from_checkpoint`, `check_weights`, `inference_device`).
- `released`: the authors' public files (UniMatch V2's `model` / `model_ema`, V1's `model`, bare
  state dicts) read as an in-memory checkpoint for the command line's model and dataset.
"""
