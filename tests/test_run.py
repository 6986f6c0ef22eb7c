"""``pynba run``: real commands run by a real ``pynba run`` process, reported to a real listener."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from packets import Packet
from pynba.cli.run import plan, run_command

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def environment(**extra):
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("PINBA_SERVER", None)
    return env


def pynba_run(listener, *command, options=(), returncode=0, env=None, **popen):
    """Run ``pynba run OPTIONS -- COMMAND`` to ``listener``; the run, and its packets decoded."""
    argv = [PYTHON, "-m", "pynba", "run", "--server", "{}:{}".format(*listener.address), *options]
    done = subprocess.run(
        [*argv, "--", *command],
        env=env or environment(),
        capture_output=True,
        text=True,
        timeout=60,
        **popen,
    )
    assert done.returncode == returncode, done.stderr
    return done, [Packet(datagram) for datagram in listener.pending(timeout=0.3)]


@pytest.fixture
def script(tmp_path):
    """``script(code, name="job.py")``: the path of a new script in a temporary directory."""

    def write(code, name="job.py"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(code))
        return path

    return write


def test_a_successful_script_is_one_packet_with_status_200(udp_listener, script):
    path = script(
        """
        import sys
        print("out", sys.argv[1:])
        print("err", file=sys.stderr)
        """
    )
    done, packets = pynba_run(udp_listener, PYTHON, str(path), "a", "--b")
    assert done.stdout == "out ['a', '--b']\n"
    assert done.stderr == "err\n"
    [packet] = packets
    assert packet.script_name == str(path)
    assert packet.status == 200
    assert packet.tags == []
    assert packet.request_time > 0
    assert packet.ru_utime + packet.ru_stime > 0
    assert packet.memory_peak > 0
    assert packet.request_count == 1


def test_the_script_runs_as_python_runs_it(udp_listener, script):
    path = script(
        """
        import pickle, sys

        class Job:
            pass

        def annotated(x: not_defined_anywhere):  # no "from __future__ import annotations" here
            pass
        """
    )
    probe = script(
        """
        import os, pickle, sys
        print(sys.argv, __file__, __name__, sys.path[0] == os.path.dirname(__file__))
        print(type(__builtins__).__name__, __spec__, __loader__.name)

        class Job:
            pass

        print(pickle.loads(pickle.dumps(Job())).__class__ is Job)
        """,
        "probe.py",
    )
    cwd = probe.parent
    done, [packet] = pynba_run(udp_listener, PYTHON, "probe.py", "a", cwd=cwd)
    plain = subprocess.run(
        [PYTHON, "probe.py", "a"], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert done.stdout == plain.stdout
    assert packet.script_name == "probe.py"
    # The script is compiled with its own __future__ imports, not the bootstrap's.
    done, _ = pynba_run(udp_listener, PYTHON, str(path), returncode=1)
    assert "NameError: name 'not_defined_anywhere' is not defined" in done.stderr


def test_a_failing_exit_code_is_status_500_and_a_tag(udp_listener, script):
    path = script("import sys; sys.exit(3)")
    _, [packet] = pynba_run(udp_listener, PYTHON, str(path), returncode=3)
    assert packet.status == 500
    assert packet.tags == [("exit_code", "3")]


def test_an_uncaught_exception_prints_what_python_prints(udp_listener, script):
    path = script(
        """
        def fail():
            raise ValueError("boom")

        fail()
        """
    )
    done, [packet] = pynba_run(udp_listener, PYTHON, str(path), returncode=1)
    plain = subprocess.run([PYTHON, str(path)], capture_output=True, text=True, timeout=60)
    assert done.stderr == plain.stderr
    assert "pynba" not in done.stderr and "runpy" not in done.stderr
    assert packet.tags == [("exit_code", "1")]


def test_a_script_killed_by_a_signal_is_reported_with_its_name(udp_listener, script):
    path = script(
        """
        import os, signal
        from pynba import pynba
        pynba.timer(step="before").add(0.5)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    _, [packet] = pynba_run(udp_listener, PYTHON, str(path), returncode=128 + signal.SIGKILL)
    assert packet.status == 500
    assert packet.tags == [("signal", "SIGKILL")]
    assert packet.timers == []  # the script had no time to hand them over


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_are_forwarded_to_the_script(udp_listener, script, number):
    path = script(
        """
        import sys, time
        print("ready", flush=True)
        time.sleep(60)
        """
    )
    argv = [PYTHON, "-m", "pynba", "run", "--server", "{}:{}".format(*udp_listener.address)]
    with subprocess.Popen(
        [*argv, "--", PYTHON, str(path)],
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # no terminal: Ctrl-C would not reach the script by itself
    ) as process:
        assert process.stdout.readline() == "ready\n"
        process.send_signal(number)
        process.wait(timeout=60)
    assert process.returncode == 128 + number
    [datagram] = udp_listener.pending(timeout=0.3)
    packet = Packet(datagram)
    assert packet.tags == [("signal", signal.Signals(number).name)]


def test_a_module_is_named_after_itself(udp_listener, script):
    script("", "tasks/__init__.py")
    script(
        """
        import sys
        from pynba import pynba
        pynba.timer(group="tasks", op="nightly").add(0.25)
        print(__name__, sys.argv[1:])
        """,
        "tasks/nightly.py",
    )
    cwd = script("", "placeholder").parent
    done, [packet] = pynba_run(udp_listener, PYTHON, "-m", "tasks.nightly", "x", cwd=cwd)
    assert done.stdout == "__main__ ['x']\n"
    assert packet.script_name == "tasks.nightly"
    assert packet.status == 200
    assert packet.timer(group="tasks", op="nightly").value == pytest.approx(0.25)


def test_timers_in_the_script_go_in_the_run_s_packet(udp_listener, script):
    path = script(
        """
        from pynba import pynba

        @pynba.timer(group="db", op="select")
        def select():
            return 1

        for _ in range(3):
            select()
        pynba.timer(group="cache", op="get").add(0.125, 2)
        pynba.set_tag("batch", "nightly")
        """
    )
    _, [packet] = pynba_run(udp_listener, PYTHON, "-u", str(path), options=["--tag", "env=prod"])
    assert packet.timer(group="db", op="select").hit_count == 3
    cache = packet.timer(group="cache", op="get")
    assert (cache.value, cache.hit_count) == (0.125, 2)
    assert sorted(packet.tags) == [("batch", "nightly"), ("env", "prod")]


def test_the_script_may_name_itself(udp_listener, script):
    path = script("from pynba import pynba; pynba.script_name = 'renamed'")
    _, [packet] = pynba_run(udp_listener, PYTHON, str(path))
    assert packet.script_name == "renamed"


def test_script_name_and_tags_from_the_options(udp_listener, script):
    path = script("pass")
    options = ["--script-name", "nightly-report", "--tag", "team=billing", "--tag", "env=prod"]
    _, [packet] = pynba_run(udp_listener, PYTHON, str(path), options=options)
    assert packet.script_name == "nightly-report"
    assert sorted(packet.tags) == [("env", "prod"), ("team", "billing")]


def test_the_cpu_of_children_the_script_waits_for_is_counted(udp_listener, script):
    path = script(
        """
        import subprocess, sys
        child = "import resource, time\\n" \\
            "end = time.process_time() + 0.3\\n" \\
            "while time.process_time() < end: pass\\n" \\
            "usage = resource.getrusage(resource.RUSAGE_SELF)\\n" \\
            "print(usage.ru_utime + usage.ru_stime)"
        subprocess.run([sys.executable, "-c", child], check=True)
        """
    )
    done, [packet] = pynba_run(udp_listener, PYTHON, str(path))
    child_cpu = float(done.stdout)
    assert packet.ru_utime + packet.ru_stime >= child_cpu


def test_flush_every_sends_packets_while_the_script_runs_then_the_last(udp_listener, script):
    path = script(
        """
        import time
        from pynba import pynba
        for _ in range(8):
            with pynba.timer(step="tick"):
                time.sleep(0.1)
        """
    )
    _, packets = pynba_run(udp_listener, PYTHON, str(path), options=["--flush-every", "0.15"])
    *interim, last = packets
    assert interim, "no packet before the end"
    assert [packet.status for packet in interim] == [0] * len(interim)
    assert last.status == 200
    # Every run of the timer is counted once, in one packet or another.
    ticks = [timer for packet in packets for timer in packet.timers]
    assert sum(timer.hit_count for timer in ticks) == 8
    assert any(packet.timers for packet in interim)


@pytest.mark.parametrize(
    ("flush_every", "error"),
    [(0, ValueError), (-1.0, ValueError), (float("nan"), ValueError), ("1", TypeError)],
)
def test_run_command_refuses_a_flush_interval_that_is_not_positive(
    udp_listener, flush_every, error
):
    # 0 or less flushed in a busy loop: thousands of packets a second.
    with pytest.raises(error, match="flush_every"):
        run_command(
            [PYTHON, "-c", "pass"],
            server="{}:{}".format(*udp_listener.address),
            flush_every=flush_every,
        )
    assert udp_listener.pending(timeout=0.1) == []


def test_flush_every_for_a_command_that_is_not_python(udp_listener):
    _, packets = pynba_run(udp_listener, "sleep", "0.5", options=["--flush-every", "0.1"])
    *interim, last = packets
    assert interim
    assert last.status == 200
    assert all(packet.script_name == "sleep" for packet in packets)


def test_a_command_that_is_not_python_is_measured_from_outside(udp_listener):
    _, [packet] = pynba_run(udp_listener, "sh", "-c", "exit 4", returncode=4)
    assert packet.script_name == "sh"
    assert packet.status == 500
    assert packet.tags == [("exit_code", "4")]
    assert packet.timers == []


def test_python_c_is_run_as_it_is(udp_listener):
    done, [packet] = pynba_run(udp_listener, PYTHON, "-c", "print('hi')")
    assert done.stdout == "hi\n"
    assert packet.script_name == PYTHON


def test_a_command_not_found_exits_127_and_sends_nothing(udp_listener):
    done, packets = pynba_run(udp_listener, "no-such-command-pynba", returncode=127)
    assert "no-such-command-pynba" in done.stderr
    assert packets == []


def test_pynba_s_own_failure_leaves_the_exit_code_alone(udp_listener, script):
    path = script("import sys; print('done'); sys.exit(5)")
    # A bad option in the environment: the command runs, unmonitored, all the same.
    env = environment(PINBA_TIMER_RUSAGE="perhaps", PYNBA_STRICT="0")
    done, packets = pynba_run(udp_listener, PYTHON, str(path), returncode=5, env=env)
    assert done.stdout == "done\n"
    assert packets == []


def test_without_a_server_the_command_runs_unmonitored(script):
    path = script("print('done')")
    done = subprocess.run(
        [PYTHON, "-m", "pynba", "run", "--", PYTHON, str(path)],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (0, "done\n")


@pytest.mark.parametrize(
    ("argv", "kind", "target", "options", "arguments"),
    [
        (["python", "job.py", "-x"], "path", "job.py", ["python"], ["-x"]),
        (["python3", "-u", "-W", "ignore", "job.py"], "path", "job.py", None, []),
        (["python3.11", "-X", "dev", "--", "job.py", "a"], "path", "job.py", None, ["a"]),
        (["python", "-m", "pkg.mod", "a"], "module", "pkg.mod", ["python"], ["a"]),
        (["python", "-um", "pkg.mod"], "module", "pkg.mod", ["python", "-u"], []),
        (["python", "-Bmpkg.mod"], "module", "pkg.mod", ["python", "-B"], []),
        (["python", "-I", "-m", "pkg"], "module", "pkg", ["python", "-I"], []),
    ],
)
def test_which_python_commands_run_a_script(argv, kind, target, options, arguments):
    command = plan(argv)
    interpreter, found_kind, found_target, found_arguments = command.python
    assert (found_kind, found_target, list(found_arguments)) == (kind, target, arguments)
    assert command.script_name == target
    if options is not None:
        assert list(interpreter) == options
    else:
        assert "job.py" not in interpreter and "--" not in interpreter


@pytest.mark.parametrize(
    "argv",
    [
        ["python", "-c", "pass"],
        ["python"],
        ["python", "-"],
        ["python", "-i", "x.py"],
        ["python", "--version"],
        ["sh", "job.py"],
        ["python", "-m"],
    ],
)
def test_which_commands_are_run_as_they_are(argv):
    command = plan(argv)
    assert command.python is None
    assert command.script_name == argv[0]


def test_without_pynba_in_its_interpreter_the_script_runs_unmonitored(tmp_path, script):
    from pynba._run_child import BOOTSTRAP

    path = script("import sys; print('ran', sys.argv); sys.exit(4)")
    read_end, write_end = os.pipe()
    try:
        # -I -S: no PYTHONPATH, no site-packages (an installed pynba); HOME holds none either
        done = subprocess.run(
            [
                PYTHON,
                "-I",
                "-S",
                "-c",
                BOOTSTRAP,
                str(tmp_path),
                str(write_end),
                "0",
                "job",
                "path",
                str(path),
            ]
            + ["a"],
            pass_fds=(write_end,),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        assert pipe.read() == b""  # nothing sent, and the pipe was closed
    assert (done.returncode, done.stdout, done.stderr) == (4, f"ran ['{path}', 'a']\n", "")


def test_a_script_that_closes_the_pipe_keeps_its_files(udp_listener, script, tmp_path):
    path = script(
        """
        import os, sys
        from pynba import pynba
        pynba.timer(step="lost").add(0.5)
        os.closerange(3, 1024)  # as a daemon does: the pipe to pynba run goes too
        out = open(sys.argv[1], "w")  # the lowest free number: the pipe's
        out.write("mine")
        out.flush()
        """
    )
    written = tmp_path / "out.txt"
    _, [packet] = pynba_run(udp_listener, PYTHON, str(path), str(written))
    assert written.read_text() == "mine"
    assert packet.status == 200
    assert packet.timers == []


def test_a_forked_child_that_ends_the_script_does_not_report_it_again(udp_listener, script):
    path = script(
        """
        import os
        from pynba import pynba
        pynba.timer(step="before_fork").add(0.5)
        pid = os.fork()
        if pid == 0:
            raise SystemExit(0)  # the child ends the script too, its job a copy of the parent's
        os.waitpid(pid, 0)
        """
    )
    _, [packet] = pynba_run(udp_listener, PYTHON, str(path))
    timer = packet.timer(step="before_fork")
    assert (timer.value, timer.hit_count) == (0.5, 1)


@pytest.mark.skipif(not os.path.exists("/proc/self/cmdline"), reason="reads /proc")
def test_a_forked_child_does_not_hold_the_pipe_open(udp_listener, script, tmp_path):
    # A daemon's child outlives the script: pynba run would wait for its end.
    path = script(
        """
        import os, sys
        fd = int(open("/proc/self/cmdline", "rb").read().split(b"\\0")[4])  # python -c BOOT HOME FD
        os.fstat(fd)  # the pipe, open in the script
        if os.fork() == 0:
            try:
                os.fstat(fd)
                state = "open"
            except OSError:
                state = "closed"
            with open(sys.argv[1], "w") as out:
                out.write(state)
            os._exit(0)
        os.wait()
        """
    )
    state = tmp_path / "state.txt"
    pynba_run(udp_listener, PYTHON, str(path), str(state))
    assert state.read_text() == "closed"


def test_ctrl_c_on_a_terminal_reaches_the_script_once(udp_listener, script):
    fcntl = pytest.importorskip("fcntl")
    termios = pytest.importorskip("termios")
    path = script(
        """
        import signal, time
        interrupts = []
        signal.signal(signal.SIGINT, lambda number, frame: interrupts.append(number))
        print("ready", flush=True)
        deadline = time.monotonic() + 30
        while not interrupts and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)  # a second SIGINT, forwarded by pynba run, would come meanwhile
        print("interrupts", len(interrupts), flush=True)
        """
    )
    master, terminal = os.openpty()
    argv = [PYTHON, "-m", "pynba", "run", "--server", "{}:{}".format(*udp_listener.address)]
    with subprocess.Popen(
        [*argv, "--", PYTHON, str(path)],
        env=environment(),
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        start_new_session=True,
        # The terminal becomes the session's: Ctrl-C goes to its foreground process group.
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    ) as process:
        os.close(terminal)
        output = b""
        while b"ready" not in output:
            output += os.read(master, 1024)
        os.write(master, b"\x03")  # Ctrl-C
        while True:
            try:
                chunk = os.read(master, 1024)
            except OSError:  # EIO: every process on the terminal has closed it
                break
            if not chunk:
                break
            output += chunk
        process.wait(timeout=60)
    os.close(master)
    assert b"interrupts 1" in output, output
    assert process.returncode == 0
    [datagram] = udp_listener.pending(timeout=0.3)
    assert Packet(datagram).status == 200
