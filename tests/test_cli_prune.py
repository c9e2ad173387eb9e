"""`caffedsd prune` through the CLI, on nets built and saved by real pycaffe."""
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from caffedsd.caffemodel import read_caffemodel
from caffedsd.maskfile import load_masks
from conftest import TINY_NET, assert_one_line_error, save_net


def test_prune_writes_model_masks_and_table(caffe, tiny, tmp_path, cli):
    proto, weights = tiny
    result = cli("prune", "-w", weights, "-p", proto, "-s", 0.5, "-r", "fc1=0.8", "-o", "pruned.caffemodel")
    assert result.exit_code == 0, result.output
    assert "conv1" in result.output and "fc2a (+fc2b)" in result.output
    assert "wrote pruned.caffemodel and pruned.masks.h5" in result.output
    masks = load_masks(tmp_path / "pruned.masks.h5")
    assert set(masks.masks) == {"conv1", "fc1", "fc2a"}  # one mask for the shared fc2 weights
    assert masks.shared_by["fc2a"] == ("fc2a", "fc2b")
    assert masks.meta["amounts"] == {"conv1": 0.5, "fc1": 0.8, "fc2a": 0.5}
    assert masks.meta["criterion"] == "keepmax"
    assert len(masks.meta["source_sha256"]) == 64
    # Exact counts: conv1 4*1*3*3 = 36 -> 18; fc1 10*144 -> 1152; fc2 100 -> 50.
    assert [int((~m).sum()) for m in masks.masks.values()] == [18, 1152, 50]
    net = caffe.Net(str(proto), caffe.TEST, weights=str(tmp_path / "pruned.caffemodel"))
    src = caffe.Net(str(proto), caffe.TEST, weights=str(weights))
    for layer, mask in masks.per_layer().items():
        assert np.array_equal(net.params[layer][0].data, np.where(mask, src.params[layer][0].data, 0))
    # The kept weights are the largest ones.
    w = np.abs(src.params["conv1"][0].data)
    assert w[masks.masks["conv1"]].min() >= w[~masks.masks["conv1"]].max()
    # Biases, BatchNorm and Scale blobs untouched.
    for layer in ("bn1", "scale1"):
        for i in range(len(src.params[layer])):
            assert np.array_equal(net.params[layer][i].data, src.params[layer][i].data)
    assert np.array_equal(net.params["conv1"][1].data, src.params["conv1"][1].data)


def test_masks_file_layout(tiny, tmp_path, cli):
    _, weights = tiny
    assert cli("prune", "-w", weights, "-s", 0.3, "-o", "p.caffemodel").exit_code == 0
    with h5py.File(tmp_path / "p.masks.h5", "r") as h5:
        assert h5.attrs["format"] == b"caffedsd-masks"  # fixed-length strings: read as bytes
        ds = h5["masks/conv1"]
        assert ds.dtype == bool and ds.shape == (4, 1, 3, 3)
        assert json.loads(h5.attrs["structure"])[0][0] == "conv1"


def test_reprune_only_shrinks(tiny, tmp_path, cli):
    _, weights = tiny
    assert cli("prune", "-w", weights, "-s", 0.5, "-o", "a.caffemodel").exit_code == 0
    first = load_masks(tmp_path / "a.masks.h5")
    result = cli("prune", "-w", "a.caffemodel", "-s", 0.25, "-c", "random", "--seed", 3, "-o", "b.caffemodel")
    assert result.exit_code == 0, result.output
    second = load_masks(tmp_path / "b.masks.h5")
    for layer, mask in first.masks.items():
        assert not (~mask & second.masks[layer]).any()  # nothing pruned came back
    assert cli("prune", "-w", "b.caffemodel", "-s", 0.7, "-o", "c.caffemodel").exit_code == 0
    third = load_masks(tmp_path / "c.masks.h5")
    assert int((~third.masks["conv1"]).sum()) == round(0.7 * 36)
    assert not (~second.masks["conv1"] & third.masks["conv1"]).any()


def test_std_random_and_plan_file(tiny, tmp_path, cli):
    _, weights = tiny
    assert cli("prune", "-w", weights, "-c", "std", "-s", 1.0, "-o", "std.caffemodel").exit_code == 0
    w = read_caffemodel(weights).layer("fc1").blobs[0].data
    mask = load_masks(tmp_path / "std.masks.h5").masks["fc1"]
    assert np.array_equal(mask, np.abs(w) >= np.std(w.astype(np.float64)))
    for seed_run in ("r1", "r2"):
        assert cli("prune", "-w", weights, "-c", "random", "-s", 0.5, "--seed", 9, "-o", f"{seed_run}.caffemodel").exit_code == 0
    assert (tmp_path / "r1.caffemodel").read_bytes() == (tmp_path / "r2.caffemodel").read_bytes()
    (tmp_path / "plan.yaml").write_text("sparsity: 0.5\nlayers:\n  'fc*': 0.9\n  fc2a: 0.1\n  fc2b: 0.1\n")
    result = cli("prune", "-w", weights, "--plan", "plan.yaml", "-o", "plan.caffemodel")
    assert result.exit_code == 0, result.output
    assert load_masks(tmp_path / "plan.masks.h5").meta["amounts"] == {"conv1": 0.5, "fc1": 0.9, "fc2a": 0.1}
    # A verified plan's record travels into the masks, and is dropped once an option changes the plan.
    (tmp_path / "verified.yaml").write_text((tmp_path / "plan.yaml").read_text()
                                            + "verified: {metric: accuracy, measured_drop: 0.4}\n")
    assert cli("prune", "-w", weights, "--plan", "verified.yaml", "-o", "v.caffemodel").exit_code == 0
    assert load_masks(tmp_path / "v.masks.h5").meta["plan"]["verified"]["measured_drop"] == 0.4
    assert cli("prune", "-w", weights, "--plan", "verified.yaml", "-r", "conv1=0.2", "-o", "w.caffemodel").exit_code == 0
    assert "verified" not in load_masks(tmp_path / "w.masks.h5").meta["plan"]


def test_force_allows_overwriting_the_input(tiny, tmp_path, cli):
    _, weights = tiny
    result = cli("prune", "-w", weights, "-s", 0.5, "-o", weights, "--force")
    assert result.exit_code == 0, result.output
    assert read_caffemodel(weights).layer("conv1").blobs[0].data.__eq__(0).sum() == 18


def test_the_prototxt_and_plan_read_are_inputs_too(tiny, tmp_path, cli):
    proto, weights = tiny
    (tmp_path / "plan.yaml").write_text("sparsity: 0.5\n")
    for args, given in ((("-p", proto, "-s", 0.5), proto), (("--plan", "plan.yaml"), tmp_path / "plan.yaml")):
        before = Path(given).read_bytes()
        result = cli("prune", "-w", weights, *args, "-o", given)
        assert_one_line_error(result, "output would overwrite the input")
        assert Path(given).read_bytes() == before


# -- bad input: one line, exit 2, no traceback, nothing written ------------------

def _bad(cli, tmp_path, *args, expect):
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = cli(*args)
    assert_one_line_error(result, expect)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no output, no temp file
    return result.output.strip()


def test_bad_weights_files(tiny, tmp_path, cli):
    proto, weights = tiny
    _bad(cli, tmp_path, "prune", "-w", "missing.caffemodel", "-s", 0.5, "-o", "o.caffemodel",
         expect="missing.caffemodel: no such file")
    (tmp_path / "random.caffemodel").write_bytes(np.random.default_rng(0).bytes(4096))
    _bad(cli, tmp_path, "prune", "-w", "random.caffemodel", "-s", 0.5, "-o", "o.caffemodel",
         expect="random.caffemodel: not a caffemodel")
    (tmp_path / "cut.caffemodel").write_bytes(weights.read_bytes()[:-7])
    _bad(cli, tmp_path, "prune", "-w", "cut.caffemodel", "-s", 0.5, "-o", "o.caffemodel",
         expect="cut.caffemodel: not a caffemodel, or truncated")
    _bad(cli, tmp_path, "prune", "-w", proto, "-s", 0.5, "-o", "o.caffemodel",
         expect="net.prototxt: is a text file (a prototxt?)")
    # A pipe, which reading would wait on for ever: each input reader says so.
    os.mkfifo(tmp_path / "pipe")
    for args in (("prune", "-w", "pipe", "-s", 0.5), ("prune", "-w", weights, "-p", "pipe", "-s", 0.5),
                 ("decompress", "pipe"), ("convert", "-p", proto, "-w", "pipe")):
        _bad(cli, tmp_path, *args, "-o", "o.caffemodel", expect="pipe: not a regular file (a folder, device or pipe)")


def test_bad_prototxts(caffe, tiny, tmp_path, cli):
    proto, weights = tiny
    (tmp_path / "syntax.prototxt").write_text('layer { name: "a" type: "Input" \n  top: "x" }}\n')
    _bad(cli, tmp_path, "prune", "-w", weights, "-p", "syntax.prototxt", "-s", 0.5, "-o", "o.caffemodel",
         expect="syntax.prototxt:2:")
    # protobuf's message quotes the damaged line: its control characters
    # (\x1c is a line break to Python and to some terminals) are escaped.
    (tmp_path / "control.prototxt").write_bytes(b'layer \x1c name: "a" type: "Input" top: "x" }\n')
    _bad(cli, tmp_path, "prune", "-w", weights, "-p", "control.prototxt", "-s", 0.5, "-o", "o.caffemodel",
         expect="layer \\x1c name")
    other = proto.read_text().replace('"fc1"', '"fc1_renamed"')
    (tmp_path / "other.prototxt").write_text(other)
    line = _bad(cli, tmp_path, "prune", "-w", weights, "-p", "other.prototxt", "-s", 0.5, "-o", "o.caffemodel",
                expect="other.prototxt does not match")
    assert "fc1_renamed" in line and "(Caffe would leave them at their initial values)" in line and "fc1" in line
    # What the prototxt alone fixes of the shapes: outputs (a fine-tuned
    # model's classes) and kernels. TINY_NET: conv1 4x1x3x3, fc1 10 outputs.
    for old, new, expect in [("num_output: 4 kernel_size: 3", "num_output: 5 kernel_size: 3",
                              "conv1 (num_output 5, weights 4x1x3x3)"),
                             ("num_output: 4 kernel_size: 3", "num_output: 4 kernel_size: 5",
                              "conv1 (kernel 5x5, weights 4x1x3x3)"),
                             ("num_output: 4 kernel_size: 3", "num_output: 4 kernel_h: 3 kernel_w: 1",
                              "conv1 (kernel 3x1, weights 4x1x3x3)"),
                             ("num_output: 10 bias_term: false", "num_output: 20 bias_term: false",
                              "fc1 (num_output 20, weights 10x144)")]:
        assert old in proto.read_text()
        (tmp_path / "shape.prototxt").write_text(proto.read_text().replace(old, new))
        _bad(cli, tmp_path, "prune", "-w", weights, "-p", "shape.prototxt", "-s", 0.5, "-o", "o.caffemodel",
             expect="shape.prototxt does not match " + str(weights) + ": blob shapes differ: " + expect)
    (tmp_path / "py.prototxt").write_text(proto.read_text() + 'layer { name: "hook" type: "Python" bottom: "fc2b" '
                                          'top: "hook" python_param { module: "os" layer: "system" } }\n')
    _bad(cli, tmp_path, "prune", "-w", weights, "-p", "py.prototxt", "-s", 0.5, "-o", "o.caffemodel",
         expect="--allow-python-layers")


def test_bad_values(tiny, tmp_path, cli):
    _, weights = tiny
    for value in ("1.0", "1.5", "-0.1", "nan"):
        _bad(cli, tmp_path, "prune", "-w", weights, "-s", value, "-o", "o.caffemodel", expect="must be in [0, 1)")
    # What click itself refuses is one line too, naming the command.
    _bad(cli, tmp_path, "prune", "-w", weights, "-s", "abc", "-o", "o.caffemodel",
         expect="caffedsd prune: Invalid value for '--sparsity' / '-s': 'abc' is not a valid float.")
    _bad(cli, tmp_path, "prune", "-w", weights, "-s", 0.5, expect="caffedsd prune: Missing option '--output'")
    _bad(cli, tmp_path, "prune", "-w", weights, "-s", 0.5, "--seed", -1, "-o", "o.caffemodel",
         expect="'--seed': -1 is not in the range x>=0")
    # (click 8.4 and later add "Did you mean 'prune'?")
    said = _bad(cli, tmp_path, "prnue", expect="caffedsd: No such command 'prnue'.")
    assert said.endswith("(see caffedsd --help)"), said
    # An option without its value named the group's help; the group's own options were three lines.
    _bad(cli, tmp_path, "prune", "-w", weights, "-s", 0.5, "-o",
         expect="caffedsd prune: Option '-o' requires an argument. (see caffedsd prune --help)")
    said = _bad(cli, tmp_path, "--bogus", "prune", expect="caffedsd: No such option")  # click's wording varies
    assert "--bogus" in said and said.endswith("(see caffedsd --help)"), said
    _bad(cli, tmp_path, "prune", "-w", weights, "-r", "fire*=0.5", "-o", "o.caffemodel",
         expect="rule 'fire*' matches no prunable layer (prunable: conv1, fc1, fc2a, fc2b)")
    # The rule that matches nothing is named where it was written: the plan file, or --rule.
    (tmp_path / "typo.yaml").write_text("sparsity: 0.5\nlayers:\n  conv9: 0.3\n")
    _bad(cli, tmp_path, "prune", "-w", weights, "--plan", "typo.yaml", "-o", "o.caffemodel",
         expect="typo.yaml: rule 'conv9' matches no prunable layer")
    (tmp_path / "typo.yaml").write_text("sparsity: 0.5\n")
    _bad(cli, tmp_path, "prune", "-w", weights, "--plan", "typo.yaml", "-r", "conv9=0.3", "-o", "o.caffemodel",
         expect="caffedsd: --rule 'conv9' matches no prunable layer")
    _bad(cli, tmp_path, "prune", "-w", weights, "-r", "fc2a=0.5", "-r", "fc2b=0.6", "-o", "o.caffemodel",
         expect="share param 'fc2_w'")
    _bad(cli, tmp_path, "prune", "-w", weights, "-o", "o.caffemodel", expect="nothing to prune")


def test_bad_outputs(tiny, tmp_path, cli):
    _, weights = tiny
    _bad(cli, tmp_path, "prune", "-w", weights, "-s", 0.5, "-o", weights,
         expect="would overwrite the input")
    _bad(cli, tmp_path, "prune", "-w", weights, "-s", 0.5, "-o", "no_such_dir/o.caffemodel",
         expect="no_such_dir: output folder does not exist")
    _bad(cli, tmp_path, "prune", "-w", weights, "-s", 0.5, "-o", f"{weights}/o.caffemodel",
         expect="output folder does not exist or is not a folder")
    os.mkfifo(tmp_path / "pipe.caffemodel")  # stands in for -o /dev/null, which the rename would replace
    _bad(cli, tmp_path, "prune", "-w", weights, "-s", 0.5, "-o", "pipe.caffemodel",
         expect="pipe.caffemodel: is a device, pipe or socket, not a regular file")
    (tmp_path / "pipe.caffemodel").unlink()
    os.mkfifo(tmp_path / "pipe.masks.h5")  # the masks written beside the model
    _bad(cli, tmp_path, "prune", "-w", weights, "-s", 0.5, "-o", "pipe.caffemodel",
         expect="pipe.masks.h5: is a device, pipe or socket")
    assert (tmp_path / "pipe.masks.h5").is_fifo() and not (tmp_path / "pipe.caffemodel").exists()


def test_unwritable_output_folder(tiny, tmp_path, cli):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders; the not-a-folder case covers root")
    _, weights = tiny
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    _bad(cli, tmp_path, "prune", "-w", weights, "-s", 0.5, "-o", locked / "o.caffemodel",
         expect="cannot write to the output folder")


def test_masks_of_another_model(tiny, tmp_path, cli, other_model):
    _, weights = tiny
    _bad(cli, tmp_path, "prune", "-w", weights, "--masks", "other/p.masks.h5", "-s", 0.5, "-o", "o.caffemodel",
         expect="p.masks.h5: masks were made for another model")


def test_masks_of_another_model_beside_it_say_what_to_do(tiny, tmp_path, cli, other_model):
    _, weights = tiny
    shutil.copy(weights, tmp_path / "a.caffemodel")
    shutil.copy(tmp_path / "other" / "p.masks.h5", tmp_path / "a.masks.h5")
    _bad(cli, tmp_path, "stats", "-w", "a.caffemodel",
         expect="a.masks.h5: masks were made for another model (ip1 missing")
    result = cli("stats", "-w", "a.caffemodel")
    assert result.output.rstrip().endswith("; run the command that wrote the pair again, or remove a.masks.h5")
    result = cli("verify", "-w", "a.caffemodel")  # what verify is for: a failed check
    assert result.exit_code == 1, result.output
    assert "FAIL  masks written with it: a.masks.h5: masks were made for another model" in result.output


def test_nan_weights(caffe, tmp_path, cli):

    _, weights = save_net(caffe, tmp_path, TINY_NET)
    net = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST, weights=str(weights))
    net.params["bn1"][0].data[1] = np.nan
    net.params["fc1"][0].data[0, 3] = np.inf
    net.save(str(weights))
    _bad(cli, tmp_path, "prune", "-w", weights, "-s", 0.5, "-o", "o.caffemodel",
         expect="layer 'bn1' blob 0 holds 1 NaN/Inf values")


def test_net_without_prunable_layer(caffe, tmp_path, cli):

    _, weights = save_net(caffe, tmp_path, 'layer { name: "data" type: "Input" top: "data" '
                          'input_param { shape { dim: 1 dim: 3 dim: 2 dim: 2 } } }\n'
                          'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "data" }\n')
    _bad(cli, tmp_path, "prune", "-w", weights, "-s", 0.5, "-o", "o.caffemodel", expect="no prunable layer")


def _commands(group, path=()):
    import click

    yield path, group
    if isinstance(group, click.Group):
        for name, command in group.commands.items():
            yield from _commands(command, path + (name,))


def test_every_help_ends_with_an_example(cli):
    from caffedsd.cli import main

    for path, _ in _commands(main):
        result = cli(*path, "--help")
        assert result.exit_code == 0, result.output
        last = result.output.rstrip().splitlines()[-1].strip()
        assert last.startswith("caffedsd " + " ".join(path)), (path, result.output[-300:])


def test_a_group_without_a_command_shows_its_help(cli):
    """`caffedsd data` showed its help folded into one line of literal \\n."""
    import click

    from caffedsd.cli import main

    for path, command in _commands(main):
        if not isinstance(command, click.Group):
            continue
        result = cli(*path)
        assert result.exit_code == 2, (path, result.output)
        lines = result.output.rstrip().splitlines()
        assert lines[0].startswith("Usage: ") and "Commands:" in lines, (path, result.output)
        assert lines[-1].strip().startswith("caffedsd " + " ".join(path)), (path, result.output)


# Sends the program a SIGINT while it imports the command line, as a Ctrl-C
# in its first few tenths of a second would.
_INTERRUPTED_WHILE_STARTING = """
import os, runpy, signal, sys

class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == "caffedsd.cli":
            os.kill(os.getpid(), signal.SIGINT)

sys.meta_path.insert(0, Interrupt())
sys.argv = ["caffedsd", "info"]
runpy.run_module("caffedsd", run_name="__main__")
"""


def test_ctrl_c_while_the_program_starts_is_one_line(tmp_path):
    """Before cli.program installed its handlers, a Ctrl-C printed the
    traceback of an import."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _INTERRUPTED_WHILE_STARTING], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        130, "", "caffedsd: interrupted while starting; nothing was written\n"), proc.stderr[-2000:]


def test_masks_beside_another_model_than_theirs_are_refused(tiny, tmp_path, cli):
    """What a prune cut short between its two renames leaves (masks first):
    the new masks beside the earlier model, of the same structure."""
    proto, weights = tiny
    assert cli("prune", "-w", weights, "-s", 0.5, "-o", "a.caffemodel").exit_code == 0
    assert cli("prune", "-w", weights, "-s", 0.8, "-o", "b.caffemodel").exit_code == 0
    os.replace(tmp_path / "b.masks.h5", tmp_path / "a.masks.h5")
    for command in (["stats", "-w", "a.caffemodel"], ["prune", "-w", "a.caffemodel", "-s", 0.9, "-o", "c.caffemodel"]):
        assert_one_line_error(cli(*command), "a.masks.h5: written beside another a.caffemodel than the one there now")
    assert not (tmp_path / "c.caffemodel").exists()
    # decompose and dsd have no --masks to name them with.
    result = cli("decompose", "-p", proto, "-w", "a.caffemodel", "--energy", 0.9, "-o", "d")
    assert result.exit_code == 2 and "--masks" not in result.output
    assert result.output.rstrip().endswith("run the command that wrote the pair again, or remove a.masks.h5")
    # Named, they may go with any model of their structure (verify's case).
    result = cli("stats", "-w", "a.caffemodel", "--masks", "a.masks.h5", "--json")
    assert result.exit_code == 0, result.output
    assert load_masks(tmp_path / "a.masks.h5").model_sha256 == read_caffemodel(tmp_path / "b.caffemodel").sha256()


def test_masks_that_record_no_model_are_taken_beside_it(tiny, tmp_path, cli):
    """Masks files written before their model's sha256 was kept, and by such
    a caffedsd from masks that kept it: it takes every root attribute it does
    not know for metadata, and copies it into the masks it writes."""
    proto, weights = tiny
    assert cli("prune", "-w", weights, "-s", 0.5, "-o", "a.caffemodel").exit_code == 0
    with h5py.File(tmp_path / "a.masks.h5", "a") as h5:
        del h5["masks"].attrs["model_sha256"]
        h5.attrs["model_sha256"] = np.bytes_(json.dumps("0" * 64).encode())
    assert load_masks(tmp_path / "a.masks.h5").model_sha256 is None
    assert cli("stats", "-w", "a.caffemodel").exit_code == 0
    with h5py.File(tmp_path / "a.masks.h5", "a") as h5:
        h5["masks"].attrs["model_sha256"] = np.bytes_(b"not a digest")
    assert_one_line_error(cli("stats", "-w", "a.caffemodel"),
                          "a.masks.h5: masks attribute 'model_sha256' is not a sha256 digest")


def test_a_dense_model_written_over_a_pruned_one_takes_its_masks_away(tiny, tmp_path, cli):
    """The masks go after the rename: a failed rename leaves both. Masks
    that record no model go before it: left beside the new model, nothing
    would tell them from its own."""
    from caffedsd.maskfile import atomic_unmasked_path

    proto, weights = tiny
    for records_model in (True, False):
        assert cli("prune", "-w", weights, "-s", 0.5, "-o", "a.caffemodel", "--force").exit_code == 0
        if not records_model:
            with h5py.File(tmp_path / "a.masks.h5", "a") as h5:
                del h5["masks"].attrs["model_sha256"]
        with pytest.raises(OSError):
            with atomic_unmasked_path(tmp_path / "a.caffemodel") as tmp:
                tmp.write_bytes(Path(weights).read_bytes())
                (tmp_path / "a.caffemodel").unlink()
                (tmp_path / "a.caffemodel" / "x").mkdir(parents=True)
        assert (tmp_path / "a.masks.h5").exists() == records_model
        (tmp_path / "a.caffemodel" / "x").rmdir()
        (tmp_path / "a.caffemodel").rmdir()
    assert cli("prune", "-w", weights, "-s", 0.5, "-o", "a.caffemodel").exit_code == 0
    with atomic_unmasked_path(tmp_path / "a.caffemodel") as tmp:
        tmp.write_bytes(Path(weights).read_bytes())
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("a.")) == ["a.caffemodel"]


def test_the_table_does_not_round_a_share_to_all_or_none():
    """fc7 at 0.999999999 on VGG16 (1 of 16,777,216 weights kept) read as
    amount 1 and 100.0% pruned."""
    from caffedsd.pruning import PrunedLayer
    from caffedsd.report import pct, prune_table

    assert [pct(x) for x in (1.0, 0.9999999, 0.5, 1e-7, 0.0)] == ["100.0%", ">99.9%", "50.0%", "<0.1%", "0.0%"]
    row = prune_table([PrunedLayer("fc7", ("fc7",), (4096, 4096), 0.999999999, 16777216, 16777215)]).splitlines()[2]
    assert row.split() == ["fc7", "4096x4096", "0.999999999", "16777216", "16777215", ">99.9%"]
    # compress's ratio likewise: a BatchNorm 68 B dense, 71 B stored, read as 1.0x.
    from caffedsd.report import ratio_text

    assert [ratio_text(*pair) for pair in ((68, 71), (71, 68), (70, 70), (700, 70), (1, 0))] == \
        ["<1.0x", ">1.0x", "1.0x", "10.0x", "-"]


EMBED = 'layer { name: "emb" type: "Embed" bottom: "idx" top: "emb" param { name: "w" } ' \
        'embed_param { input_dim: 10 num_output: 4 bias_term: false } }\n'
OUT = 'layer { name: "out" type: "InnerProduct" bottom: "x" top: "out" param { name: "w" } ' \
      'inner_product_param { num_output: 10 bias_term: false } }\n'
INPUTS = ('layer { name: "in" type: "Input" top: "idx" top: "x" '
          'input_param { shape { dim: 2 } shape { dim: 2 dim: 4 } } }\n')


@pytest.mark.parametrize("order", ["embed first", "inner product first"])
def test_a_copy_an_embed_ties_to_pruned_weights_is_pruned_too(caffe, tmp_path, cli, order):
    """Caffe copies each layer's weights from the file into the one blob,
    in net order: the Embed's unpruned copy, read after the pruned one,
    undid the pruning, and dsd's next stage refused the file."""
    proto, weights = save_net(caffe, tmp_path, INPUTS + (EMBED + OUT if order == "embed first" else OUT + EMBED))
    result = cli("prune", "-w", weights, "-p", proto, "-s", 0.5, "-o", "p.caffemodel")
    assert result.exit_code == 0, result.output
    pruned = read_caffemodel(tmp_path / "p.caffemodel")
    out = pruned.layer("out").blobs[0].data
    assert np.count_nonzero(out) == 20 and np.array_equal(pruned.layer("emb").blobs[0].data, out)
    net = caffe.Net(str(proto), str(tmp_path / "p.caffemodel"), caffe.TEST)  # as `caffe test` loads it
    assert np.count_nonzero(net.params["out"][0].data) == 20
    assert cli("prune", "-w", "p.caffemodel", "-p", proto, "-s", 0.6, "-o", "q.caffemodel").exit_code == 0


@pytest.mark.parametrize("order", ["embed first", "inner product first"])
def test_an_embed_tied_to_shared_weights_is_decompressed_with_their_quantized_values(caffe, tmp_path, cli, order):
    """compress quantizes an InnerProduct's weights but stores other blobs
    exact: an Embed tied to them kept its exact copy, Caffe ran the net
    with whichever it copied last, and verify failed the file that
    decompress -p had accepted."""
    proto, weights = save_net(caffe, tmp_path, INPUTS + (EMBED + OUT if order == "embed first" else OUT + EMBED))
    assert cli("prune", "-w", weights, "-p", proto, "-s", 0.5, "-o", "p.caffemodel").exit_code == 0
    result = cli("compress", "-w", "p.caffemodel", "--bits", "2", "-o", "p.dcz")
    assert result.exit_code == 0, result.output
    result = cli("decompress", "p.dcz", "-p", proto, "-o", "d.caffemodel")
    assert result.exit_code == 0, result.output
    written = read_caffemodel(tmp_path / "d.caffemodel")
    out = written.layer("out").blobs[0].data
    assert np.count_nonzero(out) == 20 and len(np.unique(out[out != 0])) <= 4
    assert np.array_equal(written.layer("emb").blobs[0].data, out)
    checked = cli("verify", "-w", "d.caffemodel", "--model", proto)
    assert checked.exit_code == 0, checked.output


def test_a_convolution_and_an_inner_product_sharing_weights_are_stored_as_one(caffe, tmp_path, cli):
    """share_mode PERMISSIVE ties blobs of one count in two shapes: each was
    quantized with its own kind's bits (conv 8, fc 5), and decompress -p
    refused compress's own output as holding two sets of weights."""
    param = 'param { name: "w" share_mode: PERMISSIVE }'
    proto, weights = save_net(caffe, tmp_path, (
        'layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 6 dim: 6 } } }\n'
        f'layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1" {param}\n'
        '  convolution_param { num_output: 8 kernel_size: 6 bias_term: false } }\n'
        f'layer {{ name: "fc1" type: "InnerProduct" bottom: "data" top: "fc1" {param}\n'
        '  inner_product_param { num_output: 8 bias_term: false } }\n'))
    result = cli("compress", "-w", weights, "-o", "m.dcz")
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split() for line in result.output.splitlines() if line.startswith(("conv1", "fc1"))}
    assert rows["conv1"][1:] == rows["fc1"][1:], result.output  # one coding, counted in each layer's row
    result = cli("decompress", "m.dcz", "-p", proto, "-o", "d.caffemodel")
    assert result.exit_code == 0, result.output
    written = read_caffemodel(tmp_path / "d.caffemodel")
    conv, fc = (written.layer(name).blobs[0].data for name in ("conv1", "fc1"))
    assert np.array_equal(conv.reshape(-1), fc.reshape(-1)) and 32 < len(np.unique(conv)) <= 256


def test_decompress_refuses_weights_a_net_ties_that_differ(caffe, tmp_path, cli):
    """A file whose Embed and InnerProduct hold different weights, written
    as a net that ties them, would run with whichever Caffe copies last."""
    proto, _ = save_net(caffe, tmp_path, INPUTS + EMBED + OUT)
    untied = INPUTS + EMBED.replace('param { name: "w" } ', "") + OUT.replace('param { name: "w" } ', "")
    _, weights = save_net(caffe, tmp_path, untied, name="untied")
    assert cli("compress", "-w", weights, "--bits", "2", "-o", "u.dcz").exit_code == 0
    assert_one_line_error(cli("decompress", "u.dcz", "-p", proto, "-o", "d.caffemodel"),
                          f"u.dcz: layers emb and out hold different weights, but {proto} ties them (param 'w'): "
                          "Caffe would keep whichever it copies last, and masks made of the file would not fit; "
                          "compress the model again, or decompress it without -p")
    assert not (tmp_path / "d.caffemodel").exists()


def test_a_tie_the_net_does_not_make_leaves_the_copy_alone(caffe, tmp_path, cli):
    """The file's param names tie the Embed to the pruned weights: with a
    prototxt that unties them, the Embed is its own blob and stays whole."""
    proto, weights = save_net(caffe, tmp_path, INPUTS + EMBED + OUT)
    untied = tmp_path / "untied.prototxt"
    untied.write_text(proto.read_text().replace('param { name: "w" } embed_param', "embed_param"))
    result = cli("prune", "-w", weights, "-p", untied, "-s", 0.5, "-o", "p.caffemodel")
    assert result.exit_code == 0, result.output
    pruned = read_caffemodel(tmp_path / "p.caffemodel")
    assert np.count_nonzero(pruned.layer("out").blobs[0].data) == 20
    assert np.count_nonzero(pruned.layer("emb").blobs[0].data) == 40
