#!/usr/bin/env python3
"""The decode stage as a Glue/PySpark job does it: the peer `shared/benches/pipelines.rs` runs next
to dms2delta's decode stage.

    python bench/spark_decode.py <files.txt> <out dir>

`files.txt` lists DMS Parquet files of one table (key column `id`), one absolute path a line, in
the order DMS wrote them. One SparkSession in local mode (`local[2]`: the bench machine's two
cores; session time zone UTC; Parquet timestamps written as microseconds) then, for each file in
order:

1. read it with `spark.read.parquet`, adding `Op = 'I'` when the column is missing (full-load
   files have none);
2. keep the newest change per key: `row_number()` over
   `Window.partitionBy("id").orderBy(col("AR_H_CHANGE_SEQ").desc())`, rows numbered 1;
3. write Op, id, name, amount, active, updated, AR_H_CHANGE_SEQ as Parquet to
   `<out dir>/<index:05d>/` (decimal(12,2), bool, int64 and timestamp micros kept).

Measured:
- `startup_secs`: building the SparkSession (JVM launch included; Python imports not), timed
  apart because a Glue job pays it once per run, not per file;
- `latencies`: per file, from the read to the end of the write; `secs` is their sum. The first
  file also pays the JVM's warm-up (class loading, JIT, code generation): seconds, where later
  files of the same size take a fraction of that;
- `maxrss_kib`: the peak RSS of the whole process tree (this Python driver plus the JVM that
  pyspark starts), polled every 50 ms with psutil: `ru_maxrss` would see only one process. RSS of
  several processes is summed, so pages they share count once per process.
Row counts (`changes` in, `rows_out` out) come from Parquet footers, outside the timed part, so
they add no Spark job to the measurement.

Spark's JVM inherits this process's stdout; to keep its noise away from the result, stdout is
pointed at stderr before Spark starts and the single final line

    RESULT {"files", "changes", "rows_out", "secs", "startup_secs", "latencies", "maxrss_kib"}

is written to the original stdout, so it is the only and last line there. Before it, Spark is
stopped and its JVM waited for, so nothing of this run goes on using CPU after the process exits.

DMS2DELTA_SPARK_DRIVER_MEMORY sets `spark.driver.memory` (default 2g; in local mode the driver
is also the executor).
"""

import json
import os
import sys
import threading
import time

import psutil
import pyarrow.parquet as pq
from pyspark import SparkContext
from pyspark.sql import SparkSession, Window
from pyspark.sql.functions import col, lit, row_number

OUT_COLUMNS = ["Op", "id", "name", "amount", "active", "updated", "AR_H_CHANGE_SEQ"]


class TreeRss:
    """Polls the summed RSS of this process and all its descendants; keeps the peak."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass  # a child that exited between listing and reading
        self.peak = max(self.peak, total)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.sample()
        return self.peak // 1024


def stop_spark(spark: SparkSession) -> None:
    """Stops Spark and waits for its JVM to exit.

    `spark.stop()` leaves the JVM running until it sees its stdin close, which is after this
    process exits; a JVM still winding down would then take CPU from whatever the bench measures
    next.
    """
    jvm = psutil.Process().children(recursive=True)
    spark.stop()
    gateway = SparkContext._gateway
    if gateway is not None:
        gateway.shutdown()
        proc = getattr(gateway, "proc", None)
        if proc is not None and proc.stdin is not None:
            proc.stdin.close()
    psutil.wait_procs(jvm, timeout=30)


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    files_txt, out_dir = sys.argv[1], sys.argv[2]
    with open(files_txt) as f:
        paths = [line.strip() for line in f if line.strip()]

    # From here on fd 1 is stderr, for us and for the JVM child; the result goes to `result_fd`.
    sys.stdout.flush()
    result_fd = os.dup(1)
    os.dup2(2, 1)

    # Spark needs no network: keep it on loopback instead of the host's first interface.
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    rss = TreeRss()
    rss.start()

    started = time.perf_counter()
    spark = (
        SparkSession.builder.master("local[2]")
        .appName("dms2delta-bench-spark-decode")
        .config("spark.driver.memory", os.environ.get("DMS2DELTA_SPARK_DRIVER_MEMORY", "2g"))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        # Two cores: the default 200 shuffle partitions would mostly schedule empty tasks.
        .config("spark.sql.shuffle.partitions", "2")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    startup_secs = time.perf_counter() - started

    newest_first = Window.partitionBy("id").orderBy(col("AR_H_CHANGE_SEQ").desc())
    latencies = []
    for i, path in enumerate(paths):
        t0 = time.perf_counter()
        df = spark.read.parquet(path)
        if "Op" not in df.columns:
            df = df.withColumn("Op", lit("I"))
        latest = (
            df.withColumn("_rn", row_number().over(newest_first))
            .where(col("_rn") == 1)
            .select(*OUT_COLUMNS)
        )
        latest.write.mode("overwrite").parquet(os.path.join(out_dir, f"{i:05d}"))
        latencies.append(time.perf_counter() - t0)

    maxrss_kib = rss.stop()
    stop_spark(spark)

    changes = sum(pq.ParquetFile(p).metadata.num_rows for p in paths)
    rows_out = 0
    for i in range(len(paths)):
        d = os.path.join(out_dir, f"{i:05d}")
        for name in os.listdir(d):
            if name.endswith(".parquet"):
                rows_out += pq.ParquetFile(os.path.join(d, name)).metadata.num_rows

    result = {
        "files": len(paths),
        "changes": changes,
        "rows_out": rows_out,
        "secs": sum(latencies),
        "startup_secs": startup_secs,
        "latencies": latencies,
        "maxrss_kib": maxrss_kib,
    }
    os.write(result_fd, ("RESULT " + json.dumps(result) + "\n").encode())


if __name__ == "__main__":
    main()
