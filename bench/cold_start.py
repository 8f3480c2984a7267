"""Cold start of each function binary, measured locally: the time from process start to its
first request for an event (GET .../runtime/invocation/next) on a stand-in Lambda Runtime API,
which is when Lambda considers the init phase over. Also prints each binary's size, stripped
and zipped (zip -9 of `bootstrap`, as cargo-lambda packages it).

Usage: python3 bench/cold_start.py [TARGET_DIR/release] [RUNS]
The functions read events/config.yaml (local folders), so no AWS account is needed.
"""
import http.server
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FUNCTIONS = ["decode", "commit", "compact", "reprocess"]


class Runtime(http.server.BaseHTTPRequestHandler):
    first_next = None

    def do_GET(self):
        if self.path.endswith("/runtime/invocation/next") and Runtime.first_next is None:
            Runtime.first_next = time.perf_counter()
        # Never hand out an event: the process is killed once it asked.
        self.send_response(503)
        self.end_headers()

    def log_message(self, *args):
        pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cold_start(binary, runs):
    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Runtime)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    times = []
    env = dict(os.environ)
    env.update(
        AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{port}",
        AWS_LAMBDA_FUNCTION_NAME=binary.name,
        AWS_LAMBDA_FUNCTION_MEMORY_SIZE="1024",
        AWS_LAMBDA_FUNCTION_VERSION="$LATEST",
        AWS_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        DMS2DELTA_CONFIG=str(REPO / "events/config.yaml"),
        RUST_LOG="off",
    )
    for _ in range(runs):
        Runtime.first_next = None
        start = time.perf_counter()
        p = subprocess.Popen([str(binary)], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while Runtime.first_next is None and p.poll() is None and time.perf_counter() - start < 30:
            time.sleep(0.0005)
        p.kill()
        p.wait()
        if Runtime.first_next is None:
            raise SystemExit(f"{binary.name} never asked for an event")
        times.append((Runtime.first_next - start) * 1000)
    server.shutdown()
    return times


def zipped_size(binary):
    with tempfile.TemporaryDirectory() as d:
        z = Path(d) / "f.zip"
        with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as f:
            f.write(binary, "bootstrap")
        return z.stat().st_size


def main():
    release = Path(sys.argv[1]) if len(sys.argv) > 1 else Path.home() / ".cache/dms2delta-target/release"
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    print(f"{'function':<10} {'stripped MB':>11} {'zipped MB':>9} {'cold start ms (p50 / p90 / max)':>32}")
    for name in FUNCTIONS:
        binary = release / name
        if not binary.is_file():
            print(f"{name:<10} (not built: cargo build --release -p {name})")
            continue
        t = sorted(cold_start(binary, runs))
        p90 = t[int(0.9 * (len(t) - 1))]
        print(
            f"{name:<10} {binary.stat().st_size / 1e6:>11.1f} {zipped_size(binary) / 1e6:>9.1f} "
            f"{statistics.median(t):>14.1f} / {p90:.1f} / {t[-1]:.1f}"
        )


if __name__ == "__main__":
    main()
