"""Low-rank decomposition of trained Convolution and InnerProduct layers.

A Convolution of N filters of C x k x k is the N x (C k k) matrix W = U S V^T.
At rank r it becomes two layers:
  NAME/lowrank  a k x k convolution with r filters (rows of S_r^1/2 V_r^T),
                the original stride, pad, dilation, and no bias;
  NAME          a 1 x 1 convolution with N outputs (U_r S_r^1/2) and the
                original bias, so the layer's top and everything after it
                keep their names.
A convolution with ``group: g`` is g independent blocks of N/g x (C/g k k):
each block is split at the same rank r, giving a k x k convolution with r*g
outputs and a 1 x 1 convolution with N outputs, both with ``group: g``;
exact at full rank. An InnerProduct (N x C) becomes an r-output InnerProduct
without bias and an N-output one with the bias, both with the layer's
``axis`` and ``transpose`` (whose weights are stored C x N). The discarded
energy is exactly sum_{i>r} s_i^2 over the blocks, the squared Frobenius
error.

Layers whose weights are one blob (``param { name: "w" }``) are split at one
rank, their first halves sharing "w/lowrank" and their second halves "w";
where they would not all be split alike, none is.

A split has r (C k^2 + N) weights where the layer had N C k^2 / g, and the
same ratio of multiply-adds. A layer is split only where that is smaller in
both, unless --rank forces its rank; a depthwise convolution of one filter
per group (C/g = N/g = 1, MobileNet's) never gets smaller, so it is left as
it is; one of m filters per group may, when r (k^2 + m) < m k^2.
"""
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .caffe_proto import LayerParameter, NetParameter
from .errors import InputError, OutputError
from .globrules import GlobRules, Rule, number_list
from .report import NETS_WRITTEN, number_text
from .runfolder import read_own_text
from .values import is_real, is_whole

DECOMPOSABLE = ("Convolution", "InnerProduct")
# Columns per slice when accumulating a Gram matrix (bounds the float64 copy).
_GRAM_BLOCK = 2048


def filter_layout(layer_param):
    """(groups, transpose): how a Convolution's or InnerProduct's weight blob
    holds its filters (see ``blocks``)."""
    if layer_param.type == "Convolution":
        return max(1, int(layer_param.convolution_param.group)), False
    if layer_param.type == "InnerProduct":
        return 1, bool(layer_param.inner_product_param.transpose)
    return 1, False


def groups_of(layer):
    """The ``group`` of a Convolution layer (1 for InnerProduct)."""
    return filter_layout(layer.param)[0]


def blocks(weights, groups=1, transpose=False):
    """The matrices whose rows are a layer's filters, views of ``weights``
    (a NumPy or CuPy array): the g blocks of N/g x (C/g k k) of a grouped
    layer, or the N x C of a ``transpose`` InnerProduct's C x N blob."""
    w = weights if hasattr(weights, "reshape") else np.asarray(weights)
    matrix = w.reshape(w.shape[0], -1)
    if transpose:
        return [matrix.T]
    if not is_whole(groups) or groups < 1:
        # Caffe's own check (group > 0); 0 divided by zero here.
        raise InputError(f"group {groups!r}: must be a whole number >= 1")
    if matrix.shape[0] % groups:
        raise InputError(f"{matrix.shape[0]} outputs do not split into {groups} groups")
    step = matrix.shape[0] // groups
    return [matrix[i * step:(i + 1) * step] for i in range(groups)]


def singular_values(matrix):
    """Singular values of a matrix (or of blob-shaped weights, as N x rest),
    largest first: the square roots of the eigenvalues of the smaller Gram
    matrix, accumulated in float64 over column slices. No singular vectors
    are formed, and no float64 copy of the whole matrix is made."""
    m = np.asarray(matrix)
    m = m.reshape(m.shape[0], -1)
    values = np.linalg.eigvalsh(_gram(m.T if m.shape[0] > m.shape[1] else m))[::-1]
    return np.sqrt(np.clip(values, 0, None))


def _gram(m):
    """m m^T in float64, accumulated over column slices of m."""
    gram = np.zeros((m.shape[0], m.shape[0]))
    for i in range(0, m.shape[1], _GRAM_BLOCK):
        part = np.asarray(m[:, i:i + _GRAM_BLOCK], dtype=np.float64)
        gram += part @ part.T
    return gram


def _factor_block(block, rank):
    """(first, second, discarded energy) of an N x M matrix at ``rank``:
    second @ first is its best rank-r approximation U_r S_r V_r^T, each
    factor carrying sqrt(S_r). From the eigenpairs of the smaller Gram
    matrix, as singular_values: a float64 SVD of VGG16's 4096 x 25088 fc6
    took 4.5 GB and 5 minutes, for 256 of its 4096 singular vectors. The
    other side's vectors come from one product with the matrix, by slices."""
    tall = block.shape[0] > block.shape[1]
    m = block.T if tall else block  # n x M, n <= M
    values, vectors = np.linalg.eigh(_gram(m))
    values, vectors = np.clip(values[::-1], 0, None), vectors[:, ::-1]
    roots = np.sqrt(np.sqrt(values[:rank]))  # sqrt(s)
    # Eigenvalues at the Gram matrix's rounding are singular values of 0,
    # whose halves an SVD's sqrt(0) makes 0: so are they here.
    live = values[:rank] > values[0] * len(values) * np.finfo(np.float64).eps
    near = vectors[:, :rank] * np.where(live, roots, 0.0)  # U_r sqrt(S_r): n x r
    scaled = vectors[:, :rank] * np.where(live, 1 / np.where(live, roots, 1.0), 0.0)
    far = np.empty((rank, m.shape[1]), np.float32)  # U_r^T m / sqrt(S_r) = sqrt(S_r) V_r^T: r x M
    for i in range(0, m.shape[1], _GRAM_BLOCK):
        far[:, i:i + _GRAM_BLOCK] = scaled.T @ np.asarray(m[:, i:i + _GRAM_BLOCK], dtype=np.float64)
    near = near.astype(np.float32)
    discarded = float(values[rank:].sum())
    return (near.T, far.T, discarded) if tall else (far, near, discarded)


def check_energy(energy):
    """An --energy level: a fraction of sum s_i^2 in (0, 1] (NaN is none)."""
    if not is_real(energy):
        raise InputError(f"--energy {energy!r}: must be a number in (0, 1]")
    if not 0 < energy <= 1:
        raise InputError(f"--energy {number_text(energy)}: must be in (0, 1]")
    return energy


def rank_for_energy(values, energy):
    """Smallest r whose top singular values hold ``energy`` of sum s_i^2."""
    check_energy(energy)
    squares = np.asarray(values, dtype=np.float64) ** 2
    total = squares.sum()
    if total == 0:
        return 1
    kept = np.cumsum(squares) / total
    return int(min(np.searchsorted(kept, energy - 1e-12) + 1, len(values)))


def group_rank_for_energy(weights, groups, energy):
    """The rank (per group) at which every group keeps ``energy``."""
    return max(rank_for_energy(singular_values(b), energy) for b in blocks(weights, groups))


def factor(weights, rank, groups=1, transpose=False):
    """(first, second, discarded energy) of a blob at ``rank`` per group:
    first is (r g) x (C/g k k) shaped like a k x k conv (or r x C), second
    is N x r; group i's rows of first feed group i's rows of second. A
    ``transpose`` InnerProduct's C x N blob gives C x r and r x N."""
    w = np.asarray(weights)
    if transpose:
        first, second, discarded = factor(w.T, rank)
        return np.ascontiguousarray(first.T), np.ascontiguousarray(second.T), discarded
    firsts, seconds, discarded = [], [], 0.0
    parts = blocks(w, groups)
    limit = min(min(block.shape) for block in parts)
    if not is_whole(rank) or not 1 <= rank <= limit:
        raise InputError(f"rank {rank!r}: must be a whole number in 1..{limit} (the largest of this blob"
                         f"{' per group' if groups > 1 else ''})")
    for block in parts:
        first, second, lost = _factor_block(block, rank)
        firsts.append(first)
        seconds.append(second)
        discarded += lost
    first = np.concatenate(firsts).reshape((rank * groups,) + w.shape[1:])
    return np.ascontiguousarray(first), np.ascontiguousarray(np.concatenate(seconds)), discarded


@dataclass(frozen=True)
class Decomposition:
    layer: str
    type: str
    rank: int
    max_rank: int
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    discarded_energy: float
    groups: int = 1
    # The layer whose weights this one's are (param { name }), and how many
    # of this row's parameters before and after an earlier row holds (its
    # weights, and a bias shared too): totals count those once. Its MACs
    # are its own.
    shares_with: str = ""
    shared_before: int = 0
    shared_after: int = 0


@dataclass(frozen=True)
class Skipped:
    layer: str
    type: str
    reason: str


def _layout(layer):
    """What a split's blob shapes follow besides the weights' shape and the
    rank, as the prototxt would say it."""
    if layer.type == "InnerProduct":
        return f"transpose: {str(bool(layer.param.inner_product_param.transpose)).lower()}"
    return f"group: {groups_of(layer)}"


def shared_weights(nets):
    """[(param name, [layer names])] of the layers whose weights (first blob)
    are one blob through ``param { name }`` in any of the NetParameters
    ``nets``, two or more layers each."""
    parent = {}

    def root(name):
        while parent.setdefault(name, name) != name:
            name = parent[name]
        return name

    labels = {}
    for net in nets:
        owners = {}
        for layer in net.layer:
            if layer.param and layer.param[0].name:
                owners.setdefault(layer.param[0].name, []).append(layer.name)
        for label, names in owners.items():
            for name in names:
                labels.setdefault(name, label)
                parent[root(name)] = root(names[0])
    groups = {}
    for name in parent:
        groups.setdefault(root(name), []).append(name)
    return [(labels[names[0]], names) for names in groups.values() if len(names) > 1]


def _split_alike(model, chosen, skipped, ranks, sharing):
    """Leave as is each layer sharing weights with one that would not be
    split at the same rank with the same layout: their halves could not
    share blobs. A --rank given to such a layer is refused instead."""
    for label, names in sharing:
        members = [name for name in names if name in model]
        left = []  # taken out of chosen once the whole group is judged
        for name in [n for n in members if n in chosen]:
            layout = _layout(model.layer(name))
            others = []
            for other in members:
                if chosen.get(other) is None:
                    others.append(f"{other}, which would be left as is")
                elif _layout(model.layer(other)) != layout:
                    others.append(f"{other}, whose halves would have other shapes "
                                  f"({_layout(model.layer(other))})")
                elif chosen[other] != chosen[name]:
                    others.append(f"{other}, which would get rank {chosen[other]}")
            if not others:
                continue
            reason = f"shares its weights ('{label}') with " + "; ".join(others)
            if name in ranks:
                raise InputError(f"--rank {name}={ranks[name]}: {name} {reason}; "
                                 "split otherwise, their halves could not share weights")
            skipped.append(Skipped(name, model.layer(name).type, reason))
            left.append(name)
        for name in left:
            del chosen[name]


def max_rank(weights, groups=1):
    """The largest rank of one group's block."""
    return min(weights.shape[0] // groups, int(np.prod(weights.shape[1:])))


def split_weights(weights, rank, groups=1):
    """Weights of the layer before and of its split at ``rank`` (biases left out).
    The multiply-adds scale the same way: both layers run at the same positions."""
    n, rest = weights.shape[0], int(np.prod(weights.shape[1:]))
    return n * rest, rank * groups * rest + n * rank


def _why_not(layer, rank, groups):
    w = layer.blobs[0].data
    before, after = split_weights(w, rank, groups)
    if after < before:
        return None
    smallest = split_weights(w, 1, groups)[1]
    if smallest >= before and groups > 1 and w.shape[1] == 1:
        return f"depthwise (group {groups}, 1 input channel per filter): no split is smaller"
    if smallest >= before:
        return f"no split is smaller, even at rank 1 ({smallest} weights vs {before})"
    return (f"rank {rank} of {max_rank(w, groups)} would not be smaller "
            f"({after} weights vs {before}; MACs in the same ratio)")


def choose_ranks(model, layers, energy=None, ranks=None, include_fc=False, sharing=()):
    """({layer: rank per group}, [Skipped]) for the chosen layers of a CaffeModel.

    A layer whose split at the energy's rank would not be smaller in weights
    and multiply-adds is skipped; a --rank is decomposed as given. Layers
    sharing weights (``sharing``, as shared_weights gives) are split alike
    or not at all.
    """
    ranks = dict(ranks or {})
    kinds = ("Convolution", "InnerProduct") if include_fc else ("Convolution",)
    candidates = [layer for layer in model.layers if layer.type in kinds and layer.blobs]
    if layers:
        chosen = GlobRules([(p,) for p in layers], "--layers").select([layer.name for layer in candidates],
                                                                       "decomposable layer")
        candidates = [layer for layer in candidates if layer.name in chosen]
    by_name = {layer.name: layer for layer in candidates}
    for name, rank in ranks.items():
        if name not in by_name:
            known = {layer.name: layer.type for layer in model.layers if layer.type in DECOMPOSABLE and layer.blobs}
            hint = ""
            if known.get(name) == "InnerProduct" and not include_fc:
                hint = " (InnerProduct layers need --fc)"
            elif name in known:
                hint = f" among those --layers {' '.join(layers)} chooses"
            raise InputError(f"--rank {name}={rank}: no decomposable layer {name!r}{hint}")
        layer = by_name[name]
        groups = groups_of(layer)
        top = max_rank(layer.blobs[0].data, groups)
        if rank < 1 or rank > top:
            per = " per group" if groups > 1 else ""
            raise InputError(f"--rank {name}={rank}: must be between 1 and {top}{per} for {name} "
                             f"({list(layer.blobs[0].shape)}{f', group {groups}' if groups > 1 else ''})")
    if energy is None and not ranks:
        raise InputError("no layer to decompose: give --energy or --rank")
    chosen, skipped = {}, []
    for layer in candidates:
        groups = groups_of(layer)
        if layer.name in ranks:
            chosen[layer.name] = ranks[layer.name]
            continue
        if energy is None:
            continue
        w = layer.blobs[0].data
        rank = group_rank_for_energy(w, groups, energy)
        reason = _why_not(layer, rank, groups)
        if reason is None:
            chosen[layer.name] = rank
        else:
            skipped.append(Skipped(layer.name, layer.type, reason))
    _split_alike(model, chosen, skipped, ranks, sharing)
    return chosen, skipped


def _split_layer(param, rank):
    """The two LayerParameters replacing ``param`` at ``rank`` (per group)."""
    first, second = LayerParameter(), LayerParameter()
    first.CopyFrom(param)
    second.CopyFrom(param)
    del first.blobs[:], second.blobs[:]
    first.name = f"{param.name}/lowrank"
    first.ClearField("top")
    # A Convolution applies its weights to each of its bottoms, a top each.
    first.top.extend(_first_tops(param))
    second.ClearField("bottom")
    second.bottom.extend(first.top)
    # Learning-rate specs: the first factor takes the weight's, the second both.
    del first.param[1:]
    if first.param and first.param[0].name:
        # A named weight blob is shared (or may be): the second halves, N x r
        # in every sharer, keep the name; the first halves share another.
        first.param[0].name += "/lowrank"
    if param.type == "Convolution":
        groups = max(1, param.convolution_param.group)
        first.convolution_param.num_output = rank * groups
        first.convolution_param.bias_term = False
        first.convolution_param.ClearField("bias_filler")
        conv = second.convolution_param
        for field in ("kernel_size", "stride", "pad", "dilation"):
            conv.ClearField(field)
        for field in ("kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w"):
            conv.ClearField(field)
        conv.kernel_size.append(1)
    else:
        first.inner_product_param.num_output = rank
        first.inner_product_param.bias_term = False
        first.inner_product_param.ClearField("bias_filler")
        if param.inner_product_param.axis < 0:
            # The first half's top ends at the axis it was given (N x ... x r):
            # counted from the end, its r is the last axis, not the same one.
            second.inner_product_param.axis = -1
    return first, second


def _first_tops(param):
    """The tops of a split's first half: NAME/lowrank, or one per bottom."""
    if len(param.bottom) <= 1:
        return [f"{param.name}/lowrank"]
    return [f"{param.name}/lowrank_{i}" for i in range(len(param.bottom))]


def check_split_names(net, path, ranks):
    """Refuse a split whose new names ``net`` (at ``path``) has already: its
    first half, NAME/lowrank, as a layer or blob (a net decomposed before,
    whose 1 x 1 half NAME is split again), or its weights' shared name
    w/lowrank. Caffe would abort on the output: a duplicate layer cannot be
    filled, a duplicate top is produced twice, a shared name of two shapes
    is refused."""
    layers = {layer.name for layer in net.layer}
    blobs = {blob for layer in net.layer for blob in (*layer.top, *layer.bottom)}
    params = {spec.name for layer in net.layer for spec in layer.param if spec.name}
    for layer in net.layer:
        if layer.name not in ranks or layer.type not in DECOMPOSABLE:
            continue
        first, second = _split_layer(layer, ranks[layer.name])
        taken = [(first.name, "a layer") if first.name in layers else None,
                 *((top, "a blob") if top in blobs else None for top in first.top),
                 (first.param[0].name, "a shared weight name") if first.param and first.param[0].name and
                 first.param[0].name in params else None]
        taken = [each for each in taken if each]
        if taken:
            name, what = taken[0]
            raise InputError(f"{path}: layer {layer.name!r} would be split into {name!r}, but the net has "
                             f"{what} of that name already, and Caffe would refuse the output (split before? "
                             "decompose the original layer instead)")


def rewrite_net(net, ranks):
    """A copy of NetParameter ``net`` with each layer in ``ranks`` split."""
    out = NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    for layer in net.layer:
        if layer.name in ranks and layer.type in DECOMPOSABLE:
            out.layer.extend(_split_layer(layer, ranks[layer.name]))
        else:
            out.layer.add().CopyFrom(layer)
    return out


def decomposed_layers(model, ranks):
    """[(LayerParameter, [arrays])] of the decomposed model's weights, and
    the discarded energy per layer."""
    layers, discarded = [], {}
    for layer in model.layers:
        if not layer.blobs:
            continue
        arrays = [np.asarray(b.data) for b in layer.blobs]
        if layer.name not in ranks:
            layers.append((layer.param, arrays))
            continue
        rank = ranks[layer.name]
        groups, transpose = filter_layout(layer.param)
        first, second, discarded[layer.name] = factor(arrays[0], rank, groups, transpose)
        p1, p2 = _split_layer(layer.param, rank)
        if layer.type == "Convolution":  # a 1 x 1 (x 1 ...) kernel over each spatial axis
            second = second.reshape(second.shape + (1,) * (arrays[0].ndim - 2))
        layers.append((p1, [first]))
        layers.append((p2, [second] + arrays[1:]))
    return layers, discarded


def output_positions(net, layer_name, layer_type):
    """How many times per example a layer of a pycaffe Net applies its
    weights: the spatial size of a Convolution's tops (one per bottom); for
    an InnerProduct, the axes between the batch and its ``axis`` (its top
    ends at that axis)."""
    shapes = [net.blobs[top].data.shape for top in net.top_names[layer_name]]
    if layer_type == "Convolution":
        return sum(int(np.prod(shape[2:])) for shape in shapes)
    return int(np.prod(shapes[0][1:-1]))


def summarize(model, ranks, positions, discarded):
    rows, owners = [], {}
    for name, rank in ranks.items():
        layer = model.layer(name)
        w = layer.blobs[0].data
        groups = groups_of(layer)
        bias = sum(b.data.size for b in layer.blobs[1:])
        before, after = split_weights(w, rank, groups)
        # Layers sharing weights are split alike (_split_alike): the halves are shared too.
        names = layer.param_names
        owner = owners.get(names[0], "") if names[0] else ""
        held = sum(b.data.size for b, key in zip(layer.blobs[1:], names[1:]) if key and key in owners)
        for key in names:
            if key:
                owners.setdefault(key, name)
        rows.append(Decomposition(name, layer.type, rank, max_rank(w, groups), int(before + bias),
                                  int(after + bias), before * positions[name], after * positions[name],
                                  discarded[name], groups, owner,
                                  int((before if owner else 0) + held), int((after if owner else 0) + held)))
    return rows


def parse_rank(text):
    """(layer, rank) from --rank LAYER=RANK."""
    rule = Rule.parse(text, "--rank", "RANK", "conv2=12", int, key_name="LAYER")
    if rule.value < 1:
        raise InputError(f"--rank {text!r}: a rank must be at least 1")
    return rule.pattern, rule.value


def parse_ranks(texts):
    """{layer: rank} from --rank LAYER=RANK options; a layer given twice is
    refused rather than the last one winning unseen."""
    ranks = {}
    for text in texts:
        layer, rank = parse_rank(text)
        if layer in ranks:
            raise InputError(f"--rank {text!r}: {layer} has --rank {layer}={ranks[layer]} already")
        ranks[layer] = rank
    return ranks


def energy_levels(text):
    return [check_energy(level) for level in number_list(text, "--energy")]


def weights_rank_table(weights, levels):
    """rank_table of a caffemodel file, every layer it can decompose."""
    from .caffemodel import check_finite, read_caffemodel

    model = read_caffemodel(weights)
    check_finite(model)
    return rank_table(model, levels)


def rank_table(model, levels, include_fc=True):
    """[(layer, type, shape, groups, max rank, [rank at each level])]; with
    groups, ranks are per group (the largest any group needs)."""
    rows = []
    for layer in model.layers:
        if layer.type in DECOMPOSABLE and layer.blobs and (include_fc or layer.type == "Convolution"):
            w = layer.blobs[0].data
            groups = groups_of(layer)
            values = [singular_values(b) for b in blocks(w, groups)]
            rows.append((layer.name, layer.type, list(w.shape), groups, max_rank(w, groups),
                         [max(rank_for_energy(v, level) for v in values) for level in levels]))
    return rows


def output_names(model_path, deploy_path):
    """{input prototxt: the name its rewrite gets}: each named as given."""
    names = {Path(model_path): Path(model_path).name}
    if deploy_path is not None and Path(deploy_path).resolve() != Path(model_path).resolve():
        if Path(deploy_path).name == Path(model_path).name:
            raise InputError(f"--deploy {deploy_path} and --model {model_path} have the same file name; "
                             "their rewrites would overwrite each other in the output folder")
        names[Path(deploy_path)] = Path(deploy_path).name
    for name in names.values():
        if name in ("model.caffemodel", "model.masks.h5", "report.md"):
            raise InputError(f"{name}: a prototxt cannot be named like decompose's other outputs")
    return names


def earlier_nets(folder, inputs):
    """The prototxts an earlier decompose wrote into ``folder`` (its
    report.md says which), but for ``inputs``: they describe that run's
    split, and beside a new model.caffemodel they would be taken for its
    nets (Caffe then refuses the pair, or fills a layer they name that the
    model lacks from its filler)."""
    try:
        # Bytes no encoding decodes (not caffedsd's) are replaced: they match no file.
        lines = read_own_text(Path(folder) / "report.md", errors="replace").splitlines()
    except OSError:
        return []
    line = next((line for line in lines if line.startswith(NETS_WRITTEN)), "")
    given = {os.path.realpath(path) for path in inputs if path is not None}
    # Only files named in the folder itself: the report is a file anyone may have edited.
    return [Path(folder) / name for name in line[len(NETS_WRITTEN):].split("`")[1::2]
            if name and name == Path(name).name and name not in (".", "..") and (Path(folder) / name).is_file()
            and os.path.realpath(Path(folder) / name) not in given]


def write_decomposition(model_path, deploy_path, weights, out_dir, energy=None, ranks=None, layers=(),
                        include_fc=False, allow_python_layers=False, force=False):
    """Decompose into OUT_DIR: the rewritten prototxt(s), named as given,
    model.caffemodel and report.md. Returns (rows, skipped, written names).
    An input in OUT_DIR that one of them would replace needs ``force``; an
    earlier decompose's prototxt there that none of them replaces is removed."""
    from google.protobuf import text_format

    from . import report
    from .atomic import (atomic_folder, atomic_paths, check_output, raise_no_room, replace_held, signals_deferred,
                         temporary_folder, write_text)
    from .caffe_env import build_in_child, check_net_runs, has_python_layers, import_caffe
    from .caffe_proto import read_net_prototxt
    from .caffemodel import check_finite, new_caffemodel, read_caffemodel
    from .maskfile import atomic_unmasked_path, masks_for, save_masks_of
    from .netcheck import check_blob_shapes, check_pair, loaded_states

    if energy is not None:
        check_energy(energy)
    names = output_names(model_path, deploy_path)
    if Path(out_dir).is_dir():  # -o the inputs' own folder: the rewrite has the prototxt's name
        for name in [*names.values(), "model.caffemodel", "model.masks.h5", "report.md"]:
            check_output(Path(out_dir) / name, inputs=[model_path, deploy_path, weights], force=force)
    with atomic_folder(out_dir) as folder:
        model = read_caffemodel(weights)
        nets = {path: read_net_prototxt(path, allow_python_layers) for path in names}
        check_pair(nets[Path(model_path)], model_path, model, states=loaded_states(nets[Path(model_path)]),
                   strict=True)
        if deploy_path is not None and Path(deploy_path) in nets and Path(deploy_path) != Path(model_path):
            # Written beside the weights: Caffe must fill every layer of it.
            check_pair(nets[Path(deploy_path)], deploy_path, model, unused_weights=True,
                       states=loaded_states(nets[Path(deploy_path)]))
        check_finite(model)
        # Split by the layouts Caffe builds (the prototxt's group, transpose, axis).
        model = model.with_params({layer.name: layer for layer in nets[Path(model_path)].layer})
        masks = masks_for(model, option=None)  # those of the layers left as they are go beside the output
        chosen, skipped = choose_ranks(model, layers, energy, ranks, include_fc, shared_weights(nets.values()))
        for path, net in nets.items():
            check_split_names(net, path, chosen)
        # Output positions per layer come from the nets themselves (TEST
        # phase): the deploy's, and the train_val's for the layers the deploy
        # lacks (auxiliary classifiers). The train_val, whose data may be on
        # another machine, is built only for those.
        caffe = import_caffe()

        def positions_in(path, wanted):
            check_net_runs(nets[path], path, forward=False)  # built for its shapes only
            built = caffe.Net(str(path), caffe.TEST)
            check_blob_shapes(built, model, path)
            return {name: output_positions(built, name, model.layer(name).type)
                    for name in wanted if name in built.top_names}

        *train_val, shape_path = names  # the deploy, when given as another file
        positions = positions_in(shape_path, chosen)
        if (missing := [name for name in chosen if name not in positions]) and train_val:
            try:
                positions.update(positions_in(train_val[0], missing))
            except InputError as exc:
                raise InputError(f"{missing[0]}: not in {shape_path}, so {train_val[0]} is built for its "
                                 f"output size: {exc}") from None
        if missing := [name for name in chosen if name not in positions]:
            raise InputError(f"{missing[0]}: not in the TEST phase of {model_path}, so its output size is "
                             "unknown; leave it out with --layers")
        new_layers, discarded = decomposed_layers(model, chosen)
        kept = masks.without(chosen) if masks is not None else None  # a split layer's new blobs are dense
        texts = {path: text_format.MessageToString(rewrite_net(nets[path], chosen)) for path in names}
        with temporary_folder(folder / "model.caffemodel") as scratch:
            made = scratch / "model.caffemodel"
            try:
                new_caffemodel(made, new_layers, name=model.name)
                # Caffe builds the rewrite and fills it before anything is written:
                # a split it refuses (shapes of a layer kind not foreseen) is found
                # here, not by the user's `caffe test`.
                (scratch / "net.prototxt").write_text(texts[shape_path])
            except (OSError, OutputError) as exc:  # named as the output, not the scratch files
                raise_no_room(folder / "model.caffemodel", exc)
                raise
            build_in_child("net", scratch / "net.prototxt", f"{shape_path} as decompose rewrote it",
                           has_python_layers(nets[shape_path]), weights=made)
            rows = summarize(model, chosen, positions, discarded)
            # Every file is written in the scratch folder first: a disk that
            # fills up leaves none of them in place, where one at a time left
            # a new model beside an earlier prototxt, which Caffe aborts on.
            ready = scratch / "ready"
            try:
                ready.mkdir()
                if kept is not None:
                    save_masks_of(ready / "model.masks.h5", made, kept)
                for path, name in names.items():
                    write_text(ready / name, texts[path])
                write_text(ready / "report.md", report.decomposition_markdown(rows, weights, skipped,
                                                                              nets=list(names.values())))
            except (OSError, OutputError) as exc:
                raise_no_room(folder / "model.caffemodel", exc)
                raise
            stale = [path for path in earlier_nets(folder, [model_path, deploy_path, weights])
                     if path.name not in names.values()]
            # Into an existing folder, file by file: a Ctrl-C or SIGTERM
            # between the renames would leave a model beside an earlier
            # prototxt; held back, it ends the run once all are in.
            with signals_deferred():
                if kept is None:
                    with atomic_unmasked_path(folder / "model.caffemodel") as tmp:  # an earlier model's masks go
                        replace_held(made, tmp)
                else:
                    with atomic_paths(folder / "model.caffemodel", folder / "model.masks.h5") as (tmp, masks_tmp):
                        replace_held(made, tmp)
                        replace_held(ready / "model.masks.h5", masks_tmp)
                for name in [*names.values(), "report.md"]:
                    os.replace(ready / name, folder / name)
                for path in stale:
                    with contextlib.suppress(OSError):  # what was written stands; this is only tidying
                        path.unlink()
    written = [*names.values(), "model.caffemodel"] + (["model.masks.h5"] if kept is not None else [])
    return rows, skipped, written + ["report.md"]

