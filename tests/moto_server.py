"""A local S3/SQS endpoint for the tests: moto's server on 127.0.0.1, on a free port.

Usage: moto_server.py
Prints `READY http://127.0.0.1:PORT` once the endpoint answers, then serves until its standard
input closes. The test process holds the other end of that pipe, so the server stops with it
however the tests end (success, failure, panic or kill), and no server is left behind.
"""
import logging
import socket
import sys
import time
import urllib.request

from moto.server import ThreadedMotoServer


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    # One line per request would bury the test output.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1).read()
            break
        except Exception:
            if time.monotonic() > deadline:
                print(f"moto did not answer on {url} within 30 s", file=sys.stderr)
                sys.exit(1)
            time.sleep(0.1)
    print(f"READY {url}", flush=True)
    sys.stdin.read()
    server.stop()


if __name__ == "__main__":
    main()
