#!/usr/bin/env python3
"""Chart, summary table and cost model for the results of `shared/benches/pipelines.rs`.

    python bench/report.py <results.json> <chart.png>

`results.json` is what the bench writes:

    {"machine": "...", "commit": "...", "workloads": [{"name": "small", "files": n, "changes": n,
      "changes_per_file": avg, "pipelines": {"dms2delta": {"changes_per_s", "p50_ms", "p99_ms",
      "maxrss_kib", "secs", "files"}, "python": {...}, "dms2delta_decode": {...},
      "spark_decode": {... plus "startup_secs"}}}]}

A pipeline may be missing or hold {"error": "..."}; it is then left out of the chart and the
costs and named in the output. A pipeline entry may also carry "invocations" (Lambda invocations
for the workload) when that is not one per file.

Output:
- <chart.png>: throughput (changes/s) and per-file latency (p50, p99) by workload size, log scales;
- on stdout, a markdown summary table (dms2delta against its peer: the Python Lambda end to end,
  PySpark for the decode stage), then a plain-text cost model.

Cost model, with every figure derived from the measured JSON and the prices and assumptions
below (AWS public price list, us-east-1, as taken in 2026):
- Lambda, arm64: $0.0000133334 per GB-second (first pricing tier) and $0.20 per million
  requests. Memory size one would configure: the measured peak RSS rounded up to the next 64 MB
  step above 128 MB, at least 128 MB (no further headroom). Billed seconds: the measured seconds
  (warm invocations; cold starts, imports and S3 transfer are not in the measurement). Requests:
  one invocation per file unless the entry says otherwise.
- Glue 4.0 (Spark): a job every 5 minutes (288 runs a day), 2 DPU (G.1X, the minimum), billed per
  second with a 1-minute minimum at $0.44 per DPU-hour. Seconds per run = max(60, measured Spark
  start-up + measured PySpark seconds per change x the changes arriving in 5 minutes). The PySpark
  peer is the decode stage only, so this is a lower bound for a Glue job that also merges into
  Delta.
- Monthly = 30 days. Daily volumes of 1M, 10M and 100M changes; DMS is assumed to write one file a
  minute (its default CdcMaxBatchInterval of 60 s), so a volume V means files of V / 1440 changes,
  and each pipeline's rates are taken from the workload closest to that file size (log distance).
  The Lambda costs scale linearly from that workload's $ per million changes.
"""

import json
import math
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (the backend must be chosen first)

LAMBDA_USD_PER_GB_S = 0.0000133334
LAMBDA_USD_PER_REQUEST = 0.20 / 1e6
LAMBDA_MAX_MB = 10240
GLUE_USD_PER_DPU_HOUR = 0.44
GLUE_DPUS = 2
GLUE_MIN_BILLED_S = 60
GLUE_RUNS_PER_DAY = 288
DAYS_PER_MONTH = 30
DMS_FILES_PER_DAY = 1440
DAILY_VOLUMES = [1_000_000, 10_000_000, 100_000_000]

# name: (label, colour, line style); decode-only stages dashed.
PIPELINES = {
    "dms2delta": ("dms2delta (Rust Lambdas, end to end)", "tab:blue", "-"),
    "dms2delta_dv": ("dms2delta, deletion vectors (end to end)", "tab:cyan", "-"),
    "dms2delta_group": ("dms2delta, 10 files per commit (end to end)", "tab:purple", "-"),
    "python": ("Python Lambda + deltalake (end to end)", "tab:orange", "-"),
    "dms2delta_decode": ("dms2delta decode stage", "tab:green", "--"),
    "spark_decode": ("PySpark decode, local[2] (Glue-style)", "tab:red", "--"),
}
PEER = {"dms2delta": "python", "dms2delta_dv": "python", "dms2delta_group": "python", "dms2delta_decode": "spark_decode"}
LAMBDAS = ["dms2delta", "dms2delta_dv", "dms2delta_group", "python"]


def measured(workload: dict, name: str) -> dict | None:
    """The pipeline's numbers, or None when it is missing or failed."""
    p = workload.get("pipelines", {}).get(name)
    if not p or "error" in p or p.get("changes_per_s") is None:
        return None
    return p


def status(workload: dict, name: str) -> str:
    p = workload.get("pipelines", {}).get(name)
    if p is None:
        return "not run"
    return f"error: {p['error']}" if "error" in p else "no numbers"


def fmt(x: float, digits: int = 3) -> str:
    """Three significant figures, thousands separated."""
    if x == 0:
        return "0"
    decimals = max(0, digits - 1 - int(math.floor(math.log10(abs(x)))))
    return f"{x:,.{decimals}f}"


def usd(x: float) -> str:
    """Cents for a dollar or more; three significant figures below, so small sums do not read 0.00."""
    return f"{x:,.2f}" if x >= 1 else fmt(x)


def draw(results: dict, workloads: list[dict], png: str) -> None:
    xs = [w["changes_per_file"] for w in workloads]
    fig, (thr, lat) = plt.subplots(1, 2, figsize=(13, 6))
    nan = float("nan")
    for name, (label, colour, style) in PIPELINES.items():
        ps = [measured(w, name) for w in workloads]
        if not any(ps):
            continue

        # NaN where a pipeline has no numbers, so its line breaks there instead of bridging.
        def ys(key):
            return [p[key] if p else nan for p in ps]

        thr.plot(xs, ys("changes_per_s"), style, marker="o", color=colour, label=label)
        lat.plot(xs, ys("p50_ms"), style, marker="o", color=colour)
        lat.plot(xs, ys("p99_ms"), ":", marker="^", color=colour, alpha=0.8)

    ticks = [f"{w['name']}\n{fmt(w['changes_per_file'])}/file" for w in workloads]
    for ax in (thr, lat):
        ax.set_yscale("log")
        ax.set_xscale("log")
        ax.set_xticks(xs, ticks)
        ax.minorticks_off()
        ax.set_xlabel("workload (changes per DMS file, log scale)")
        ax.grid(True, which="major", alpha=0.3)
        if len(xs) == 1:
            ax.set_xlim(xs[0] / 3, xs[0] * 3)
    thr.set_title("Throughput (higher is better)")
    thr.set_ylabel("changes applied per second (log scale)")
    lat.set_title("Latency per file, p50 and p99 (lower is better)")
    lat.set_ylabel("milliseconds per file (log scale)")
    handles, labels = thr.get_legend_handles_labels()
    handles += [plt.Line2D([], [], color="grey", marker="o"), plt.Line2D([], [], color="grey", ls=":", marker="^")]
    labels += ["latency p50: o, the pipeline's line", "latency p99: ^, dotted"]
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=9, bbox_to_anchor=(0.5, 0.06))

    failed = [f"{w['name']}/{n}: {status(w, n)}" for w in workloads for n in PIPELINES if not measured(w, n)]
    note = f"machine: {results.get('machine', '?')}   commit: {results.get('commit', '?')}"
    if failed:
        note += "\nnot plotted: " + "; ".join(failed)
    fig.text(0.01, 0.005, note, fontsize=7, va="bottom")
    fig.suptitle("DMS files to Delta: dms2delta vs Python Lambda and PySpark, same files")
    fig.tight_layout(rect=(0, 0.17, 1, 0.97))
    fig.savefig(png, dpi=120)


def summary(workloads: list[dict]) -> None:
    print("| workload | changes/file | pipeline | changes/s | p50 ms | p99 ms | peak RSS MiB | vs peer |")
    print("|---|---:|---|---:|---:|---:|---:|---|")
    for w in workloads:
        for name in PIPELINES:
            p = measured(w, name)
            head = f"| {w['name']} | {fmt(w['changes_per_file'])} | {name} |"
            if not p:
                if name in w.get("pipelines", {}):
                    print(f"{head} {status(w, name)} | | | | |")
                continue
            vs = ""
            peer = measured(w, PEER[name]) if name in PEER else None
            if peer:
                vs = (f"{p['changes_per_s'] / peer['changes_per_s']:.2f}x {PEER[name]}'s changes/s, "
                      f"{p['maxrss_kib'] / peer['maxrss_kib']:.2f}x its RSS")
            elif name in PEER:
                vs = f"{PEER[name]}: {status(w, PEER[name])}"
            else:
                vs = "peer"
            print(f"{head} {fmt(p['changes_per_s'])} | {fmt(p['p50_ms'])} | {fmt(p['p99_ms'])} | "
                  f"{p['maxrss_kib'] / 1024:,.0f} | {vs} |")


def lambda_mb(maxrss_kib: int) -> int:
    """Configured memory: peak RSS rounded up to the next 64 MB step above 128 MB, min 128 MB."""
    mib = maxrss_kib / 1024
    return 128 if mib <= 128 else 128 + 64 * math.ceil((mib - 128) / 64)


def lambda_cost(w: dict, p: dict) -> dict:
    mb = lambda_mb(p["maxrss_kib"])
    per_m = 1e6 / w["changes"]
    gb_s = p["secs"] * mb / 1024 * per_m
    requests = p.get("invocations", p["files"]) * per_m
    return {"mb": mb, "gb_s": gb_s, "requests": requests,
            "usd": gb_s * LAMBDA_USD_PER_GB_S + requests * LAMBDA_USD_PER_REQUEST}


def closest(workloads: list[dict], name: str, changes_per_file: float) -> dict | None:
    have = [w for w in workloads if measured(w, name)]
    if not have:
        return None
    return min(have, key=lambda w: abs(math.log(w["changes_per_file"] / changes_per_file)))


def far(w: dict, changes_per_file: float) -> str:
    """A mark for a workload whose file size is far from the one the volume implies."""
    ratio = w["changes_per_file"] / changes_per_file
    return "*" if ratio > 3 or ratio < 1 / 3 else ""


def costs(workloads: list[dict]) -> None:
    print()
    print("COST MODEL (prices: AWS public price list, us-east-1, taken 2026)")
    print(f"  Lambda arm64: ${LAMBDA_USD_PER_GB_S:.10f} per GB-second + ${LAMBDA_USD_PER_REQUEST * 1e6:.2f} per million "
          "requests; one invocation per file unless the bench says otherwise.")
    print("  Memory configured = measured peak RSS rounded up to the next 64 MB step above 128 MB "
          f"(at least 128 MB, at most {LAMBDA_MAX_MB:,} MB); billed time = measured seconds")
    print("  (warm invocations: no cold starts, no S3 transfer; Lambda's per-invocation rounding up to 1 ms not applied).")
    print()
    print(f"{'workload':<12} {'pipeline':<16} {'secs':>9} {'peak MiB':>9} {'Lambda MB':>9} "
          f"{'GB-s / M changes':>17} {'requests / M':>13} {'$ / M changes':>14}")
    for w in workloads:
        for name in LAMBDAS:
            p = measured(w, name)
            if not p:
                print(f"{w['name']:<12} {name:<16} {status(w, name)}")
                continue
            c = lambda_cost(w, p)
            over = "  (over Lambda's memory limit)" if c["mb"] > LAMBDA_MAX_MB else ""
            print(f"{w['name']:<12} {name:<16} {p['secs']:>9.3f} {p['maxrss_kib'] / 1024:>9,.0f} {c['mb']:>9,} "
                  f"{c['gb_s']:>17,.2f} {c['requests']:>13,.0f} {fmt(c['usd']):>14}{over}")

    print()
    print(f"Glue 4.0: a Spark job every 5 minutes ({GLUE_RUNS_PER_DAY} runs/day), {GLUE_DPUS} DPU G.1X, "
          f"${GLUE_USD_PER_DPU_HOUR} per DPU-hour, per second with a {GLUE_MIN_BILLED_S} s minimum.")
    print("  run secs = max(60, measured Spark start-up + measured PySpark decode secs per change x changes "
          "per 5 minutes);")
    print("  decode only (no Delta merge) and first-file JVM warm-up averaged over the workload's files: "
          "a lower bound for Glue.")
    print(f"Monthly = {DAYS_PER_MONTH} days. DMS assumed to write one file a minute, so V changes/day = files "
          f"of V/{DMS_FILES_PER_DAY} changes;")
    print("  each pipeline's rates come from the measured workload closest to that file size; Lambda $ scale "
          "linearly from its $ per M changes.")
    print()
    print(f"{'changes/day':>12} {'file size':>10}  {'Glue run s':>10} {'Glue $/month':>13}  "
          f"{'dms2delta $/month':>17}  {'grouped $/month':>15}  {'Python Lambda $/month':>21}  "
          "rates from workload (glue/dms2delta/grouped/python)")
    for volume in DAILY_VOLUMES:
        per_file = volume / DMS_FILES_PER_DAY
        row = f"{volume:>12,} {per_file:>10,.0f}  "
        used = []

        w = closest(workloads, "spark_decode", per_file)
        if w:
            s = measured(w, "spark_decode")
            run_s = s.get("startup_secs", 0) + s["secs"] / w["changes"] * volume / GLUE_RUNS_PER_DAY
            billed = max(GLUE_MIN_BILLED_S, run_s)
            monthly = GLUE_DPUS * billed / 3600 * GLUE_USD_PER_DPU_HOUR * GLUE_RUNS_PER_DAY * DAYS_PER_MONTH
            flag = "!" if run_s > 300 else " "
            row += f"{run_s:>9.1f}{flag} {usd(monthly):>13}  "
            used.append(w["name"] + far(w, per_file))
        else:
            row += f"{'n/a':>10} {'n/a':>13}  "
            used.append("-")

        for name, width in (("dms2delta", 17), ("dms2delta_group", 15), ("python", 21)):
            w = closest(workloads, name, per_file)
            if w:
                usd_per_m = lambda_cost(w, measured(w, name))["usd"]
                row += f"{usd(usd_per_m * volume / 1e6 * DAYS_PER_MONTH):>{width}}  "
                used.append(w["name"] + far(w, per_file))
            else:
                row += f"{'n/a':>{width}}  "
                used.append("-")
        print(row + "/".join(used))
    print("  (! = a run longer than the 5-minute interval: 2 DPU would not keep up;")
    print("   * = that workload's files are over 3x smaller or larger than the assumed file size, so the")
    print("   linear scaling is an extrapolation: per-file overheads weigh differently at another file size)")


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        results = json.load(f)
    workloads = sorted(results.get("workloads", []), key=lambda w: w["changes_per_file"])
    if not workloads:
        sys.exit("no workloads in " + sys.argv[1])
    draw(results, workloads, sys.argv[2])
    print(f"machine: {results.get('machine', '?')}; commit: {results.get('commit', '?')}")
    print()
    summary(workloads)
    costs(workloads)
    print()
    print(f"chart: {sys.argv[2]}")


if __name__ == "__main__":
    main()
