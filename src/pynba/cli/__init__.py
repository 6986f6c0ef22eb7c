"""pynba's command line: see what your application sends to Pinba.

    pynba listen   print every datagram received, decoded, and whether Pinba would drop it
    pynba top      the same, aggregated into a live report per script and per timer
    pynba demo     run a monitored demo application under load and print its report
    pynba sample   send one sample request to a local listener and show it
    pynba run      run a command or Python script as one monitored request (see cli/run.py)

Also ``python -m pynba``; ``pynba --version`` says whether the compiled
modules or pure Python run. Exit status: 0 on success (also when stopped with
Ctrl-C), 1 on an error, 2 on a usage error, 130 when Ctrl-C interrupts the demo;
``pynba run`` exits with its command's status.
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import time
from collections.abc import Callable

from .. import __version__, compiled_modules
from ..address import DEFAULT_PORT
from .display import describe, json_line
from .listener import Listener, PortInUseError
from .run import add_parser as add_run_parser
from .top import DEFAULT_MAX_ROWS, Report

__all__ = ["build_parser", "main", "version_line"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Bounds:
    """When a listening command stops: after ``count`` datagrams or ``duration`` seconds."""

    def __init__(self, count: int | None, duration: float | None) -> None:
        self.count = count
        self.deadline = None if duration is None else time.monotonic() + duration
        self.seen = 0

    def done(self) -> bool:
        if self.count is not None and self.seen >= self.count:
            return True
        return self.deadline is not None and time.monotonic() >= self.deadline

    def timeout(self, at_most: float | None = None) -> float | None:
        """How long the next receive may wait."""
        left = None if self.deadline is None else max(self.deadline - time.monotonic(), 0.0)
        if at_most is None:
            return left
        return at_most if left is None else min(left, at_most)


def _open_listener(args: argparse.Namespace) -> Listener:
    listener = Listener(args.host, args.port)
    print(
        f"pynba: listening for Pinba datagrams on UDP {listener.server} (Ctrl-C to stop)",
        file=sys.stderr,
        flush=True,
    )
    return listener


def listen(args: argparse.Namespace) -> int:
    bounds = _Bounds(args.count, args.duration)
    with _open_listener(args) as listener:
        while not bounds.done():
            received = listener.receive(bounds.timeout())
            if received is None:
                continue
            bounds.seen += 1
            if args.json:
                print(json_line(received.as_dict()), flush=True)
            else:
                print(describe(received, bounds.seen), end="\n\n", flush=True)
    return EXIT_OK


def top(args: argparse.Namespace) -> int:
    bounds = _Bounds(args.count, args.duration)
    report = Report(max_rows=args.max_rows)
    live = sys.stdout.isatty()

    def draw() -> None:
        width = shutil.get_terminal_size().columns
        sys.stdout.write("\x1b[H\x1b[2J" + report.render(width=width) + "\n")
        sys.stdout.flush()

    with _open_listener(args) as listener:
        next_draw = time.monotonic()
        try:
            while not bounds.done():
                if live and time.monotonic() >= next_draw:
                    draw()
                    next_draw = time.monotonic() + args.interval
                received = listener.receive(bounds.timeout(args.interval if live else 0.5))
                if received is not None:
                    bounds.seen += 1
                    report.add(received)
        finally:
            # Also after Ctrl-C: the report so far is what the person wanted.
            if live:
                draw()
            else:
                print(report.render(), flush=True)
    return EXIT_OK


def demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(requests=args.requests, duration=args.duration, port=args.port)


def sample(args: argparse.Namespace) -> int:
    from .sample import run_sample

    return run_sample()


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, got {port}")
    return port


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def _listening_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help=f"UDP port (default {DEFAULT_PORT}; pinba2's own default is 3002; 0: any free port)",
    )
    parser.add_argument("--count", type=_positive(int), metavar="N", help="stop after N datagrams")
    parser.add_argument(
        "--duration", type=_positive(float), metavar="SECONDS", help="stop after SECONDS"
    )


def version_line() -> str:
    """``pynba 0.6.0 (compiled: _encoder, ...)``, or ``(pure Python)`` when nothing is compiled."""
    compiled = compiled_modules()
    implementation = f"compiled: {', '.join(compiled)}" if compiled else "pure Python"
    return f"pynba {__version__} ({implementation})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pynba",
        description="See what your application sends to Pinba.",
        epilog="Exit status: 0 success or Ctrl-C, 1 error, 2 usage error, 130 demo interrupted.",
        # As written: the --version line stays one line however narrow the terminal.
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=version_line())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listen_parser = commands.add_parser(
        "listen", help="print every datagram received, decoded, flagging what Pinba would drop"
    )
    _listening_options(listen_parser)
    listen_parser.add_argument("--json", action="store_true", help="one JSON object per line")
    listen_parser.set_defaults(run=listen)

    top_parser = commands.add_parser("top", help="a live report per script and per timer tag set")
    _listening_options(top_parser)
    top_parser.add_argument(
        "--interval",
        type=_positive(float),
        default=1.0,
        metavar="SECONDS",
        help="refresh period on a terminal (default 1)",
    )
    top_parser.add_argument(
        "--max-rows",
        type=_positive(int),
        default=DEFAULT_MAX_ROWS,
        metavar="N",
        help=f"keep at most N scripts and N timer tag sets; the names past them are counted "
        f"together as (other) (default {DEFAULT_MAX_ROWS})",
    )
    top_parser.set_defaults(run=top)

    demo_parser = commands.add_parser(
        "demo", help="drive load at a monitored demo WSGI application and print the report"
    )
    demo_parser.add_argument(
        "--requests", type=_positive(int), default=300, metavar="N", help="requests (default 300)"
    )
    demo_parser.add_argument(
        "--duration",
        type=_positive(float),
        metavar="SECONDS",
        help="stop sending after SECONDS even if fewer requests were sent",
    )
    demo_parser.add_argument(
        "--port", type=_port, default=0, help="UDP port of the demo's listener (default: any free)"
    )
    demo_parser.set_defaults(run=demo)

    sample_parser = commands.add_parser(
        "sample", help="send one sample request to a local listener and show it"
    )
    sample_parser.set_defaults(run=sample)
    add_run_parser(commands)
    return parser


def _escape_what_stdout_cannot_encode() -> None:
    # A name in a script the output encoding lacks (ASCII, Latin-1) must not
    # stop a listener with UnicodeEncodeError: print it as \\xNN instead.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _escape_what_stdout_cannot_encode()
    try:
        return args.run(args)
    except PortInUseError as error:
        print(f"pynba: {error.strerror}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as error:
        if args.command in ("listen", "top"):
            print(f"pynba: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        else:
            print(f"pynba: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("pynba: stopped", file=sys.stderr)
        return EXIT_OK if args.command in ("listen", "top") else EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
