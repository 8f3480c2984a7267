#!/usr/bin/env python3
"""Checks the Python peers of the pipelines bench on a small DMS workload made here.

    ~/.cache/dms2delta-bench-venv/bin/python bench/selftest_python_peers.py [--keep DIR] [--no-spark]

Writes, in a temp folder, a DMS-like file set for one table (key `id`) laid out as
`shared/benches/pipelines.rs` lays it out: `data/dms/oracle/app/t0/LOAD00000001.parquet` (no `Op`
column, empty `AR_H_CHANGE_SEQ`), then CDC files named by time, whose rows are shuffled so that
only AR_H_CHANGE_SEQ orders them, and which hold keys changed several times in one file, deletes
(with the old row image), delete-then-reinsert, insert-then-delete of a new key, a deletes-only
file and a file without deletes. `files.txt` lists them in write order. Then:

- `python_pipeline.py`: the final Delta table must equal the state got by replaying every change
  one at a time in sequence order, with the data columns' types kept;
- `spark_decode.py` (unless --no-spark): each output folder must equal that file's newest change
  per key, with `Op` = 'I' for the LOAD rows;
- `report.py`: runs on a results file made of the two measured peers, with the dms2delta entries
  marked as errors (it must cope), and must write a PNG.

Each peer's RESULT line must be the last line of its stdout. Prints what each one measured and
ends with 'N passed, N failed'.
"""

import datetime as dt
import decimal
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from deltalake import DeltaTable

BENCH = os.path.dirname(os.path.abspath(__file__))
PY = sys.executable

DATA_FIELDS = [
    pa.field("id", pa.int64()),
    pa.field("name", pa.string()),
    pa.field("amount", pa.decimal128(12, 2)),
    pa.field("active", pa.bool_()),
    pa.field("updated", pa.timestamp("us", tz="UTC")),
]
LOAD_SCHEMA = pa.schema([pa.field("dms_ts", pa.string()), *DATA_FIELDS, pa.field("AR_H_CHANGE_SEQ", pa.string())])
CDC_SCHEMA = pa.schema([pa.field("Op", pa.string()), *LOAD_SCHEMA])
DATA_NAMES = [f.name for f in DATA_FIELDS]


class Workload:
    """Makes changes against a model of the source table, so U and D only hit live keys."""

    def __init__(self, rng: random.Random, load_rows: int):
        self.rng = rng
        self.live = {}  # id -> data row dict
        self.next_id = load_rows + 1
        self.clock = dt.datetime(2024, 5, 28, 12, 40, 0, tzinfo=dt.timezone.utc)
        self.counter = 0
        self.load = [self.row(i) for i in range(1, load_rows + 1)]
        for r in self.load:
            self.live[r["id"]] = r

    def row(self, key: int) -> dict:
        rng = self.rng
        return {
            "id": key,
            "name": None if rng.random() < 0.1 else f"name-{key}-{rng.randrange(10**6)}",
            "amount": decimal.Decimal(rng.randrange(-10**9, 10**9)) / 100,
            "active": rng.random() < 0.5,
            "updated": self.clock - dt.timedelta(seconds=rng.randrange(10**6), microseconds=rng.randrange(10**6)),
        }

    def change(self, op: str, key: int) -> dict:
        self.clock += dt.timedelta(microseconds=self.rng.randrange(1, 5000))
        self.counter += 1
        if op == "D":
            image = self.live.pop(key)
        else:
            image = self.row(key)
            self.live[key] = image
        return {
            "Op": op,
            "dms_ts": self.clock.strftime("%Y-%m-%d %H:%M:%S.%f"),
            **image,
            # Fixed width: commit time then a counter, so string order is change order.
            "AR_H_CHANGE_SEQ": self.clock.strftime("%Y%m%d%H%M%S%f")[:16] + f"{self.counter:019d}",
        }

    def random_change(self) -> dict:
        r = self.rng.random()
        if r < 0.2 or not self.live:
            self.next_id += 1
            return self.change("I", self.next_id - 1)
        key = self.rng.choice(sorted(self.live))
        return self.change("D" if r < 0.35 else "U", key)


def make_workload(root: str, seed: int = 7) -> tuple[list[str], list[list[dict]], dict]:
    """Returns the file paths, each file's rows (in sequence order), and the final live state."""
    rng = random.Random(seed)
    w = Workload(rng, load_rows=300)
    files = []

    # Scripted cases first, then random traffic on top.
    f1 = [w.change("U", 1), w.change("U", 1), w.change("U", 1), w.change("D", 2), w.change("D", 3)]
    f1 += [w.change("I", 3), w.change("I", 5001), w.change("U", 5001), w.change("I", 5002), w.change("D", 5002)]
    f1 += [w.random_change() for _ in range(200)]
    files.append(f1)
    # Key 2 comes back a file later; the lowest other live key of the full load goes.
    gone = min(k for k in w.live if 3 < k <= 300)
    files.append([w.change("I", 2), w.change("D", gone)] + [w.random_change() for _ in range(150)])
    # Deletes only: the upsert merge has nothing to do.
    live = sorted(w.live)
    files.append([w.change("D", k) for k in rng.sample(live, 40)])
    # No deletes: the delete pass has nothing to do.
    f4 = []
    for _ in range(120):
        if rng.random() < 0.3:
            w.next_id += 1
            f4.append(w.change("I", w.next_id - 1))
        else:
            f4.append(w.change("U", rng.choice(sorted(w.live))))
    files.append(f4)
    files.append([w.random_change() for _ in range(250)])

    folder = os.path.join(root, "data", "dms", "oracle", "app", "t0")
    os.makedirs(folder)
    paths = []
    load_rows = [{"dms_ts": "2024-05-28 12:39:59.000000", **r, "AR_H_CHANGE_SEQ": ""} for r in w.load]
    path = os.path.join(folder, "LOAD00000001.parquet")
    pq.write_table(pa.Table.from_pylist(load_rows, schema=LOAD_SCHEMA), path)
    paths.append(path)
    for rows in files:
        ts = dt.datetime.strptime(rows[-1]["dms_ts"], "%Y-%m-%d %H:%M:%S.%f")
        path = os.path.join(folder, ts.strftime("%Y%m%d-%H%M%S") + f"{ts.microsecond // 1000:03d}.parquet")
        shuffled = rows[:]
        rng.shuffle(shuffled)
        pq.write_table(pa.Table.from_pylist(shuffled, schema=CDC_SCHEMA), path)
        paths.append(path)
    with open(os.path.join(root, "files.txt"), "w") as f:
        f.write("".join(p + "\n" for p in paths))
    all_rows = [[{"Op": "I", **r} for r in load_rows], *files]
    return paths, all_rows, w.live


def newest_per_key(rows: list[dict]) -> list[dict]:
    newest = {}
    for r in rows:  # rows are in sequence order; LOAD rows all share the empty sequence
        newest[r["id"]] = r
    return [newest[k] for k in sorted(newest)]


def run(args: list[str]) -> dict:
    out = subprocess.run([PY, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{args[0]} exited {out.returncode}:\n{out.stderr[-3000:]}")
    lines = out.stdout.rstrip("\n").split("\n")
    assert lines[-1].startswith("RESULT "), f"last stdout line of {args[0]} is {lines[-1]!r}"
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    keep = sys.argv[sys.argv.index("--keep") + 1] if "--keep" in sys.argv else None
    root = keep or tempfile.mkdtemp(prefix="dms2delta-peers-")
    os.makedirs(root, exist_ok=True)
    paths, per_file, final = make_workload(root)
    files_txt = os.path.join(root, "files.txt")
    n_changes = sum(len(rows) for rows in per_file)
    passed = failed = 0

    def check(name: str, ok: bool, detail: str = "") -> None:
        nonlocal passed, failed
        passed += ok
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name}" + (f": {detail}" if detail and not ok else ""))

    print(f"workload: {len(paths)} files, {n_changes} changes, {len(final)} live keys at the end, in {root}")

    # Python pipeline: final table == replayed source state.
    table_dir = os.path.join(root, "python_table")
    res = run([os.path.join(BENCH, "python_pipeline.py"), files_txt, table_dir])
    print(f"python_pipeline: {json.dumps(res)}")
    check("python RESULT counts", res["files"] == len(paths) and res["changes"] == n_changes, str(res))
    t = DeltaTable(table_dir)
    got = pa.table(t.to_pyarrow_table()).sort_by("id")
    want = pa.Table.from_pylist([final[k] for k in sorted(final)], schema=pa.schema(DATA_FIELDS))
    check("python final table == replayed state", got.select(DATA_NAMES).cast(want.schema).equals(want),
          f"{got.num_rows} rows vs {want.num_rows}")
    delta_types = {f.name: str(f.type) for f in t.schema().fields}
    check("python Delta column types", delta_types == {
        "id": 'PrimitiveType("long")', "name": 'PrimitiveType("string")',
        "amount": 'PrimitiveType("decimal(12,2)")', "active": 'PrimitiveType("boolean")',
        "updated": 'PrimitiveType("timestamp")'}, str(delta_types))
    # Also the sum of per-file dedup applied in order, i.e. what the pipeline means to do.
    state = {}
    for rows in per_file:
        for r in newest_per_key(rows):
            if r["Op"] == "D":
                state.pop(r["id"], None)
            else:
                state[r["id"]] = {k: r[k] for k in DATA_NAMES}
    check("per-file dedup replay == change-by-change replay", state == final)

    spark = None
    if "--no-spark" not in sys.argv:
        out_dir = os.path.join(root, "spark_out")
        spark = run([os.path.join(BENCH, "spark_decode.py"), files_txt, out_dir])
        print(f"spark_decode: {json.dumps(spark)}")
        expected = [newest_per_key(rows) for rows in per_file]
        check("spark RESULT counts", spark["files"] == len(paths) and spark["changes"] == n_changes
              and spark["rows_out"] == sum(map(len, expected)), str(spark))
        out_schema = pa.schema([CDC_SCHEMA.field(n) for n in
                                ["Op", "id", "name", "amount", "active", "updated", "AR_H_CHANGE_SEQ"]])
        for i, rows in enumerate(expected):
            got = ds.dataset(os.path.join(out_dir, f"{i:05d}"), format="parquet").to_table().sort_by("id")
            want = pa.Table.from_pylist(rows, schema=out_schema)
            # Types, not nullability: Spark marks the literal Op it adds as required.
            same_types = got.schema.names == out_schema.names and got.schema.types == out_schema.types
            check(f"spark output {i:05d} == newest per key", same_types and got.cast(out_schema).equals(want),
                  f"schema {got.schema} rows {got.num_rows} vs {want.num_rows}")

    # report.py copes with the measured peers and with pipelines that failed.
    def entry(r):
        lat = sorted(r["latencies"])
        e = {"changes_per_s": r["changes"] / r["secs"], "p50_ms": 1000 * lat[len(lat) // 2],
             "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
             "maxrss_kib": r["maxrss_kib"], "secs": r["secs"], "files": r["files"]}
        if "startup_secs" in r:
            e["startup_secs"] = r["startup_secs"]
        return e

    pipelines = {"python": entry(res), "dms2delta": {"error": "not run by the selftest"}}
    if spark:
        pipelines["spark_decode"] = entry(spark)
    results = {"machine": "selftest", "commit": "selftest", "workloads": [{
        "name": "selftest", "files": len(paths), "changes": n_changes,
        "changes_per_file": n_changes / len(paths), "pipelines": pipelines}]}
    results_json = os.path.join(root, "results.json")
    with open(results_json, "w") as f:
        json.dump(results, f)
    chart = os.path.join(root, "chart.png")
    out = subprocess.run([PY, os.path.join(BENCH, "report.py"), results_json, chart], capture_output=True, text=True)
    check("report.py runs", out.returncode == 0, out.stderr[-2000:])
    check("report.py writes a PNG", os.path.exists(chart) and open(chart, "rb").read(8) == b"\x89PNG\r\n\x1a\n")
    print(out.stdout)

    if not keep and not failed:
        shutil.rmtree(root)
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
