"""Seeded, bounded fuzzing of every reader (tools/fuzz.py has the engine
and does long runs): a mutated input either works or is refused as bad
input must be (exit status 2, one line, no traceback, no output left)."""
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import fuzz  # noqa: E402

RUNS = 120  # per reader: about 12 s in all on 2 shared cores


@pytest.fixture(scope="module")
def seeds(caffe, tmp_path_factory):
    return fuzz.make_seeds(tmp_path_factory.mktemp("fuzz") / "seeds")


# protobuf's text parser decodes a damaged string's backslashes with
# "unicode_escape", which warns on an invalid escape: its warning, not ours.
@pytest.mark.filterwarnings("ignore:invalid escape sequence:DeprecationWarning")
@pytest.mark.parametrize("reader", list(fuzz.READERS))
def test_mutated_inputs_never_crash(seeds, tmp_path, reader):
    start = time.perf_counter()
    counts = fuzz.fuzz_reader(reader, seeds, tmp_path, RUNS, seed=12)
    assert counts["tried"] == RUNS
    assert counts["crashes"] == 0 and counts["left_output"] == 0, counts["examples"]
    assert counts["rejected"] > 0  # the mutations do reach the error paths
    assert time.perf_counter() - start < 20


def test_the_checker_catches_a_crash(tmp_path):
    """The harness itself can fail: a traceback is a crash, a clean refusal is not."""
    with pytest.raises(fuzz.Crash):
        fuzz._library(lambda: {}["missing"])
    assert fuzz._library(lambda: (_ for _ in ()).throw(fuzz.CaffeDsdError("one line"))) == "rejected"
    assert fuzz._cli(["stats", "-w", tmp_path / "absent.caffemodel"]) == "rejected"
