"""Running a snippet in an interpreter of its own: for what changes a process for good."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from packets import Packet

ROOT = Path(__file__).resolve().parent.parent


def run_script(code, listener, env=None, stderr=False):
    """Run ``code`` (ADDRESS is the listener's address); its datagrams, decoded, and the run.

    The script must succeed and, unless ``stderr`` is True, log nothing.
    """
    script = textwrap.dedent(code).replace("ADDRESS", repr(listener.address))
    environ = dict(os.environ, **(env or {}))
    environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src"), str(ROOT / "tests"), *filter(None, [environ.get("PYTHONPATH")])]
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=environ, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    if not stderr:
        assert done.stderr == ""
    return [Packet(datagram) for datagram in listener.pending(timeout=0.2)], done
