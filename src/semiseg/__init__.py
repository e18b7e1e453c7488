"""Semi-supervised semantic segmentation on PyTorch Lightning and Hydra."""
