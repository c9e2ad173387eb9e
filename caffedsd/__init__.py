"""caffedsd: Dense-Sparse-Dense training and pruning for stock BVLC Caffe models."""

__version__ = "0.1.0"
