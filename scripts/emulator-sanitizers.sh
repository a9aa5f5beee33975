#!/usr/bin/env bash
# Runs every CUDA-emulator test of the workspace's libraries (the `cuda_emulated` halves of
# nst-tensor, nst-vgg, nst-loss and nst-optim, and nst-cuda's tests) with the kernels
# compiled under AddressSanitizer, then ThreadSanitizer: out-of-bounds accesses and data
# races in kernels.cu at the shapes VGG-19 really uses, which nst-cuda's own tests (which
# rerun themselves under both in `cargo test`) check only at small ones. No GPU needed;
# needs g++ with libasan and libtsan (Debian: g++ brings both). About 5 minutes on 2 cores.
# The emulator's blocks are 32 threads here; NST_EMULATOR_FULL_BLOCKS=1 runs the GPU's 256
# (as nst-cuda's own reruns do), but makes this take hours (gradcheck alone: 22 s → 8 min).
#
#   scripts/emulator-sanitizers.sh [address|thread ...]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -gt 0 ]; then sanitizers=("$@"); else sanitizers=(address thread); fi

artifacts=$(cargo test --release --no-run -p nst-cuda -p nst-tensor -p nst-vgg -p nst-loss \
    -p nst-optim --message-format=json)
# "<crate> <test executable>" a line: test harnesses only (cargo test --no-run also builds
# the examples).
mapfile -t binaries < <(printf '%s\n' "$artifacts" | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") \
            and m["profile"]["test"]:
        crate = m["manifest_path"].split("/")[-2]  # crates/<crate>/Cargo.toml
        print(crate, m["executable"])')

export NST_REQUIRE_EMULATOR=1
export ASAN_OPTIONS=detect_leaks=0
# Only the kernels are instrumented: Rust's own synchronisation is invisible to TSan.
export TSAN_OPTIONS="ignore_noninstrumented_modules=1 halt_on_error=1 exitcode=66"
failed=0
for sanitizer in "${sanitizers[@]}"; do
    runtime=$(g++ -print-file-name="lib${sanitizer:0:1}san.so")
    case "$runtime" in
        /*) ;;
        *) echo "g++ has no lib${sanitizer:0:1}san.so" >&2; exit 1 ;;
    esac
    for line in "${binaries[@]}"; do
        read -r crate binary <<<"$line"
        # nst-cuda's binaries run whole (their GPU tests skip without a GPU); the others'
        # emulator halves only.
        filter=cuda_emulated
        [ "$crate" = nst-cuda ] && filter=
        start=$(date +%s)
        if log=$(NST_EMULATOR_SANITIZER=$sanitizer LD_PRELOAD=$runtime \
            "$binary" $filter 2>&1); then
            status=ok
        else
            status=FAILED
            failed=1
        fi
        echo "$sanitizer $crate $(basename "$binary"): $status in $(( $(date +%s) - start )) s," \
            "$(grep 'test result' <<<"$log" | tail -n1)"
        if [ "$status" = FAILED ]; then
            grep -E -A12 'ERROR: AddressSanitizer|WARNING: ThreadSanitizer|runtime error|panicked' \
                <<<"$log" | head -n 40
        fi
    done
done
exit "$failed"
