"""A plan, masks or recipe file that is there but not a regular file (a
folder, a pipe) is said to be so, not reported missing."""
import os

import pytest

from caffedsd.errors import InputError
from caffedsd.maskfile import load_masks
from caffedsd.plan import load_plan
from caffedsd.recipe import load_recipe

from conftest import assert_one_line_error, where_mode_bits_bind

LOADERS = [(load_plan, "plan"), (load_masks, "masks"), (load_recipe, "recipe")]


@pytest.mark.parametrize("load, kind", LOADERS)
def test_missing_names_the_kind_of_file(tmp_path, load, kind):
    with pytest.raises(InputError, match=f"gone.yaml: no such {kind} file$"):
        load(tmp_path / "gone.yaml")


@pytest.mark.parametrize("load, kind", LOADERS)
def test_a_folder_or_a_pipe_is_not_missing(tmp_path, load, kind):
    os.mkfifo(tmp_path / "pipe")  # reading it would hang
    (tmp_path / "folder").mkdir()
    for name in ("pipe", "folder"):
        with pytest.raises(InputError, match=f"{name}: not a regular file \\(a folder, device or pipe\\)$"):
            load(tmp_path / name)


def test_the_cli_says_it_in_one_line(tmp_path, cli):
    os.mkfifo(tmp_path / "recipe.yaml")
    assert_one_line_error(cli("dsd", "--recipe", "recipe.yaml", "-o", "run"),
                          "recipe.yaml: not a regular file (a folder, device or pipe)")


def test_an_unreadable_plan_or_recipe(tmp_path):
    """A recipe's plan is read by caffedsd, not checked by click as an
    argument is: unreadable, it is one line, not a traceback."""
    (tmp_path / "p.yaml").write_text("sparsity: 0.5\n")
    (tmp_path / "r.yaml").write_text("solver: s.prototxt\n")
    for name in ("p.yaml", "r.yaml"):
        (tmp_path / name).chmod(0)
    done = where_mode_bits_bind(
        "from caffedsd.errors import InputError\n"
        "from caffedsd.plan import load_plan\n"
        "from caffedsd.recipe import load_recipe\n"
        "for load, path in ((load_plan, 'p.yaml'), (load_recipe, 'r.yaml')):\n"
        "    try:\n"
        "        load(path)\n"
        "    except InputError as exc:\n"
        "        print(exc)\n", tmp_path)
    assert done.stdout.splitlines() == ["p.yaml: cannot be read (Permission denied)",
                                        "r.yaml: cannot be read (Permission denied)"], done.stderr


def test_a_solverstate_that_is_a_device_is_not_missing(tmp_path):
    from caffedsd.solverstate import state_iteration

    (tmp_path / "folder").mkdir()
    with pytest.raises(InputError, match="folder: not a regular file \\(a folder, device or pipe\\)$"):
        state_iteration(tmp_path / "folder")
    with pytest.raises(InputError, match="gone: no such solverstate$"):
        state_iteration(tmp_path / "gone")


@pytest.mark.parametrize("args, option, what", [
    (("stats", "-w", ""), "'--weights' / '-w'", "file"),
    (("plan", "--sensitivity", " ", "-o", "p.yaml"), "'--sensitivity'", "file or folder"),
    (("decompose", "-p", "n", "-w", "w", "--energy", 0.9, "-o", ""), "'--output' / '-o'", "folder"),
])
def test_an_empty_path_is_named_as_empty(tmp_path, cli, args, option, what):
    """Path('') is '.', which was reported as '.: not a regular file'."""
    assert_one_line_error(cli(*args), f"Invalid value for {option}: an empty path; name the {what}")


@pytest.mark.parametrize("value", ["0,1", "all", "ALL"])
def test_several_gpus_are_refused_as_several_not_as_a_bad_integer(cli, value):
    assert_one_line_error(cli("train-dense", "--solver", "s.prototxt", "--gpu", value, "-o", "o.caffemodel"),
                          f"Invalid value for '--gpu': '{value}': caffedsd trains on one GPU; give one ID "
                          "(training on several, as `caffe train -gpu 0,1` does through NCCL, is not supported)")


def test_a_wrote_line_is_one_line(tmp_path, cli):
    result = cli("squeezenet", "-o", "two\nlines")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "two\nlines").is_dir()
    assert not any(line.startswith("lines") for line in result.output.splitlines()), result.output
    assert "two\\nlines" in result.output


def test_names_the_file_system_or_caffe_cannot_take(tiny, tmp_path, cli):
    """A name over 255 bytes, or a legal one whose masks file's name would
    be, gave a traceback (Path.exists raises ENAMETOOLONG); a name that is
    not UTF-8 trained, then crashed saving (protobuf takes UTF-8 strings)."""
    import shutil

    _, weights = tiny
    shutil.copy(weights, tmp_path / ("L" * 250))  # legal; L...L.masks.h5 is not
    assert cli("stats", "-w", "L" * 250).exit_code == 0
    result = cli("prune", "-w", "L" * 250, "-s", 0.5, "-o", "p.caffemodel")
    assert result.exit_code == 0, result.output
    before = sorted(os.listdir(tmp_path))
    assert_one_line_error(cli("prune", "-w", weights, "-s", 0.5, "-o", "L" * 300),
                          f"{'L' * 300}: name too long for the file system (at most 255 bytes a name")
    assert_one_line_error(cli("prune", "-w", weights, "-s", 0.5, "-o", "L" * 245), "give a name of at most 233 bytes")
    assert_one_line_error(cli("train-dense", "--solver", "solver.prototxt", "-w", weights, "-o", "x\udcff.caffemodel"),
                          "x\\udcff.caffemodel is not a UTF-8 name: Caffe takes paths as UTF-8")
    assert sorted(os.listdir(tmp_path)) == before


def test_a_working_folder_whose_name_is_not_utf8_is_named_before_any_work(tmp_path, cli, monkeypatch):
    """Every path given relative and ASCII, the absolute ones caffedsd makes
    of them (temporaries, snapshot folders) carried the folder's bytes into
    Caffe: train-dense trained, then failed in a UnicodeEncodeError traceback."""
    folder = os.fsencode(tmp_path) + b"/caf\xe9"
    os.mkdir(folder)
    monkeypatch.chdir(folder)
    assert_one_line_error(cli("train-dense", "--solver", "solver.prototxt", "-w", "w.caffemodel", "-o", "t.caffemodel"),
                          "/caf\\udce9: the working folder's name is not UTF-8: Caffe takes paths as UTF-8")
    assert_one_line_error(cli("data", "fashion-mnist", "-o", "fm"), "the working folder's name is not UTF-8")
    assert os.listdir(folder) == []
    assert cli("info").exit_code == 0  # names no path
    assert cli("stats", "--help").exit_code == 0


def test_a_pipe_named_as_weights_or_listed_data_is_not_missing(tmp_path, cli):
    """A recipe's weights, or a file an HDF5Data list names, that is a pipe
    was said not to exist."""
    from conftest import write_solver

    os.mkfifo(tmp_path / "pipe")
    solver = write_solver(tmp_path)
    (tmp_path / "recipe.yaml").write_text(f"solver: {solver}\nweights: pipe\nstages:\n  - dense: {{iterations: 1}}\n")
    assert_one_line_error(cli("dsd", "--recipe", "recipe.yaml", "-o", "run"),
                          "recipe.yaml: weights pipe are not a regular file (a folder, device or pipe)")
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'pipe'}\n")
    net = tmp_path / "net.prototxt"
    net.write_text(net.read_text().replace('type: "DummyData"', 'type: "HDF5Data" hdf5_data_param { source: '
                                           '"list.txt" batch_size: 8 }', 1))  # the TRAIN data layer
    assert_one_line_error(cli("train-dense", "--solver", solver, "-w", "x.caffemodel", "-o", "o.caffemodel"),
                          f"list.txt: lists {str(tmp_path / 'pipe')!r}, which is not a regular file")


def test_a_prototxt_that_is_not_utf8_is_read_where_caffe_reads_it(tiny, tmp_path, cli):
    """protobuf's text format is UTF-8: a Latin-1 byte was reported as
    "binary data; is it a caffemodel?", even in a comment, which Caffe
    skips; in a name, which caffemodels hold as UTF-8, it is named."""
    proto, weights = tiny
    text = proto.read_bytes()
    commented = tmp_path / "commented.prototxt"
    commented.write_bytes(b"# caf\xe9\n" + text)
    result = cli("verify", "-w", weights, "--model", commented)
    assert result.exit_code == 0 and "ok    prototxt fits weights" in result.output, result.output
    named = tmp_path / "named.prototxt"
    named.write_bytes(b'name: "caf\xe9"\n' + text)
    assert_one_line_error(cli("verify", "-w", weights, "--model", named),
                          f"{named}:1:7: a name or path that is not UTF-8 text (protobuf's text format is UTF-8, "
                          "and so are caffemodels' names); save the file as UTF-8")
    assert_one_line_error(cli("verify", "-w", weights, "--model", weights),
                          f"{weights}: not a text prototxt (binary data; is it a caffemodel?)")
