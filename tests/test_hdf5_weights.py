"""`caffedsd convert`: Caffe's HDF5 weights (snapshot_format: HDF5) as a
binary caffemodel, against what real pycaffe and the stock caffe binary load."""
import errno
import os
import subprocess
import sys

import h5py
import numpy as np

from caffedsd.caffemodel import read_caffemodel
from caffedsd.solver_spec import read_solver
from caffedsd.training import open_solver
from conftest import TINY_NET, assert_one_line_error, save_net, write_solver


def _saved_hdf5(caffe, folder):
    """TINY_NET with seeded random blobs, saved by Caffe's Net::ToHDF5. A
    second reader of fc2a makes Caffe insert a Split layer."""
    proto = folder / "tiny.prototxt"
    proto.write_text(TINY_NET + 'layer { name: "prob" type: "Softmax" bottom: "fc2a" top: "prob" }\n')
    net = caffe.Net(str(proto), caffe.TEST)
    rng = np.random.default_rng(4)
    for blobs in net.params.values():
        for blob in blobs:
            blob.data[...] = rng.normal(size=blob.data.shape)
    weights = folder / "tiny.caffemodel.h5"
    net.save_hdf5(str(weights))
    return proto, weights, {name: [b.data.copy() for b in blobs] for name, blobs in net.params.items()}


def test_converted_weights_load_in_pycaffe_and_caffe(caffe, tmp_path, cli):
    proto, weights, expected = _saved_hdf5(caffe, tmp_path)
    with h5py.File(weights, "r") as h5:  # Caffe keeps only the owner of a shared blob
        assert sorted(h5["data/fc2a"]) == ["0", "1"] and sorted(h5["data/fc2b"]) == []
        assert sorted(h5["data/bn1"]) == ["0", "1", "2"]
        assert sorted(h5["data/fc2a_fc2a_0_split"]) == []  # a layer the prototxt does not have

    result = cli("convert", "-p", proto, "-w", weights, "-o", "tiny.caffemodel")
    assert result.exit_code == 0, result.output
    assert "wrote tiny.caffemodel: 6 layers with weights" in result.output
    model = read_caffemodel(tmp_path / "tiny.caffemodel")
    assert [layer.name for layer in model.layers] == ["conv1", "bn1", "scale1", "fc1", "fc2a", "fc2b"]
    assert model.layer("fc2b").param_names == ("fc2_w", "fc2_b")
    net = caffe.Net(str(proto), caffe.TEST, weights=str(tmp_path / "tiny.caffemodel"))
    for name, arrays in expected.items():
        assert [b.data.shape for b in net.params[name]] == [a.shape for a in arrays], name
        for blob, array in zip(net.params[name], arrays):
            assert np.array_equal(blob.data, array), name
    check = cli("verify", "-w", "tiny.caffemodel", "-p", proto)
    assert check.exit_code == 0, check.output
    assert "caffe loads every weight: no layer with weights ignored" in check.output


def test_hdf5_weights_behind_a_user_block_convert(caffe, tmp_path, cli):
    """HDF5 lets a file start with a user block (512, 1024, ... bytes) before
    its signature; Caffe's H5Fis_hdf5 takes such a file for HDF5 weights."""
    proto, weights, expected = _saved_hdf5(caffe, tmp_path)
    blocked = tmp_path / "blocked.caffemodel.h5"
    with h5py.File(weights, "r") as source, h5py.File(blocked, "w", userblock_size=1024) as copy:
        source.copy("data", copy)
    assert blocked.read_bytes()[:8] != b"\x89HDF\r\n\x1a\n"
    net = caffe.Net(str(proto), caffe.TEST, weights=str(blocked))
    assert np.array_equal(net.params["fc1"][0].data, expected["fc1"][0])
    assert_one_line_error(cli("stats", "-w", blocked), "caffedsd convert --model NET.prototxt --weights")
    result = cli("convert", "-p", proto, "-w", blocked, "-o", "blocked.caffemodel")
    assert result.exit_code == 0, result.output
    model = read_caffemodel(tmp_path / "blocked.caffemodel")
    assert np.array_equal(model.layer("fc1").blobs[0].data.reshape(expected["fc1"][0].shape), expected["fc1"][0])


def test_a_solvers_hdf5_snapshot_converts(caffe, tmp_path, cli):
    solver_path = write_solver(tmp_path, extra="momentum: 0.9\nsnapshot_format: HDF5")
    solver, _ = open_solver(read_solver(solver_path), tmp_path)
    solver.step(3)
    solver.snapshot()
    snapshot = tmp_path / "snap_iter_3.caffemodel.h5"
    assert snapshot.is_file()
    result = cli("convert", "-p", tmp_path / "net.prototxt", "-w", snapshot, "-o", "snap.caffemodel")
    assert result.exit_code == 0, result.output
    model = read_caffemodel(tmp_path / "snap.caffemodel")
    for name, blobs in solver.net.params.items():
        for i, blob in enumerate(blobs):
            assert np.array_equal(model.layer(name).blobs[i].data.reshape(blob.data.shape), blob.data)


def test_hdf5_weights_elsewhere_and_bad_conversions(caffe, tmp_path, cli):
    proto, weights, _ = _saved_hdf5(caffe, tmp_path)
    # Every other command names the conversion.
    assert_one_line_error(cli("stats", "-w", weights), "caffedsd convert --model NET.prototxt --weights")
    assert_one_line_error(cli("prune", "-w", weights, "-s", "0.5", "-o", "p.caffemodel"),
                          "Caffe HDF5 weights (snapshot_format: HDF5)")
    # Other HDF5 files are not sent to convert, which would refuse them.
    assert cli("convert", "-p", proto, "-w", weights, "-o", "w.caffemodel").exit_code == 0
    assert cli("prune", "-w", "w.caffemodel", "-s", "0.5", "-o", "p.caffemodel").exit_code == 0
    # It named --masks (-m), which rank and most commands do not have.
    for command in ("stats", "rank"):
        assert_one_line_error(cli(command, "-w", "p.masks.h5"),
                              "p.masks.h5: a caffedsd masks file, not weights: give the caffemodel it belongs to")
    with h5py.File(tmp_path / "plain.h5", "w") as h5:
        h5.create_group("foo")
    assert_one_line_error(cli("stats", "-w", "plain.h5"), "plain.h5: an HDF5 file, but neither a caffemodel nor")

    other = tmp_path / "other.prototxt"
    other.write_text(TINY_NET.replace('name: "fc1"', 'name: "fc9"'))
    assert_one_line_error(cli("convert", "-p", other, "-w", weights, "-o", "x.caffemodel"),
                          "layer 'fc1' is not in")
    lonely = tmp_path / "lonely.prototxt"  # fc2b names a blob no earlier layer has
    lonely.write_text(TINY_NET.replace('param { name: "fc2_w" } param { name: "fc2_b" }\n        inner_product_param'
                                       ' { num_output: 10 weight_filler { type: "gaussian" std: 1 } } }\n'
                                       'layer { name: "fc2b"', 'inner_product_param { num_output: 10 } }\n'
                                       'layer { name: "fc2b"', 1))
    assert_one_line_error(cli("convert", "-p", lonely, "-w", weights, "-o", "x.caffemodel"),
                          "layer 'fc2b' has no blob 0 (data/fc2b/0), and no earlier layer of the net shares it")
    with h5py.File(tmp_path / "masks.h5", "w") as h5:
        h5.create_group("masks")
    assert_one_line_error(cli("convert", "-p", proto, "-w", "masks.h5", "-o", "x.caffemodel"),
                          "without a 'data' group")
    binary = tmp_path / "binary.caffemodel"
    assert cli("convert", "-p", proto, "-w", weights, "-o", binary).exit_code == 0
    assert_one_line_error(cli("convert", "-p", proto, "-w", binary, "-o", "x.caffemodel"),
                          "not an HDF5 file (a binary caffemodel needs no conversion)")
    assert_one_line_error(cli("convert", "-p", proto, "-w", weights, "-o", weights),
                          "output would overwrite the input")
    assert not (tmp_path / "x.caffemodel").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


NESTED_NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 1 dim: 4 dim: 4 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 2 kernel_size: 3 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "conv1/bn" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "conv1/bn/scale" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "conv1/relu" type: "ReLU" bottom: "conv1" top: "conv1" }
"""


def test_layer_names_with_a_slash_are_nested_groups(caffe, tmp_path, cli):
    """Net::ToHDF5 names a layer's group by the layer's name, and HDF5 reads
    '/' as a path: conv1/bn's blobs lie in data/conv1/bn, inside conv1's group."""
    proto = tmp_path / "nested.prototxt"
    proto.write_text(NESTED_NET)
    net = caffe.Net(str(proto), caffe.TEST)
    for index, (name, j) in enumerate([("conv1", 0), ("conv1", 1), ("conv1/bn", 0), ("conv1/bn", 1),
                                       ("conv1/bn", 2), ("conv1/bn/scale", 0), ("conv1/bn/scale", 1)]):
        net.params[name][j].data[...] = index + 1
    net.save_hdf5(str(tmp_path / "nested.h5"))
    with h5py.File(tmp_path / "nested.h5", "r") as h5:
        assert sorted(h5["data/conv1"]) == ["0", "1", "bn", "relu"] and sorted(h5["data/conv1/bn"]) == [
            "0", "1", "2", "scale"]
    result = cli("convert", "-p", proto, "-w", "nested.h5", "-o", "nested.caffemodel")
    assert result.exit_code == 0, result.output
    model = read_caffemodel(tmp_path / "nested.caffemodel")
    assert [(layer.name, [float(b.data.flat[0]) for b in layer.blobs]) for layer in model.layers] == [
        ("conv1", [1, 2]), ("conv1/bn", [3, 4, 5]), ("conv1/bn/scale", [6, 7])]
    check = cli("verify", "-w", "nested.caffemodel", "-p", proto)
    assert check.exit_code == 0 and "caffe loads every weight" in check.output, check.output
    # A name HDF5 would read as another path cannot be found by it.
    (tmp_path / "slashes.prototxt").write_text(NESTED_NET.replace('"conv1/bn"', '"conv1//bn"'))
    assert_one_line_error(cli("convert", "-p", "slashes.prototxt", "-w", "nested.h5", "-o", "x.caffemodel"),
                          "slashes.prototxt: layer 'conv1//bn' cannot be found in HDF5 weights")
    (tmp_path / "other.prototxt").write_text(NESTED_NET.replace('"conv1/bn/scale"', '"conv1/scale"'))
    assert_one_line_error(cli("convert", "-p", "other.prototxt", "-w", "nested.h5", "-o", "x.caffemodel"),
                          "nested.h5: layer 'conv1/bn/scale' is not in other.prototxt")
    assert not (tmp_path / "x.caffemodel").exists()


def test_weights_that_do_not_fit_the_prototxt_are_refused(caffe, tmp_path, cli):
    """As prune --model: a prototxt whose layers' outputs differ from the
    weights would give a caffemodel stock Caffe aborts on."""
    proto, weights, _ = _saved_hdf5(caffe, tmp_path)
    (tmp_path / "wide.prototxt").write_text(proto.read_text().replace("num_output: 4 kernel_size: 3",
                                                                       "num_output: 5 kernel_size: 3"))
    assert_one_line_error(cli("convert", "-p", "wide.prototxt", "-w", weights, "-o", "x.caffemodel"),
                          f"wide.prototxt does not match {weights}: blob shapes differ: "
                          "conv1 (num_output 5, weights 4x1x3x3)")
    (tmp_path / "more.prototxt").write_text(proto.read_text() + 'layer { name: "fc3" type: "InnerProduct" '
                                            'bottom: "fc2b" top: "fc3" inner_product_param { num_output: 2 } }\n')
    assert_one_line_error(cli("convert", "-p", "more.prototxt", "-w", weights, "-o", "x.caffemodel"),
                          f"more.prototxt does not match {weights}: layers with no weights in {weights.name} "
                          "(Caffe would leave them at their initial values): fc3")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") or p.name == "x.caffemodel"]


def test_a_layer_defined_once_per_phase_is_written_once(caffe, tmp_path, cli):
    proto = tmp_path / "phases.prototxt"
    proto.write_text("""
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 5 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" include { phase: TEST }
        inner_product_param { num_output: 3 } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" include { phase: TRAIN }
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" } } }
""")
    net = caffe.Net(str(proto), caffe.TRAIN)
    net.params["fc"][0].data[...] = np.arange(15).reshape(3, 5)
    net.save_hdf5(str(tmp_path / "w.h5"))
    result = cli("convert", "-p", proto, "-w", tmp_path / "w.h5", "-o", "w.caffemodel")
    assert result.exit_code == 0, result.output
    model = read_caffemodel(tmp_path / "w.caffemodel")
    assert [layer.name for layer in model.layers] == ["fc"]
    assert "gaussian" in str(model.layer("fc").param)  # the TRAIN net's, which Caffe snapshots
    for phase in (caffe.TRAIN, caffe.TEST):
        loaded = caffe.Net(str(proto), phase, weights=str(tmp_path / "w.caffemodel"))
        assert np.array_equal(loaded.params["fc"][0].data, np.arange(15).reshape(3, 5))


def test_values_beyond_float32_and_stray_blob_names_are_refused(caffe, tmp_path, cli):
    """A float64 1e40 became inf with a numpy warning and exit 0; a dataset
    "01" was read as blob 1, whichever of the two came last."""
    proto, weights, _ = _saved_hdf5(caffe, tmp_path)
    with h5py.File(weights, "a") as h5:
        blob = h5["data/conv1/0"][()].astype(np.float64)
        blob[0, 0, 0, 0] = 1e40
        del h5["data/conv1/0"]
        h5["data/conv1/0"] = blob
    result = cli("convert", "-p", proto, "-w", weights, "-o", "x.caffemodel")
    assert_one_line_error(result, "data/conv1/0 holds values beyond float32's range (float64)")
    assert "RuntimeWarning" not in result.output
    proto, weights, _ = _saved_hdf5(caffe, tmp_path)
    with h5py.File(weights, "a") as h5:
        h5["data/conv1/01"] = h5["data/conv1/1"][()]
    assert_one_line_error(cli("convert", "-p", proto, "-w", weights, "-o", "x.caffemodel"),
                          "data/conv1/01 is not a blob (Caffe names them 0, 1, ...)")
    assert not (tmp_path / "x.caffemodel").exists()



def test_blobs_of_shapes_caffe_cannot_hold_are_refused_before_they_are_read(caffe, tmp_path, cli):
    """A dataset of shape [0, 2^40] was converted, then refused in the
    temporary file's name; one of 2^32 unallocated values was read into
    16 GiB of memory; a null dataspace was "float32 values, not numbers"."""
    for name, make in (("wide", lambda g: g.create_dataset("0", shape=(0, 1 << 40), dtype="f4")),
                       ("big", lambda g: g.create_dataset("0", shape=(1 << 16, 1 << 16), dtype="f4",
                                                          chunks=(16, 16))),
                       ("null", lambda g: g.create_dataset("0", data=h5py.Empty("f4")))):
        proto, weights, _ = _saved_hdf5(caffe, tmp_path)
        with h5py.File(weights, "a") as h5:
            del h5["data/conv1/0"]
            make(h5["data/conv1"])
        expect = {"wide": "data/conv1/0 has shape [0, 1099511627776], a dimension or count over 2147483647 "
                          "(Caffe's blob shapes and counts are int)",
                  "big": "data/conv1/0 has shape [65536, 65536], a dimension or count over 2147483647",
                  "null": "data/conv1/0 has no shape (an HDF5 null dataspace), not a blob"}[name]
        assert_one_line_error(cli("convert", "-p", proto, "-w", weights, "-o", "x.caffemodel"),
                              f"tiny.caffemodel.h5: {expect}")
        assert not (tmp_path / "x.caffemodel").exists()

RESIZED_NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip" inner_product_param { num_output: 2 } }
"""


def test_a_prototxt_of_another_input_size_is_refused_before_anything_is_written(caffe, tmp_path, cli):
    """Its layers fit the weights by what the prototxt says (num_output,
    kernel), but ip's inputs come of the input size: stock `caffe test`
    aborted on every file convert, decompress and prune --model wrote."""
    proto, weights = save_net(caffe, tmp_path, RESIZED_NET)
    net = caffe.Net(str(proto), caffe.TEST, weights=str(weights))
    net.save_hdf5(str(tmp_path / "net.caffemodel.h5"))
    assert cli("compress", "-w", weights, "-o", "net.dcz").exit_code == 0
    resized = tmp_path / "resized.prototxt"
    resized.write_text(RESIZED_NET.replace("dim: 8 dim: 8", "dim: 10 dim: 10"))
    for argv in (["convert", "-p", proto, "-w", "net.caffemodel.h5", "-o", "fits.caffemodel"],
                 ["decompress", "net.dcz", "-p", proto, "-o", "fits2.caffemodel"],
                 ["prune", "-w", weights, "-p", proto, "-s", 0.5, "-o", "fits3.caffemodel"]):
        assert cli(*argv).exit_code == 0, argv
    for argv in (["convert", "-p", resized, "-w", "net.caffemodel.h5", "-o", "x.caffemodel"],
                 ["decompress", "net.dcz", "-p", resized, "-o", "x.caffemodel"],
                 ["prune", "-w", weights, "-p", resized, "-s", 0.5, "-o", "x.caffemodel"]):
        assert_one_line_error(cli(*argv), "resized.prototxt: Caffe cannot build the net with these weights: Cannot "
                                          "copy param 0 weights from layer 'ip'; shape mismatch.  Source param shape "
                                          "is 2 144 (288); target param shape is 2 256 (512)")
        assert not (tmp_path / "x.caffemodel").exists() and not (tmp_path / "x.masks.h5").exists(), argv
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # A Python layer's module, or the data it reads, may be on another machine:
    # such a net is not built, as one whose data is not here.
    python = tmp_path / "python.prototxt"
    python.write_text(RESIZED_NET + 'layer { name: "py" type: "Python" bottom: "ip" top: "py" '
                                    'python_param { module: "not_on_this_machine" layer: "Reader" } }\n')
    result = cli("prune", "-w", weights, "-p", python, "--allow-python-layers", "-s", 0.5, "-o", "py.caffemodel")
    assert result.exit_code == 0, result.output


def test_appending_layers_past_the_file_size_limit_raises_and_keeps_the_file(tmp_path):
    """HDF5 snapshots get their TEST-only layers appended: written in place
    by h5py, a write past ulimit -f crashed the process closing the file
    (the error only printed as ignored); now the file is changed in memory
    and written back whole, or not at all."""
    import h5py

    path = tmp_path / "snap.caffemodel.h5"
    with h5py.File(path, "w") as h5:
        h5.create_group("data").create_group("ip").create_dataset("0", data=np.ones(8, np.float32))
    before = path.read_bytes()
    code = ("import resource, signal, sys\n"
            "import numpy as np\n"
            "from caffedsd.caffe_proto import LayerParameter\n"
            "from caffedsd.errors import OutputError\n"
            "from caffedsd.hdf5_weights import append_hdf5_layers\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({len(before) + 4096}, {len(before) + 4096}))\n"
            "try:\n"
            "    append_hdf5_layers(sys.argv[1], [(LayerParameter(name='probe'), [np.ones(20000, np.float32)])])\n"
            "except OutputError as exc:\n"
            "    print('raised:', exc)\n")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("raised:"), result.stdout + result.stderr
    assert f"({os.strerror(errno.EFBIG)})" in result.stdout
    assert "Exception ignored" not in result.stderr, result.stderr
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left
