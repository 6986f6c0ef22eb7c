"""Encoder selection and installing without a C compiler."""

import os
import platform
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
    pytest.importorskip("sqlalchemy")
    pytest.importorskip("django")
    # The encoder looks for _timer_fields when it first meets a Timer; the
    # integrations' modules load when imported.
    code = (
        "import pynba, pynba.wsgi; from pynba.timer import Timer;"
        " import pynba.instrumentation.requests, pynba.instrumentation.urllib3,"
        " pynba.instrumentation.opentelemetry, pynba.instrumentation.sqlalchemy,"
        " pynba.instrumentation.dbapi, pynba.instrumentation._templates,"
        " pynba.instrumentation.django_db;"
        " pynba.encode('h', 's', '/', 1, 0, 0, 0.1, 0, 0, 200, 0, None, {}, [Timer({'a': 'b'})]);"
        " print(' '.join(sorted(pynba.compiled_modules())))"
    )
    names = run_python(code, PYNBA_PURE_PYTHON="").split()
    assert names == sorted(
        [
            "wire._encoder",
            "_rusage",
            "_self_types",
            "_timer_call",
            "_timer_fields",
            "collector",
            "context",
            "reporter",
            "tags",
            "timer",
            "wsgi",
            "instrumentation._call_hook",
            "instrumentation._hooks",
            "instrumentation._http_client",
            "instrumentation._templates",
            "instrumentation.dbapi",
            "instrumentation.django_db",
            "instrumentation.opentelemetry",
            "instrumentation.requests",
            "instrumentation.sqlalchemy",
            "instrumentation.urllib3",
        ]
    )


def copy_the_project(destination, training=True):
    """What a build reads: setup.py and its files, the sources, the PGO training."""
    for name in ("setup.py", "pyproject.toml", "README.rst", "MANIFEST.in"):
        shutil.copy(ROOT / name, destination / name)
    # With the C that Cython made of the sources, when it is newer than they
    # are (copied with their times): the build need not make it again.
    shutil.copytree(
        ROOT / "src" / "pynba",
        destination / "src" / "pynba",
        ignore=shutil.ignore_patterns("*.so", "__pycache__"),
    )
    if training:
        (destination / "benchmarks").mkdir()
        shutil.copy(ROOT / "benchmarks" / "pgo_training.py", destination / "benchmarks")


def build(directory, command=("build", "-j", "2", "--build-lib", "lib"), **env):
    """``setup.py build`` into ``directory``/lib (or ``command``); its completed process.

    Unoptimised (CFLAGS=-O0, unless ``env`` says otherwise): these tests look
    at what the build does, not at the code it makes, and -O3 takes the
    compiler five times as long.
    """
    return subprocess.run(
        [sys.executable, "setup.py", *command],
        cwd=directory,
        env={**os.environ, "PYNBA_NO_EXTENSION": "", "PYNBA_PGO": "", "CFLAGS": "-O0", **env},
        capture_output=True,
        text=True,
        timeout=900,
    )


def skip_in_the_pure_run():
    """The build is the same whichever implementation the tests run: built once, compiled."""
    from pynba._implementation import pure_python_forced

    if pure_python_forced():
        pytest.skip("the build does not depend on the implementation under test")


def built_modules(directory):
    lib = directory / "lib" / "pynba"
    return sorted(str(path.relative_to(lib)).split(".")[0] for path in lib.rglob("*.so"))


@pytest.mark.parametrize("broken", ["_rusage", "_timer_fields"])  # built before them, after them
def test_a_module_that_fails_to_build_leaves_the_per_request_modules_pure(tmp_path, broken):
    """They cimport one another and _rusage: kept without it, they could not be imported."""
    pytest.importorskip("Cython")
    skip_in_the_pure_run()
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler")
    copy_the_project(tmp_path, training=False)
    source = tmp_path / "src" / "pynba" / f"{broken}.pyx"
    # Valid Cython whose C does not compile: the failure a platform could bring.
    source.write_text(
        source.read_text() + '\n\ncdef extern from *:\n    """\n#error not here\n    """\n'
    )
    done = build(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "installing its pure Python instead" in done.stderr
    assert built_modules(tmp_path) == ["wire/_encoder"]
    code = "import pynba, pynba.wsgi; print(' '.join(pynba.compiled_modules()))"
    out = run_python(code, PYTHONPATH=str(tmp_path / "lib"), PYNBA_PURE_PYTHON="")
    assert out == "wire._encoder"


def gcc_for_profiles():
    """Skip unless the build's compiler is GCC 10 or later (what PYNBA_PGO=1 needs)."""
    pytest.importorskip("Cython")
    skip_in_the_pure_run()
    compiler = shutil.which(os.environ.get("CC", "gcc"))
    if compiler is None:
        pytest.skip("no C compiler")
    release = subprocess.run([compiler, "-dumpfullversion"], capture_output=True, text=True)
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    major = release.stdout.strip().split(".")[0]
    if "Free Software Foundation" not in version or not major.isdigit() or int(major) < 10:
        pytest.skip("the compiler is not GCC 10 or later")


def compile_lines(output):
    """The compiler's command lines of each module's C file, in order."""
    return [line for line in output.splitlines() if " -c src/pynba/" in line]


PER_REQUEST = ["collector", "reporter", "tags", "timer", "wire/_encoder", "wsgi"]


def test_a_profile_guided_build_compiles_each_module_again_from_its_training(tmp_path):
    """The application's settings in the build's environment do not reach the training."""
    gcc_for_profiles()
    copy_the_project(tmp_path)
    done = build(tmp_path, PYNBA_PGO="1", PINBA_ENABLED="0", PINBA_NAME_LIMIT="many")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "without a profile" not in done.stderr, done.stderr
    lines = compile_lines(done.stdout)
    instrumented = [line for line in lines if "-fprofile-generate=" in line]
    guided = [line for line in lines if "-fprofile-use=" in line]
    built = built_modules(tmp_path)
    assert set(PER_REQUEST) <= set(built)
    assert len(instrumented) == len(guided) == len(lines) // 2 == len(built)
    # every module instrumented first, then built again from the profile
    assert lines.index(guided[0]) > lines.index(instrumented[-1])
    if sys.platform == "linux" and platform.machine() == "x86_64":
        # calling libpython through the GOT: no PLT stub for a cold request to fetch
        assert all(" -fno-plt" in line for line in lines)
        readelf = shutil.which("readelf")
        for module in (tmp_path / "lib").rglob("*.so") if readelf else ():
            relocations = subprocess.run(
                [readelf, "--relocs", "--wide", module], capture_output=True, text=True
            ).stdout
            assert "R_X86_64_GLOB_DAT" in relocations
            assert "JUMP_SLOT" not in relocations, module
    code = "import pynba, pynba.wsgi; print(' '.join(sorted(pynba.compiled_modules())))"
    out = run_python(code, PYTHONPATH=str(tmp_path / "lib"), PYNBA_PURE_PYTHON="")
    assert set(out.split()) >= {"collector", "reporter", "wire._encoder", "wsgi"}


# Fake compilers: what each says of itself, and a failure for every compile (the
# command lines the build prints are all these tests need).
CLANG = "printf 'clang version 18.1.0\\n'"
GCC_IN_LATIN_1 = "printf 'gcc (GCC) 12.2.0\\nCopyright \\251 2022 Free Software Foundation\\n'"


@pytest.mark.parametrize(
    ("says", "launcher", "cflags", "flagged"),
    [
        (CLANG, "", "", False),
        (GCC_IN_LATIN_1, "ccache ", "", True),
        (GCC_IN_LATIN_1, "", "-O2 -fplt", False),
    ],
    ids=["clang", "GCC behind ccache, in Latin-1", "GCC, CFLAGS asking for a PLT"],
)
def test_the_gcc_flag_goes_to_gcc_only(tmp_path, says, launcher, cflags, flagged):
    """``-fno-plt`` (x86-64 Linux, GCC): another compiler may not know it."""
    pytest.importorskip("Cython")
    skip_in_the_pure_run()
    copy_the_project(tmp_path, training=False)
    compiler = tmp_path / "cc"
    compiler.write_text(
        "#!/bin/sh\n"
        f'case "$*" in --version) {says}; exit 0;; -dumpversion) echo 12; exit 0;; esac\n'
        "exit 1\n"
    )
    compiler.chmod(0o755)
    done = build(tmp_path, CC=f"{launcher}{compiler}", CFLAGS=cflags)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = compile_lines(done.stdout)
    assert lines, done.stdout
    linux_x86_64 = sys.platform == "linux" and platform.machine() == "x86_64"
    assert all((" -fno-plt" in line) == (flagged and linux_x86_64) for line in lines)
    assert built_modules(tmp_path) == []


def test_a_profile_guided_build_whose_training_fails_is_built_without_a_profile(tmp_path):
    gcc_for_profiles()
    copy_the_project(tmp_path)
    (tmp_path / "benchmarks" / "pgo_training.py").write_text(
        "import sys\nsys.exit('no training here')\n"
    )
    done = build(tmp_path, PYNBA_PGO="1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "the training failed: no training here; building without a profile" in done.stderr
    lines = compile_lines(done.stdout)
    built = built_modules(tmp_path)
    assert set(PER_REQUEST) <= set(built)
    # built instrumented, then plain: nothing of the instrumented build is kept
    assert len(lines) == 2 * len(built)
    assert all("-fprofile" not in line for line in lines[len(built) :])
    code = "import pynba, pynba.wsgi; print(' '.join(sorted(pynba.compiled_modules())))"
    out = run_python(code, PYTHONPATH=str(tmp_path / "lib"), PYNBA_PURE_PYTHON="")
    assert set(out.split()) >= {"collector", "reporter", "wire._encoder", "wsgi"}


def test_a_profile_guided_build_interrupted_in_its_training_keeps_no_instrumented_module(
    tmp_path,
):
    """A later build would install them: they write their counts at every exit."""
    gcc_for_profiles()
    copy_the_project(tmp_path)
    (tmp_path / "benchmarks" / "pgo_training.py").write_text(
        "import os, signal, time\nos.kill(os.getppid(), signal.SIGINT)\ntime.sleep(60)\n"
    )
    done = build(tmp_path, PYNBA_PGO="1")
    assert done.returncode != 0, done.stdout + done.stderr
    assert done.stderr.rstrip().endswith("interrupted")
    assert built_modules(tmp_path) == []


def test_a_profile_guided_build_in_place_whose_second_build_fails_keeps_no_instrumented_module(
    tmp_path,
):
    gcc_for_profiles()
    copy_the_project(tmp_path)
    compiler = tmp_path / "cc"
    # The failure a profile could bring (a coverage mismatch is an error), on the encoder only.
    compiler.write_text(
        "#!/bin/sh\n"
        'case "$*" in *_encoder.c*-fprofile-use*) exit 1;; esac\n'
        f'exec {shutil.which(os.environ.get("CC", "gcc"))} "$@"\n'
    )
    compiler.chmod(0o755)
    (tmp_path / "tmp").mkdir()  # where the profile is written
    done = build(
        tmp_path, ("build_ext", "--inplace", "-j", "2"), PYNBA_PGO="1", CC=str(compiler),
        TMPDIR=str(tmp_path / "tmp"),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "building a compiled module failed" in done.stderr
    code = "import pynba, pynba.wsgi; print(' '.join(sorted(pynba.compiled_modules())))"
    out = run_python(code, PYTHONPATH=str(tmp_path / "src"), PYNBA_PURE_PYTHON="")
    assert "wire._encoder" not in out.split()
    assert list(tmp_path.rglob("*.gcda")) == []
