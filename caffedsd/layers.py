"""What caffedsd knows about Caffe layer types, and shared parameters."""
from dataclasses import dataclass

from .errors import InputError

# Blob 0 of these is a weight tensor that pruning may touch. Never biases,
# BatchNorm statistics, Scale/PReLU factors or any other blob.
PRUNABLE_TYPES = frozenset({"Convolution", "Deconvolution", "InnerProduct"})

# Layer types that own learnable blobs in stock Caffe. Used to tell which
# layers of a prototxt expect weights from a caffemodel.
PARAM_TYPES = PRUNABLE_TYPES | {"BatchNorm", "Scale", "Bias", "PReLU", "Embed", "RNN", "LSTM", "Parameter"}


def expected_blob_count(layer_param):
    """How many blobs Caffe gives a prototxt layer, or None where caffedsd
    does not know."""
    kind = layer_param.type
    if kind in ("Convolution", "Deconvolution"):
        return 2 if layer_param.convolution_param.bias_term else 1
    if kind == "InnerProduct":
        return 2 if layer_param.inner_product_param.bias_term else 1
    if kind == "BatchNorm":
        return 3
    if kind == "Parameter":  # its blob is its top, learned as a weight
        return 1
    # ScaleLayer/BiasLayer::LayerSetUp: a second bottom gives the factor (the
    # bias), so it is no blob; Scale's bias_term is a blob either way.
    one_bottom = len(layer_param.bottom) < 2
    if kind == "Scale":
        return int(one_bottom) + int(layer_param.scale_param.bias_term)
    if kind == "Bias":
        return int(one_bottom)
    return None


def expects_blobs(layer_param):
    """Whether a prototxt layer owns learnable blobs."""
    count = expected_blob_count(layer_param)
    return layer_param.type in PARAM_TYPES if count is None else count > 0


@dataclass(frozen=True)
class Target:
    """A prunable weight blob: blob 0 of ``layers`` (several when shared)."""

    owner: str
    layers: tuple
    shape: tuple
    param_name: str = ""


def shared_groups(model):
    """The model's prunable layers with blob 0, grouped as Caffe ties them
    (by the name of their first param, else each alone): lists of layers,
    in layer order. Shapes may differ within a group (share_mode PERMISSIVE)."""
    groups = {}
    for layer in model.layers:
        if layer.type in PRUNABLE_TYPES and layer.blobs:
            param_name = layer.param_names[0]
            groups.setdefault(("param", param_name) if param_name else ("layer", layer.name), []).append(layer)
    return list(groups.values())


def check_shared_shapes(where, param_name, shapes):
    """Refuse layers tied by ``param_name`` whose weights differ in shape:
    ``shapes`` maps each layer's name to its blob 0 shape, in layer order."""
    (first, first_shape), *others = shapes.items()
    for name, shape in others:
        if tuple(shape) != tuple(first_shape):
            raise InputError(f"{where}: layers {first!r} and {name!r} share param {param_name!r} but their weights "
                             f"have shapes {list(first_shape)} and {list(shape)} (share_mode PERMISSIVE: caffedsd "
                             "prunes shared weights of one shape only)")


def tied_copies(model, target):
    """(layer, blob index) of the blobs of layers outside ``target`` that
    its param name ties to its weights: an Embed tied to an InnerProduct,
    as language models tie their input and output embeddings. Caffe holds
    them as the one blob, copying each layer's from the file in net order,
    so a pruned blob is written to each of them too: an unpruned copy read
    after the pruned one undid the pruning."""
    if not target.param_name:
        return []
    return [(layer.name, index) for layer in model.layers if layer.name not in target.layers
            for index, name in enumerate(layer.param_names) if name == target.param_name]


def group_target(layers):
    """The Target of a group of shared_groups: its first layer owns it."""
    first = layers[0]
    return Target(first.name, tuple(layer.name for layer in layers), first.blobs[0].shape, first.param_names[0])


def prunable_targets(model):
    """The model's prunable blobs, one Target per shared group, in layer order."""
    targets = []
    for layers in shared_groups(model):
        shapes = {layer.name: layer.blobs[0].shape for layer in layers}
        check_shared_shapes(model.path, layers[0].param_names[0], shapes)
        targets.append(group_target(layers))
    return targets
