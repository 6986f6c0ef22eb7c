"""Waiting for a reporter's lookup thread, which finds host names off the request path."""

import time

import pytest


def wait_until(condition, timeout=10.0, what="the condition"):
    """Poll ``condition()`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def wait_for_addresses(reporter, timeout=10.0):
    """Start ``reporter``'s lookups without sending, and wait until every server has a socket."""
    if reporter._refresher is not None:
        reporter._refresher.start()
    for server in reporter._servers:
        if server.is_literal:
            continue
        wait_until(
            lambda s=server: s.route is not None, timeout, f"an address for {server.address}"
        )


def route_of(reporter, index=0):
    """The socket address the reporter's ``index``-th server sends to now, or None."""
    route = reporter._servers[index].route
    return None if route is None else route.sockaddr
