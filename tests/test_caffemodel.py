"""caffemodel I/O against real pycaffe and the stock caffe binary."""
import numpy as np
import pytest

from caffedsd import wire
from caffedsd.caffe_proto import BlobProto, LayerParameter, NetParameter, V1LayerParameter
from caffedsd.caffemodel import append_layers, new_caffemodel, new_layers_bytes, read_caffemodel, write_caffemodel
from caffedsd.errors import InputError
from caffedsd.verify import run_caffe_test


def test_reads_what_pycaffe_saved(caffe, tiny):
    proto, weights = tiny
    net = caffe.Net(str(proto), caffe.TEST, weights=str(weights))
    model = read_caffemodel(weights)
    assert model.layout == "V2" and model.name == "tiny"
    with_blobs = [layer.name for layer in model.layers if layer.blobs]
    assert with_blobs == list(net.params.keys())
    for name, blobs in net.params.items():
        for i, blob in enumerate(blobs):
            assert np.array_equal(model.layer(name).blobs[i].data, blob.data)
    assert model.layer("fc2b").param_names == ("fc2_w", "fc2_b")
    assert model.layer("fc1").param.inner_product_param.bias_term is False


def test_unchanged_write_is_byte_identical(tiny, tmp_path):
    _, weights = tiny
    write_caffemodel(read_caffemodel(weights), tmp_path / "copy.caffemodel")
    assert (tmp_path / "copy.caffemodel").read_bytes() == weights.read_bytes()


def test_masked_write_touches_only_masked_positions(caffe, tiny, tmp_path):
    proto, weights = tiny
    model = read_caffemodel(weights)
    w = model.layer("conv1").blobs[0].data
    mask = np.abs(w) > 0.7
    out = tmp_path / "out.caffemodel"
    write_caffemodel(model, out, masks={("conv1", 0): mask})
    before = caffe.Net(str(proto), caffe.TEST, weights=str(weights))
    after = caffe.Net(str(proto), caffe.TEST, weights=str(out))
    assert np.array_equal(after.params["conv1"][0].data, np.where(mask, w, 0))
    assert not np.signbit(after.params["conv1"][0].data[~mask]).any()
    for name in before.params:
        for i in range(len(before.params[name])):
            if (name, i) != ("conv1", 0):
                assert np.array_equal(after.params[name][i].data, before.params[name][i].data)


def _v1_model(path):
    """A legacy V1 ('layers', enum types, 4-D legacy blob dims) caffemodel."""
    net = NetParameter(name="legacy")
    rng = np.random.default_rng(3)
    weights = rng.normal(size=(5, 12)).astype(np.float32)
    bias = rng.normal(size=5).astype(np.float32)
    layer = net.layers.add(name="ip", type=V1LayerParameter.INNER_PRODUCT, bottom=["data"], top=["ip"])
    layer.inner_product_param.num_output = 5
    layer.blobs_lr.extend([1, 2])
    for arr in (weights, bias):
        blob = layer.blobs.add(num=1, channels=1, height=1 if arr.ndim == 1 else arr.shape[0], width=arr.shape[-1])
        blob.data.extend(arr.reshape(-1).tolist())
    net.layers.add(name="prob", type=V1LayerParameter.SOFTMAX, bottom=["ip"], top=["prob"])
    path.write_bytes(net.SerializeToString())
    return weights, bias


def test_v1_layout_is_read_and_written_as_v2(caffe, tmp_path):
    src = tmp_path / "legacy.caffemodel"
    weights, bias = _v1_model(src)
    model = read_caffemodel(src)
    assert model.layout == "V1"
    assert [(layer.name, layer.type) for layer in model.layers] == [("ip", "InnerProduct"), ("prob", "Softmax")]
    # The true axes, as Caffe gives them: 1x1x5x12 is a 5x12 weight, 1x1x1x5 a bias of 5.
    assert model.layer("ip").blobs[0].shape == (5, 12) and model.layer("ip").blobs[1].shape == (5,)
    assert model.layer("ip").param.param[1].lr_mult == 2
    out = tmp_path / "v2.caffemodel"
    write_caffemodel(model, out, masks={("ip", 0): np.abs(weights) > 0.5})
    written = NetParameter.FromString(out.read_bytes())
    assert len(written.layers) == 0 and [layer.type for layer in written.layer] == ["InnerProduct", "Softmax"]
    for blob, shape in zip(written.layer[0].blobs, ([5, 12], [5])):
        assert list(blob.shape.dim) == shape and not blob.HasField("num") and not blob.HasField("width")
    proto = tmp_path / "net.prototxt"
    proto.write_text('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 12 } } }\n'
                     'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
                     'inner_product_param { num_output: 5 } }\n'
                     'layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }\n')
    net = caffe.Net(str(proto), caffe.TEST, weights=str(out))
    assert np.array_equal(net.params["ip"][0].data, np.where(np.abs(weights) > 0.5, weights, 0))
    assert np.array_equal(net.params["ip"][1].data, bias)
    code, log = run_caffe_test(proto, out)
    assert code == 0, log[-2000:]
    assert "Ignoring source layer ip" not in log


def test_unpacked_and_split_data_are_read(tmp_path):
    blob = BlobProto()
    blob.shape.dim.extend([3])
    payload = blob.SerializeToString()
    # Three floats written unpacked (tag 0x2D each), as very old writers did.
    for value in (1.5, -2.0, 0.25):
        payload += bytes([0x2D]) + np.float32(value).tobytes()
    layer = LayerParameter(name="ip", type="InnerProduct").SerializeToString()
    layer += wire.len_header(7, len(payload)) + payload
    path = tmp_path / "old.caffemodel"
    path.write_bytes(wire.len_header(100, len(layer)) + layer)
    assert read_caffemodel(path).layer("ip").blobs[0].data.tolist() == [1.5, -2.0, 0.25]


@pytest.mark.slow
def test_over_64_mb_loads_here_and_in_stock_caffe(caffe, tmp_path, cli):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4400, 4096)).astype(np.float32)  # 72 MB of floats
    ip = LayerParameter(name="ip", type="InnerProduct", bottom=["data"], top=["ip"])
    ip.inner_product_param.num_output = 4400
    ip.inner_product_param.bias_term = False
    big = tmp_path / "big.caffemodel"
    new_caffemodel(big, [(ip, [w])], name="big")
    assert big.stat().st_size > 64 << 20
    del w
    result = cli("prune", "-w", big, "-s", 0.5, "-o", tmp_path / "pruned.caffemodel")
    assert result.exit_code == 0, result.output
    proto = tmp_path / "big.prototxt"
    proto.write_text('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4096 } } }\n'
                     + str(ip).replace("\n", " ").join(["layer { ", " }\n"]))
    code, log = run_caffe_test(proto, tmp_path / "pruned.caffemodel")
    assert code == 0, log[-2000:]
    net = caffe.Net(str(proto), caffe.TEST, weights=str(tmp_path / "pruned.caffemodel"))
    assert int((net.params["ip"][0].data == 0).sum()) == 4400 * 4096 // 2


@pytest.mark.parametrize("content,message", [
    (b"", "empty file"),
    (b'name: "net"\nlayer { name: "a" }\n', "text file"),
    (bytes(range(256)) * 40, "not a caffemodel"),
])
def test_malformed_files(tmp_path, content, message):
    path = tmp_path / "bad.caffemodel"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        read_caffemodel(path)


def test_truncated_file(tiny, tmp_path):
    _, weights = tiny
    data = weights.read_bytes()
    for cut in (len(data) // 3, len(data) - 5):
        path = tmp_path / f"cut{cut}.caffemodel"
        path.write_bytes(data[:cut])
        with pytest.raises(InputError, match=f"cut{cut}.caffemodel: .*truncated"):
            read_caffemodel(path)


SCALAR_NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "prelu" type: "PReLU" bottom: "ip" top: "ip" prelu_param { channel_shared: true } }
layer { name: "scale" type: "Scale" bottom: "ip" top: "scale" scale_param { num_axes: 0 bias_term: true } }
layer { name: "bias" type: "Bias" bottom: "scale" top: "bias" bias_param { num_axes: 0 } }
"""


def test_scalar_blobs_are_read_and_written_back_for_stock_caffe(caffe, tmp_path, cli):
    """A 0-axis blob (a shared PReLU slope, Scale/Bias with num_axes 0) holds
    one value; Caffe writes it with no shape and no legacy dims."""
    proto = tmp_path / "net.prototxt"
    proto.write_text(SCALAR_NET)
    net = caffe.Net(str(proto), caffe.TEST)
    net.params["ip"][0].data[...] = np.arange(1, 13).reshape(4, 3)
    for (name, index), value in {("prelu", 0): 0.25, ("scale", 0): 2.0, ("scale", 1): -3.0, ("bias", 0): 0.5}.items():
        net.params[name][index].data[...] = value
    net.save(str(tmp_path / "net.caffemodel"))
    saved = NetParameter.FromString((tmp_path / "net.caffemodel").read_bytes())
    assert not saved.layer[2].blobs[0].HasField("shape") and not saved.layer[2].blobs[0].HasField("num")
    model = read_caffemodel(tmp_path / "net.caffemodel")
    assert model.layer("prelu").blobs[0].shape == () and model.layer("prelu").blobs[0].data == 0.25
    assert [float(b.data) for b in model.layer("scale").blobs] == [2.0, -3.0]
    assert model.layer("bias").blobs[0].data == 0.5

    assert cli("prune", "-w", "net.caffemodel", "-p", proto, "-s", 0.5, "-o", "p.caffemodel").exit_code == 0
    assert cli("compress", "-w", "p.caffemodel", "-o", "p.dcz").exit_code == 0
    assert cli("decompress", "p.dcz", "-p", proto, "-o", "q.caffemodel").exit_code == 0
    for written in ("p.caffemodel", "q.caffemodel"):
        code, log = run_caffe_test(proto, tmp_path / written)
        assert code == 0, log[-2000:]
        back = caffe.Net(str(proto), caffe.TEST, weights=str(tmp_path / written))
        # Magnitude pruning at 0.5 keeps the six largest of 1..12.
        assert back.params["ip"][0].data.ravel().tolist() == [0] * 6 + list(range(7, 13))
        assert [float(back.params[n][i].data) for n, i in (("prelu", 0), ("scale", 0), ("scale", 1), ("bias", 0))] \
            == [0.25, 2.0, -3.0, 0.5]


NAMELESS_NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "relu" type: "ReLU" bottom: "ip2" top: "ip2" }
layer { type: "Sigmoid" bottom: "ip2" top: "ip2" }
"""


def test_layers_without_blobs_may_share_a_name_or_have_none(caffe, tmp_path, cli):
    """Caffe writes and loads them; only layers with blobs, which Caffe copies
    by name, must be named once."""
    proto, weights = tmp_path / "net.prototxt", tmp_path / "net.caffemodel"
    proto.write_text(NAMELESS_NET)
    caffe.Net(str(proto), caffe.TEST).save(str(weights))
    model = read_caffemodel(weights)
    assert [layer.name for layer in model.layers] == ["data", "ip1", "relu", "ip2", "relu", ""]
    assert [layer.name for layer in model.layers if layer.blobs] == ["ip1", "ip2"]
    assert cli("prune", "-w", weights, "-p", proto, "-s", 0.5, "-o", "p.caffemodel").exit_code == 0
    result = cli("stats", "-w", "p.caffemodel")
    assert result.exit_code == 0 and "ip2" in result.output, result.output
    result = cli("verify", "-w", "p.caffemodel", "-p", proto)
    assert result.exit_code == 0 and "caffe loads every weight" in result.output, result.output
    assert NetParameter.FromString((tmp_path / "p.caffemodel").read_bytes()).layer[5].name == ""

    for names, message in ((["ip", "ip"], "layer name 'ip' appears twice among layers with blobs"),
                           (["ip", ""], r"layer #1 \(InnerProduct\) has blobs but no name")):
        path = tmp_path / "bad.caffemodel"
        new_caffemodel(path, [(LayerParameter(name=n, type="InnerProduct"), [np.ones(3, np.float32)])
                              for n in names])
        with pytest.raises(InputError, match=message):
            read_caffemodel(path)


def test_appended_layers_read_back_and_their_size_is_a_close_lower_bound(tmp_path):
    """train-* appends the layers of phase TEST only after Caffe's own
    write, and checks for room first with new_layers_bytes."""
    path = tmp_path / "m.caffemodel"
    new_caffemodel(path, [(LayerParameter(name="a", type="InnerProduct"), [np.ones((2, 3), np.float32)])])
    before = path.stat().st_size
    layers = [(LayerParameter(name="b", type="Convolution"), [np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2),
                                                              np.float32([7, 8])]),
              (LayerParameter(name="c", type="Scale"), [np.float32(5.0)])]  # a 0-axis blob
    append_layers(path, layers)
    model = read_caffemodel(path)
    assert [layer.name for layer in model.layers] == ["a", "b", "c"]
    assert np.array_equal(model.layer("b").blobs[0].data, layers[0][1][0])
    assert model.layer("c").blobs[0].shape == ()
    grown = path.stat().st_size - before
    assert new_layers_bytes(layers) <= grown <= new_layers_bytes(layers) + 8 * len(layers) + 32 * 3  # 3 blobs
