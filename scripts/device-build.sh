#!/usr/bin/env bash
# Builds, here, everything scripts/device-check.sh runs on a GPU machine (CUDA 13, cuDNN 9 and
# PyTorch there, but no Rust toolchain and no network) and gathers it, stripped, into
# target/device-bin/: the nst binary, xtask (the bench) and the test binaries of nst-cuda,
# nst-tensor, nst-vgg, nst-loss and nst-optim. Carry only that folder to the GPU machine.
#
# They are built with NST_EMBED_WEIGHTS=0, in their own target folder (the normal build is
# untouched): they read weights/vgg19.safetensors from the tree instead of each embedding
# 20 MB, which keeps the folder well under the 64 MiB a device run can carry.
set -euo pipefail
cd "$(dirname "$0")/.."
export NST_EMBED_WEIGHTS=0 CARGO_TARGET_DIR=target/device-build
out=target/device-bin

cargo build --release -p nst-cli -p xtask
artifacts=$(cargo test --release --no-run -p nst-cuda -p nst-tensor -p nst-vgg -p nst-loss \
    -p nst-optim --message-format=json)

rm -rf "$out"
mkdir -p "$out/tests"
cp "$CARGO_TARGET_DIR/release/nst" "$CARGO_TARGET_DIR/release/xtask" "$out/"
# Each test executable as <crate>-<target> (several crates have a test named `reference`).
printf '%s\n' "$artifacts" >"$CARGO_TARGET_DIR/test-artifacts.json"
python3 - "$out/tests" "$CARGO_TARGET_DIR/test-artifacts.json" <<'PY'
import json, os, shutil, sys
dest = sys.argv[1]
for line in open(sys.argv[2]):
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    if not m["profile"]["test"]:
        continue
    crate = m["package_id"].split("#")[0].rsplit("/", 1)[-1]
    shutil.copy(m["executable"], os.path.join(dest, f"{crate}-{m['target']['name']}"))
PY
strip "$out"/nst "$out"/xtask "$out"/tests/*
# The test binaries find fixtures/ through this path (CARGO_MANIFEST_DIR); device-check.sh
# links it to the tree there.
pwd >"$out/build-root"
ls -la "$out" "$out/tests"
du -sh "$out"
