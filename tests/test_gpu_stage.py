"""tools/gpu_stage.sh's `all`: the bookkeeping that lets a second device
call go on where the first stopped. No build is needed: steps an earlier
call finished are marked done in STAGE/results, and a check step without a
finished build fails at once."""
import subprocess
import sys
from pathlib import Path

GPU_STAGE = Path(__file__).resolve().parent.parent / "tools" / "gpu_stage.sh"
STEPS = ["build", "tests", "demo", "bench-lenet", "bench-squeezenet", "bench-vgg16", "replay", "suite"]


def _all(stage, out):
    return subprocess.run(["bash", str(GPU_STAGE), "all", str(stage), sys.executable, str(out)],
                          capture_output=True, text=True, timeout=60)


def test_all_runs_again_only_what_did_not_finish(tmp_path):
    results = tmp_path / "stage" / "results"
    results.mkdir(parents=True)
    for step in STEPS:
        if step != "replay":
            (results / f"{step}.done").write_text("exit 0 after 1 s\n")

    first = _all(tmp_path / "stage", tmp_path / "out1")
    assert first.returncode == 1, first.stdout + first.stderr
    assert "gpu-stage: all: failed: replay" in first.stdout
    assert "gpu-stage: tests: done in an earlier call" in first.stdout
    assert "replay: exit 2 after" in (tmp_path / "out1" / "summary.txt").read_text()
    assert not (results / "replay.done").exists()  # a failed step runs again

    again = _all(tmp_path / "stage", tmp_path / "out2")
    assert again.returncode == 1 and "gpu-stage: replay: bash" in again.stdout

    (results / "replay.done").write_text("exit 0 after 1 s\n")
    last = _all(tmp_path / "stage", tmp_path / "out3")
    assert last.returncode == 0 and last.stdout.rstrip().endswith("gpu-stage: all: done")
    # What the device tool brings back: a few files, the earlier calls' summary among them.
    assert sorted(p.name for p in (tmp_path / "out3").iterdir()) == ["all.log", "results.tar.gz", "summary.txt"]
    assert (tmp_path / "out3" / "summary.txt").read_text().count("replay: exit 2 after") == 2


def test_all_without_its_arguments_is_one_line(tmp_path):
    result = subprocess.run(["bash", str(GPU_STAGE), "all", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("gpu-stage: all needs PYTHON and OUTDIR; usage:")
