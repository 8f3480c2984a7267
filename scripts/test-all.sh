#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what it needs (Python tools, PostgreSQL's
# server), then runs the format check, clippy with warnings denied, every test, and the
# template checks. README.md's test command.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dms2delta-target}"
VENV="${DMS2DELTA_VENV:-$HOME/.cache/dms2delta-venv}"
export CARGO_TERM_COLOR=never

step() { printf '\n== %s (%s)\n' "$1" "$(date +%H:%M:%S)"; }

step "python tools (independent Delta reader, local S3/SQS endpoint, template checks) in $VENV"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r scripts/requirements-test.txt
export DMS2DELTA_PYTHON="$VENV/bin/python"

CHECKOV_VENV="${DMS2DELTA_CHECKOV_VENV:-$HOME/.cache/dms2delta-checkov}"
if [ ! -x "$CHECKOV_VENV/bin/python" ]; then
  python3 -m venv "$CHECKOV_VENV"
fi
"$CHECKOV_VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r scripts/requirements-checkov.txt

step "PostgreSQL server for the end-to-end test (Debian package postgresql)"
# shared/tests/postgres.rs starts its own throwaway cluster from these binaries and fails if it
# cannot; DMS2DELTA_SKIP_POSTGRES=1 skips that test (and this step).
if [ "${DMS2DELTA_SKIP_POSTGRES:-}" != 1 ] && [ -z "${DMS2DELTA_PG_BIN:-}" ] \
  && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "no PostgreSQL server binaries and no apt-get: install PostgreSQL and set DMS2DELTA_PG_BIN to its bin folder, or set DMS2DELTA_SKIP_POSTGRES=1" >&2
    exit 1
  fi
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi

step "rust components"
rustup component add rustfmt clippy >/dev/null 2>&1 || true

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "sample events and the bad-input corpus are up to date"
python3 events/generate.py --check
"$VENV/bin/python" tests/bad-input/generate.py --check

step "template.yaml: cfn-lint, sam validate --lint, sam validate (offline; they catch different mistakes)"
"$VENV/bin/cfn-lint" template.yaml
SAM_CLI_TELEMETRY=0 "$VENV/bin/sam" validate --lint --template template.yaml
SAM_CLI_TELEMETRY=0 "$VENV/bin/sam" validate --region us-east-1 --template template.yaml

step "template.yaml: security scan (checkov; every finding fixed or justified inline)"
"$CHECKOV_VENV/bin/checkov" -f template.yaml --framework cloudformation --compact --quiet --skip-download

step "cargo test"
export DMS2DELTA_CONVERGENCE_CASES="${DMS2DELTA_CONVERGENCE_CASES:-60}"
cargo test --workspace --no-fail-fast 2>&1 | tee "${TMPDIR:-/tmp}/dms2delta-test.log"
status=${PIPESTATUS[0]}
if [ "$status" -ne 0 ]; then
  echo "cargo test failed"
  exit "$status"
fi
step "done"
