"""Every command gives the same result on a V1-layout caffemodel as on its
V2 twin, and what it writes from the V1 file loads in stock Caffe."""
import json

import numpy as np
import pytest

from caffedsd.caffe_proto import NetParameter, V1LayerParameter
from caffedsd.caffemodel import read_caffemodel
from caffedsd.verify import run_caffe_test
from conftest import save_net

NET = """
name: "twin"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 dim: 9 dim: 9 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 12 kernel_size: 3 group: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2" convolution_param { num_output: 16 kernel_size: 3 } }
layer { name: "fc" type: "InnerProduct" bottom: "conv2" top: "fc" inner_product_param { num_output: 7 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""
V1_TYPES = {"Convolution": V1LayerParameter.CONVOLUTION, "ReLU": V1LayerParameter.RELU,
            "InnerProduct": V1LayerParameter.INNER_PRODUCT, "Softmax": V1LayerParameter.SOFTMAX}


def legacy_dims(shape):
    """num/channels/height/width of a blob, as 2014-era Caffe wrote them."""
    return dict(zip(("num", "channels", "height", "width"), (1,) * (4 - len(shape)) + tuple(shape)))


def write_v1_twin(v2_path, v1_path):
    """The V1 twin of a V2 caffemodel: `layers`, enum types, legacy dims."""
    model = read_caffemodel(v2_path)
    net = NetParameter(name=model.name)
    for layer in model.layers:
        if layer.type not in V1_TYPES:
            continue
        v1 = net.layers.add(name=layer.name, type=V1_TYPES[layer.type], bottom=layer.param.bottom,
                            top=layer.param.top)
        if layer.type == "Convolution":
            v1.convolution_param.CopyFrom(layer.param.convolution_param)
        if layer.type == "InnerProduct":
            v1.inner_product_param.CopyFrom(layer.param.inner_product_param)
        for blob in layer.blobs:
            proto = v1.blobs.add(**legacy_dims(blob.shape))
            proto.data.extend(np.asarray(blob.data).reshape(-1).tolist())
    v1_path.write_bytes(net.SerializeToString())


@pytest.fixture
def twins(caffe, tmp_path):
    proto, v2 = save_net(caffe, tmp_path, NET, name="v2")
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    v1 = tmp_path / "v1" / "model.caffemodel"
    write_v1_twin(v2, v1)
    (tmp_path / "v2" / "model.caffemodel").write_bytes(v2.read_bytes())
    return proto, tmp_path / "v1", tmp_path / "v2"


def same_weights(a, b):
    ma, mb = read_caffemodel(a), read_caffemodel(b)
    assert ma.structure() == mb.structure()
    for la in ma.layers:
        for x, y in zip(la.blobs, mb.layer(la.name).blobs):
            assert x.shape == y.shape and np.array_equal(x.data, y.data), la.name


def caffe_loads(proto, weights):
    code, log = run_caffe_test(proto, weights)
    assert code == 0, log[-2000:]
    assert "Ignoring source layer" not in log


def test_every_command_agrees_on_v1_and_v2(twins, cli):
    proto, v1, v2 = twins
    assert read_caffemodel(v1 / "model.caffemodel").layout == "V1"
    same_weights(v1 / "model.caffemodel", v2 / "model.caffemodel")
    out = {}
    for folder in (v1, v2):
        w = folder / "model.caffemodel"
        stats = cli("stats", "-w", w, "--json")
        rank = cli("rank", "-w", w)
        prune = cli("prune", "-w", w, "-s", 0.5, "-o", folder / "pruned.caffemodel")
        verify = cli("verify", "-w", folder / "pruned.caffemodel", "-p", proto)
        compress = cli("compress", "-w", folder / "pruned.caffemodel", "-o", folder / "m.dcz")
        decompress = cli("decompress", folder / "m.dcz", "-p", proto, "-o", folder / "back.caffemodel")
        decompose = cli("decompose", "-p", proto, "-w", w, "--fc", "--rank", "conv1=3", "--rank", "conv2=5",
                        "--rank", "fc=4", "-o", folder / "low")
        for result in (stats, rank, prune, verify, compress, decompress, decompose):
            assert result.exit_code == 0, result.output
        out[folder] = (json.loads(stats.output), rank.output, prune.output.splitlines()[:-1],
                       verify.output, compress.output.splitlines()[:-1], decompose.output.splitlines()[:-1])
    stats1, stats2 = out[v1][0], out[v2][0]
    assert set(stats1) == set(stats2)
    for key in stats1:
        if isinstance(stats1[key], dict):  # the file's own size and name differ, nothing else
            stats1[key].pop("file_bytes", None), stats2[key].pop("file_bytes", None)
        if key not in ("weights", "path", "file", "layout", "sha256"):
            assert stats1[key] == stats2[key], key
    assert out[v1][1:] == out[v2][1:]
    assert "1x1x" not in out[v1][1]  # the true axes, not legacy dims
    for name in ("pruned.caffemodel", "back.caffemodel", "low/model.caffemodel"):
        same_weights(v1 / name, v2 / name)
    caffe_loads(proto, v1 / "pruned.caffemodel")
    caffe_loads(proto, v1 / "back.caffemodel")
    caffe_loads(v1 / "low" / proto.name, v1 / "low" / "model.caffemodel")


def test_masks_of_a_v2_twin_fit_the_v1_file(twins, cli):
    proto, v1, v2 = twins
    assert cli("prune", "-w", v2 / "model.caffemodel", "-s", 0.3, "-o", v2 / "p.caffemodel").exit_code == 0
    result = cli("stats", "-w", v1 / "model.caffemodel", "--masks", v2 / "p.masks.h5")
    assert result.exit_code == 0, result.output


def test_legacy_dims_beside_a_shape_are_read_as_caffe_reads_them(twins, cli):
    """Blob::FromProto takes any legacy dim over a shape given beside it."""
    from conftest import assert_one_line_error

    proto, v1, _ = twins
    net = NetParameter.FromString((v1 / "model.caffemodel").read_bytes())
    for layer in net.layers:
        for blob in layer.blobs:
            blob.shape.dim.extend([blob.num, blob.channels, blob.height, blob.width])
    both = v1 / "both.caffemodel"
    both.write_bytes(net.SerializeToString())
    caffe_loads(proto, both)
    result = cli("prune", "-w", both, "-p", proto, "-s", 0.5, "-o", v1 / "p.caffemodel")
    assert result.exit_code == 0, result.output
    caffe_loads(proto, v1 / "p.caffemodel")
    assert read_caffemodel(v1 / "p.caffemodel").layer("fc").blobs[0].shape == (7, 16 * 5 * 5)
    net.layers[0].blobs[0].num += 1  # the legacy count no longer that of the data; the shape still is
    both.write_bytes(net.SerializeToString())
    assert_one_line_error(cli("prune", "-w", both, "-s", 0.5, "-o", v1 / "q.caffemodel"),
                          "layer 'conv1': blob 0 has shape [13, 2, 3, 3] (234 values) but holds 216")
    assert not (v1 / "q.caffemodel").exists()


def test_v1_data_layers_transform_fields_move_as_caffe_moves_them(tmp_path):
    """A 2014 train_val keeps scale, mean_file, crop_size and mirror in its
    data layer's parameter; Caffe moves them into transform_param before the
    V2 upgrade, and a V2 layer (what decompose writes) reads them only there."""
    from caffedsd.caffe_proto import read_net_prototxt

    (tmp_path / "v1.prototxt").write_text("""
layers { name: "data" type: DATA top: "data" top: "label"
         data_param { source: "train_lmdb" backend: LMDB batch_size: 4 scale: 0.00390625 crop_size: 24
                      mirror: true mean_file: "mean.binaryproto" } }
layers { name: "images" type: IMAGE_DATA top: "im" top: "l2" image_data_param { source: "list.txt" scale: 0.5 }
         transform_param { scale: 2 mirror: false } }
layers { name: "hdf5" type: HDF5_DATA top: "h" top: "l3" hdf5_data_param { source: "h.txt" batch_size: 2 } }
""")
    data, images, hdf5 = read_net_prototxt(tmp_path / "v1.prototxt").layer
    assert (data.transform_param.scale, data.transform_param.crop_size, data.transform_param.mirror,
            data.transform_param.mean_file) == (0.00390625, 24, True, "mean.binaryproto")
    assert [f.name for f, _ in data.data_param.ListFields()] == ["source", "batch_size", "backend"]
    assert (images.transform_param.scale, images.transform_param.mirror) == (0.5, False)  # the data param's wins
    assert not images.image_data_param.HasField("scale")
    assert not hdf5.HasField("transform_param")


def test_a_v0_layer_is_named_with_the_tool_that_upgrades_it(tmp_path):
    from caffedsd.caffe_proto import read_net_prototxt
    from caffedsd.errors import InputError

    (tmp_path / "v0.prototxt").write_text('layers { layer { name: "conv1" type: "conv" } }\n')
    with pytest.raises(InputError, match="layer 'conv1': V0 layer layout .pre-2014.; upgrade it first with "
                                         "Caffe's upgrade_net_proto_text"):
        read_net_prototxt(tmp_path / "v0.prototxt")


def test_a_v1_layer_of_a_forks_type_is_read_as_caffe_upgrades_it(twins, cli):
    """Protobuf reads a layer type number stock Caffe lacks (a fork's) as
    NONE, which Caffe upgrades to no type and loads by name; caffedsd
    refused the file, naming type NONE."""
    proto, v1_folder, _ = twins
    v1 = v1_folder / "model.caffemodel"
    layer = V1LayerParameter(name="forky")
    layer.blobs.add(num=1, channels=1, height=1, width=3).data.extend([1.0, 2.0, 3.0])
    body = layer.SerializeToString() + bytes([5 << 3, 99])  # type: 99, a varint of one byte
    v1.write_bytes(v1.read_bytes() + bytes([2 << 3 | 2, len(body)]) + body)  # NetParameter.layers
    layer = read_caffemodel(v1).layer("forky")
    assert layer.type == "" and np.array_equal(layer.blobs[0].data.ravel(), [1.0, 2.0, 3.0])
    assert cli("stats", "-w", v1).exit_code == 0
    result = cli("prune", "-w", v1, "-s", 0.5, "-o", "pruned.caffemodel")
    assert result.exit_code == 0, result.output
    assert np.array_equal(read_caffemodel("pruned.caffemodel").layer("forky").blobs[0].data.ravel(), [1.0, 2.0, 3.0])
    code, log = run_caffe_test(proto, "pruned.caffemodel")
    assert code == 0 and "Ignoring source layer forky" in log, log[-2000:]
