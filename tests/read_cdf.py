"""Independent reader for the tests: prints a Delta table's change data feed as canonical text.

Usage: read_cdf.py TABLE_PATH|s3://BUCKET/PREFIX COL1,COL2,... STARTING_VERSION  (for s3://, AWS_ENDPOINT_URL)
Reads the feed with the Python deltalake package's load_cdf; one line per change, the columns
given (the table's, _change_type, _commit_version) in the canonical form of read_delta.py.
"""
import os
import sys

import pyarrow
from deltalake import DeltaTable

from read_delta import canonical


def main():
    path, cols, start = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
    options = None
    if path.startswith("s3://"):
        # The tests' local endpoint, as in read_delta.py.
        options = {
            "AWS_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"],
            "AWS_ALLOW_HTTP": "true",
            "AWS_REGION": os.environ.get("AWS_REGION", "us-east-1"),
            "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
            "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
            "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "false",
        }
    table = DeltaTable(path, storage_options=options)
    data = pyarrow.table(table.load_cdf(starting_version=start)).to_pylist()
    for row in data:
        text = [canonical(row[c]).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n") for c in cols]
        print("\t".join(text))
    # As in read_delta.py: the wheel's runtime threads can abort the interpreter at shutdown.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
