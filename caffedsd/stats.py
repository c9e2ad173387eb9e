"""Per-layer statistics of a caffemodel: shapes, parameters, non-zeros, bytes.

All counts are Python integers: a float32 counter stops at 2**24, which is
how one Deep Compression fork reported "sparsity 0.444" for a 37.7M-weight
layer. Shared blobs (``param { name }``) count once in the totals.
"""
import numpy as np

from .caffemodel import nonfinite_counts, read_caffemodel
from .layers import PRUNABLE_TYPES
from .maskfile import masks_for
from .masks import iter_chunks, zero_count


def count_nonzero(array):
    return sum(int(np.count_nonzero(part)) for part in iter_chunks(array))


def model_stats(model, maskset=None):
    """{"layers": [row, ...], "totals": {...}} as plain data."""
    per_layer_masks = maskset.per_layer() if maskset is not None else {}
    nonfinite = nonfinite_counts(model)
    rows = []
    seen_params = set()
    totals = {"params": 0, "nonzero": 0, "bytes": 0, "masked": 0 if maskset is not None else None}
    weights_total, weights_nonzero = 0, 0  # of the prunable weights, as prune's sparsity counts
    for layer in model.layers:
        if not layer.blobs:
            continue
        params = sum(int(b.data.size) for b in layer.blobs)
        counts = [count_nonzero(b.data) for b in layer.blobs]  # once: a VGG16 fc6 is 392 MiB
        nonzero = sum(counts)
        nbytes = sum(int(b.data.nbytes) for b in layer.blobs)
        mask = per_layer_masks.get(layer.name)
        masked = None if mask is None else zero_count(mask)
        weights = layer.blobs[0].data
        weights_nonzero_here = counts[0] if layer.type in PRUNABLE_TYPES else None
        rows.append({
            "layer": layer.name,
            "type": layer.type,
            "shapes": [list(b.shape) for b in layer.blobs],
            "params": params,
            "nonzero": nonzero,
            "sparsity": (params - nonzero) / params if params else 0.0,
            # Of the weights pruning works on; a BatchNorm's blob 0 is its running mean.
            "weight_sparsity": ((weights.size - weights_nonzero_here) / weights.size if weights.size else 0.0)
            if layer.type in PRUNABLE_TYPES else None,
            "weights_nonzero": weights_nonzero_here,
            "masked": masked,
            "bytes": nbytes,
            "nonfinite": sum(nonfinite.get((layer.name, i), 0) for i in range(len(layer.blobs))),
        })
        for index, blob in enumerate(layer.blobs):
            name = layer.param_names[index]
            if name:
                if name in seen_params:
                    continue
                seen_params.add(name)
            totals["params"] += int(blob.data.size)
            totals["nonzero"] += counts[index]
            totals["bytes"] += int(blob.data.nbytes)
            if index == 0 and layer.type in PRUNABLE_TYPES:
                weights_total += int(blob.data.size)
                weights_nonzero += counts[0]
        if masked is not None and layer.name in (maskset.masks if maskset else {}):
            totals["masked"] += masked
    totals["nonfinite"] = sum(nonfinite.values())
    totals["sparsity"] = (totals["params"] - totals["nonzero"]) / totals["params"] if totals["params"] else 0.0
    totals["weight_sparsity"] = (weights_total - weights_nonzero) / weights_total if weights_total else None
    totals["file_bytes"] = model.path.stat().st_size
    return {"weights": str(model.path), "layout": model.layout, "layers": rows, "totals": totals}


def weights_stats(weights_path, masks_path=None):
    """model_stats of a caffemodel file and its masks (if given or beside it)."""
    model = read_caffemodel(weights_path)
    return model_stats(model, masks_for(model, masks_path))
