#!/usr/bin/env python3
"""A local S3 endpoint holding the sample data, for running the functions against S3 on a laptop.

    python3 scripts/local_s3.py [--port 9001]

Starts moto's server on 127.0.0.1 (moto[server] from scripts/requirements-test.txt; `.ci/run`
installs it into ~/.cache/dms2delta-venv), creates `dms-bucket` with every file under
events/data/dms-bucket and an empty `lake-bucket`, prints the environment the functions need,
and serves until Ctrl-C. Then, in another shell, see README.md ("against a local S3 endpoint").
"""
import argparse
import logging
import sys
import time
from pathlib import Path

import boto3
from moto.server import ThreadedMotoServer

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "events/data/dms-bucket"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9001)
    args = parser.parse_args()
    url = f"http://127.0.0.1:{args.port}"
    # One line per request would bury the instructions.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=args.port, verbose=False)
    server.start()
    s3 = boto3.client(
        "s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    for bucket in ["dms-bucket", "lake-bucket"]:
        s3.create_bucket(Bucket=bucket)
    files = sorted(p for p in DATA.rglob("*") if p.is_file())
    for p in files:
        s3.upload_file(str(p), "dms-bucket", p.relative_to(DATA).as_posix())
    print(f"S3 endpoint {url}: dms-bucket holds {len(files)} files, lake-bucket is empty.")
    print("In another shell:")
    print(f"  export AWS_ENDPOINT_URL={url} AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1")
    print("  export DMS2DELTA_CONFIG=events/config-s3.yaml")
    print("Ctrl-C stops it (everything is in memory).", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
        sys.exit(0)


if __name__ == "__main__":
    main()
