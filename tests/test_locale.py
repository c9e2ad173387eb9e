"""The text caffedsd writes is UTF-8 whatever the locale, and a name the
locale's encoding lacks is printed, not a traceback. Run in fresh processes
under a Latin-1 locale made for the test (localedef, into tmp_path)."""
import os
import subprocess
import sys

import pytest

from conftest import write_solver

NAME = "perte_é精度"  # é is Latin-1; 精度 is not


@pytest.fixture
def latin1(tmp_path):
    """The environment of a process under an ISO-8859-1 locale."""
    folder = tmp_path / "locales"
    folder.mkdir()
    try:
        made = subprocess.run(["localedef", "-i", "en_US", "-f", "ISO-8859-1", str(folder / "en_US.ISO-8859-1")],
                              capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        pytest.skip("no localedef on this machine")
    env = {**os.environ, "LOCPATH": str(folder), "LC_ALL": "en_US.ISO-8859-1", "PYTHONUTF8": "0"}
    probe = subprocess.run([sys.executable, "-c", "import locale; print(locale.getpreferredencoding(False))"],
                           env=env, capture_output=True, text=True)
    if made.returncode not in (0, 1) or probe.stdout.strip() != "ISO-8859-1":  # 1: made, with warnings
        pytest.skip(f"could not make a Latin-1 locale ({made.stderr.strip()[-200:]} {probe.stdout.strip()})")
    return env


def _run(env, cwd, *args):
    return subprocess.run([sys.executable, "-m", "caffedsd", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, timeout=600)


@pytest.mark.caffe
def test_a_run_writes_the_same_utf8_under_any_locale_and_goes_on_under_another(caffe, tmp_path, latin1):
    """Written in the locale's encoding, a dsd run's tests.csv and report.md
    differed between locales, a finished run made under Latin-1 was called
    damaged under UTF-8, and a TEST output named 精度 raised
    UnicodeEncodeError under Latin-1 (tracebacks, after or in the work)."""
    solver = write_solver(tmp_path)
    net = tmp_path / "net.prototxt"
    net.write_text(net.read_text().replace('top: "loss"', f'top: "{NAME}"'), encoding="utf-8")
    (tmp_path / "recipe.yaml").write_text(f"solver: {solver}\nseed: 3\nstages:\n  - dense: {{iterations: 4}}\n"
                                          "  - prune: {sparsity: 0.5}\n  - sparse: {iterations: 4}\n")
    utf8 = {**os.environ, "LC_ALL": "C.UTF-8"}
    runs = {}
    for name, env in (("latin1", latin1), ("utf8", utf8)):
        result = _run(env, tmp_path, "dsd", "--recipe", "recipe.yaml", "-o", name)
        assert result.returncode == 0 and b"Traceback" not in result.stderr, result.stderr[-2000:]
        runs[name] = {path.relative_to(tmp_path / name).as_posix(): path.read_bytes()
                      for path in (tmp_path / name).rglob("*") if path.suffix in (".csv", ".md")}
    assert runs["latin1"] == runs["utf8"] and NAME in runs["latin1"]["01-dense/tests.csv"].decode()
    again = _run(utf8, tmp_path, "dsd", "--recipe", "recipe.yaml", "-o", "latin1")
    assert again.returncode == 0, again.stderr[-2000:]
    assert NAME in again.stdout.decode()
    # The same output printed under Latin-1: what it cannot encode, escaped.
    dense = tmp_path / "utf8" / "01-dense" / "model.caffemodel"
    trained = _run(latin1, tmp_path, "train-dense", "--solver", solver, "-w", dense, "-n", 2, "-o", "d.caffemodel")
    assert trained.returncode == 0 and b"Traceback" not in trained.stderr, trained.stderr[-2000:]
    assert "perte_é\\u7cbe\\u5ea6".encode("latin-1") in trained.stdout
