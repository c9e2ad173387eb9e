"""Pruning a caffemodel: plan + weights (+ earlier masks) -> masks and rows.

``prune_model`` is computation only; ``prune_file`` adds the file handling:
reading, checks, writing the pruned caffemodel and its masks atomically,
as a pair.
"""
from dataclasses import dataclass, replace
from pathlib import Path

from .atomic import atomic_paths
from .caffe_env import check_weights_fit, warn_unbuilt
from .caffe_proto import read_net_prototxt
from .caffemodel import check_finite, file_sha256, read_caffemodel, write_caffemodel
from .errors import InputError
from .layers import prunable_targets, tied_copies
from .maskfile import MaskSet, check_model_outputs, masks_for, masks_path_for, masks_read_for, save_masks
from .masks import compute_mask, layer_rng, zero_count
from .netcheck import built_layers, loaded_states


@dataclass(frozen=True)
class PrunedLayer:
    """One row of the per-layer table."""

    layer: str
    shared_by: tuple
    shape: tuple
    amount: float
    params: int
    pruned: int

    @property
    def sparsity(self):
        return self.pruned / self.params if self.params else 0.0


def check_shared_amounts(groups, amounts):
    """One amount for the layers of each group that share blob 0:
    ``groups`` [(param name, (layer, ...))], ``amounts`` {layer: amount}
    (SparsityPlan.amounts)."""
    for param_name, layers in groups:
        given = {amounts[n] for n in layers if n in amounts}
        if len(given) > 1:
            raise InputError(f"layers {', '.join(layers)} share param {param_name!r} "
                             f"but the plan gives them different amounts {sorted(given)}")


def prune_model(model, plan, seed=0, previous=None, meta=None):
    """Masks for ``model`` under ``plan``; returns (MaskSet, [PrunedLayer]).

    ``seed``: what the random criterion draws with where the plan has no
    seed of its own (SparsityPlan.seed_for).
    ``previous`` (a MaskSet of the same model) only ever loses kept
    positions: layers it masks stay masked even when the plan skips them.
    ``meta`` adds entries to the masks' metadata.
    """
    seed = plan.seed_for(seed)
    targets = prunable_targets(model)
    if not targets:
        raise InputError(f"{model.path}: no prunable layer (Convolution, Deconvolution or InnerProduct with weights)")
    all_names = [name for t in targets for name in t.layers]
    amounts = plan.amounts(all_names)
    earlier = previous.per_layer() if previous is not None else {}
    masks, shared_by, used_amounts, rows = {}, {}, {}, []
    check_shared_amounts([(target.param_name, target.layers) for target in targets], amounts)
    for target in targets:
        given = {amounts[n] for n in target.layers if n in amounts}
        prev = earlier.get(target.owner)
        if not given and prev is None:
            continue
        weights = model.layer(target.owner).blobs[0].data
        if given:
            amount = given.pop()
            mask = compute_mask(weights, plan.criterion, amount, previous=prev,
                                rng=layer_rng(seed, target.owner))
        else:
            amount, mask = None, prev
        masks[target.owner] = mask
        shared_by[target.owner] = target.layers
        used_amounts[target.owner] = amount
        rows.append(PrunedLayer(target.owner, target.layers, target.shape, amount,
                                int(mask.size), zero_count(mask)))
    if plan.verified is not None and plan.verified.get("weights_sha256", model.sha256()) != model.sha256():
        # What plan --verify measured was of other weights: no claim about these.
        plan = replace(plan, verified=None)
    meta = {"criterion": plan.criterion, "seed": seed, "amounts": used_amounts,
            "plan": plan.to_dict(), **(meta or {})}
    return MaskSet(masks, shared_by, model.structure(), meta), rows


def written_masks(model, maskset, net=None):
    """{(layer, blob index): mask} a pruned copy of ``model`` is written
    with: each masked layer's blob 0, and the copies other layers tie to it
    (layers.tied_copies) in their own shapes. A copy of another count is no
    tie Caffe makes; with ``net`` (the prototxt it is to run with), only
    ties the net makes too count: an Embed the net unties is its own."""
    tied_in_net = None if net is None else {
        (layer.name, index, spec.name) for state in loaded_states(net) for layer in built_layers(net, [state])
        for index, spec in enumerate(layer.param) if spec.name}
    written = {(layer, 0): mask for layer, mask in maskset.per_layer().items()}
    for target in prunable_targets(model):
        mask = maskset.masks.get(target.owner)
        for layer, index in tied_copies(model, target) if mask is not None else ():
            copy = model.layer(layer).blobs[index]
            if copy.data.size == mask.size and (tied_in_net is None
                                                 or (layer, index, target.param_name) in tied_in_net):
                written[layer, index] = mask.reshape(copy.shape)
    return written


def prune_file(weights, output, plan, seed=0, masks=None, model=None, force=False,
               allow_python_layers=False, others=(), masks_option="--masks"):
    """Prune the caffemodel ``weights`` into ``output`` and its masks file.

    masks: earlier masks of ``weights`` (default: its .masks.h5 if present),
    given with the caller's ``masks_option`` (None: it has none).
    model: a net prototxt that must fit the weights.
    others: more inputs the outputs may not replace (the plan file).
    Returns (rows, masks path).
    """
    weights, output = Path(weights), Path(output)
    source = read_caffemodel(weights)
    check_model_outputs(output, [weights, masks_read_for(weights, masks), model, *others], force)
    net = unbuilt = None
    if model is not None:
        net = read_net_prototxt(model, allow_python_layers)
        unbuilt = check_weights_fit(net, model, source, weights)  # pruning keeps every shape
    previous = masks_for(source, masks, option=masks_option)
    check_finite(source)
    maskset, rows = prune_model(source, plan, seed=seed, previous=previous,
                                meta={"source": weights.name, "source_sha256": source.sha256()})
    warn_unbuilt(unbuilt)
    masks_out = masks_path_for(output)
    with atomic_paths(output, masks_out) as (model_tmp, masks_tmp):
        write_caffemodel(source, model_tmp, masks=written_masks(source, maskset, net))
        save_masks(masks_tmp, maskset, file_sha256(model_tmp))
    return rows, masks_out
