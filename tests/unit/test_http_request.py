"""http_request turns a response cut short into OSError (the rig's pollers count it and go on)."""
import socket
import threading

import pytest

from hil.services import http_request


def test_a_response_cut_short_is_an_oserror() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def serve() -> None:
        conn, _ = srv.accept()
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
        conn.close()  # the server dies mid-body

    t = threading.Thread(target=serve)
    t.start()
    try:
        with pytest.raises(OSError, match="IncompleteRead"):
            http_request(f"http://127.0.0.1:{port}/query", timeout=5)
    finally:
        t.join(5)
        srv.close()
