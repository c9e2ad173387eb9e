"""tools/cuda_toolkit.sh: which host compiler, arch and toolkit tree a CUDA
build of Caffe gets. The decisions are shell functions; they are run here
with stand-in compilers and an unpacked-package layout made in tmp_path,
since no test machine has every CUDA release."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

TOOLKIT_SH = Path(__file__).resolve().parent.parent / "tools" / "cuda_toolkit.sh"


UTILITIES = ["seq", "realpath", "cp", "ln", "mkdir", "rm", "cat", "head", "sed", "basename", "ls", "tr"]


def run_function(call, path_dir, env=None):
    """Runs `call` after sourcing cuda_toolkit.sh, with path_dir and the few
    utilities the functions use as the whole PATH (so no compiler of this
    machine's is seen); returns (exit status, stdout, stderr)."""
    utilities = path_dir.parent / f"{path_dir.name}-utilities"
    utilities.mkdir(exist_ok=True)
    for name in UTILITIES:
        if not (utilities / name).exists():
            (utilities / name).symlink_to(shutil.which(name))
    full_env = {"PATH": f"{path_dir}:{utilities}", "HOME": os.environ.get("HOME", "/tmp")}
    full_env.update(env or {})
    done = subprocess.run([shutil.which("bash"), "-c", f'. "{TOOLKIT_SH}"; {call}'], env=full_env,
                          capture_output=True, text=True)
    return done.returncode, done.stdout.strip(), done.stderr.strip()


def fake_compilers(folder, default_major, others=()):
    """`c++` reporting default_major, and a g++-N for each N in others."""
    folder.mkdir(exist_ok=True)
    for name, major in [("c++", default_major)] + [(f"g++-{n}", n) for n in others]:
        tool = folder / name
        tool.write_text(f"#!/bin/sh\necho {major}.2.0\n")
        tool.chmod(0o755)
    return folder


@pytest.mark.parametrize("cuda, default_major, others, expected", [
    ("11.8", 12, (11, 10), "g++-11"),   # Debian 12 with its nvidia-cuda-toolkit 11.8
    ("11.8", 12, (10,), "g++-10"),
    ("11.8", 11, (), ""),
    ("12.2", 13, (12,), "g++-12"),
    ("12.4", 12, (11,), ""),           # 12.4 takes Debian 12's g++ 12 as it is
    ("12.4", 14, (13, 12), "g++-13"),
    ("12.9", 14, (), ""),
    ("13.0", 15, (), ""),
    ("14.1", 17, (), ""),              # a release the table does not know: nvcc judges
])
def test_host_compiler_is_the_newest_g_plus_plus_that_nvcc_accepts(tmp_path, cuda, default_major, others,
                                                                     expected):
    bin_dir = fake_compilers(tmp_path / "bin", default_major, others)
    status, out, err = run_function(f"cuda_host_compiler {cuda}", bin_dir)
    assert status == 0, err
    assert out == (str(bin_dir / expected) if expected else "")


def test_host_compiler_from_cudahostcxx_wins(tmp_path):
    bin_dir = fake_compilers(tmp_path / "bin", 12, (11,))
    status, out, _ = run_function("cuda_host_compiler 11.8", bin_dir, {"CUDAHOSTCXX": "/opt/gcc/bin/g++"})
    assert (status, out) == (0, "/opt/gcc/bin/g++")


def test_host_compiler_names_what_to_install_when_none_fits(tmp_path):
    bin_dir = fake_compilers(tmp_path / "bin", 12)
    status, out, err = run_function("cuda_host_compiler 11.8", bin_dir)
    assert status == 1 and out == ""
    assert err == ("cuda: CUDA 11.8's nvcc takes g++ up to 11, and c++ here is g++ 12; "
                   "install g++-11 or set CUDAHOSTCXX")


@pytest.mark.parametrize("given, expected", [("90", "90"), ("8.6", "86"), ("120", "120")])
def test_arch_from_the_environment(tmp_path, given, expected):
    status, out, _ = run_function("cuda_arch", tmp_path, {"CAFFEDSD_CUDA_ARCH": given})
    assert (status, out) == (0, expected)


def test_a_bad_arch_is_one_line(tmp_path):
    status, out, err = run_function("cuda_arch", tmp_path, {"CAFFEDSD_CUDA_ARCH": "sm_90"})
    assert status == 1 and out == ""
    assert err == "cuda: CAFFEDSD_CUDA_ARCH=sm_90: expected a compute capability such as 90 or 8.6"


def unpacked_debian_toolkit(root):
    """The files Debian's nvidia-cuda-toolkit, nvidia-cuda-dev and library
    packages put where Caffe's build looks, as dpkg -x leaves them."""
    files = {
        "usr/lib/nvidia-cuda-toolkit/bin/nvcc": "#!/bin/sh\n",
        "usr/lib/nvidia-cuda-toolkit/bin/cicc": "",
        "usr/lib/nvidia-cuda-toolkit/bin/crt/link.stub": "",
        "usr/lib/nvidia-cuda-toolkit/libdevice/libdevice.10.bc": "",
        "usr/bin/ptxas": "", "usr/bin/fatbinary": "", "usr/bin/cudafe++": "",
        "usr/include/cuda_runtime.h": "", "usr/include/cublas_v2.h": "", "usr/include/curand.h": "",
        "usr/include/thrust/version.h": "",
        "usr/lib/x86_64-linux-gnu/libcudart.so.12": "", "usr/lib/x86_64-linux-gnu/libcudart_static.a": "",
        "usr/lib/x86_64-linux-gnu/libcublas.so.12": "", "usr/lib/x86_64-linux-gnu/libcurand.so.10": "",
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o755)
    (root / "usr/lib/x86_64-linux-gnu/libcudart.so").symlink_to("libcudart.so.12")


def test_debian_toolkit_becomes_one_cuda_home(tmp_path):
    root, out = tmp_path / "root", tmp_path / "toolkit"
    unpacked_debian_toolkit(root)
    status, _, err = run_function(f'cuda_debian_toolkit "{out}" "{root}"', tmp_path)
    assert status == 0, err
    for name in ["bin/nvcc", "bin/cicc", "bin/ptxas", "bin/crt/link.stub", "include/thrust/version.h",
                 "nvvm/libdevice/libdevice.10.bc", "lib64/libcudart.so", "lib64/libcublas.so",
                 "lib64/libcurand.so"]:
        assert (out / name).exists(), name
    # nvcc reads the profile beside the file it runs from, so that is a copy.
    assert not (root / "cuda-layout/bin/nvcc").is_symlink()
    profile = (out / "bin/nvcc.profile").read_text()
    assert f"TOP = {out}\n" in profile
    assert f'"-L{root}/usr/lib/x86_64-linux-gnu"' in profile  # where libcudart_static.a is


def test_debian_toolkit_without_nvcc_is_one_line(tmp_path):
    (tmp_path / "root/usr/lib/x86_64-linux-gnu").mkdir(parents=True)
    status, _, err = run_function(f'cuda_debian_toolkit "{tmp_path}/out" "{tmp_path}/root"', tmp_path)
    assert status == 1
    assert err == f"cuda: {tmp_path}/root holds no unpacked nvidia-cuda-toolkit"
