"""Independent reader for the tests: prints a Delta table's rows as canonical text.

Usage: read_delta.py TABLE_PATH|s3://BUCKET/PREFIX COL1,COL2,...  (for s3://, AWS_ENDPOINT_URL)
One line per row, values tab-separated, in the canonical form of dms2delta::sim::Value:
integers and booleans as text, decimals with their scale, timestamps as microseconds since
the epoch, NULL as `null`; backslash, tab and newline escaped.
"""
import datetime
import decimal
import os
import sys

from deltalake import DeltaTable


def canonical(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, datetime.datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=datetime.timezone.utc)
        delta = v - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
        return str((delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds)
    if isinstance(v, decimal.Decimal):
        return format(v, "f")
    return str(v)


def main():
    path, cols = sys.argv[1], sys.argv[2].split(",")
    options = None
    if path.startswith("s3://"):
        # The tests' local endpoint: plain HTTP, path-style, moto's dummy credentials.
        options = {
            "AWS_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"],
            "AWS_ALLOW_HTTP": "true",
            "AWS_REGION": os.environ.get("AWS_REGION", "us-east-1"),
            "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
            "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
            "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "false",
        }
    table = DeltaTable(path, storage_options=options)
    features = table.protocol().reader_features or []
    if "deletionVectors" in features:
        # pyarrow datasets cannot apply deletion vectors; the package's own query engine does.
        import pyarrow
        from deltalake import QueryBuilder

        quoted = ", ".join('"' + c.replace('"', '""') + '"' for c in cols)
        reader = QueryBuilder().register("t", table).execute(f"SELECT {quoted} FROM t")
        data = pyarrow.table(reader).to_pylist()
    else:
        data = table.to_pyarrow_table(columns=cols).to_pylist()
    for row in data:
        text = [canonical(row[c]).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n") for c in cols]
        print("\t".join(text))


if __name__ == "__main__":
    main()
    # The deltalake wheel's runtime threads can abort the interpreter at shutdown
    # ("terminate called without an active exception", delta-rs issue 2184), after every row
    # was printed. Leave without running destructors so the test sees the reader's real verdict.
    sys.stdout.flush()
    os._exit(0)
