#!/usr/bin/env python3
"""Writes the bad-input corpus in this folder: one file per case under files/, events under
events/, configuration documents under configs/, and cases.json saying what each must produce.

    ~/.cache/dms2delta-venv/bin/python tests/bad-input/generate.py          # rewrite
    ~/.cache/dms2delta-venv/bin/python tests/bad-input/generate.py --check  # fail if stale

Every file is fixed (seeded), so the output is reproducible. pyarrow writes the Parquet cases.
The Rust test shared/tests/bad_input.rs replays every case.
"""
import gzip
import io
import json
import random
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
rng = random.Random(7)

# Table s.t: headerless CSV, columns id INT4 (key), name STRING, n INT4.
T = "dms/s/t/"
# Table s.p: Parquet, key id.
P = "dms/s/p/"


def parquet(table, **kw):
    buf = io.BytesIO()
    pq.write_table(table, buf, **kw)
    return buf.getvalue()


def good_parquet():
    return parquet(pa.table({"Op": ["I", "U"], "id": pa.array([1, 2], pa.int32()), "name": ["a", "b"]}))


def gz(data, mtime=0):
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=mtime) as f:
        f.write(data)
    return buf.getvalue()


def files():
    """(name, key, bytes, expected) for the decode stage."""
    big_csv = b"".join(b"I,%d,name-%d,%d\n" % (i, i, i) for i in range(2000))
    good = good_parquet()
    cases = [
        ("corrupt-parquet", P + "20240601-000000001.parquet", b"PAR1" + bytes(rng.randrange(256) for _ in range(300)) + b"PAR1", "corrupt_file"),
        ("truncated-parquet", P + "20240601-000000002.parquet", good[: len(good) // 2], "corrupt_file"),
        ("parquet-magic-only", P + "20240601-000000003.parquet", b"PAR1", "corrupt_file"),
        ("parquet-footer-garbage", P + "20240601-000000004.parquet", good[:-12] + b"\xff" * 8 + b"PAR1", "corrupt_file"),
        ("truncated-gzip", T + "20240601-000000001.csv.gz", gz(big_csv)[:400], "corrupt_file"),
        ("gzip-magic-then-garbage", T + "20240601-000000002.csv.gz", b"\x1f\x8b" + bytes(rng.randrange(256) for _ in range(200)), "corrupt_file"),
        ("binary-named-gz", T + "20240601-000000003.csv.gz", bytes(rng.randrange(128, 256) for _ in range(64)), "invalid_utf8"),
        ("too-few-fields", T + "20240601-000000004.csv", b"I,1,a\n", "field_count"),
        ("too-many-fields", T + "20240601-000000005.csv", b"I,1,a,2,extra\n", "field_count"),
        ("unterminated-quote", T + "20240601-000000006.csv", b'I,1,"abc,2\n', "field_count"),
        ("invalid-utf8", T + "20240601-000000007.csv", b"I,1,\xff\xfe,2\n", "invalid_utf8"),
        ("unknown-op", T + "20240601-000000008.csv", b"X,1,a,2\n", "unknown_op"),
        ("lowercase-op", T + "20240601-000000009.csv", b"i,1,a,2\n", "unknown_op"),
        ("null-key", T + "20240601-000000010.csv", b"I,,a,2\n", "missing_key"),
        ("key-of-the-wrong-type", T + "20240601-000000011.csv", b"I,abc,a,2\n", "bad_value"),
        ("int-of-the-wrong-type", T + "20240601-000000012.csv", b"I,1,a,two\n", "bad_value"),
        ("huge-single-field", T + "20240601-000000013.csv", b"I,1," + b"x" * 5000 + b",2\n", "too_large"),
        ("bad-row-after-good-rows", T + "20240601-000000014.csv", big_csv + b"Q,1,a,2\n", "unknown_op"),
        ("parquet-of-another-table", P + "20240601-000000005.parquet", parquet(pa.table({"Op": ["I"], "order_no": [7], "total": [1.5]})), "missing_key"),
        ("parquet-null-key", P + "20240601-000000006.parquet", parquet(pa.table({"Op": ["I"], "id": pa.array([None], pa.int32()), "name": ["a"]})), "missing_key"),
        ("parquet-unknown-op", P + "20240601-000000007.parquet", parquet(pa.table({"Op": ["Z"], "id": pa.array([1], pa.int32()), "name": ["a"]})), "unknown_op"),
        ("headerless-csv-without-columns", "dms/s/nocols/20240601-000000001.csv", b"I,1,a\n", "no_columns"),
        ("table-without-keys", "dms/s/nokey/20240601-000000001.csv", b"I,1,a,2\n", "no_key"),
        ("not-a-dms-file-name", T + "readme.txt", b"hello\n", "unroutable_key"),
        ("too-deep-for-the-layout", T + "extra/level/20240601-000000001.csv", b"I,1,a,2\n", "unroutable_key"),
        # Limits hold while reading: a small gzip inflating into one long field, or into one
        # record of many short fields, is stopped at the limit.
        ("gzip-field-bomb", T + "20240601-000000016.csv.gz", gz(b"I,1," + b"x" * 2_000_000 + b",2\n"), "too_large"),
        ("gzip-record-of-many-short-fields", T + "20240601-000000017.csv.gz", gz(b"I,1" + b",ab" * 100_000 + b"\n"), "too_large"),
        ("parquet-value-over-field-limit", P + "20240601-000000009.parquet", parquet(pa.table({"Op": ["I"], "id": pa.array([1], pa.int32()), "name": ["x" * 5000]}), compression="zstd"), "too_large"),
        # The configured type wins: a Parquet column that cannot be converted to it losslessly.
        ("parquet-type-contradicts-configuration", T + "20240601-000000018.parquet", parquet(pa.table({"Op": ["I"], "id": pa.array([1], pa.int64()), "name": ["a"], "n": pa.array([2], pa.int32())})), "incompatible_schema"),
        # Not errors: nothing to apply, nothing quarantined.
        ("empty-file", T + "20240601-000000015.csv", b"", "skipped"),
        ("zero-row-parquet", P + "20240601-000000008.parquet", parquet(pa.table({"Op": pa.array([], pa.string()), "id": pa.array([], pa.int32()), "name": pa.array([], pa.string())})), "nothing"),
    ]
    return cases


def keys():
    """Object keys that must never reach outside the storage root (on local folders), whatever
    the event says: (name, key)."""
    return [
        ("dot-dot", "dms/s/t/../../../../etc/passwd"),
        ("dot-dot-at-start", "../outside/20240601-000000001.csv"),
        ("absolute", "/etc/passwd"),
        ("encoded-dot-dot", "dms/s/t/%2e%2e/%2e%2e/x.csv"),
        ("backslashes", "dms\\s\\t\\..\\..\\x.csv"),
        ("nul-byte", "dms/s/t/a\u0000b.csv"),
    ]


def events():
    """(name, payload text, expected) for the event parsers. The oversized payloads (over
    Lambda's 6 MB) are built by the test itself rather than stored here."""
    return [
        ("not-json", "{\"Records\": [", "event_error"),
        ("records-not-a-list", json.dumps({"Records": {"a": 1}}), "event_error"),
        ("record-without-s3", json.dumps({"Records": [{"eventSource": "aws:s3"}]}), "event_error"),
        ("sqs-body-not-json", json.dumps({"Records": [{"eventSource": "aws:sqs", "messageId": "m1", "body": "{nope"}]}), "failed_message"),
        ("key-not-a-string", json.dumps({"Records": [{"eventSource": "aws:s3", "s3": {"bucket": {"name": "dms"}, "object": {"key": 5}}}]}), "event_error"),
    ]


def configs():
    """(name, YAML document, path the error must name)."""
    base = (
        "lake: /tmp/l\nstaging: /tmp/s\nquarantine: /tmp/q\n"
        "sources:\n  - name: shop\n    bucket: dms\n    bucket_folder: dms\n"
        "    tables:\n      - { schema: s, table: t, keys: [id] }\n"
    )
    return [
        ("unknown-top-level-field", base + "lakes: /x\n", "lakes"),
        ("unknown-table-field", base.replace("keys: [id] }", "keys: [id], key: [id] }"), "sources[0].tables[0]"),
        ("no-sources", "lake: /tmp/l\nstaging: /tmp/s\nquarantine: /tmp/q\nsources: []\n", "sources"),
        ("lake-not-a-location", base.replace("lake: /tmp/l", "lake: ftp://x/y"), "lake"),
        ("http-endpoint-without-allow-http", base + "storage:\n  endpoint: http://127.0.0.1:9000\n  path_style: true\n", "storage.endpoint"),
        ("vacuum-below-seven-days", base + "compact:\n  vacuum_retention_hours: 1\n", "compact.vacuum_retention_hours"),
        ("zero-attempts", base + "commit:\n  max_attempts: 0\n", "commit.max_attempts"),
        ("bucket-folder-escapes", base.replace("bucket_folder: dms", "bucket_folder: ../dms"), "sources[0].bucket_folder"),
        ("record-limit-below-field-limit", base + "limits:\n  max_field_bytes: 100\n  max_record_bytes: 10\n", "limits.max_record_bytes"),
        ("not-yaml", "lake: [unclosed\n", ""),
    ]


def build():
    out = {}
    cases = []
    for name, key, data, expected in files():
        path = f"files/{name}.bin"
        out[path] = data
        cases.append({"name": name, "file": path, "key": key, "expected": expected})
    ev = []
    for name, text, expected in events():
        path = f"events/{name}.json"
        out[path] = text.encode()
        ev.append({"name": name, "file": path, "expected": expected})
    cf = []
    for name, text, path_named in configs():
        path = f"configs/{name}.yaml"
        out[path] = text.encode()
        cf.append({"name": name, "file": path, "path": path_named})
    manifest = {"files": cases, "keys": [{"name": n, "key": k} for n, k in keys()], "events": ev, "configs": cf}
    out["cases.json"] = (json.dumps(manifest, indent=2) + "\n").encode()
    return out


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    for rel, data in build().items():
        p = HERE / rel
        if check:
            if not p.is_file() or p.read_bytes() != data:
                stale.append(rel)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
    if stale:
        print("out of date (run tests/bad-input/generate.py): " + ", ".join(stale), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
