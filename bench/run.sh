#!/usr/bin/env bash
# dms2delta against the Python `deltalake` pipeline and a PySpark (Glue-style) decode job, on the
# same generated DMS output: sets up the peers' Python venv (once), then runs the bench, which
# checks every pipeline's result, writes bench/results/pipelines.json and draws
# bench/results/pipelines.png. Extra arguments are passed to `cargo bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${DMS2DELTA_BENCH_VENV:-$HOME/.cache/dms2delta-bench-venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dms2delta-target}"
DMS2DELTA_BENCH_PYTHON="$VENV/bin/python" cargo bench -p dms2delta --bench pipelines "$@"
