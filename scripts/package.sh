#!/usr/bin/env bash
# Release packages: builds every Lambda function (decode, commit, compact, reprocess) in release
# mode with glibc pinned to 2.34 (Lambda's provided.al2023), zips each with `bootstrap` at the
# root, refuses any zip whose binary needs a newer glibc symbol, is built for the wrong machine,
# or exceeds 30 MB, then writes SHA256SUMS, manifest.json and template-<arch>.yaml (template.yaml
# deploying those zips). docs/deploy.md, "Release packages", says how to deploy them.
#
#   bash scripts/package.sh                  # x86_64, and arm64 if its standard library is installed
#   bash scripts/package.sh --arch x86_64    # one architecture (repeat --arch for several)
#   bash scripts/package.sh --dist out/      # another release folder (default: dist/)
#
# The first build takes long (the Delta engine in release mode: about an hour on 2 cores); run it
# under `nice` on a shared machine. Release artifacts go to their own target folder, so debug
# builds and tests keep theirs.
set -euo pipefail
cd "$(dirname "$0")/.."

DIST=dist
ARCHES=()
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) ARCHES+=("$2"); shift 2 ;;
    --dist) DIST="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

export CARGO_TARGET_DIR="${DMS2DELTA_RELEASE_TARGET:-$HOME/.cache/dms2delta-release-target}"
VENV="${DMS2DELTA_LAMBDA_VENV:-$HOME/.cache/dms2delta-lambda-venv}"
export CARGO_TERM_COLOR=never
GLIBC=2.34

step() { printf '\n== %s (%s)\n' "$1" "$(date +%H:%M:%S)"; }

step "cargo-lambda and Zig (PyPI) in $VENV"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r scripts/requirements-package.txt
# cargo-lambda from the venv; cargo-zigbuild finds Zig as `python3 -m ziglang` there.
export PATH="$VENV/bin:$PATH"

triple() {
  case "$1" in
    x86_64) echo x86_64-unknown-linux-gnu ;;
    arm64) echo aarch64-unknown-linux-gnu ;;
    *) echo "unknown architecture $1 (x86_64 or arm64)" >&2; exit 2 ;;
  esac
}
# Zig links any target, but rustc needs the target's standard library (rustup target add ...).
has_std() { [ -d "$(rustc --print sysroot)/lib/rustlib/$(triple "$1")/lib" ]; }

if [ ${#ARCHES[@]} -eq 0 ]; then
  ARCHES=(x86_64)
  if has_std arm64; then
    ARCHES+=(arm64)
  else
    echo "arm64 skipped: no Rust standard library for aarch64-unknown-linux-gnu" \
      "(rustup target add aarch64-unknown-linux-gnu, then run again)" >&2
  fi
fi
for arch in "${ARCHES[@]}"; do
  if ! has_std "$arch"; then
    echo "no Rust standard library for $(triple "$arch"): rustup target add $(triple "$arch")" >&2
    exit 1
  fi
done

BUILDS=()
TARGETS=()
for arch in "${ARCHES[@]}"; do
  target="$(triple "$arch").$GLIBC"
  out="$CARGO_TARGET_DIR/lambda-$arch"
  rm -rf "$out"
  # One function per build, as `sam build` does from each function's crate: built together,
  # cargo would unify the crates' features (decode would link the Delta engine it does not
  # use). The dependencies the functions share are compiled once and reused.
  for function in decode commit compact reprocess; do
    step "$arch: $function ($target)"
    cargo lambda build --release --compiler cargo-zigbuild --target "$target" --lambda-dir "$out" --locked -p "$function"
  done
  BUILDS+=(--build "$arch=$out")
  TARGETS+=("$target")
done

step "zip, check (glibc <= $GLIBC, machine, <= 30 MB), checksums, manifest"
cargo build --release --locked -p dms2delta-packager
dirty=()
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  dirty=(--git-dirty)
fi
"$CARGO_TARGET_DIR/release/dms2delta-packager" package --dist "$DIST" "${BUILDS[@]}" \
  --template template.yaml \
  --git-commit "$(git rev-parse HEAD)" "${dirty[@]}" \
  --rust-version "$(rustc -V)" \
  --toolchain "$(cargo lambda --version | head -1), zig $(python3 -m ziglang version), targets ${TARGETS[*]}"
step "done: $DIST"
