"""SqueezeNet generator: exact v1.0/v1.1, bypass variants, knobs; real Caffe."""
import os
import subprocess

import numpy as np
import pytest
from google.protobuf import text_format

from caffedsd.caffe_env import caffe_binary
from caffedsd.caffe_proto import NetParameter, SolverParameter
from caffedsd.squeezenet import SqueezeNetError, SqueezeNetSpec
from conftest import ROOT, assert_one_line_error

# The prunable layers of the public squeezenet_v1.0 model-zoo files, in order,
# with their weight shapes.
V10_LAYERS = [("conv1", (96, 3, 7, 7))]
for _n, (_s, _e, _in) in enumerate([(16, 64, 96), (16, 64, 128), (32, 128, 128), (32, 128, 256),
                                     (48, 192, 256), (48, 192, 384), (64, 256, 384), (64, 256, 512)]):
    _f = f"fire{_n + 2}"
    V10_LAYERS += [(f"{_f}/squeeze1x1", (_s, _in, 1, 1)), (f"{_f}/expand1x1", (_e, _s, 1, 1)),
                   (f"{_f}/expand3x3", (_e, _s, 3, 3))]
V10_LAYERS.append(("conv10", (1000, 512, 1, 1)))


def _net(caffe, tmp_path, cli, *args):
    result = cli("squeezenet", *args, "-o", tmp_path / "net")
    assert result.exit_code == 0, result.output
    return caffe.Net(str(tmp_path / "net" / "deploy.prototxt"), caffe.TEST)


def _count(net):
    return sum(blob.data.size for blobs in net.params.values() for blob in blobs)


def test_v10_is_the_model_zoo_net(caffe, tmp_path, cli):
    net = _net(caffe, tmp_path, cli)
    assert [(name, blobs[0].data.shape) for name, blobs in net.params.items()] == V10_LAYERS
    assert _count(net) == 1248424 == SqueezeNetSpec().parameters()
    assert net.blobs["prob"].data.shape == (10, 1000, 1, 1)
    text = (tmp_path / "net" / "train_val.prototxt").read_text()
    assert 'name: "accuracy_top5"' in text and "top_k: 5" in text


def test_v11_parameters(caffe, tmp_path, cli):
    net = _net(caffe, tmp_path, cli, "--version", "1.1")
    assert _count(net) == 1235496 == SqueezeNetSpec(version="1.1").parameters()
    assert net.params["conv1"][0].data.shape == (64, 3, 3, 3)


@pytest.mark.parametrize("version", ["1.0", "1.1"])
@pytest.mark.parametrize("bypass", ["simple", "complex"])
def test_bypass_variants(caffe, tmp_path, cli, version, bypass):
    net = _net(caffe, tmp_path, cli, "--version", version, "--bypass", bypass)
    spec = SqueezeNetSpec(version=version, bypass=bypass)
    assert _count(net) == spec.parameters()
    bypassed = [name for name in net._layer_names if name.endswith("/bypass")]
    convs = [name for name in net.params if name.endswith("/bypass1x1")]
    # Simple: around the 4 Fire modules whose input and output widths match.
    assert len(bypassed) == (4 if bypass == "simple" else 8)
    assert len(convs) == (0 if bypass == "simple" else 4)


@pytest.mark.caffe
def test_stock_caffe_instantiates_and_runs_forward_backward(tmp_path, cli):
    for args in ([], ["--version", "1.1"], ["--bypass", "simple"], ["--version", "1.1", "--bypass", "complex"]):
        out = tmp_path / ("net" + "".join(args))
        assert cli("squeezenet", *args, "--input-size", 67, "-o", out).exit_code == 0
        proc = subprocess.run([str(caffe_binary()), "time", f"--model={out / 'deploy.prototxt'}", "--iterations=1"],
                              capture_output=True, text=True, env=dict(os.environ, GLOG_minloglevel="0"))
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "Average Forward-Backward" in proc.stderr


def test_knobs_follow_the_paper():
    spec = SqueezeNetSpec(base_e=64, incr_e=32, freq=3, pct3x3=0.25, sr=0.5)
    fires = spec.fires()
    # e_i = 64 + 32 * floor(i / 3): 64 64 64 96 96 96 128 128
    assert [f.out_channels for f in fires] == [64, 64, 64, 96, 96, 96, 128, 128]
    assert [(f.squeeze, f.expand1x1, f.expand3x3) for f in fires[:4]] == [(32, 48, 16)] * 3 + [(48, 72, 24)]


def test_sweep_table(cli):
    result = cli("squeezenet", "--sweep", "sr=0.125,0.25", "pct3x3=0.5,0.75")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["sr", "pct3x3", "parameters", "MB"] and len(lines) == 2 + 4
    assert lines[2].split() == ["0.125", "0.5", "1248424", "4.76"]
    # Whole numbers whole: %g made 1000000 and 1000001 both 1e+06.
    result = cli("squeezenet", "--version", "1.1", "--input-size", 17, "--sr", 0.00001, "--base-e", 1000000,
                 "--incr-e", 0, "--num-classes", 10, "--sweep", "freq=1000000,1000001")
    assert result.exit_code == 0, result.output
    assert [line.split()[0] for line in result.output.splitlines()[2:]] == ["1000000", "1000001"]


@pytest.mark.parametrize("knob,expect", [
    ("sr=", "--sweep sr '': empty"),
    ("sr=0.125,,0.5", "--sweep sr '0.125,,0.5': item 2 is empty"),
    ("base_e=64,", "--sweep base_e '64,': item 2 is empty"),
    ("base_e=64.5", "--sweep base_e '64.5': not a comma-separated list of whole numbers"),
    ("sr=x", "--sweep sr 'x': not a comma-separated list of numbers"),
    # The last one won: the rows of sr=0.5 vanished.
    (["sr=0.5", "sr=0.25"], "--sweep sr=0.25: sr is given twice; give all its values in one sr=V1,V2,..."),
    (["base-e=64", "base_e=128"], "--sweep base_e=128: base_e is given twice"),
])
def test_bad_sweeps(cli, knob, expect):
    knobs = knob if isinstance(knob, list) else [knob]
    assert_one_line_error(cli("squeezenet", "--sweep", *knobs), expect)


@pytest.mark.parametrize("args,expect", [
    (["--sr", "0"], "--sr 0.0: must be in (0, 1]"),
    (["--pct3x3", "1.5"], "--pct3x3 1.5: must be in (0, 1]"),
    (["--pct3x3", "0.001"], "fire2/expand3x3 gets 0 filters"),
    (["--base-e", "2", "--sr", "0.1"], "fire2/squeeze1x1 gets 0 filters"),
    (["--input-size", "20"], "--input-size 20: nothing is left at"),
    (["--num-classes", "1"], "--num-classes 1: must be at least 2"),
    # Every Fire module widens (freq 1): a net named simple_bypass had none.
    (["--bypass", "simple", "--freq", "1"], "--bypass simple: no Fire module keeps its input's width"),
    (["--version", "1.1", "--input-size", "16"], "--input-size 16: nothing is left at pool5 (1x1 before"),
    (["--sweep", "sr=0.25"], "--sweep prints a table and writes no files; leave out -o"),
])
def test_bad_settings(tmp_path, cli, args, expect):
    result = cli("squeezenet", *args, "-o", tmp_path / "net")
    assert_one_line_error(result, expect)
    assert not (tmp_path / "net").exists()


def test_the_least_input_caffe_pools_is_taken(caffe, tmp_path, cli):
    """Caffe's pooling rounds up: 2x2 pools to 1x1. v1.1 at 17..24 was
    refused as pooling to nothing."""
    assert cli("squeezenet", "--version", "1.1", "--input-size", 17, "-o", "net").exit_code == 0
    net = caffe.Net(str(tmp_path / "net" / "deploy.prototxt"), caffe.TEST)
    net.forward()
    assert net.blobs["pool5"].data.shape[2:] == (1, 1) and net.blobs["prob"].data.shape == (10, 1000, 1, 1)


def test_an_output_folder_that_cannot_be_one(tmp_path, cli):
    os.mkfifo(tmp_path / "pipe")  # as -o /dev/null would be
    assert_one_line_error(cli("squeezenet", "-o", tmp_path / "pipe"), "pipe: exists and is not a folder")
    (tmp_path / "file").write_text("mine")
    assert_one_line_error(cli("squeezenet", "-o", tmp_path / "file" / "net"),
                          "file/net: cannot create the output folder (Not a directory)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "pipe"]


def test_spec_validates_when_built():
    with pytest.raises(SqueezeNetError):
        SqueezeNetSpec(freq=0)


ZOO = ROOT.parent / "shared" / "modelzoo"


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_no_options_writes_the_release(tmp_path, cli, version):
    """With no options, train_val, deploy and solver equal the released
    files as parsed messages (../shared/modelzoo, skipped where absent)."""
    release = ZOO / f"squeezenet_v{version}"
    if not release.is_dir():
        pytest.skip(f"{release} not present")
    args = ["--version", version] if version != "1.0" else []
    assert cli("squeezenet", *args, "-o", tmp_path / "net").exit_code == 0
    for name, cls in (("train_val", NetParameter), ("deploy", NetParameter), ("solver", SolverParameter)):
        ours = text_format.Parse((tmp_path / "net" / f"{name}.prototxt").read_text(), cls())
        theirs = text_format.Parse((release / f"{name}.prototxt").read_text(), cls())
        assert ours == theirs, f"{name}: {text_format.MessageToString(ours)[:300]}"


def test_extras_are_options(tmp_path, cli):
    assert cli("squeezenet", "--version", "1.1", "--bias-lr2", "--mirror", "--split-phases", "--solver-mode", "cpu",
               "-o", tmp_path / "net").exit_code == 0
    net = text_format.Parse((tmp_path / "net" / "train_val.prototxt").read_text(), NetParameter())
    convs = [layer for layer in net.layer if layer.type == "Convolution"]
    assert all([(p.lr_mult, p.decay_mult) for p in c.param] == [(1, 1), (2, 0)] for c in convs)
    assert net.layer[0].transform_param.mirror and not net.layer[1].transform_param.mirror
    phases = {layer.name: [r.phase for r in layer.include] for layer in net.layer}
    assert phases["loss"] == [0] and phases["accuracy"] == [1] and phases["accuracy_top5"] == [1]
    solver = text_format.Parse((tmp_path / "net" / "solver.prototxt").read_text(), SolverParameter())
    assert solver.solver_mode == SolverParameter.CPU and solver.net == "train_val.prototxt"
    deploy = text_format.Parse((tmp_path / "net" / "deploy.prototxt").read_text(), NetParameter())
    assert not any(layer.convolution_param.HasField("weight_filler") for layer in deploy.layer)


# The `caffedsd squeezenet` arguments that made each folder of prototxt/.
GENERATED = {
    "squeezenet_v1.0": [],
    "squeezenet_v1.1": ["--version", "1.1"],
    "squeezenet_v1.0_simple_bypass": ["--bypass", "simple"],
    "squeezenet_fashion": ["--version", "1.1", "--stem", "small", "--weight-filler", "msra", "--input-size", 28,
                           "--channels", 1, "--num-classes", 10, "--base-e", 64, "--incr-e", 64, "--data", "hdf5",
                           "--train-source", "data/fashion-mnist/train.txt",
                           "--test-source", "data/fashion-mnist/test.txt", "--bias-lr2", "--split-phases"],
}


def test_every_generated_folder_is_listed():
    assert sorted(p.name for p in (ROOT / "prototxt").glob("squeezenet_*")) == sorted(GENERATED)


@pytest.mark.parametrize("folder", sorted(GENERATED))
def test_committed_nets_are_what_the_generator_writes(tmp_path, cli, folder):
    out = f"prototxt/{folder}"  # relative to tmp_path (cli's folder): the solver names its paths as committed
    assert cli("squeezenet", *GENERATED[folder], "-o", out).exit_code == 0
    for committed in sorted((ROOT / out).iterdir()):
        command = " ".join(["caffedsd squeezenet", *map(str, GENERATED[folder]), "-o", out])
        assert committed.read_text() == (tmp_path / out / committed.name).read_text(), \
            f"prototxt/{folder}/{committed.name} differs from what the generator writes now; rerun `{command}`"


def test_a_hand_edited_net_is_replaced_only_with_force(tmp_path, cli):

    assert cli("squeezenet", "-o", "nets").exit_code == 0
    assert cli("squeezenet", "-o", "nets").exit_code == 0  # the same files again
    (tmp_path / "nets" / "train_val.prototxt").write_text("# my edited net\n")
    assert_one_line_error(cli("squeezenet", "--version", "1.1", "-o", "nets"),
                          "nets/train_val.prototxt: exists with other contents than this generator writes")
    assert (tmp_path / "nets" / "train_val.prototxt").read_text() == "# my edited net\n"
    assert cli("squeezenet", "-o", "nets", "--force").exit_code == 0
    assert "SqueezeNet_v1.0" in (tmp_path / "nets" / "train_val.prototxt").read_text()
    assert_one_line_error(cli("squeezenet", "-o", ""), "Invalid value for '--output' / '-o': an empty path")
    # An unset shell variable as a source was taken for none: the ImageNet default was written.
    for option in ("--train-source", "--test-source"):
        assert_one_line_error(cli("squeezenet", option, "", "-o", "empty"), f"{option} '': names no data")
    assert not (tmp_path / "empty").exists()


def test_a_signal_while_force_replaces_the_files_ends_the_run_once_all_are_in(tmp_path, cli):
    """Ctrl-C or SIGTERM between the files of an existing folder left one
    net's train_val beside another's deploy and solver."""
    import signal
    import sys

    assert cli("squeezenet", "-o", "nets").exit_code == 0
    assert cli("squeezenet", "--version", "1.1", "-o", "v11").exit_code == 0
    # An audit hook sees the first file renamed into place (os.replace raises "os.rename").
    code = ("import os, signal, sys\n"
            f"sys.path.insert(0, {str(ROOT)!r})\n"
            "from caffedsd.cli import program\n"
            "def hook(event, args):\n"
            "    if event == 'os.rename' and str(args[1]).endswith('train_val.prototxt'):\n"
            "        os.kill(os.getpid(), signal.SIGTERM)\n"
            "sys.addaudithook(hook)\n"
            "program(args=['squeezenet', '--version', '1.1', '--force', '-o', 'nets'], prog_name='caffedsd')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    for name in ("train_val.prototxt", "deploy.prototxt", "solver.prototxt"):
        assert (tmp_path / "nets" / name).read_text() == (tmp_path / "v11" / name).read_text(), name


def test_hdf5_data_needs_its_list_files_and_takes_no_mirror(cli):

    assert_one_line_error(cli("squeezenet", "--data", "hdf5", "--train-source", "t.txt", "-o", "n"),
                          "--data hdf5 needs --test-source: HDF5Data reads a list of HDF5 files, and "
                          "examples/imagenet/ilsvrc12_val_lmdb (the default) is an LMDB folder")
    assert_one_line_error(cli("squeezenet", "--data", "hdf5", "--train-source", "examples/imagenet/ilsvrc12_train_lmdb",
                              "--test-source", "v.txt", "-o", "n"),
                          "--data hdf5 needs --train-source: HDF5Data reads a list of HDF5 files, and "
                          "examples/imagenet/ilsvrc12_train_lmdb (the default) is an LMDB folder")
    assert_one_line_error(cli("squeezenet", "--data", "hdf5", "--train-source", "t.txt", "--test-source", "v.txt",
                              "--mirror", "-o", "n"), "--mirror goes with --data lmdb")


@pytest.mark.parametrize("args,expect", [
    # protobuf refused these with "ValueError: Value out of range" and a traceback
    (["--num-classes", 4294967296], "--num-classes 4294967296: must be at most 2147483647"),
    (["--input-size", 4294967296], "--input-size 4294967296: must be at most 2147483647"),
    (["--base-e", 9223372036854775808], "--base-e 9223372036854775808: must be at most 2147483647"),
    (["--incr-e", 9223372036854775808], "--incr-e 9223372036854775808: must be at most 2147483647"),
    (["--channels", 9223372036854775808], "--channels 9223372036854775808: must be at most 2147483647"),
    # these wrote nets Caffe aborts on (--base-e 4294967296: 10^20 parameters)
    (["--base-e", 4294967296], "--base-e 4294967296: must be at most 2147483647"),
    (["--base-e", 70000, "--incr-e", 0], "fire2/expand3x3's weights would hold 2756250000 values, more than a "
                                         "Caffe blob can (2147483647)"),
    (["--num-classes", 4194304], "conv10's weights would hold 2147483648 values"),
    (["--input-size", 100000], "blob data at batch 32 would hold 960000000000 values"),
])
def test_settings_beyond_what_caffe_holds(tmp_path, cli, args, expect):
    assert_one_line_error(cli("squeezenet", *args, "-o", tmp_path / "net"), expect)
    assert not (tmp_path / "net").exists()
    assert_one_line_error(cli("squeezenet", *args, "--sweep", "sr=0.125"), expect)


def test_the_largest_blobs_of_the_release():
    counts = dict(SqueezeNetSpec().blob_counts())
    assert counts["blob data at batch 32"] == 32 * 3 * 227 * 227
    assert counts["conv10's weights"] == 1000 * 512
    assert max(counts.values()) == counts["blob conv1 at batch 32"] == 32 * 96 * 111 * 111
    assert max(count for _, count in SqueezeNetSpec(num_classes=100_000).blob_counts()) <= 2 ** 31 - 1


def test_scale_puts_uint8_pixels_of_a_one_channel_lmdb_in_0_1(caffe, tmp_path, cli):
    """With --channels other than 3 the Data layers had no mean and no
    scale: an LMDB of 0-255 pixels (convert_mnist_data's) reached the net
    as they are, and a Fashion-MNIST variant diverged or stayed at chance."""
    lmdb = pytest.importorskip("lmdb")
    from caffe.proto.caffe_pb2 import Datum

    for name in ("train_lmdb", "test_lmdb"):
        env = lmdb.open(str(tmp_path / name), map_size=1 << 22)
        with env.begin(write=True) as txn:
            for i in range(4):
                pixels = np.full((1, 28, 28), 255 if i % 2 else 0, dtype=np.uint8)
                txn.put(f"{i:08d}".encode(), Datum(channels=1, height=28, width=28, data=pixels.tobytes(),
                                                   label=i % 2).SerializeToString())
        env.close()
    args = ["squeezenet", "--version", "1.1", "--stem", "small", "--input-size", 28, "--channels", 1,
            "--num-classes", 2, "--base-e", 16, "--incr-e", 16, "--train-source", tmp_path / "train_lmdb",
            "--test-source", tmp_path / "test_lmdb"]
    result = cli(*args, "--scale", 0.00390625, "-o", tmp_path / "net")
    assert result.exit_code == 0, result.output
    net = text_format.Parse((tmp_path / "net" / "train_val.prototxt").read_text(), NetParameter())
    assert [layer.transform_param.scale for layer in net.layer if layer.type == "Data"] == [0.00390625] * 2
    built = caffe.Net(str(tmp_path / "net" / "train_val.prototxt"), caffe.TEST)
    built.forward()
    assert built.blobs["data"].data.max() == pytest.approx(255 / 256)
    for scale in (0, 1e-50, 1e40):  # the last two were written as 0.0 and inf
        assert_one_line_error(cli(*args, "--scale", scale, "-o", tmp_path / "n2"),
                              f"--scale {float(scale)!r}: must be a number above 0 that a float32 holds")
    assert_one_line_error(cli("squeezenet", "--data", "hdf5", "--train-source", "t.txt", "--test-source", "v.txt",
                              "--scale", 0.5, "-o", tmp_path / "n3"), "--scale goes with --data lmdb")
