"""Every code block of README.rst and docs/*.md runs, as written or as close to it as a test can.

Conventions (the tests below enforce them):

- README.rst shows code only with ``.. code-block:: python`` or ``..
  code-block:: console``; a bare ``::`` literal block fails
  ``test_readme_has_only_known_kinds_of_blocks``. The pages in docs/ use
  fenced blocks, opened at the start of a line with ```python, ```console
  or ```text (output, not run) and closed by ```.
- A Python block is self-contained and runs in a fresh namespace. It names
  the Pinba server as ``("127.0.0.1", 30002)`` or ``"127.0.0.1:30002"``; the
  test points that at a ``pynba.testing.PinbaListener``. After the block
  runs, each monitored application it left in its namespace (a
  ``PynbaMiddleware``, a Flask application given to ``pynba.flask``, an
  ASGI application behind ``PynbaASGIMiddleware``) gets one request, each
  ``test_*`` function is called with a listener as its ``pinba_listener``,
  and every packet that arrived must be one a Pinba server accepts.
  ``os.environ`` and the ``pynba`` logger's handlers are restored after each
  block.
- A Python block of a page that cannot run on its own is preceded by
  ``<!-- skip: the reason -->``. Keep them few.
- A console block holds ``$ command`` lines. Each command is either run by
  ``test_console_command`` (bounded, pointed at a free port or a listener)
  or listed in ``NOT_RUN`` with the reason.
- Every ``pynba.name`` written as code in the prose names something that
  exists (``test_names_in_the_prose_exist``), so that a module that moves
  takes its documentation along.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import re
import shlex
import subprocess
import sys
import time
import types
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import pytest

import pynba
import pynba.instrumentation
from pynba import PynbaMiddleware
from pynba.testing import PinbaListener

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.rst"
PAGES = sorted((ROOT / "docs").glob("*.md"))
TEST_COMMAND = (
    "pip install -e '.[test]' && python -m pytest && PYNBA_PURE_PYTHON=1 python -m pytest"
)

NOT_RUN = {
    "pip install .": "installing over the environment under test; test_packaging installs"
    " the sdist into a temporary directory instead",
    "pip install '.[flask]'": "installing over the environment under test (as above)",
    "PYNBA_PGO=1 pip install .": "installing over the environment under test; test_packaging"
    " makes the profile-guided build in a temporary directory",
    "pip install '.[docs]'": "installing over the environment under test; .ci/run installs it",
    TEST_COMMAND: "the command running these tests; .ci/run runs it verbatim (checked below)",
    "apt-get install php-cli php-pinba": "a system package manager; .ci/run installs them",
    "protoc --proto_path=proto --python_out=tests proto/pinba.proto": "regenerates a"
    " tracked file; test_schema.py checks it is in step with the schema",
    "python setup.py build_ext --inplace": "rebuilds the compiled modules under test",
    "CI=true bash .ci/newer-pythons": "builds and tests pynba on other CPythons; .ci/run runs it",
    "python -m pytest -m slow -s tests/test_load.py tests/test_soak.py": "the long runs"
    " themselves (minutes); the default suite runs their short versions",
    "PYNBA_FUZZ_EXAMPLES=200000 python -m pytest tests/test_fuzz.py": "a long fuzzing run;"
    " the default suite runs 10,000 examples per encoder",
    "python benchmarks/load.py --seconds 30": "a minute of load; tests/test_load.py runs"
    " the same load generator for 3 seconds",
    "mkdocs build --strict --site-dir /tmp/pynba-site": ".ci/run builds the pages so;"
    " test_the_pages_build runs the same build when mkdocs is installed",
}

#: Names the pages write as gone since pynba 0.5, each allowed in one page only.
GONE = {
    "docs/differences.md": {
        "core",
        "stacked",
        "wsgi.RequestContext",
        "start",
        "stop",
        "elapsed",
        "started",
        "dt_start",
    },
}

FENCE = re.compile(r"^(\s*)```(.*)$")
SKIP = re.compile(r"^<!--\s*skip:\s*(\S.*?)\s*-->$")


@dataclass(frozen=True)
class Block:
    path: str  # relative to the repository
    kind: str  # python, console, text
    code: str
    line: int  # the line of the block's first line of code
    skip: str | None = None  # why it is not run


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def rst_blocks(path: Path) -> list[Block]:
    """The ``.. code-block::`` blocks of a reStructuredText file."""
    found = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        match = re.match(r"\.\. code-block:: *(\w+)\s*$", line)
        if not match:
            continue
        body = []
        for following in lines[number + 1 :]:
            if following.strip() and not following.startswith(" "):
                break
            body.append(following)
        indent = min(len(b) - len(b.lstrip()) for b in body if b.strip())
        code = "\n".join(b[indent:] for b in body).strip("\n") + "\n"
        first = number + 1 + next(i for i, b in enumerate(body) if b.strip()) + 1
        found.append(Block(relative(path), match.group(1), code, first))
    return found


def md_blocks(text: str, path: str) -> tuple[list[Block], list[str]]:
    """The fenced blocks of a Markdown text, and what is wrong with its fences."""
    found: list[Block] = []
    problems: list[str] = []
    lines = text.splitlines()
    number = 0
    while number < len(lines):
        match = FENCE.match(lines[number])
        if not match:
            number += 1
            continue
        indent, kind = match.group(1), match.group(2).strip()
        if indent:
            problems.append(f"{path}:{number + 1}: a fence must start its line")
        end = number + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if end == len(lines):
            problems.append(f"{path}:{number + 1}: a fence that is never closed")
        above = next((i for i in range(number - 1, -1, -1) if lines[i].strip()), None)
        before = "" if above is None else lines[above].strip()
        marker = SKIP.match(before)
        if before.startswith("<!--") and not marker:
            problems.append(f"{path}:{above + 1}: a comment before a block is <!-- skip: why -->")
        if marker and kind != "python":
            problems.append(f"{path}:{above + 1}: only a python block can be skipped")
        code = "\n".join(lines[number + 1 : end]) + "\n"
        found.append(Block(path, kind, code, number + 2, marker.group(1) if marker else None))
        number = end + 1
    return found, problems


def page_blocks(path: Path) -> list[Block]:
    return md_blocks(path.read_text(encoding="utf-8"), relative(path))[0]


def all_blocks(kind: str | None = None) -> list[Block]:
    found = rst_blocks(README)
    for page in PAGES:
        found += page_blocks(page)
    return [block for block in found if kind is None or block.kind == kind]


def console_commands() -> list[str]:
    commands = []
    for block in all_blocks("console"):
        for text in block.code.splitlines():
            assert text.startswith("$ "), (
                f"{block.path}:{block.line}: console lines start with '$ '"
            )
            if text[2:] not in commands:
                commands.append(text[2:])
    return commands


def readme_console_commands() -> list[str]:
    return [
        text[2:]
        for block in rst_blocks(README)
        if block.kind == "console"
        for text in block.code.splitlines()
    ]


PYTHON_BLOCKS = all_blocks("python")
RUNNABLE = [block for block in PYTHON_BLOCKS if block.skip is None]
#: How many blocks of each file ran to their end, all checks passed.
RAN: Counter[str] = Counter()


# -- the files and their blocks ----------------------------------------------


def test_readme_has_only_known_kinds_of_blocks():
    assert {block.kind for block in rst_blocks(README)} == {"python", "console"}
    for number, line in enumerate(README.read_text(encoding="utf-8").splitlines(), 1):
        if line.rstrip().endswith("::") and not line.startswith(".. "):
            pytest.fail(f"README line {number}: a literal block; use .. code-block::")


def test_readme_renders_without_warnings():
    docutils_core = pytest.importorskip("docutils.core")
    from io import StringIO

    errors = StringIO()
    docutils_core.publish_string(
        README.read_text(encoding="utf-8"),
        writer_name="html",
        settings_overrides={"warning_stream": errors, "report_level": 2, "halt_level": 5},
    )
    assert errors.getvalue() == ""


def test_readme_stays_a_front_page():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 150


def test_readme_links_to_pages_that_exist():
    links = re.findall(r"<(docs/[^>]+)>`__", README.read_text(encoding="utf-8"))
    assert links
    for link in links:
        assert (ROOT / link).is_file(), link


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_page_fences(page):
    blocks, problems = md_blocks(page.read_text(encoding="utf-8"), relative(page))
    assert problems == []
    for block in blocks:
        assert block.kind in ("python", "console", "text"), f"{block.path}:{block.line}"


def test_the_skip_marker():
    text = "\n".join(
        [
            "```python",
            "ran = True",
            "```",
            "",
            "<!-- skip: needs a Django project -->",
            "",
            "```python",
            "from myproject import settings",
            "```",
            "<!-- a note -->",
            "```console",
            "$ pynba demo",
            "```",
            "<!-- skip: why -->",
            "```console",
            "```",
        ]
    )
    blocks, problems = md_blocks(text, "page.md")
    assert [(b.kind, b.line, b.skip) for b in blocks] == [
        ("python", 2, None),
        ("python", 8, "needs a Django project"),
        ("console", 12, None),
        ("console", 16, "why"),
    ]
    assert problems == [
        "page.md:10: a comment before a block is <!-- skip: why -->",
        "page.md:14: only a python block can be skipped",
    ]


def test_fences_start_their_line_and_end():
    _, problems = md_blocks("- a list\n\n  ```python\n  x = 1\n  ```\n", "page.md")
    assert problems == ["page.md:3: a fence must start its line"]
    _, problems = md_blocks("```python\nx = 1\n", "page.md")
    assert problems == ["page.md:1: a fence that is never closed"]


def test_every_page_is_in_the_navigation():
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    listed = re.findall(r"^\s*-\s[^:\n]+:\s*(\S+\.md)\s*$", config, re.MULTILINE)
    assert sorted(listed) == sorted(page.name for page in PAGES)
    assert len(set(listed)) == len(listed)


def test_the_pages_build(tmp_path):
    pytest.importorskip("mkdocs")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_first_command_is_install_then_demo():
    assert readme_console_commands()[:2] == ["pip install .", "pynba demo"]


def test_the_test_command_is_the_one_ci_runs():
    assert TEST_COMMAND in readme_console_commands()
    ci = (ROOT / ".ci" / "run").read_text()
    assert TEST_COMMAND in ci.splitlines()


def test_ci_builds_the_pages():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "mkdocs build --strict" in ci
    # It installs the docs extra's requirements, as setup.py lists them.
    extra = re.search(r'"docs": \[([^\]]*)\]', (ROOT / "setup.py").read_text())
    requirements = re.findall(r'"([^"]+)"', extra.group(1))
    assert requirements
    for requirement in requirements:
        assert f"pip install -q '{requirement}'" in ci


def test_performance_page_names_the_benchmarks():
    page = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    # Figures, not a placeholder: the encoder's and the middleware's tables.
    assert "typical (10 timers)" in page and "10 timers x 2 tags" in page
    for script in ("benchmarks/bench_encode.py", "benchmarks/bench_request.py"):
        assert (ROOT / script).exists()
        assert f"python {script}" in page


# -- names written in the prose ----------------------------------------------


def code_spans(path: Path) -> list[str]:
    """The inline code of a page or of the README, code blocks left out."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".md":
        text = re.sub(r"^```.*?^```$", "", text, flags=re.MULTILINE | re.DOTALL)
        return re.findall(r"`([^`]+)`", text)
    return re.findall(r"``([^`]+)``", text)


def resolves(dotted: str) -> bool:
    """Whether ``pynba.<dotted>`` is a module, an attribute, or an attribute of the proxy."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        name = "pynba." + ".".join(parts[:cut])
        try:
            found = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name is not None and not error.name.startswith("pynba"):
                pytest.skip(f"{name} needs {error.name}")
            continue
        for attribute in parts[cut:]:
            if not hasattr(found, attribute):
                break
            found = getattr(found, attribute)
        else:
            return True
    found = pynba
    for attribute in parts:
        if not hasattr(found, attribute):
            break
        found = getattr(found, attribute)
    else:
        return True
    return len(parts) == 1 and parts[0] in dir(pynba.pynba)


@pytest.mark.parametrize("path", [README, *PAGES], ids=[p.name for p in [README, *PAGES]])
def test_names_in_the_prose_exist(path):
    gone = GONE.get(relative(path), set())
    missing = []
    for span in code_spans(path):
        for dotted in re.findall(r"\bpynba\.([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)", span):
            if dotted not in gone and not resolves(dotted):
                missing.append(f"pynba.{dotted} (in `{span}`)")
    assert missing == []


def test_the_names_written_as_gone_are_gone():
    for dotted in set().union(*GONE.values()):
        assert not resolves(dotted), f"pynba.{dotted} exists: the page should not call it gone"


def test_the_imports_the_differences_page_describes():
    page = (ROOT / "docs" / "differences.md").read_text(encoding="utf-8")
    assert "`from pynba.wsgi import pynba`\n  fails with `ImportError`" in page
    with pytest.raises(ImportError):
        exec("from pynba.wsgi import pynba", {})
    exec("from pynba.wsgi import monitor, PynbaMiddleware", {})
    exec("from pynba.util import ScriptMonitor", {})


# -- python blocks -------------------------------------------------------------


def wsgi_request(app):
    environ = {}
    setup_testing_defaults(environ)
    body = app(environ, lambda status, headers, exc_info=None: None)
    try:
        list(body)
    finally:
        if hasattr(body, "close"):
            body.close()


def asgi_request(app):
    async def call():
        done = asyncio.Event()
        messages = [{"type": "http.request", "body": b"", "more_body": False}]

        async def receive():
            if messages:
                return messages.pop(0)
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.body" and not message.get("more_body"):
                done.set()

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/",
            "raw_path": b"/",
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", b"testserver")],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 80),
        }
        await app(scope, receive, send)

    asyncio.run(call())


def is_monitored_asgi(value) -> bool:
    asgi = sys.modules.get("pynba.asgi")
    if asgi is None:
        return False
    if isinstance(value, asgi.PynbaASGIMiddleware):
        return True
    # Starlette's and FastAPI's add_middleware(); asked by type: the pynba proxy
    # answers any attribute (strict mode: RuntimeError outside a request).
    applications = sys.modules.get("starlette.applications")
    return (
        applications is not None
        and isinstance(value, applications.Starlette)
        and any(entry.cls is asgi.PynbaASGIMiddleware for entry in value.user_middleware)
    )


def is_monitored_flask(value) -> bool:
    flask = sys.modules.get("flask")
    return flask is not None and isinstance(value, flask.Flask) and "pynba" in value.extensions


def drive(namespace: dict) -> int:
    """One request to each monitored application the block left; how many were made."""
    requests = 0
    for value in list(namespace.values()):
        if isinstance(value, PynbaMiddleware) or is_monitored_flask(value):
            wsgi_request(value)
            requests += 1
        elif is_monitored_asgi(value):
            asgi_request(value)
            requests += 1
    return requests


@pytest.mark.parametrize(
    "block", RUNNABLE, ids=[f"{block.path}:{block.line}" for block in RUNNABLE]
)
def test_python_block(block):
    saved_environ = dict(os.environ)
    logger = logging.getLogger("pynba")
    saved_handlers = list(logger.handlers)
    try:
        with PinbaListener() as listener:
            host, port = listener.address
            code = block.code.replace('("127.0.0.1", 30002)', repr((host, port)))
            code = code.replace('"127.0.0.1:30002"', repr(f"{host}:{port}"))
            # A module of its own: frameworks (Pyramid) look their caller up in sys.modules.
            module = types.ModuleType("docs_block")
            sys.modules["docs_block"] = module
            namespace = module.__dict__
            # Blank lines first, so that a traceback names the file's own line.
            exec(compile("\n" * (block.line - 1) + code, block.path, "exec"), namespace)
            expected = drive(namespace)
            for name, value in list(namespace.items()):
                if name.startswith("test_") and callable(value):
                    with PinbaListener() as own:
                        value(own)
            if expected:
                listener.wait_for(expected)
            time.sleep(0.05)  # let a stray extra packet show up before checking them all
            listener.assert_valid()
        RAN[block.path] += 1
    finally:
        pynba.instrumentation.uninstrument()  # a block's instrument() must not time the next one
        sys.modules.pop("docs_block", None)
        logger.handlers[:] = saved_handlers
        os.environ.clear()
        os.environ.update(saved_environ)


# -- console commands ----------------------------------------------------------


def pynba_args(command):
    """The argv running a ``pynba ...`` command with this interpreter."""
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


def with_option(argv, option, value):
    """``argv`` with ``option`` set to ``value``, replacing the value written."""
    if option in argv:
        argv[argv.index(option) + 1] = value
    else:
        argv += [option, value]
    return argv


def check_console_command(command):
    words = shlex.split(command)
    if words[:2] == ["pynba", "demo"]:
        argv = pynba_args(command)
        if "--requests" in argv:
            argv = with_option(argv, "--requests", "100")  # the same run, shorter
        done = run(argv)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "would drop" in done.stdout
    elif words[:2] in (["pynba", "listen"], ["pynba", "top"]):
        # Bounded, and on a free port: the page's port may be taken here.
        argv = with_option(pynba_args(command), "--port", "0")
        argv = with_option(argv, "--duration", "0.2")
        done = run(argv)
        assert done.returncode == 0, done.stderr
        assert "listening for Pinba datagrams" in done.stderr
    elif words == ["pynba", "sample"]:
        done = run(pynba_args(command))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "accepted" in done.stdout
    elif words == ["pynba", "--version"]:
        done = run(pynba_args(command))
        assert done.returncode == 0, done.stderr
        version = re.escape(pynba.__version__)
        assert re.fullmatch(
            rf"pynba {version} \((compiled: [\w.]+(, [\w.]+)*|pure Python)\)\n", done.stdout
        )
    elif words[:2] == ["pynba", "run"]:
        with PinbaListener() as listener:
            argv = [w.replace("127.0.0.1:30002", listener.server) for w in pynba_args(command)]
            argv[argv.index("--") + 1] = sys.executable  # the command's "python"
            done = run(argv)
            assert done.returncode == 0, done.stderr
            assert listener.wait_for(1)
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
        pytest.fail(f"command {command!r} is neither run nor listed in NOT_RUN")


@pytest.mark.parametrize("command", console_commands())
def test_console_command(command):
    if command in NOT_RUN:
        assert NOT_RUN[command]
        return
    check_console_command(command)


def test_every_not_run_command_is_shown():
    assert set(NOT_RUN) <= set(console_commands())


def test_pynba_help():
    done = run([sys.executable, "-m", "pynba", "--help"])
    assert done.returncode == 0
    for command in ("listen", "top", "demo", "sample"):
        assert command in done.stdout


# Last: it counts what the blocks above did.
def test_every_python_block_ran(request):
    selected = [item for item in request.session.items if item.originalname == "test_python_block"]
    if len(selected) != len(RUNNABLE):
        pytest.skip("some python blocks were deselected: run the whole file")
    expected = Counter(block.path for block in RUNNABLE)
    assert RAN == expected
    for path in [README, *PAGES]:
        text = path.read_text(encoding="utf-8")
        written = text.count(".. code-block:: python") + len(re.findall(r"^```python$", text, re.M))
        parsed = [block for block in PYTHON_BLOCKS if block.path == relative(path)]
        assert len(parsed) == written, relative(path)
        if parsed:
            assert RAN[relative(path)] > 0, relative(path)
    assert sum(RAN.values()) == len(RUNNABLE) > 0
