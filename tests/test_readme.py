"""Every code block in README.rst runs, as written or as close to it as a test can.

Conventions for README.rst (the tests below enforce them):

- Code is shown only with ``.. code-block:: python`` or ``.. code-block::
  console``; a bare ``::`` literal block fails ``test_only_known_kinds_of_blocks``.
- A Python block is self-contained and runs in a fresh namespace. It names
  the Pinba server as ``("127.0.0.1", 30002)`` or ``"127.0.0.1:30002"``; the
  test points that at a ``pynba.testing.PinbaListener``. After the block
  runs, each ``PynbaMiddleware`` it left in its namespace gets one request,
  each ``test_*`` function is called with the listener as its
  ``pinba_listener``, and every packet that arrived must be one a Pinba
  server accepts. ``os.environ`` is restored after each block.
- A console block holds ``$ command`` lines. Each command is either run by
  ``test_console_command`` (bounded with ``--duration``, pointed at a free
  port or a listener) or listed in ``NOT_RUN`` with the reason.
"""

import os
import re
import shlex
import subprocess
import sys
import time
import types
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import pytest

from pynba import PynbaMiddleware
from pynba.testing import PinbaListener

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.rst").read_text(encoding="utf-8")
TEST_COMMAND = (
    "pip install -e '.[test]' && python -m pytest && PYNBA_PURE_PYTHON=1 python -m pytest"
)

NOT_RUN = {
    "pip install .": "installing over the environment under test; test_packaging installs"
    " the sdist into a temporary directory instead",
    TEST_COMMAND: "the command running these tests; .ci/run runs it verbatim (checked below)",
    "apt-get install php-cli php-pinba": "a system package manager; .ci/run installs them",
    "protoc --proto_path=proto --python_out=tests proto/pinba.proto": "regenerates a"
    " tracked file; test_schema.py checks it is in step with the schema",
    "python setup.py build_ext --inplace": "rebuilds the compiled modules under test",
    "python -m pytest -m slow -s tests/test_load.py tests/test_soak.py": "the long runs"
    " themselves (minutes); the default suite runs their short versions",
    "PYNBA_FUZZ_EXAMPLES=200000 python -m pytest tests/test_fuzz.py": "a long fuzzing run;"
    " the default suite runs 10,000 examples per encoder",
    "python benchmarks/load.py --seconds 30": "a minute of load; tests/test_load.py runs"
    " the same load generator for 3 seconds",
}


def blocks(kind=None):
    """``(language, code, line)`` for each ``.. code-block::`` of the README."""
    found = []
    lines = README.splitlines()
    for number, line in enumerate(lines):
        match = re.match(r"\.\. code-block:: *(\w+)\s*$", line)
        if not match:
            continue
        body = []
        for following in lines[number + 1 :]:
            if following.strip() and not following.startswith(" "):
                break
            body.append(following)
        code = "\n".join(body)
        indent = min(len(b) - len(b.lstrip()) for b in body if b.strip())
        code = "\n".join(b[indent:] for b in body).strip("\n") + "\n"
        if kind is None or match.group(1) == kind:
            found.append((match.group(1), code, number + 1))
    return found


def console_commands():
    commands = []
    for _, code, line in blocks("console"):
        for text in code.splitlines():
            assert text.startswith("$ "), f"README line {line}: console lines start with '$ '"
            commands.append(text[2:])
    return commands


PYTHON_BLOCKS = blocks("python")


def test_only_known_kinds_of_blocks():
    assert {kind for kind, _, _ in blocks()} == {"python", "console"}
    for number, line in enumerate(README.splitlines(), 1):
        if line.rstrip().endswith("::") and not line.startswith(".. "):
            pytest.fail(f"README line {number}: a literal block; use .. code-block::")


def test_readme_renders_without_warnings():
    docutils_core = pytest.importorskip("docutils.core")
    from io import StringIO

    errors = StringIO()
    docutils_core.publish_string(
        README,
        writer_name="html",
        settings_overrides={"warning_stream": errors, "report_level": 2, "halt_level": 5},
    )
    assert errors.getvalue() == ""


def test_the_first_command_is_install_then_demo():
    assert console_commands()[:2] == ["pip install .", "pynba demo"]


def test_the_test_command_is_the_one_ci_runs():
    assert TEST_COMMAND in console_commands()
    ci = (ROOT / ".ci" / "run").read_text()
    assert TEST_COMMAND in ci.splitlines()


def test_performance_section_names_the_benchmarks():
    section = README.split("Performance\n===========")[1].split("Troubleshooting")[0]
    # Figures, not a placeholder: the encoder's and the middleware's tables.
    assert "typical (10 timers)" in section and "10 timers x 2 tags" in section
    for script in ("benchmarks/bench_encode.py", "benchmarks/bench_request.py"):
        assert (ROOT / script).exists()
        assert f"python {script}" in section


@pytest.mark.parametrize(
    "code, line",
    [(code, line) for _, code, line in PYTHON_BLOCKS],
    ids=[f"line{line}" for _, _, line in PYTHON_BLOCKS],
)
def test_python_block(code, line):
    saved_environ = dict(os.environ)
    try:
        with PinbaListener() as listener:
            host, port = listener.address
            code = code.replace('("127.0.0.1", 30002)', repr((host, port)))
            code = code.replace('"127.0.0.1:30002"', repr(f"{host}:{port}"))
            # A module of its own: frameworks (Pyramid) look their caller up in sys.modules.
            module = types.ModuleType("readme")
            sys.modules["readme"] = module
            namespace = module.__dict__
            # Blank lines first, so that a traceback names the README's own line.
            exec(compile("\n" * (line + 1) + code, "README.rst", "exec"), namespace)
            expected = 0
            for value in list(namespace.values()):
                if isinstance(value, PynbaMiddleware):
                    environ = {}
                    setup_testing_defaults(environ)
                    body = value(environ, lambda status, headers, exc_info=None: None)
                    list(body)
                    body.close()
                    expected += 1
            for name, value in list(namespace.items()):
                if name.startswith("test_") and callable(value):
                    with PinbaListener() as own:
                        value(own)
            if expected:
                listener.wait_for(expected)
            time.sleep(0.05)  # let a stray extra packet show up before checking them all
            listener.assert_valid()
    finally:
        sys.modules.pop("readme", None)
        os.environ.clear()
        os.environ.update(saved_environ)


def pynba_args(command):
    """The argv running a README ``pynba ...`` command with this interpreter."""
    words = shlex.split(command)
    assert words[0] == "pynba"
    return [sys.executable, "-m", "pynba", *words[1:]]


def environment():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    return env


def run(argv, **options):
    return subprocess.run(
        argv, cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=120, **options
    )


def check_console_command(command):
    words = shlex.split(command)
    if command == "pynba demo":
        done = run(pynba_args(command))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "would drop" in done.stdout
    elif words[:2] in (["pynba", "listen"], ["pynba", "top"]):
        # Bounded, and on a free port: the README's port may be taken here.
        argv = pynba_args(command)
        if "--port" in argv:
            argv[argv.index("--port") + 1] = "0"
        else:
            argv += ["--port", "0"]
        if "--duration" in argv:
            argv[argv.index("--duration") + 1] = "0.2"
        else:
            argv += ["--duration", "0.2"]
        done = run(argv)
        assert done.returncode == 0, done.stderr
        assert "listening for Pinba datagrams" in done.stderr
    elif words[0] == "python" and words[1].startswith("src/examples/"):
        with PinbaListener() as listener:
            argv = [
                sys.executable,
                *[w.replace("127.0.0.1:30002", listener.server) for w in words[1:]],
            ]
            done = run(argv)
            assert done.returncode == 0, done.stderr
            assert listener.wait_for(1)
    elif words[0] == "python" and words[1].startswith("benchmarks/"):
        done = run([sys.executable, words[1], "--help"])  # the full run belongs to benchmarks
        assert done.returncode == 0, done.stderr
    else:
        pytest.fail(f"README command {command!r} is neither run nor listed in NOT_RUN")


@pytest.mark.parametrize("command", console_commands())
def test_console_command(command):
    if command in NOT_RUN:
        assert NOT_RUN[command]
        return
    check_console_command(command)


def test_pynba_help():
    done = run([sys.executable, "-m", "pynba", "--help"])
    assert done.returncode == 0
    for command in ("listen", "top", "demo"):
        assert command in done.stdout
