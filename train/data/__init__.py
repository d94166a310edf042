"""Data: sources, decoding, augmentation and the batches fed to the steps."""
