#!/usr/bin/env python3
"""The Python reference pipeline `shared/benches/pipelines.rs` runs next to dms2delta: DMS output
files applied to a Delta table with the `deltalake` package, the way the AWS/Glue recipes and a
"Python Lambda with deltalake" do it.

    python bench/python_pipeline.py <files.txt> <table dir>

`files.txt` lists DMS Parquet files of one table (key column `id`), one absolute path a line, in
the order DMS wrote them. Each file is handled on its own, in order, as one Lambda invocation per
file would:

1. read the file with pyarrow;
2. keep the newest change per key with a window function (DuckDB
   `row_number() OVER (PARTITION BY id ORDER BY AR_H_CHANGE_SEQ DESC)`); a full-load (LOAD*) file
   has no `Op` column, so its rows count as inserts;
3. the first file creates the table with `write_deltalake` (data columns only: the DMS columns
   `Op`, `dms_ts` and `AR_H_CHANGE_SEQ` are dropped);
4. later files: an upsert `merge(...).when_matched_update_all().when_not_matched_insert_all()` of
   the inserts and updates, then a delete pass `merge(...).when_matched_delete()`; a merge whose
   input is empty is skipped.

Deliberately no sequence guard against files applied out of order and no tombstones: this is the
approach people write today. Defaults of the deltalake package throughout.

Measured: per file, the time from reading it to the end of its last commit (interpreter start-up
and imports excluded, as a warm Lambda would have them done), and the peak RSS of this process
(`ru_maxrss`, KiB on Linux; DuckDB and delta-rs run in-process). Prints exactly one line:

    RESULT {"files": n, "changes": input rows, "secs": sum of per-file times,
            "latencies": [per-file secs...], "maxrss_kib": peak RSS}
"""

import json
import os
import resource
import sys
import time

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import DeltaTable, write_deltalake

# The same two merge passes the merge bench's baseline runs (this folder is on sys.path).
from python_merge import apply_latest

KEY = "id"
DMS_COLUMNS = ("Op", "dms_ts", "AR_H_CHANGE_SEQ")


def newest_per_key(con: duckdb.DuckDBPyConnection, changes: pa.Table) -> pa.Table:
    """The newest change per key, with `Op` filled in for full-load files."""
    op = "" if "Op" in changes.column_names else "'I' AS Op, "
    con.register("changes", changes)
    try:
        return con.sql(
            f"""
            SELECT * EXCLUDE (rn) FROM (
                SELECT {op}*,
                       row_number() OVER (PARTITION BY {KEY} ORDER BY AR_H_CHANGE_SEQ DESC) AS rn
                FROM changes
            ) WHERE rn = 1
            """
        ).to_arrow_table()
    finally:
        con.unregister("changes")


def apply_file(con: duckdb.DuckDBPyConnection, path: str, table_dir: str) -> int:
    """Apply one DMS file to the table; returns the number of input rows."""
    changes = pq.read_table(path)
    latest = newest_per_key(con, changes)
    is_delete = pc.equal(latest["Op"], "D")

    if not DeltaTable.is_deltatable(table_dir):
        # The file's own Arrow types for the data columns (DuckDB hands strings and time zones
        # back its own way, so cast back to them).
        target = pa.schema([f for f in changes.schema if f.name not in DMS_COLUMNS])
        upserts = latest.filter(pc.invert(is_delete)).select(target.names).cast(target)
        # Deletes of keys that were never there are no-ops on a table that does not exist yet.
        write_deltalake(table_dir, upserts)
        return changes.num_rows

    apply_latest(DeltaTable(table_dir), latest, is_delete, KEY)
    return changes.num_rows


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    files_txt, table_dir = sys.argv[1], sys.argv[2]
    with open(files_txt) as f:
        paths = [line.strip() for line in f if line.strip()]
    if DeltaTable.is_deltatable(table_dir):
        # A leftover table would turn the first file's create into a merge and skew the timings.
        sys.exit(f"{table_dir} already holds a Delta table; give an empty or new folder")

    # One connection for the whole run, as a warm Lambda keeps module-level state.
    con = duckdb.connect()
    latencies = []
    changes = 0
    for path in paths:
        started = time.perf_counter()
        changes += apply_file(con, path, table_dir)
        latencies.append(time.perf_counter() - started)

    result = {
        "files": len(paths),
        "changes": changes,
        "secs": sum(latencies),
        "latencies": latencies,
        "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
    # Avoid the deltalake wheel's shutdown abort (delta-rs issue 2184) after the result is printed.
    sys.stdout.flush()
    os._exit(0)
