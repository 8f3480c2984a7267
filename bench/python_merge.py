#!/usr/bin/env python3
"""The straightforward way to apply a batch of DMS changes to a Delta table with the Python
`deltalake` package: the baseline `shared/benches/merge.rs` compares dms2delta's commit stage with.

    python bench/python_merge.py <table path> <changes.parquet> [key column]

1. read the change batch (a dms2delta staged change set: data columns, then `_dms_op`, `_dms_seq`,
   `_dms_commit_ts`, `_dms_source_file`, `_dms_nosup`) with pyarrow;
2. keep the newest change per key with a window function (DuckDB
   `row_number() OVER (PARTITION BY key ORDER BY _dms_seq DESC)`);
3. upsert the inserts and updates: `merge(...).when_matched_update_all().when_not_matched_insert_all()`;
4. a delete pass: `merge(...).when_matched_delete()` with the delete rows.

Deliberately no sequence guard, no tombstones and no handling of columns DMS did not log: this is
the approach people write today, not dms2delta's. Defaults of the deltalake package throughout.

Prints one line: `RESULT secs=<apply time> maxrss_kib=<peak RSS> upserts=<n> deletes=<n>`. The
time runs from reading the change batch to the end of the delete pass (interpreter start-up and
imports excluded); the peak RSS is the whole process's (`ru_maxrss`, KiB on Linux).
"""

import resource
import os
import sys
import time

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import DeltaTable


def apply_latest(dt: DeltaTable, latest: pa.Table, is_delete: pa.ChunkedArray, key: str) -> None:
    """The recipe's two passes over the newest change per key: an upsert merge of the inserts and
    updates, then a delete merge; a pass with no rows is skipped. Shared with
    python_pipeline.py."""
    q = '"' + key.replace('"', '""') + '"'
    target = pa.schema(dt.schema().to_arrow())
    # The table's columns, in the table's types (DuckDB hands strings and time zones back its way).
    upserts = latest.filter(pc.invert(is_delete)).select(target.names).cast(target)
    deletes = latest.filter(is_delete).select([key]).cast(pa.schema([target.field(key)]))
    on = f"t.{q} = s.{q}"
    if upserts.num_rows:
        (
            dt.merge(upserts, on, source_alias="s", target_alias="t")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute()
        )
    if deletes.num_rows:
        dt.merge(deletes, on, source_alias="s", target_alias="t").when_matched_delete().execute()


def main() -> None:
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    table_path, changes_path = sys.argv[1], sys.argv[2]
    key = sys.argv[3] if len(sys.argv) == 4 else "id"
    q = '"' + key.replace('"', '""') + '"'

    started = time.perf_counter()
    changes = pq.read_table(changes_path)

    # Newest change per key: a window function.
    con = duckdb.connect()
    con.register("changes", changes)
    latest = con.sql(
        f"""
        SELECT * EXCLUDE (rn) FROM (
            SELECT *, row_number() OVER (PARTITION BY {q} ORDER BY _dms_seq DESC) AS rn
            FROM changes
        ) WHERE rn = 1
        """
    ).to_arrow_table()

    dt = DeltaTable(table_path)
    is_delete = pc.equal(latest["_dms_op"], "D")
    apply_latest(dt, latest, is_delete, key)
    secs = time.perf_counter() - started

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    deletes = pc.sum(is_delete.cast("int64")).as_py() or 0
    print(f"RESULT secs={secs:.6f} maxrss_kib={maxrss} upserts={latest.num_rows - deletes} deletes={deletes}")


if __name__ == "__main__":
    main()
    # Avoid the deltalake wheel's shutdown abort (delta-rs issue 2184) after the result is printed.
    sys.stdout.flush()
    os._exit(0)
