"""Data: COCO sets and their converters, the one image decoder, augmentation presets, tiles at native
resolution, and the borrow benchmark. Nothing here imports the model."""
