"""Batched augmentations that run inside the training step, on any device."""
