"""``pynba listen`` and ``pynba top`` facing hostile datagrams: control characters."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pynba import Reporter
from pynba.decode import PinbaRequest
from pynba.display import describe, json_line, printable
from pynba.listener import Received
from pynba.report import Report

ROOT = Path(__file__).resolve().parent.parent

# What a terminal must never receive raw from a datagram: C0 (ESC, BEL, CR...),
# DEL, C1 (U+009B is a one-character CSI), line separators, bidi overrides.
HOSTILE = "\x1b[2J\x07\r\x7f\x85\x9b31m\u2028\u2029\u202e\u2066\u200f"
ESCAPED = (
    r"\x1b[2J\x07\r\x7f\x85\x9b31m\u2028\u2029\u202e\u2066\u200f",
    # the same characters, as JSON escapes: a JSON reader gets the original back
    r"\u001b[2J\u0007\r\u007f\u0085\u009b31m\u2028\u2029\u202e\u2066\u200f",
)
# What the output must not carry raw, once decoded: C0 but newline, DEL, C1,
# line and paragraph separators, bidi controls.
FORBIDDEN = {
    *(chr(code) for code in range(0x20) if code != 0x0A),
    *(chr(code) for code in range(0x7F, 0xA0)),
    *"\u2028\u2029\u202e\u2066\u200f",
}


def environment(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


class Command:
    """``python -m pynba ARGS --port 0``, its output kept as bytes, as a terminal gets them."""

    def __init__(self, *args, encoding="utf-8", prelude=None):
        command = ["-m", "pynba"] if prelude is None else ["-c", prelude]
        self.process = subprocess.Popen(
            [sys.executable, *command, *args, "--port", "0"],
            env=environment(PYTHONIOENCODING=encoding),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        first = self.process.stderr.readline().decode()
        match = re.search(r"UDP 127\.0\.0\.1:(\d+)", first)
        if not match:
            self.process.kill()
            _, err = self.process.communicate()
            pytest.fail(first + err.decode(errors="replace"))
        self.address = ("127.0.0.1", int(match.group(1)))

    def finish(self, timeout=60):
        out, err = self.process.communicate(timeout=timeout)
        return self.process.returncode, out, err.decode(errors="replace")

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


@pytest.fixture
def command():
    started = []

    def start(*args, **options):
        started.append(Command(*args, **options))
        return started[-1]

    yield start
    for process in started:
        process.kill()


def send_hostile(address):
    """A request whose every string carries HOSTILE, sent by pynba's own Reporter."""
    with Reporter(address, raise_on_fail=True) as reporter:
        reporter.report(
            hostname="web" + HOSTILE,
            server_name="shop" + HOSTILE,
            script_name="/x" + HOSTILE,
            schema="https" + HOSTILE,
            request_time=0.25,
            status=200,
            tags={"app" + HOSTILE: "shop" + HOSTILE},
            timers=[({"group" + HOSTILE: "db" + HOSTILE}, 0.125, 3, 0.0, 0.0)],
        )


def assert_nothing_raw(out, encoding="utf-8"):
    """``out``, decoded strictly, carries none of the FORBIDDEN characters."""
    text = out.decode(encoding)
    assert not FORBIDDEN.intersection(text), text
    return text


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1", "ascii"])
def test_listen_escapes_control_characters(command, encoding):
    listener = command("listen", "--count", "1", encoding=encoding)
    send_hostile(listener.address)
    code, out, err = listener.finish()
    assert code == 0, err
    assert "Traceback" not in err
    text = assert_nothing_raw(out, encoding)
    assert ": accepted" in text.splitlines()[0]
    for field in ("hostname", "server_name", "script_name", "schema"):
        assert re.search(rf"^  {field} +'\S+{re.escape(ESCAPED[0])}'$", text, re.M), field
    tags = f"app{ESCAPED[0]}=shop{ESCAPED[0]}"
    assert f"  tags             {tags}" in text
    assert f"    group{ESCAPED[0]}=db{ESCAPED[0]}: 3 hit(s)" in text


def test_listen_json_escapes_control_characters_losslessly(command):
    listener = command("listen", "--json", "--count", "1")
    send_hostile(listener.address)
    code, out, err = listener.finish()
    assert code == 0, err
    (line,) = assert_nothing_raw(out).splitlines()
    assert ESCAPED[1] in line
    request = json.loads(line)["request"]
    assert request["script_name"] == "/x" + HOSTILE
    assert request["tags"] == [["app" + HOSTILE, "shop" + HOSTILE]]
    assert request["timers"][0]["tags"] == [["group" + HOSTILE, "db" + HOSTILE]]


def test_top_escapes_control_characters(command):
    top = command("top", "--count", "1", encoding="latin-1")
    send_hostile(top.address)
    code, out, err = top.finish()
    assert code == 0, err
    text = assert_nothing_raw(out, "latin-1")
    (row,) = [line for line in text.splitlines() if line.startswith("/x")]
    # cut at the column's width, its "…" escaped as Latin-1 has none
    assert row.startswith(r"/x\x1b[2J\x07\r\x7f\x85\x9b\u2026 ")
    assert f"group{ESCAPED[0]}=db{ESCAPED[0]}"[:47] in text


def test_one_escaping_rule_for_text_and_json():
    assert printable("/users/{id} café 日本 😀") == "/users/{id} café 日本 😀"
    assert printable("a\\b") == "a\\\\b"  # so that an escape shown is never the sender's text
    assert printable(HOSTILE) == ESCAPED[0]
    assert printable("\x00\t\n\ud800\U000e0001\u00a0") == "\\x00\\t\\n\\ud800\\U000e0001\\xa0"
    line = json_line({"name": "a\\b" + HOSTILE + "\x00\ud800\U000e0001 é"})
    assert line == '{"name": "a\\\\b' + ESCAPED[1] + '\\u0000\\ud800\\udb40\\udc01 é"}'
    assert json.loads(line) == {"name": "a\\b" + HOSTILE + "\x00\ud800\U000e0001 é"}
    request = PinbaRequest(
        script_name=HOSTILE, tag_name=[0], tag_value=[0], dictionary=[HOSTILE],
        timer_hit_count=[1], timer_value=[0.5], timer_tag_count=[1], timer_tag_name=[0],
        timer_tag_value=[0],
    )  # fmt: skip
    shown = describe(Received(b"x", request=request))
    assert ESCAPED[0] in shown and not any(not c.isprintable() for c in shown.replace("\n", ""))
    report = Report()
    report.add_request(request)
    rendered = report.render()
    assert f"{ESCAPED[0]}={ESCAPED[0]}"[:47] + "…" in rendered
    assert not any(not c.isprintable() for c in rendered.replace("\n", ""))
