"""tools/gpu_stage.sh's `all`: the bookkeeping that lets a second device
call go on where the first stopped. No build is needed: steps an earlier
call finished are marked done in STAGE/results, and a check step without a
finished build fails at once."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import gpu_skip_reason

GPU_STAGE = Path(__file__).resolve().parent.parent / "tools" / "gpu_stage.sh"
STEPS = ["build", "probe", "tests", "bench-lenet", "bench-squeezenet", "bench-vgg16-device", "bench-vgg16-host",
         "bench-vgg16-device-force", "demo", "replay", "suite"]


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


def _shared_library(path, soname, needs=()):
    """A C shared library named SONAME that needs the libraries NEEDS (paths)."""
    source = path.parent.parent / "f.c"  # not beside the library: `libs` looks at every *.so* there
    path.parent.mkdir(parents=True, exist_ok=True)
    source.write_text("int f(void) { return 1; }\n")
    subprocess.run(["cc", "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", str(path), str(source),
                    "-Wl,--no-as-needed", *[f"-L{n.parent}" for n in needs],
                    *[f"-l:{n.name}" for n in needs]], check=True)


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (cc) to make the libraries with")
def test_libs_links_only_what_this_machine_lacks(tmp_path):
    # The staged tree: one library that needs a fill-in; both need libc, which this machine has.
    stage = tmp_path / "stage"
    lib = stage / "root" / "usr" / "lib" / "x86_64-linux-gnu"
    fill_lib = stage / "root" / "fill" / "usr" / "lib" / "x86_64-linux-gnu"
    (stage / "root").mkdir(parents=True)
    (stage / "root" / "PACKAGES").write_text("")
    _shared_library(fill_lib / "libfillin.so.1", "libfillin.so.1")
    _shared_library(lib / "libneedy.so.2", "libneedy.so.2", needs=[fill_lib / "libfillin.so.1"])

    done = subprocess.run(["bash", str(GPU_STAGE), "libs", str(stage)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("for what this machine lacks: libfillin.so.1")
    assert sorted(p.name for p in (stage / "fill").iterdir()) == ["libfillin.so.1"]

    # A need that neither this machine nor the stage holds stops it with one line.
    _shared_library(tmp_path / "elsewhere" / "libnowhere.so.3", "libnowhere.so.3")
    _shared_library(lib / "libother.so.1", "libother.so.1", needs=[tmp_path / "elsewhere" / "libnowhere.so.3"])
    failed = subprocess.run(["bash", str(GPU_STAGE), "libs", str(stage)], capture_output=True, text=True)
    assert failed.returncode == 1 and failed.stderr.count("\n") == 1, failed.stderr
    assert failed.stderr.startswith("gpu-stage: libnowhere.so.3 is needed by the staged libraries;")
    assert "(libother.so.1 needs it)" in failed.stderr


def test_build_for_a_python_boost_1_74_cannot_serve_is_one_line(tmp_path):
    stage = tmp_path / "stage"
    (stage / "root" / "usr" / "lib" / "x86_64-linux-gnu").mkdir(parents=True)
    (stage / "root" / "PACKAGES").write_text("")
    python = tmp_path / "python3.13"  # answers as Python 3.13 does to the version question
    python.write_text("#!/bin/sh\necho 313\n")
    python.chmod(0o755)
    done = subprocess.run(["bash", str(GPU_STAGE), "build", str(stage), str(python), "--cpu"],
                          capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"gpu-stage: {python} is Python 3.13; the staged Boost.Python (1.74)")


@pytest.mark.caffe
def test_a_gpu_test_that_skips_fails_where_the_gpu_is_required():
    """gpu_stage.sh's tests step sets CAFFEDSD_REQUIRE_GPU=1: on the GPU
    machine, a GPU test that skipped (no CUDA build, no CuPy) made the step
    pass and be marked done with nothing shown."""
    if gpu_skip_reason() is None:
        pytest.skip("a GPU is here: its tests run rather than skip")
    test = "tests/test_hooks.py::test_masks_on_the_device_write_exact_zeros"

    def run(require):
        env = {**os.environ, "CAFFEDSD_REQUIRE_GPU": require}
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", test],
                              cwd=GPU_STAGE.parent.parent, env=env, capture_output=True, text=True, timeout=120)

    skipped, required = run("0"), run("1")
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout, skipped.stdout
    assert required.returncode == 1 and "1 error" in required.stdout, required.stdout
    assert "CAFFEDSD_REQUIRE_GPU=1 and this GPU test skipped: Skipped: " in required.stdout
    assert 'CAFFEDSD_REQUIRE_GPU=$require "$python" -m pytest -m "$markers"' in GPU_STAGE.read_text()


def test_a_compiler_that_links_libstdcxx_statically_is_passed_over(tmp_path):
    """The GPU machine's CXX wrapped g++ with -static-libstdc++: libcaffe got
    its own exported copy of the C++ runtime, and every pycaffe net then
    segfaulted in glog. tools/cxx_compiler.sh takes another compiler."""
    if shutil.which("g++") is None or shutil.which("readelf") is None:
        pytest.skip("no g++ or readelf here")
    wrapper = tmp_path / "static-g++"
    wrapper.write_text('#!/bin/sh\nexec g++ -static-libstdc++ "$@"\n')
    wrapper.chmod(0o755)
    script = f'. "{GPU_STAGE.parent / "cxx_compiler.sh"}"; pick_cxx CXX; echo "CXX=$CXX"'
    result = subprocess.run(["bash", "-c", script], env={**os.environ, "CXX": str(wrapper)},
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "links libstdc++ statically" in result.stdout
    chosen = result.stdout.strip().splitlines()[-1].removeprefix("CXX=")
    assert chosen != str(wrapper) and Path(chosen).name in {"c++", "g++"}, result.stdout
    kept = subprocess.run(["bash", "-c", script], env={**os.environ, "CXX": chosen}, capture_output=True, text=True)
    assert kept.stdout.strip() == f"CXX={chosen}", kept.stdout  # a good one given is kept, silently
    # So is one with arguments (CMake takes "ccache g++"), and one that does not work here (CMake names it).
    for given in (f"{chosen} -m64", str(tmp_path / "no-such-g++")):
        kept = subprocess.run(["bash", "-c", script], env={**os.environ, "CXX": given}, capture_output=True, text=True)
        assert kept.stdout.strip() == f"CXX={given}", kept.stdout
