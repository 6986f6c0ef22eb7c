"""Running a snippet in an interpreter of its own: for what changes a process for good."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from packets import Packet

ROOT = Path(__file__).resolve().parent.parent


def isolated(scenario, *args, strict=False):
    """What ``scenario(*args)`` (a function of a test module) prints in a fresh interpreter.

    Fails the test unless that interpreter exits with status 0: a segfault or
    a sanitizer report fails one test instead of ending the run. ``strict``
    sets ``PYNBA_STRICT=1`` there (pynba raises its internal errors).
    """
    env = dict(os.environ)
    paths = [str(ROOT / "src"), str(ROOT / "tests"), *filter(None, [env.get("PYTHONPATH")])]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYNBA_STRICT"] = "1" if strict else "0"
    code = f"import {scenario.__module__} as t; t.{scenario.__name__}(*{args!r})"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, (
        f"{scenario.__name__}{args!r} exited with status {done.returncode}\n"
        f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    )
    return done.stdout


def run_script(code, listener, env=None, stderr=False):
    """Run ``code`` (ADDRESS is the listener's address); its datagrams, decoded, and the run.

    The script must succeed and, unless ``stderr`` is True, log nothing.
    """
    script = textwrap.dedent(code).replace("ADDRESS", repr(listener.address))
    environ = dict(os.environ, **(env or {}))
    environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src"), str(ROOT / "tests"), *filter(None, [environ.get("PYTHONPATH")])]
    )
    # Not pynba's: Pyramid imports pkg_resources, which setuptools 81 and
    # later deprecate, as a warning printed on import.
    environ["PYTHONWARNINGS"] = ",".join(
        filter(None, [environ.get("PYTHONWARNINGS"), "ignore:pkg_resources is deprecated"])
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=environ, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    if not stderr:
        assert done.stderr == "", done.stderr
    return [Packet(datagram) for datagram in listener.pending(timeout=0.2)], done


def recursion_stack_size(compiled):
    """A thread stack on which a C-to-C recursion that pynba counts must end in RecursionError.

    Compiled, pynba counts each level of its own as several (see
    _recursion.pxd), scaled on CPython 3.12 and 3.13 to their C recursion
    limit: 512 KiB, twice what a hook's cycle with a wrapt proxy takes to
    reach RecursionError on 3.11 to 3.13, and less than the cycle would take
    on 3.13 counted as on 3.11. From source, the recursion is the
    interpreter's own, through frames and wrapt's slots: as much as two
    wrapt proxies wrapping each other need alone, 1 MiB on 3.10 to 3.12,
    more than 4 MiB on 3.13 (whose C recursion limit is 10,000 levels).
    Under AddressSanitizer (.ci/sanitize) every C frame is several times
    larger.
    """
    if "libasan" in os.environ.get("LD_PRELOAD", ""):
        return 8 << 20
    if compiled:
        return 512 << 10
    return (8 << 20) if sys.version_info >= (3, 13) else (1 << 20)
