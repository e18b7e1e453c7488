"""Split files, transforms, datasets and the embedded toy dataset."""
