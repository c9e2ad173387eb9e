"""Trained quantization: fine-tuning shared weights (Deep Compression).

Every kept weight of a layer belongs to one of 2^bits clusters and takes its
centroid's value. At a pycaffe Solver's on_gradients_ready, each member's
gradient is replaced by the sum of its cluster's gradients, so all members
receive the same update and the centroid moves by the summed gradient, as
in the paper. Caffe's update (weight decay, momentum) is exact arithmetic
only in principle: BLAS rounds its vector lanes and its tail apart, so equal
members drift apart by a float step or so, and a 5-bit layer held 38 values
after 20 steps, which compress (k-means again) then merged. So before each
forward, and at the end, every member is set to its cluster's mean, which
leaves members that are equal as they are. Pruned weights belong to no
cluster; the MaskEnforcer, which runs after this hook, keeps them at 0.0.
"""
import numpy as np

from .coding import share_weights
from .hooks import ORDER_SHARING, Hook


def cluster(weights, keep, bits):
    """(labels, codebook): labels per position (-1 where not kept)."""
    labels = np.full(np.size(weights), -1, dtype=np.int64)
    shared = share_weights(weights, keep, bits)
    labels[shared.positions] = shared.labels
    return labels, shared.codebook


class WeightSharing(Hook):
    """Holds clusters of a Solver's weights shared while training: a hook
    (caffedsd.hooks) run before the masks. The per-cluster gradient sums run
    on whichever backend the solver's dispatcher has (numpy or CuPy)."""

    order = ORDER_SHARING

    def __init__(self, clusters):
        # {layer: (labels, codebook)} from ``cluster``
        self.clusters = clusters

    def bind(self, net, backend):
        targets = []
        for name, (labels, codebook) in self.clusters.items():
            blob = net.params[name][0]
            kept = np.flatnonzero(labels >= 0)
            data = backend.data(blob)
            # Start from the centroids.
            data[backend.asarray(kept)] = backend.asarray(codebook[labels[kept]])
            members = np.maximum(np.bincount(labels[kept], minlength=codebook.size), 1).astype(np.float64)
            targets.append((blob, backend.asarray(kept), backend.asarray(labels[kept]), codebook.size,
                            backend.asarray(members)))
        self._targets = tuple(targets)
        self._backend = backend

    def on_start(self):
        self._share_values()

    def settle(self):
        self._share_values()

    def _share_values(self):
        xp = self._backend.xp
        for blob, kept, labels, count, members in self._targets:
            data = self._backend.data(blob)
            means = xp.bincount(labels, weights=data[kept].astype(xp.float64), minlength=count) / members
            data[kept] = means[labels].astype(xp.float32)

    def on_gradients_ready(self):
        xp = self._backend.xp
        for blob, kept, labels, count, _ in self._targets:
            diff = self._backend.diff(blob)
            sums = xp.bincount(labels, weights=diff[kept], minlength=count)
            diff[kept] = sums[labels]
