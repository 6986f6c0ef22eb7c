"""Hostile uses of the per-request fast paths: what an application may do, and pynba survive."""

from packets import receive
from pynba import PynbaMiddleware


def call(middleware, path="/p"):
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "SERVER_NAME": "example",
        "wsgi.url_scheme": "http",
    }
    body = middleware(environ, lambda status, headers, exc_info=None: None)
    chunks = list(body)
    body.close()
    return chunks


def hello(environ, start_response):
    start_response("200 OK", [])
    return [b"hello"]


class HostileStr(str):
    """A str whose own methods must never be called by pynba."""

    def __hash__(self):
        raise AssertionError("__hash__ called")

    def __eq__(self, other):
        raise AssertionError("__eq__ called")

    def __str__(self):
        raise AssertionError("__str__ called")


# -- the WSGI namer --------------------------------------------------------------


def test_a_middleware_subclass_that_overrides_default_script_name_names_its_requests(
    udp_listener,
):
    class Named(PynbaMiddleware):
        def default_script_name(self, environ):
            return "/named" + environ["PATH_INFO"]

    class Plain(PynbaMiddleware):
        pass

    call(Named(hello, udp_listener.address), "/p")
    assert receive(udp_listener).script_name == "/named/p"
    call(Plain(hello, udp_listener.address), "/q")  # one that does not: the path, as ever
    assert receive(udp_listener).script_name == "/q"
