"""Command line: ``pynba sample`` (also ``python -m pynba sample``).

Sends one sample request through the real encoder and reporter to a UDP
listener on a free loopback port, then prints the datagram as a Pinba server
would read it.
"""

import argparse
import socket
import sys

from . import encoder
from .reporter import Reporter

SAMPLE = {
    "hostname": "web-1",
    "server_name": "shop.example.com",
    "script_name": "/users/{id}",
    "document_size": 5120,
    "memory_peak": 24 << 20,
    "request_time": 0.0421,
    "ru_utime": 0.0183,
    "ru_stime": 0.0021,
    "status": 200,
    "schema": "https",
    "tags": {"app": "shop", "country": "fr"},
    "timers": [
        ({"group": "db", "op": "select"}, 0.0112, 1, 0.0031, 0.0004),
        ({"group": "cache", "op": "get"}, 0.0007, 1, 0.0001, 0.0),
        ({"op": "select", "group": "db"}, 0.0094, 1, 0.0022, 0.0003),
    ],
}


def describe(datagram: bytes) -> str:
    """A readable account of a datagram, decoded with Google protobuf."""
    try:
        from .pinba_pb2 import Request
    except ImportError:
        return f"{len(datagram)} bytes: {datagram.hex()}\n(install pynba[tools] to have it decoded)"
    message = Request()
    message.ParseFromString(datagram)
    words = list(message.dictionary)
    lines = [f"{len(datagram)} bytes, decoded:"]
    for field in (
        "hostname",
        "server_name",
        "script_name",
        "schema",
        "status",
        "request_count",
        "document_size",
        "memory_peak",
        "memory_footprint",
    ):
        lines.append(f"  {field:<16} {getattr(message, field)!r}")
    for field in ("request_time", "ru_utime", "ru_stime"):
        lines.append(f"  {field:<16} {getattr(message, field):.6f} s")
    request_tags = ", ".join(
        f"{words[n]}={words[v]}" for n, v in zip(message.tag_name, message.tag_value, strict=False)
    )
    lines.append(f"  tags             {request_tags}")
    offset = 0
    for i, hits in enumerate(message.timer_hit_count):
        count = message.timer_tag_count[i]
        names = message.timer_tag_name[offset : offset + count]
        values = message.timer_tag_value[offset : offset + count]
        offset += count
        tags = ", ".join(f"{words[n]}={words[v]}" for n, v in zip(names, values, strict=False))
        lines.append(f"  timer            {tags}: {hits} hit(s), {message.timer_value[i]:.6f} s")
    return "\n".join(lines)


def sample(args: argparse.Namespace) -> int:
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(5)
    address = listener.getsockname()
    with Reporter(address, raise_on_fail=True) as reporter:
        reporter.report(**SAMPLE)
    datagram, _ = listener.recvfrom(65535)
    listener.close()
    print(f"pynba {encoder.IMPLEMENTATION} encoder sent to {address[0]}:{address[1]}")
    print(describe(datagram))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="pynba", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("sample", help="send a sample request to a local listener and show it")
    args = parser.parse_args(argv)
    return {"sample": sample}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
