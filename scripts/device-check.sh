#!/usr/bin/env bash
# The prepared check for a machine with an NVIDIA GPU, CUDA 13, cuDNN 9 and PyTorch, but no
# Rust toolchain and no network. Build beforehand, on x86-64 Linux with the toolchain:
#   scripts/device-build.sh        (→ target/device-bin/, 27 MB: carry only that folder)
# then on the GPU machine, from the repository root:
#   scripts/device-check.sh        (about 5 minutes; stops each step at its own timeout)
# Everything it prints also goes, with the logs, the images and the reports, to one folder:
# $NST_DEVICE_OUT, else $OUT (the device tool's output folder), else target/device-check.
#
# Steps: the GPU; every CUDA test (NST_REQUIRE_CUDA=1: a missing GPU fails instead of
# skipping), including the PyTorch float64 reference tests of VGG-19, the losses and L-BFGS
# run on CUDA; compute-sanitizer memcheck on the kernel parity tests; nst on the README
# example with --device cuda at tf32 and fp32 (the images and reports); one 4096² iteration
# (peak GPU memory); the bench, ours on CPU and CUDA against PyTorch on both.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${NST_DEVICE_BIN:-target/device-bin}
OUT=${NST_DEVICE_OUT:-${OUT:-target/device-check}}
PY=${NST_PYTHON:-python3}
mkdir -p "$OUT/logs"
exec > >(tee -a "$OUT/summary.txt") 2>&1
status=0
step() { echo; echo "== $* ($(date +%T))"; }

# cudarc loads libcuda, libnvrtc, libcublas (and cuDNN) by name: add the pip CUDA wheels'
# library folders and the toolkit's.
NV_LIBS=$("$PY" - <<'PY' 2>/dev/null
import glob, os, site
dirs = set()
for base in site.getsitepackages() + [site.getusersitepackages()]:
    for lib in glob.glob(os.path.join(base, "nvidia", "**", "lib*.so*"), recursive=True):
        dirs.add(os.path.dirname(lib))
print(":".join(sorted(dirs)))
PY
)
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -d "$d" ] && NV_LIBS="$NV_LIBS:$d"
done
export LD_LIBRARY_PATH="${NV_LIBS#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="$PATH:/usr/local/cuda/bin"

step "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
if [ ! -x "$BIN/nst" ]; then
    echo "no $BIN/nst: run scripts/device-build.sh where Rust is installed and carry $BIN"
    exit 2
fi

step "CUDA tests (every test binary; the per-device tests' cuda halves must run)"
for t in "$BIN"/tests/*; do
    name=$(basename "$t")
    # Per-device tests: only their CUDA halves (the CPU ones ran in CI). Others: all.
    filter=""
    case "$name" in nst-tensor-gradcheck|nst-loss-reference|nst-vgg-reference|nst-optim-reference) filter="cuda" ;; esac
    NST_REQUIRE_CUDA=1 timeout 240 "$t" $filter --test-threads 1 >"$OUT/logs/$name.log" 2>&1
    rc=$?
    [ $rc -ne 0 ] && status=1
    printf '%-32s rc=%-3s %s\n' "$name" "$rc" "$(grep -E '^test result' "$OUT/logs/$name.log" | tail -1)"
    grep -E "panicked|FAILED" "$OUT/logs/$name.log" | head -5
done

step "compute-sanitizer memcheck on the kernel parity tests"
if command -v compute-sanitizer >/dev/null; then
    NST_REQUIRE_CUDA=1 timeout 180 compute-sanitizer --tool memcheck --error-exitcode 9 \
        "$BIN/tests/nst-cuda-kernels" --test-threads 1 >"$OUT/logs/memcheck.log" 2>&1
    rc=$?
    [ $rc -ne 0 ] && status=1
    echo "rc=$rc"; grep -E "ERROR SUMMARY|test result" "$OUT/logs/memcheck.log" | tail -3
else
    echo "compute-sanitizer not found (not on PATH nor in /usr/local/cuda/bin)"
fi

step "nst on the README example, --device cuda (tf32, the default, then fp32)"
for precision in tf32 fp32; do
    timeout 240 "$BIN/nst" -c examples/content_chelsea.png \
        -s examples/style_vangogh_starry_night.jpg -o "$OUT/result_cuda_$precision.png" \
        --device cuda --precision "$precision" --report "$OUT/result_cuda_$precision.json" \
        >"$OUT/logs/readme_$precision.log" 2>&1
    rc=$?
    [ $rc -ne 0 ] && status=1
    tail -2 "$OUT/logs/readme_$precision.log" | head -1
    "$PY" - "$OUT/result_cuda_$precision.json" "$precision" 2>/dev/null <<'PY' || echo "rc=$rc, no report"
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]}: final loss {r['trace'][-1]['total']:.6e}, "
      f"{r['timing']['ms_per_iter_median']:.1f} ms/iter at the final scale, "
      f"{r['timing']['total_s']:.1f} s in all, peak GPU {r.get('peak_device_bytes', 0) / 2**20:.0f} MiB, "
      f"device {r['device']}")
PY
done

step "one 4096² iteration on the GPU (peak memory)"
timeout 240 "$BIN/nst" -c examples/content_chelsea.png -s examples/style_vangogh_starry_night.jpg \
    -o "$OUT/big_4096.png" --device cuda --size 4096 --scales 1 --iters 1 \
    --report "$OUT/big_4096.json" >"$OUT/logs/big_4096.log" 2>&1
echo "rc=$?"; tail -1 "$OUT/logs/big_4096.log"
"$PY" -c "import json,sys; r=json.load(open(sys.argv[1])); print('4096: peak GPU %.0f MiB, %.0f ms/iter' % (r['peak_device_bytes']/2**20, r['timing']['ms_per_iter_median']))" "$OUT/big_4096.json" 2>/dev/null

step "bench: ours (CPU, CUDA fp32/tf32) against PyTorch on the same devices"
timeout 420 "$BIN/xtask" bench --device cpu,cuda --sizes 512,1024 --iters 10 --peer \
    2>"$OUT/logs/bench.log" | tee "$OUT/bench.md"
cp target/bench/bench.json "$OUT/bench.json" 2>/dev/null

echo; echo "status $status; logs, images and reports in $OUT"
exit $status
