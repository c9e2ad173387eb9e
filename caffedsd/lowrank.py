"""Low-rank decomposition of trained Convolution and InnerProduct layers.

A Convolution of N filters of C x k x k is the N x (C k k) matrix W = U S V^T.
At rank r it becomes two layers:
  NAME/lowrank  a k x k convolution with r filters (rows of S_r^1/2 V_r^T),
                the original stride, pad, dilation, and no bias;
  NAME          a 1 x 1 convolution with N outputs (U_r S_r^1/2) and the
                original bias, so the layer's top and everything after it
                keep their names.
An InnerProduct (N x C) becomes an r-output InnerProduct without bias and an
N-output one with the bias. The discarded energy is exactly
sum_{i>r} s_i^2, the squared Frobenius error of the product.
"""
import fnmatch
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .caffe_proto import LayerParameter, NetParameter
from .errors import InputError

DECOMPOSABLE = ("Convolution", "InnerProduct")


def singular_values(weights):
    return np.linalg.svd(np.asarray(weights, dtype=np.float64).reshape(weights.shape[0], -1), compute_uv=False)


def rank_for_energy(values, energy):
    """Smallest r whose top singular values hold ``energy`` of sum s_i^2."""
    if not 0 < energy <= 1:
        raise InputError(f"--energy {energy:g}: must be in (0, 1]")
    squares = np.asarray(values, dtype=np.float64) ** 2
    total = squares.sum()
    if total == 0:
        return 1
    kept = np.cumsum(squares) / total
    return int(min(np.searchsorted(kept, energy - 1e-12) + 1, len(values)))


def factor(weights, rank):
    """(first, second) factors of a blob at ``rank``: first is r x (C k k)
    shaped like a k x k conv (or r x C), second is N x r."""
    w = np.asarray(weights, dtype=np.float64)
    matrix = w.reshape(w.shape[0], -1)
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    root = np.sqrt(s[:rank])
    first = (root[:, None] * vt[:rank]).reshape((rank,) + w.shape[1:])
    second = u[:, :rank] * root[None, :]
    return first.astype(np.float32), second.astype(np.float32)


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


def max_rank(weights):
    return min(weights.shape[0], int(np.prod(weights.shape[1:])))


def choose_ranks(model, layers, energy=None, ranks=None, include_fc=False):
    """{layer: rank} for the chosen layers of a CaffeModel."""
    ranks = dict(ranks or {})
    kinds = ("Convolution", "InnerProduct") if include_fc else ("Convolution",)
    candidates = [layer for layer in model.layers if layer.type in kinds and layer.blobs]
    if layers:
        for pattern in layers:
            if not any(fnmatch.fnmatchcase(layer.name, pattern) for layer in candidates):
                raise InputError(f"--layers {pattern!r} matches no decomposable layer "
                                 f"({', '.join(layer.name for layer in candidates) or 'none'})")
        candidates = [layer for layer in candidates if any(fnmatch.fnmatchcase(layer.name, p) for p in layers)]
    by_name = {layer.name: layer for layer in candidates}
    for name, rank in ranks.items():
        if name not in by_name:
            known = [layer.name for layer in model.layers if layer.type in DECOMPOSABLE and layer.blobs]
            hint = " (InnerProduct layers need --fc)" if name in known else ""
            raise InputError(f"--rank {name}={rank}: no decomposable layer {name!r}{hint}")
        top = max_rank(by_name[name].blobs[0].data)
        if rank < 1 or rank > top:
            raise InputError(f"--rank {name}={rank}: must be between 1 and {top} for {name} "
                             f"({list(by_name[name].blobs[0].shape)})")
    chosen = {}
    for layer in candidates:
        param = layer.param
        if layer.type == "Convolution" and param.convolution_param.group > 1:
            raise InputError(f"layer {layer.name!r}: group {param.convolution_param.group} convolutions are not "
                             "decomposed; leave it out with --layers")
        if layer.name in ranks:
            chosen[layer.name] = ranks[layer.name]
        elif energy is not None:
            chosen[layer.name] = rank_for_energy(singular_values(layer.blobs[0].data), energy)
    if not chosen:
        raise InputError("no layer to decompose: give --energy or --rank")
    return chosen


def _split_layer(param, rank):
    """The two LayerParameters replacing ``param`` at ``rank``."""
    first, second = LayerParameter(), LayerParameter()
    first.CopyFrom(param)
    second.CopyFrom(param)
    del first.blobs[:], second.blobs[:]
    first.name = f"{param.name}/lowrank"
    first.ClearField("top")
    first.top.append(f"{param.name}/lowrank")
    second.ClearField("bottom")
    second.bottom.append(f"{param.name}/lowrank")
    # Learning-rate specs: the first factor takes the weight's, the second both.
    del first.param[1:]
    if param.type == "Convolution":
        first.convolution_param.num_output = rank
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
        second.inner_product_param.ClearField("axis")
    return first, second


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
        weights = arrays[0]
        first, second = factor(weights, rank)
        values = singular_values(weights)
        discarded[layer.name] = float((values[rank:] ** 2).sum())
        p1, p2 = _split_layer(layer.param, rank)
        if layer.type == "Convolution":
            second = second.reshape(second.shape + (1, 1))
        layers.append((p1, [first]))
        layers.append((p2, [second] + arrays[1:]))
    return layers, discarded


def conv_output_positions(net, layer_name):
    """H x W positions of a layer's top in a pycaffe Net (1 for InnerProduct)."""
    top = net.top_names[layer_name][0]
    shape = net.blobs[top].data.shape
    return int(np.prod(shape[2:])) if len(shape) > 2 else 1


def macs(weights_shape, positions):
    return int(np.prod(weights_shape)) * positions


def summarize(model, ranks, positions, discarded):
    rows = []
    for name, rank in ranks.items():
        layer = model.layer(name)
        w = layer.blobs[0].data
        bias = sum(b.data.size for b in layer.blobs[1:])
        n, rest = w.shape[0], int(np.prod(w.shape[1:]))
        kernel = int(np.prod(w.shape[2:])) if w.ndim > 2 else 1
        channels = rest // kernel
        before = w.size + bias
        after = rank * rest + n * rank + bias
        rows.append(Decomposition(name, layer.type, rank, max_rank(w), int(before), int(after),
                                  macs(w.shape, positions[name]),
                                  rank * channels * kernel * positions[name] + n * rank * positions[name],
                                  discarded[name]))
    return rows


def relative_error(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30))


def parse_rank(text):
    name, sep, value = text.rpartition("=")
    if not sep or not name:
        raise InputError(f"--rank {text!r}: expected LAYER=RANK, e.g. conv2=12")
    try:
        rank = int(value)
    except ValueError:
        raise InputError(f"--rank {text!r}: {value!r} is not a whole number") from None
    if rank < 1:
        raise InputError(f"--rank {text!r}: a rank must be at least 1")
    return name, rank


def energy_levels(text):
    try:
        levels = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--energy {text!r}: not a comma-separated list of numbers") from None
    for level in levels:
        if not 0 < level <= 1 or math.isnan(level):
            raise InputError(f"--energy {level:g}: must be in (0, 1]")
    if not levels:
        raise InputError(f"--energy {text!r}: empty")
    return levels


def rank_table(model, levels, include_fc=True):
    """[(layer, type, shape, max rank, [rank at each level])]."""
    rows = []
    for layer in model.layers:
        if layer.type in DECOMPOSABLE and layer.blobs and (include_fc or layer.type == "Convolution"):
            values = singular_values(layer.blobs[0].data)
            rows.append((layer.name, layer.type, list(layer.blobs[0].shape), max_rank(layer.blobs[0].data),
                         [rank_for_energy(values, level) for level in levels]))
    return rows


def write_decomposition(model_path, deploy_path, weights, out_dir, energy=None, ranks=None, layers=(),
                        include_fc=False, allow_python_layers=False):
    """Decompose into OUT_DIR: train_val.prototxt, deploy.prototxt (if given),
    model.caffemodel and report.md. Returns the summary rows."""
    from google.protobuf import text_format

    from . import report
    from .atomic import atomic_open
    from .caffe_env import import_caffe
    from .caffe_proto import read_net_prototxt
    from .caffemodel import new_caffemodel, read_caffemodel
    from .netcheck import check_pair

    if energy is not None and not 0 < energy <= 1:
        raise InputError(f"--energy {energy:g}: must be in (0, 1]")
    model = read_caffemodel(weights)
    net = read_net_prototxt(model_path, allow_python_layers)
    check_pair(net, model_path, model)
    deploy = read_net_prototxt(deploy_path, allow_python_layers) if deploy_path else None
    chosen = choose_ranks(model, layers, energy, ranks, include_fc)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Output positions per layer come from the net itself (TEST phase).
    caffe = import_caffe()
    shapes_net = caffe.Net(str(deploy_path or model_path), caffe.TEST)
    positions = {name: conv_output_positions(shapes_net, name) for name in chosen}
    new_layers, discarded = decomposed_layers(model, chosen)
    new_caffemodel(out_dir / "model.caffemodel", new_layers, name=model.name)
    outputs = {"train_val.prototxt": rewrite_net(net, chosen)}
    if deploy is not None:
        outputs["deploy.prototxt"] = rewrite_net(deploy, chosen)
    for name, message in outputs.items():
        with atomic_open(out_dir / name, "w") as handle:
            handle.write(text_format.MessageToString(message))
    rows = summarize(model, chosen, positions, discarded)
    with atomic_open(out_dir / "report.md", "w") as handle:
        handle.write(report.decomposition_markdown(rows, weights))
    return rows
