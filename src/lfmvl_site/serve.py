"""``lfmvl-site serve``: preview a built site with the headers the page needs.

The HTTP handling lives in :mod:`lfmvl_site.static_server` (standard library only, also shipped
as the Hugging Face Space's server); this module adds the CLI's error messages and ``--open``.
Previews send ``no-cache`` everywhere, so a rebuilt dist/ is picked up on reload.
"""

from __future__ import annotations

import errno
import socket
import sys
import threading
import webbrowser
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path

from .errors import InputError
from .static_server import ISOLATION_HEADERS, bind, content_type, parse_range

LOCAL_HOSTS = ("127.0.0.1", "::1", "localhost")


def make_server(directory: Path, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """A ready-to-run preview server for ``directory`` (port 0 picks a free one)."""
    root = Path(directory).resolve()
    if not root.is_dir():
        raise InputError(f"{directory} is not a directory; build the site first with `lfmvl-site build --out {directory}`.")
    try:
        return bind(str(root), host, port, immutable=False)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise InputError(f"Port {port} on {host} is already in use; pick another with --port N "
                             "(or stop the other server).") from None
        if isinstance(exc, socket.gaierror):
            raise InputError(f"--host {host!r} is not an address or a name this machine can resolve ({exc.strerror}); "
                             "use e.g. 127.0.0.1 or 0.0.0.0.") from None
        raise InputError(f"Cannot listen on {host}:{port} ({exc.strerror or exc}); check --host/--port.") from None


@contextmanager
def serving(directory: Path, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``directory`` from a background thread for the ``with`` block; yields the base URL.

    For tests, benchmarks and tools that drive a browser against a built site.
    """
    server = make_server(directory, host, port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def serve(directory: Path, *, host: str = "127.0.0.1", port: int = 8000, open_browser: bool = False) -> None:
    """Serve ``directory`` until interrupted."""
    server = make_server(directory, host, port)
    shown = "localhost" if host in LOCAL_HOSTS else host
    url = f"http://{shown}:{server.server_address[1]}/"
    if not (Path(directory) / "index.html").is_file():
        print(f"Note: {directory} has no index.html; is it a built site?", file=sys.stderr)
    print(f"Serving {Path(directory).resolve()} at {url} (Ctrl+C to stop)", file=sys.stderr, flush=True)
    if host not in LOCAL_HOSTS:
        print("Note: browsers allow the camera only on https or localhost.", file=sys.stderr)
    if open_browser:
        threading.Timer(0.5, webbrowser.open, args=(url,)).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


__all__ = ["serve", "serving", "make_server", "content_type", "parse_range", "ISOLATION_HEADERS"]
