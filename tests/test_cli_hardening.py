"""``pynba listen`` and ``pynba top`` facing hostile datagrams: control characters,
floods of distinct names, and LZ4 frames they cannot read."""

import json
import os
import re
import socket
import struct
import subprocess
import sys
from pathlib import Path

import lz4.block
import pytest

from pinba_pb2 import Request
from pynba import Reporter
from pynba.cli.display import describe, json_line, printable
from pynba.cli.listener import Received, examine
from pynba.cli.top import Report
from pynba.wire.decode import PinbaRequest

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


# -- a bounded number of rows in pynba top -------------------------------------------


def named(name, seconds=0.25, count=1, timers=()):
    return PinbaRequest(
        script_name=name,
        request_time=seconds,
        request_count=count,
        ru_utime=0.01,
        status=200,
        timer_hit_count=[1] * len(timers),
        timer_value=[0.5] * len(timers),
        timer_tag_count=[1] * len(timers),
        timer_tag_name=[0] * len(timers),
        timer_tag_value=list(range(1, len(timers) + 1)),
        dictionary=["op", *timers],
    )


def test_report_keeps_at_most_max_rows_and_folds_the_rest():
    report = Report(max_rows=100)
    for i in range(5000):
        report.add_request(named(f"/page/{i}", timers=(f"t{i}",)))
    for i in range(50):  # names that have a row keep it
        report.add_request(named(f"/page/{i}", seconds=0.5))
    assert len(report.scripts.rows) == 100 and len(report.timers.rows) == 100
    assert report.scripts.rows["/page/7"].requests == 2
    assert "/page/100" not in report.scripts.rows
    other = report.scripts.other
    assert other.requests == 4900
    assert report.requests == 5050
    assert sum(s.requests for s in report.scripts.rows.values()) + other.requests == 5050
    assert math_close(other.time_total, 4900 * 0.25)
    assert math_close(report.timers.other.total, 4900 * 0.5) and report.timers.other.hits == 4900
    assert abs(report.scripts.folded - 4900) <= 0.02 * 4900
    assert abs(report.timers.folded - 4900) <= 0.02 * 4900
    rendered = report.render(now=report.started + 10)
    lines = rendered.splitlines()
    assert lines[0].startswith(
        f"5050 requests in 10.0 s from 100 scripts + ~{report.scripts.folded}"
    )
    (row,) = [line for line in lines if line.startswith("(other: ~") and "names)" in line]
    assert row.startswith(f"(other: ~{report.scripts.folded} names)")
    assert row.split()[3:5] == ["4900", "490.0"]
    (row,) = [line for line in lines if line.startswith("(other: ~") and "tag sets)" in line]
    assert row.split()[4:6] == ["4900", "2450000.00"]
    assert len(lines) < 2 * 100 + 20


def test_folded_names_are_counted_once_each():
    report = Report(max_rows=1)
    for _ in range(3):
        for name in ("/a", "/b", "/c", "/d"):
            report.add_request(named(name))
    assert list(report.scripts.rows) == ["/a"]
    assert report.scripts.other.requests == 9 and report.scripts.folded == 3


def test_a_flood_of_names_stays_at_the_default_cap():
    report = Report()
    assert report.scripts.limit == 10_000
    for i in range(60_000):
        report.add_request(named(f"/n/{i}"))
    assert len(report.scripts.rows) == 10_000
    assert report.scripts.other.requests == 50_000 and report.requests == 60_000
    assert abs(report.scripts.folded - 50_000) <= 0.02 * 50_000
    assert len(report.render().splitlines()) < 10_020


def test_drop_reasons_are_bounded_too():
    report = Report(max_rows=10)
    for index in range(1, 101):  # each past the one-word dictionary
        message = Request(
            hostname="h", server_name="s", script_name="/", request_count=1, document_size=0,
            memory_peak=0, request_time=0.1, ru_utime=0, ru_stime=0, tag_name=[index],
            tag_value=[index], dictionary=["a"],
        )  # fmt: skip
        report.add(examine(message.SerializeToString()))
    assert report.dropped == 100
    assert len(report.drop_reasons) <= 11 and sum(report.drop_reasons.values()) >= 100


def test_max_rows_must_be_positive():
    with pytest.raises(ValueError, match="max_rows"):
        Report(max_rows=0)


def math_close(a, b):
    return abs(a - b) <= 1e-6 * max(abs(a), abs(b), 1)


def test_top_max_rows_option(command):
    top = command("top", "--count", "12", "--max-rows", "3")
    with Reporter(top.address, raise_on_fail=True) as reporter:
        for i in range(10):
            reporter.report(hostname="h", server_name="s", script_name=f"/s{i}", request_time=0.1)
        reporter.report(hostname="h", server_name="s", script_name="/s0", request_time=0.1)
        reporter.report(hostname="h", server_name="s", script_name="/s9", request_time=0.1)
    code, out, err = top.finish()
    assert code == 0, err
    lines = out.decode().splitlines()
    assert lines[0].startswith("12 requests in ") and "from 3 scripts + ~7 more" in lines[0]
    rows = [line for line in lines if line.startswith("/s")]
    assert sorted(row.split()[0] for row in rows) == ["/s0", "/s1", "/s2"]
    (other,) = [line for line in lines if line.startswith("(other")]
    assert other.startswith("(other: ~7 names)") and other.split()[3] == "8"


def test_top_rejects_a_bad_max_rows():
    done = subprocess.run(
        [sys.executable, "-m", "pynba", "top", "--max-rows", "0"],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "argument --max-rows: must be > 0, got 0" in done.stderr


# -- LZ4 frames without the lz4 package ---------------------------------------------

WITHOUT_LZ4 = (
    "import sys\n"
    "sys.modules['lz4'] = None  # as if the optional extra were not installed\n"
    "sys.modules['lz4.block'] = None\n"
    "from pynba.wire import framing\n"
    "assert not framing.LZ4_AVAILABLE\n"
    "from pynba.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def compressed(payload):
    return struct.pack(">HH", 0x1001, len(payload)) + lz4.block.compress(payload, store_size=False)


def valid_payload(script_name="/lz4"):
    return Request(
        hostname="h", server_name="s", script_name=script_name, request_count=1,
        document_size=0, memory_peak=0, request_time=0.1, ru_utime=0, ru_stime=0, status=200,
    ).SerializeToString()  # fmt: skip


def send_raw(address, datagram):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(datagram, address)


UNREADABLE = "compressed (LZ4): cannot read it without the lz4 package (pip install lz4)"


def test_listen_without_lz4_says_it_cannot_read_compressed_datagrams(command):
    listener = command("listen", "--count", "2", prelude=WITHOUT_LZ4)
    send_raw(listener.address, compressed(valid_payload()))
    send_raw(listener.address, bytes((0x10, 0x03, 0, 4)) + b"abcd")  # unknown flag: dropped
    code, out, err = listener.finish()
    assert code == 0, err
    first, second = out.decode().strip().split("\n\n")
    head = first.splitlines()[0]
    assert head.endswith(f", v1+lz4: {UNREADABLE}"), head
    assert "DROPPED" not in first and "drop:" not in first
    assert "DROPPED by a Pinba server" in second.splitlines()[0]


def test_listen_json_without_lz4(command):
    listener = command("listen", "--json", "--count", "1", prelude=WITHOUT_LZ4)
    send_raw(listener.address, compressed(valid_payload()))
    code, out, err = listener.finish()
    assert code == 0, err
    record = json.loads(out)
    assert record["unreadable"] == UNREADABLE
    assert record["framing"] == "v1+lz4"
    assert record["accepted"] is False and record["drop_reasons"] == []


def test_top_without_lz4_counts_compressed_datagrams_apart(command):
    top = command("top", "--count", "3", prelude=WITHOUT_LZ4)
    send_raw(top.address, compressed(valid_payload()))
    send_raw(top.address, compressed(valid_payload()))
    send_raw(top.address, b"\x0a\x01h")
    code, out, err = top.finish()
    assert code == 0, err
    text = out.decode()
    assert "3 datagrams, 1 a Pinba server would drop, 2 not read" in text.splitlines()[0]
    assert f"  2 x {UNREADABLE}" in text


def test_with_lz4_compressed_datagrams_are_read(command):
    listener = command("listen", "--json", "--count", "1")
    send_raw(listener.address, compressed(valid_payload()))
    code, out, err = listener.finish()
    record = json.loads(out)
    assert record["accepted"] is True and record["unreadable"] is None
    assert record["request"]["script_name"] == "/lz4"


def test_unreadable_datagram_as_examined():
    received = examine(compressed(valid_payload()))
    assert received.unreadable is None and received.accepted
    bad = examine(bytes((0x10, 0x01, 0, 4)) + b"\xff\xff\xff")
    assert bad.unreadable is None and bad.drop_reasons  # a payload that does not decompress


CHECK_WITHOUT_LZ4 = (
    "import sys\n"
    "sys.modules['lz4'] = None\n"
    "sys.modules['lz4.block'] = None\n"
    "from pynba.wire import decode, validate\n"
    "datagram = bytes.fromhex(sys.argv[1])\n"
    "try:\n"
    "    decode.unframe(datagram)\n"
    "except decode.UnreadableError as error:\n"
    "    print('unreadable', error.framing)\n"
    "except decode.DecodeError as error:\n"
    "    print('malformed', error)\n"
    "print([(problem.reason, problem.drops) for problem in validate.check(datagram)])\n"
)


def check_without_lz4(datagram):
    done = subprocess.run(
        [sys.executable, "-c", CHECK_WITHOUT_LZ4, datagram.hex()],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_validate_without_lz4_cannot_check_compressed_datagrams():
    unread, problems = check_without_lz4(compressed(valid_payload()))
    assert unread == "unreadable v1+lz4"
    assert problems == repr([(f"cannot check the request: {UNREADABLE}", False)])
    # A frame pinba2 drops whatever is installed is still dropped.
    malformed, problems = check_without_lz4(bytes((0x10, 0x03, 0, 4)) + b"abcd")
    assert malformed == "malformed v1 datagram with unknown flags 0x003"
    assert ", True)]" in problems
