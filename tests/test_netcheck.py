"""Data sources a net reads, checked before Caffe (which aborts on them)."""
import pytest

from caffedsd.caffe_proto import read_net_prototxt
from caffedsd.errors import InputError
from caffedsd.netcheck import built_layers, built_state, check_data_sources, check_layer_types, solver_state

from conftest import where_mode_bits_bind


def _net(tmp_path, data_param):
    path = tmp_path / "net.prototxt"
    path.write_text('layer { name: "data" type: "Data" top: "data" top: "label" '
                    f'data_param {{ {data_param} batch_size: 4 }} }}\n')
    return read_net_prototxt(path), path


@pytest.fixture
def databases(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train_lmdb").mkdir()
    (tmp_path / "train_lmdb" / "data.mdb").write_bytes(b"")
    (tmp_path / "train_leveldb").mkdir()
    (tmp_path / "train_leveldb" / "CURRENT").write_text("MANIFEST-000001\n")
    return tmp_path


def test_an_lmdb_read_with_the_default_backend(databases):
    net, path = _net(databases, 'source: "train_lmdb"')  # backend: LEVELDB is data_param's default
    for has_leveldb in (None, True, False):
        with pytest.raises(InputError, match=r"layer 'data' reads 'train_lmdb', an LMDB, with backend LEVELDB "
                                             r"\(data_param's default\): add `backend: LMDB`"):
            check_data_sources(net, path, has_leveldb)
    check_data_sources(*_net(databases, 'source: "train_lmdb" backend: LMDB'), has_leveldb=False)


def test_a_leveldb_needs_a_caffe_with_leveldb(databases):
    net, path = _net(databases, 'source: "train_leveldb"')
    check_data_sources(net, path, True)
    check_data_sources(net, path, None)  # not known: Caffe has the last word
    with pytest.raises(InputError, match="this Caffe was built without LevelDB"):
        check_data_sources(net, path, False)


def test_missing_sources(databases):
    with pytest.raises(InputError, match="reads 'nowhere_lmdb', which does not exist"):
        check_data_sources(*_net(databases, 'source: "nowhere_lmdb" backend: LMDB'))
    (databases / "list.txt").write_text("gone.h5\n")
    path = databases / "h5.prototxt"
    path.write_text('layer { name: "d" type: "HDF5Data" top: "data" hdf5_data_param { source: "list.txt" '
                    'batch_size: 4 } }\n')
    with pytest.raises(InputError, match="list.txt: lists 'gone.h5', which does not exist"):
        check_data_sources(read_net_prototxt(path), path)


def _hdf5_net(folder, source):
    path = folder / "h5.prototxt"
    path.write_text(f'layer {{ name: "d" type: "HDF5Data" top: "data" hdf5_data_param {{ source: "{source}" '
                    'batch_size: 4 } }\n')
    return read_net_prototxt(path), path


def test_an_hdf5_source_that_is_not_a_list(databases):
    """HDF5Data's source is a text file listing .h5 files; the .h5 itself, or
    its folder, is a common mistake, reported in one line, not a traceback."""
    (databases / "train.h5").write_bytes(b"\x89HDF\r\n\x1a\n\0\0\0\0\xff\xfe")
    net, path = _hdf5_net(databases, "train.h5")
    with pytest.raises(InputError, match=r"h5.prototxt: layer 'd': hdf5_data_param.source 'train.h5' is an HDF5 "
                                         r"file, not a list of HDF5 files \(Caffe's HDF5Data reads a text file"):
        check_data_sources(net, path)
    (databases / "h5s").mkdir()
    net, path = _hdf5_net(databases, "h5s")
    with pytest.raises(InputError, match="layer 'd': hdf5_data_param.source 'h5s' is a folder, not a list"):
        check_data_sources(net, path)
    (databases / "blob.bin").write_bytes(b"\xff\xfe\0binary")
    net, path = _hdf5_net(databases, "blob.bin")
    with pytest.raises(InputError, match="'blob.bin' holds binary data, not a list of HDF5 files"):
        check_data_sources(net, path)


def test_unreadable_net_and_hdf5_list(databases):
    (databases / "list.txt").write_text("train.h5\n")
    (databases / "train.h5").write_bytes(b"")
    _hdf5_net(databases, "list.txt")
    (databases / "list.txt").chmod(0)
    (databases / "unreadable.prototxt").write_text('layer { name: "d" type: "Input" top: "data" }\n')
    (databases / "unreadable.prototxt").chmod(0)
    done = where_mode_bits_bind(
        "from caffedsd.caffe_proto import read_net_prototxt\n"
        "from caffedsd.errors import InputError\n"
        "from caffedsd.netcheck import check_data_sources\n"
        "for path, check in (('unreadable.prototxt', False), ('h5.prototxt', True)):\n"
        "    try:\n"
        "        net = read_net_prototxt(path)\n"
        "        if check:\n"
        "            check_data_sources(net, path)\n"
        "    except InputError as exc:\n"
        "        print(exc)\n", databases)
    assert done.stdout.splitlines() == [
        "unreadable.prototxt: cannot be read (Permission denied)",
        "h5.prototxt: layer 'd': hdf5_data_param.source 'list.txt' cannot be read (Permission denied)"], done.stderr


def test_layer_types_the_caffe_lacks(tmp_path):
    net, path = _net(tmp_path, 'source: "x" backend: LMDB')
    check_layer_types(net, path, {"Data"})
    check_layer_types(net, path, None)  # a pycaffe that cannot list them
    with pytest.raises(InputError, match="layer 'data' has type 'Data', which this Caffe does not have"):
        check_layer_types(net, path, {"ImageData", "Convolution"})


def test_a_missing_mean_file(databases):
    net, path = _net(databases, 'source: "train_lmdb" backend: LMDB')
    net.layer[0].transform_param.mean_file = "data/ilsvrc12/imagenet_mean.binaryproto"
    with pytest.raises(InputError, match="layer 'data' subtracts the mean in "
                                         "'data/ilsvrc12/imagenet_mean.binaryproto', which does not exist"):
        check_data_sources(net, path)
    (databases / "mean.binaryproto").write_bytes(b"")
    net.layer[0].transform_param.mean_file = "mean.binaryproto"
    check_data_sources(net, path)


# name: rules. DummyData layers, so that Caffe builds each one alone.
RULES = {
    "train": "include { phase: TRAIN }",
    "test": "include { phase: TEST }",
    "not_test": "exclude { phase: TEST }",
    "always": "",
    "deploy_only": 'include { stage: "deploy" }',
    "on_train_set": 'include { phase: TEST stage: "test-on-train-set" }',
    "both_stages": 'include { stage: "deploy" stage: "test-on-train-set" }',
    "not_deploy": 'exclude { not_stage: "deploy" }',
    "level_1_to_2": "include { min_level: 1 max_level: 2 }",
    "either": 'include { phase: TRAIN } include { stage: "test-on-train-set" }',
}
RULES_NET = 'state { stage: "deploy" }\n' + "".join(
    f'layer {{ name: "{name}" type: "DummyData" top: "{name}" dummy_data_param {{ shape {{ dim: 1 }} }} {rules} }}\n'
    for name, rules in RULES.items())


def _rules_net(tmp_path):
    path = tmp_path / "rules.prototxt"
    path.write_text(RULES_NET)
    return read_net_prototxt(path)


def _built(net, *states):
    return [layer.name for layer in built_layers(net, states)]


def test_which_layers_caffe_builds_in_a_state(tmp_path):
    net = _rules_net(tmp_path)
    # Loaded by itself for TEST (caffe test, caffe.Net): the file's stage, level 0.
    assert _built(net, built_state(net, "TEST")) == ["test", "always", "deploy_only", "not_deploy"]
    assert _built(net, built_state(net, "TRAIN")) == ["train", "not_test", "always", "deploy_only", "not_deploy",
                                                      "either"]
    # A solver's test net with test_state { stage: "test-on-train-set" } merged over the file's state.
    extra = solver_state(net, "TEST").__class__(stage=["test-on-train-set"], level=1)
    state = solver_state(net, "TEST", extra)
    assert list(state.stage) == ["deploy", "test-on-train-set"] and state.level == 1
    assert _built(net, state) == ["test", "always", "deploy_only", "on_train_set", "both_stages", "not_deploy",
                                  "level_1_to_2", "either"]
    # A layer is built when any of the states builds it.
    assert _built(net, built_state(net, "TEST"), built_state(net, "TRAIN")) == [
        "train", "test", "not_test", "always", "deploy_only", "not_deploy", "either"]
    assert len(built_layers(net, None)) == len(net.layer)


def test_data_of_layers_another_phase_builds_is_not_checked(databases):
    path = databases / "tv.prototxt"
    path.write_text('layer { name: "data" type: "Data" top: "data" include { phase: TRAIN } '
                    'data_param { source: "nowhere_lmdb" backend: LMDB batch_size: 4 } }\n'
                    'layer { name: "data" type: "Data" top: "data" include { phase: TEST } '
                    'data_param { source: "train_lmdb" backend: LMDB batch_size: 4 } }\n'
                    'layer { name: "fork" type: "ForkData" top: "x" include { phase: TRAIN } }\n')
    net = read_net_prototxt(path)
    test = [built_state(net, "TEST")]
    check_data_sources(net, path, False, test)
    check_layer_types(net, path, {"Data"}, test)
    with pytest.raises(InputError, match="reads 'nowhere_lmdb', which does not exist"):
        check_data_sources(net, path, False, [built_state(net, "TRAIN")])
    with pytest.raises(InputError, match="layer 'fork' has type 'ForkData'"):
        check_layer_types(net, path, {"Data"}, [built_state(net, "TRAIN")])


def test_a_memory_data_layer_is_refused(tmp_path):
    path = tmp_path / "m.prototxt"
    path.write_text('layer { name: "feed" type: "MemoryData" top: "data" top: "label" '
                    'memory_data_param { batch_size: 4 channels: 1 height: 2 width: 2 } }\n')
    with pytest.raises(InputError, match=r"m.prototxt: layer 'feed' is a MemoryData layer, which only Python "
                                         r"\(set_input_arrays\) feeds and caffedsd does not"):
        check_data_sources(read_net_prototxt(path), path)
    check_data_sources(read_net_prototxt(path), path, forward=False)  # built, never run: decompose's shapes


@pytest.mark.caffe
def test_the_layers_caffe_builds_are_those_predicted(tmp_path, monkeypatch):
    """Caffe itself: caffe.Net for each phase, and a Solver with a
    train_state and two test nets with test_states (solver_spec.built_nets)."""
    from caffedsd.caffe_env import import_caffe
    from caffedsd.solver_spec import built_nets, read_solver

    caffe = import_caffe()
    monkeypatch.chdir(tmp_path)
    net = _rules_net(tmp_path)
    for phase, number in (("TRAIN", caffe.TRAIN), ("TEST", caffe.TEST)):
        built = caffe.Net(str(tmp_path / "rules.prototxt"), number)
        assert list(built._layer_names) == _built(net, built_state(net, phase)), phase
    (tmp_path / "solver.prototxt").write_text(
        'net: "rules.prototxt"\nbase_lr: 0.01\nlr_policy: "fixed"\nmax_iter: 1\n'
        'train_state { level: 2 }\ntest_iter: 1\ntest_iter: 1\ntest_interval: 10\n'
        'test_state { }\ntest_state { stage: "test-on-train-set" level: 1 }\n')
    solver = caffe.get_solver("solver.prototxt")
    ((_, _, states),) = built_nets(read_solver("solver.prototxt"))
    caffe_nets = [solver.net] + list(solver.test_nets)
    assert len(states) == len(caffe_nets) == 3
    for built, state in zip(caffe_nets, states):
        assert list(built._layer_names) == _built(net, state)


@pytest.mark.caffe
def test_inline_test_nets_come_first_as_in_caffe(tmp_path, monkeypatch):
    """Caffe's InitTestNets: test_net_param nets, then test_net files, then
    the train/val net (here net_param) for the remaining test_iter."""
    from caffedsd.caffe_env import import_caffe
    from caffedsd.solver_spec import built_nets, read_solver

    caffe = import_caffe()
    monkeypatch.chdir(tmp_path)
    net = _rules_net(tmp_path)
    only = 'layer { name: "only_inline" type: "DummyData" top: "x" dummy_data_param { shape { dim: 1 } } }'
    (tmp_path / "solver.prototxt").write_text(
        f'net_param {{ {RULES_NET} }}\ntest_net_param {{ {only} }}\ntest_net: "rules.prototxt"\n'
        'base_lr: 0.01\nlr_policy: "fixed"\nmax_iter: 1\ntest_iter: 1\ntest_iter: 1\ntest_iter: 1\n'
        'test_interval: 10\ntest_state { }\ntest_state { }\ntest_state { stage: "test-on-train-set" level: 1 }\n')
    solver = caffe.get_solver("solver.prototxt")
    (main, inline, from_file) = built_nets(read_solver("solver.prototxt"))
    assert [path.name for _, path, _ in (main, inline, from_file)] == ["solver.prototxt", "solver.prototxt",
                                                                       "rules.prototxt"]
    caffe_tests = [list(each._layer_names) for each in solver.test_nets]
    assert caffe_tests[0] == ["only_inline"] == _built(inline[0], *inline[2])
    assert caffe_tests[1] == _built(net, *from_file[2])
    assert list(solver.net._layer_names) == _built(net, main[2][0])
    assert len(main[2]) == 2 and caffe_tests[2] == _built(net, main[2][1])  # the third test_iter: net_param again
    assert "on_train_set" in caffe_tests[2]
    # One test net at a time, as train-* writes their layers of phase TEST only.
    from caffedsd.solver_spec import tested_net

    spec = read_solver("solver.prototxt")
    assert [_built(*tested_net(spec, index)) for index in range(3)] == caffe_tests


def test_a_runs_plot_tells_accuracies_from_losses_by_their_layers(tmp_path, monkeypatch):
    """curves.png left out every output named "...loss...": GoogLeNet's
    accuracies (loss3/top-1) were not drawn, a loss named otherwise was."""
    from caffedsd.report import dsd_plotted_metrics
    from caffedsd.solver_spec import read_solver, solver_output_kinds

    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(
        'layer { name: "data" type: "DummyData" top: "x" top: "label" dummy_data_param { shape { dim: 2 dim: 3 } '
        'shape { dim: 2 } } }\n'
        'layer { name: "fc" type: "InnerProduct" bottom: "x" top: "fc" inner_product_param { num_output: 3 } }\n'
        'layer { name: "cost" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "cost" }\n'
        'layer { name: "l2" type: "EuclideanLoss" bottom: "fc" bottom: "fc" top: "l2" loss_weight: 0.5 }\n'
        'layer { name: "acc" type: "Accuracy" bottom: "fc" bottom: "label" top: "loss3/top-1" '
        'include { phase: TEST } }\n')
    (tmp_path / "solver.prototxt").write_text('net: "net.prototxt"\nbase_lr: 0.01\nlr_policy: "fixed"\n'
                                              'max_iter: 1\ntest_iter: 1\ntest_iter: 1\ntest_interval: 10\n')
    kinds = solver_output_kinds(read_solver("solver.prototxt"))
    assert kinds == {"cost": "loss", "l2": "loss", "loss3/top-1": "accuracy",
                     "#1/cost": "loss", "#1/l2": "loss", "#1/loss3/top-1": "accuracy"}
    stages = [{"test": {"cost": 1.0, "l2": 2.0, "loss3/top-1": 0.5, "#1/loss3/top-1": 0.4, "#1/cost": 1.1}}]
    assert dsd_plotted_metrics(stages, kinds) == ["loss3/top-1", "#1/loss3/top-1"]
    # Drawn, with a name that is not mathtext either.
    from caffedsd.report import write_dsd_report

    (tmp_path / "01-dense").mkdir()
    (tmp_path / "01-dense" / "curve.csv").write_text("iter,loss,lr\n1,2.0,0.01\n10,1.0,0.01\n")
    stage = {"stage": 1, "kind": "dense", "folder": "01-dense", "iterations": 10, "lr": 0.01, "sparsity": 0.0,
             "curve": "curve.csv", "test": {"loss3/top-1": 0.5, "a$\\bad$": 0.25}}
    write_dsd_report(tmp_path, {"recipe": {}, "outputs": kinds, "stages": [stage]})
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_a_loss_top_another_layer_reads_is_an_output_under_its_splits_name(caffe, tmp_path):
    """Caffe's InsertSplits gives a loss-weighted top that a later layer
    also reads a Split, whose first top carries the weight and is the net's
    output: the kinds named the top, so that report.json named an output
    that is none, and curves.png drew the split's as an accuracy."""
    from caffedsd.caffe_proto import read_net_prototxt
    from caffedsd.netcheck import output_kinds, solver_state

    text = ('layer { name: "data" type: "DummyData" top: "x" top: "label" dummy_data_param { shape { dim: 2 dim: 3 } '
            'shape { dim: 2 } } }\n'
            'layer { name: "fc" type: "InnerProduct" bottom: "x" top: "fc" inner_product_param { num_output: 3 } }\n'
            'layer { name: "cost" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "cost" }\n'
            'layer { name: "aux" type: "InnerProduct" bottom: "x" top: "aux" loss_weight: 0.001 '
            'inner_product_param { num_output: 2 } }\n'
            'layer { name: "r" type: "ReLU" bottom: "aux" top: "auxr" }\n'
            'layer { name: "s" type: "Silence" bottom: "auxr" }\n'
            'layer { name: "acc" type: "Accuracy" bottom: "fc" bottom: "label" top: "acc" }\n')
    (tmp_path / "net.prototxt").write_text(text)
    built = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST)
    net = read_net_prototxt(tmp_path / "net.prototxt")
    kinds, headline = output_kinds(net, solver_state(net, "TEST"))
    assert sorted(kinds) == sorted(built.outputs) == ["acc", "aux_aux_0_split_0", "cost"]
    assert kinds["aux_aux_0_split_0"] == "loss" and headline == "acc"


SE_NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "gate" type: "InnerProduct" bottom: "data" top: "gate"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "excite" type: "Scale" bottom: "data" bottom: "gate" top: "excite"
        scale_param { axis: 0 bias_term: true } }
"""


def test_a_scale_by_a_second_bottom_has_only_its_bias(caffe, tmp_path, cli):
    """ScaleLayer::LayerSetUp: with two bottoms the factor is the second
    bottom and the bias its one blob (here 2x3, bottom 1's shape from axis 0)."""
    from caffedsd.caffemodel import read_caffemodel
    from caffedsd.layers import expected_blob_count, expects_blobs
    from caffedsd.netcheck import check_pair
    from conftest import save_net

    proto, weights = save_net(caffe, tmp_path, SE_NET)
    excite = read_caffemodel(weights).layer("excite")
    assert [b.shape for b in excite.blobs] == [(2, 3)]
    net = read_net_prototxt(proto)
    scale = net.layer[2]
    assert expected_blob_count(scale) == 1 and expects_blobs(scale)
    scale.scale_param.bias_term = False
    assert expected_blob_count(scale) == 0 and not expects_blobs(scale)
    del scale.bottom[1]
    assert expected_blob_count(scale) == 1
    scale.scale_param.bias_term = True
    assert expected_blob_count(scale) == 2
    check_pair(read_net_prototxt(proto), proto, read_caffemodel(weights))
    result = cli("prune", "-w", weights, "--model", proto, "-s", 0.5, "-o", "p.caffemodel")
    assert result.exit_code == 0, result.output
    result = cli("verify", "-w", "p.caffemodel", "-p", proto)
    assert result.exit_code == 0 and "caffe loads every weight" in result.output, result.output
    (tmp_path / "plain.prototxt").write_text(SE_NET.replace("bias_term: true", "bias_term: false"))
    with pytest.raises(InputError, match=r"blob counts differ: excite \(0 in net, 1 in weights\)"):
        check_pair(read_net_prototxt(tmp_path / "plain.prototxt"), tmp_path / "plain.prototxt",
                   read_caffemodel(weights))


def test_layer_names_with_caffes_split_layers():
    from google.protobuf import text_format

    from caffedsd.caffe_proto import NetParameter
    from caffedsd.netcheck import layer_names_with_splits

    net = text_format.Parse(
        'layer { name: "d" type: "Input" top: "x" top: "y" }'
        'layer { name: "a" type: "ReLU" bottom: "x" top: "x" }'  # in place: the later uses are of a's x
        'layer { name: "b" type: "Eltwise" bottom: "x" bottom: "x" top: "s/t" loss_weight: 1 }'
        'layer { name: "c" type: "Silence" bottom: "s/t" }'
        'layer { name: "e" type: "Silence" bottom: "y" }', NetParameter())
    assert layer_names_with_splits(net.layer) == ["d", "a", "x_a_0_split", "b", "s/t_b_0_split", "c", "e"]


@pytest.mark.parametrize("layer_type, param", [("ImageData", "image_data_param"), ("WindowData", "window_data_param")])
def test_an_image_list_that_is_a_folder(databases, layer_type, param):
    (databases / "images").mkdir()
    (databases / "list.txt").write_text("a.jpg 0\n")
    path = databases / "img.prototxt"
    for source, ok in (("images", False), ("list.txt", True)):
        path.write_text(f'layer {{ name: "d" type: "{layer_type}" top: "data" top: "label" '
                        f'{param} {{ source: "{source}" batch_size: 4 }} }}\n')
        if ok:
            check_data_sources(read_net_prototxt(path), path)
            continue
        with pytest.raises(InputError, match="layer 'd' reads 'images', which is not a regular file"):
            check_data_sources(read_net_prototxt(path), path)
