"""Trained quantization: fine-tuning shared weights (Deep Compression).

Every kept weight of a layer belongs to one of 2^bits clusters and takes its
centroid's value. At a pycaffe Solver's on_gradients_ready, each member's
gradient is replaced by the sum of its cluster's gradients, so all members
receive the same update (momentum and weight decay included, since they
start equal) and stay equal: the centroid moves by the summed gradient, as
in the paper. Pruned weights belong to no cluster; a MaskEnforcer attached
after this keeps them at 0.0.
"""
import numpy as np

from .compression import share_weights


def cluster(weights, keep, bits):
    """(labels, codebook): labels per position (-1 where not kept)."""
    labels = np.full(np.size(weights), -1, dtype=np.int64)
    shared = share_weights(weights, keep, bits)
    labels[shared.positions] = shared.labels
    return labels, shared.codebook


class WeightSharing:
    """Holds clusters of a Solver's weights shared while training."""

    def __init__(self, clusters):
        # {layer: (labels, codebook)} from ``cluster``
        self.clusters = clusters
        self._targets = ()

    def attach(self, solver):
        targets = []
        for name, (labels, codebook) in self.clusters.items():
            blob = solver.net.params[name][0]
            kept = np.flatnonzero(labels >= 0)
            flat = blob.data.reshape(-1)
            flat[kept] = codebook[labels[kept]]  # start from the centroids
            targets.append((blob, kept, labels[kept], codebook.size))
        self._targets = tuple(targets)
        solver.add_callback(lambda: None, self._on_gradients_ready)
        return self

    def detach(self):
        self._targets = ()

    def _on_gradients_ready(self):
        for blob, kept, labels, count in self._targets:
            diff = blob.diff.reshape(-1)
            sums = np.bincount(labels, weights=diff[kept], minlength=count)
            diff[kept] = sums[labels]
