"""How the web examples run: ``[PINBA_SERVER] [--serve]`` on the command line.

Without ``--serve`` an example serves on a free port in a thread, requests
a few paths, prints each answer and exits; with it, it serves
http://127.0.0.1:8000/ until interrupted. The examples themselves only
build and instrument their application: ``make_app(address)``.
"""

import contextlib
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from wsgiref.simple_server import WSGIRequestHandler, make_server

HOST = "127.0.0.1"
PORT = 8000


def parse(argv):
    """The Pinba server's address (argument, ``PINBA_SERVER``, or the default) and ``--serve``."""
    args = [arg for arg in argv if arg != "--serve"]
    address = args[0] if args else os.environ.get("PINBA_SERVER", "127.0.0.1:30002")
    return address, "--serve" in argv


def request_all(port, paths):
    for path in paths:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}{path}") as page:
                print(page.status, path, page.read().decode().strip())
        except urllib.error.HTTPError as error:
            print(error.code, path)


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass  # no line per request


def run_wsgi(make_app, paths, argv):
    """Serve the WSGI application ``make_app(address)`` with wsgiref."""
    address, serve = parse(argv)
    app = make_app(address)
    with make_server(HOST, PORT if serve else 0, app, handler_class=QuietHandler) as server:
        if serve:
            with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C stops it, as it does uvicorn
                server.serve_forever()
            return
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        try:
            request_all(server.server_port, paths)
        finally:
            server.shutdown()
            thread.join()


def run_asgi(make_app, paths, argv):
    """Serve the ASGI application ``make_app(address)`` with uvicorn."""
    import uvicorn  # here: the WSGI examples run without it

    address, serve = parse(argv)
    app = make_app(address)
    if serve:
        uvicorn.run(app, host=HOST, port=PORT)
        return
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
        thread.start()
        while not server.started and thread.is_alive():
            time.sleep(0.01)
        try:
            request_all(sock.getsockname()[1], paths)
        finally:
            server.should_exit = True
            thread.join()
