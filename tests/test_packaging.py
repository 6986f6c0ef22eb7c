"""Encoder selection and installing without a C compiler."""

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_python(code, **env):
    environment = {**os.environ, **env}
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [env.get("PYTHONPATH", str(ROOT / "src")), environment.get("PYTHONPATH")])
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()


def test_environment_variable_forces_the_pure_encoder():
    code = "import pynba, pynba.wire.encoder as e; print(pynba.ENCODER, e.encode.__module__)"
    assert run_python(code, PYNBA_PURE_PYTHON="1") == "pure pynba.wire.fallback"


@pytest.mark.parametrize("value", ["", "0", "false"])
def test_compiled_encoder_is_the_default_when_built(value):
    from conftest import compiled_encoder

    if compiled_encoder() is None:
        pytest.skip("the compiled encoder is not built")
    code = "import pynba; print(pynba.ENCODER)"
    assert run_python(code, PYNBA_PURE_PYTHON=value) == "compiled"


def test_sdist_installs_without_a_compiler(tmp_path):
    subprocess.run(
        [sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path / "dist")],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    (sdist,) = (tmp_path / "dist").glob("pynba-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    package = ROOT / "src" / "pynba"
    build_sources = [
        f"src/pynba/{path.relative_to(package)}" for path in sorted(package.rglob("*.p[yx][xd]"))
    ]
    assert "src/pynba/wire/_encoder.pyx" in build_sources
    for needed in (*build_sources, "src/pynba/py.typed", "proto/pinba.proto", "tests/conftest.py"):
        assert any(name.endswith(needed) for name in names), needed

    target = tmp_path / "site"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-v",
            "--no-deps",
            # Isolated, as a user's install: pip brings setuptools and Cython itself.
            "--target",
            str(target),
            str(sdist),
        ],  # fmt: skip
        env={**os.environ, "CC": "false", "PYNBA_PURE_PYTHON": ""},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    assert "installing its pure Python instead" in install.stdout + install.stderr
    assert not list(target.glob("pynba/wire/_encoder*.so"))
    code = (
        "import pynba; "
        "print(pynba.ENCODER, len(pynba.encode('h', 's', '/', 1, 0, 0, 0.1, 0, 0, 200, 0,"
        " None, {}, [({'a': 'b'}, 0.1, 1, 0, 0)])))"
    )
    out = run_python(code, PYTHONPATH=str(target), PYNBA_PURE_PYTHON="")
    assert out.split()[0] == "pure"
    assert int(out.split()[1]) > 0


def test_environment_variable_forces_every_module_to_its_python_source():
    code = (
        "import pynba, pynba.timer, pynba.collector, pynba.wsgi; "
        "print(pynba.compiled_modules(), pynba.timer.__file__.endswith('.py'),"
        " pynba.wsgi.__file__.endswith('.py'))"
    )
    assert run_python(code, PYNBA_PURE_PYTHON="1") == "[] True True"


def test_every_compiled_module_runs_compiled_when_built():
    from conftest import compiled_encoder

    if compiled_encoder() is None:
        pytest.skip("the compiled modules are not built")
    pytest.importorskip("opentelemetry.sdk")
    # The encoder looks for _timer_fields when it first meets a Timer; the
    # integrations' modules load when imported.
    code = (
        "import pynba, pynba.wsgi; from pynba.timer import Timer;"
        " import pynba.instrumentation.requests, pynba.instrumentation.urllib3,"
        " pynba.instrumentation.opentelemetry;"
        " pynba.encode('h', 's', '/', 1, 0, 0, 0.1, 0, 0, 200, 0, None, {}, [Timer({'a': 'b'})]);"
        " print(' '.join(sorted(pynba.compiled_modules())))"
    )
    names = run_python(code, PYNBA_PURE_PYTHON="").split()
    assert names == sorted(
        [
            "wire._encoder",
            "_rusage",
            "_timer_call",
            "_timer_fields",
            "collector",
            "context",
            "reporter",
            "tags",
            "timer",
            "wsgi",
            "instrumentation._http_client",
            "instrumentation.opentelemetry",
            "instrumentation.requests",
            "instrumentation.urllib3",
        ]
    )


@pytest.mark.parametrize("broken", ["_rusage", "_timer_fields"])  # built before them, after them
def test_a_module_that_fails_to_build_leaves_the_per_request_modules_pure(tmp_path, broken):
    """They cimport one another and _rusage: kept without it, they could not be imported."""
    pytest.importorskip("Cython")
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler")
    for name in ("setup.py", "pyproject.toml", "README.rst", "MANIFEST.in"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(
        ROOT / "src" / "pynba",
        tmp_path / "src" / "pynba",
        ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__"),
    )
    source = tmp_path / "src" / "pynba" / f"{broken}.pyx"
    # Valid Cython whose C does not compile: the failure a platform could bring.
    source.write_text(
        source.read_text() + '\n\ncdef extern from *:\n    """\n#error not here\n    """\n'
    )
    build = subprocess.run(
        [sys.executable, "setup.py", "build", "--build-lib", "lib"],
        cwd=tmp_path,
        env={**os.environ, "PYNBA_NO_EXTENSION": ""},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    assert "installing its pure Python instead" in build.stderr
    lib = tmp_path / "lib" / "pynba"
    built = sorted(str(path.relative_to(lib)).split(".")[0] for path in lib.rglob("*.so"))
    assert built == ["wire/_encoder"]
    code = "import pynba, pynba.wsgi; print(' '.join(pynba.compiled_modules()))"
    out = run_python(code, PYTHONPATH=str(tmp_path / "lib"), PYNBA_PURE_PYTHON="")
    assert out == "wire._encoder"
