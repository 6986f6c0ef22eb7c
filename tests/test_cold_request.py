"""benchmarks/cold_request.py: callgrind's counts read right, and a short run of the script.

Its figures are not asserted beyond their sign and how its rows follow
from each other (counts belong to the script's output): that the counts by
shared object add up to callgrind's own totals, that each path ran pynba
from this checkout, and what each path served.
"""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import IN_CI

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "cold_request.py"

if shutil.which("valgrind") is None:
    if IN_CI:
        raise RuntimeError("valgrind is not installed: .ci/run installs it")
    pytest.skip(
        "valgrind is not installed (Debian: apt-get install valgrind)", allow_module_level=True
    )


def the_script():
    spec = importlib.util.spec_from_file_location("pynba_cold_request", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_counts_by_object_add_up_to_callgrind_s_totals(tmp_path):
    script = the_script()
    out = tmp_path / "callgrind.out"
    imported = "import pynba; print(*pynba.compiled_modules())"  # those of this child
    done = subprocess.run(
        ["valgrind", "-q", "--tool=callgrind", "--cache-sim=yes", *script.CACHES,
         f"--callgrind-out-file={out}", sys.executable, "-c", imported],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    text = out.read_text()
    recorded = re.search(r"^events: (.*)$", text, re.MULTILINE).group(1).split()
    totals = [int(n) for n in re.search(r"^totals: (.*)$", text, re.MULTILINE).group(1).split()]
    by_object = script.counts_by_object(str(out))
    for index, event in enumerate(script.EVENTS):
        assert (
            sum(counts[index] for counts in by_object.values()) == totals[recorded.index(event)]
        ), event
    compiled = done.stdout.split()
    if os.environ.get("PYNBA_PURE_PYTHON") == "1":
        assert compiled == []
    else:
        assert compiled, "the compiled build imports compiled modules"
    for module in compiled:  # imported, so run: each is named apart
        assert by_object[f"pynba.{module}"][0] > 0, module


def test_a_short_run_prints_each_path_and_what_monitoring_adds():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--requests", "3"],
        capture_output=True, text=True, timeout=900, check=True,
    )  # fmt: skip
    lines = done.stdout.splitlines()
    assert f"pynba from {ROOT / 'src'}: per request" in lines

    def figures(label):
        (line,) = [line for line in lines if re.match(re.escape(label) + r" +-?\d", line)]
        return [float(n.replace(",", "")) for n in line[len(label) :].split()]

    floor = figures("floor")
    assert all(n > 0 for n in floor)
    monitored = figures("monitored")
    added = figures("monitored - floor")
    assert len(monitored) == len(added) == 5
    assert added[0] > 0  # pynba runs instructions the floor does not
    assert added == pytest.approx([a - b for a, b in zip(monitored, floor, strict=True)], abs=1)
    least = figures("least")
    least_added = figures("least - floor")
    assert least_added == pytest.approx([a - b for a, b in zip(least, floor, strict=True)], abs=1)
    # The middleware's Python runs: thousands of instructions (the floor's own
    # count moves by about 2,000 from one child to the next at 3 requests).
    assert least_added[0] > 5000
    assert figures("monitored - least") == pytest.approx(
        [a - b for a, b in zip(added, least_added, strict=True)], abs=1
    )
    # The children's build, not this process's (a test may have imported a compiled module).
    pure = f"note: pynba from {ROOT / 'src'} runs with no compiled module"
    if os.environ.get("PYNBA_PURE_PYTHON") == "1":
        assert pure in lines
    else:
        assert pure not in lines
        assert any(line.startswith("  pynba.") for line in lines)
