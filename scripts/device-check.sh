#!/usr/bin/env bash
# The prepared check for a machine with an NVIDIA GPU, CUDA 13, cuDNN 9 and PyTorch, but no
# Rust toolchain and no network. Build beforehand, on x86-64 Linux with the toolchain:
#   scripts/device-build.sh        (→ target/device-bin/, 33 MB: carry only that folder)
# then on the GPU machine, from the repository root:
#   scripts/device-check.sh        (about 7 minutes on an H200; each step has its own timeout)
# Everything it prints also goes, with the logs, the images and the reports, to one folder:
# $NST_DEVICE_OUT, else $OUT (the device tool's output folder), else target/device-check;
# with NST_DEVICE_PACK=file.tgz, also packed into that one archive at the end.
#
# Steps: the GPU; every CUDA test (NST_REQUIRE_CUDA=1: a missing GPU fails instead of
# skipping), including the PyTorch float64 reference tests of VGG-19, the losses and L-BFGS
# run on CUDA; the L-BFGS trace with cuDNN's algorithm choices logged, and without cuDNN;
# compute-sanitizer memcheck on the kernel parity tests; nst on the README example with
# --device cuda at tf32 (twice: the same bits?), fp32, tf32 searching for every shape's
# algorithms, and tf32 with NHWC activations (the images and reports); one 4096² iteration,
# whole and in tiles
# (peak GPU memory); the GPU time per operation (NST_CUDA_PROFILE=1, NCHW and NHWC); the
# bench, ours against PyTorch on CUDA at 512², 1024² and 2048², ours again with NHWC
# activations, PyTorch alone in NHWC, PyTorch's time per GPU kernel at 1024² (torch.profiler)
# beside ours, then the bench on the CPU at 512²; last, one 8192²
# iteration (past cuDNN's 2³¹ values a tensor: convolutions in channel groups).
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${NST_DEVICE_BIN:-target/device-bin}
OUT=${NST_DEVICE_OUT:-${OUT:-target/device-check}}
PY=${NST_PYTHON:-python3}
mkdir -p "$OUT/logs"
exec 3>&1 4>&2 > >(tee -a "$OUT/summary.txt") 2>&1
tee_pid=$!
status=0
step() { echo; echo "== $* ($(date +%T))"; }
# cuDNN's measured algorithm choices are kept between runs (nst-cuda's algorithm_cache): keep
# them here, not in this machine's ~/.cache, and give the steps that measure the search their
# own empty folder. The folders go into the pack: they list what cuDNN chose.
rm -rf "$OUT/cache"
export NST_CACHE_DIR="$OUT/cache/tests"

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

# The test binaries read fixtures/ under the path they were built in (device-build.sh
# records it): point that path at this tree when it is free.
root=$(cat "$BIN/build-root" 2>/dev/null)
if [ -n "$root" ] && [ ! -e "$root" ] && [ "$root" != "$PWD" ]; then
    mkdir -p "$(dirname "$root")" && ln -s "$PWD" "$root" || echo "cannot link $root to this tree: reference tests will not find fixtures/"
fi

step "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
if [ ! -x "$BIN/nst" ]; then
    echo "no $BIN/nst: run scripts/device-build.sh where Rust is installed and carry $BIN"
    exit 2
fi

step "CUDA tests (every test binary; the per-device tests' cuda halves must run)"
for t in "$BIN"/tests/*; do
    name=$(basename "$t")
    # Per-device tests: only their cuda halves (CI runs the cpu and cuda_emulated ones).
    # Others: all.
    filter=()
    case "$name" in nst-tensor-gradcheck|nst-loss-reference|nst-vgg-reference|nst-optim-reference) filter=(::cuda --skip cuda_emulated) ;; esac
    NST_REQUIRE_CUDA=1 timeout 240 "$t" "${filter[@]}" --test-threads 1 --nocapture >"$OUT/logs/$name.log" 2>&1
    rc=$?
    [ $rc -ne 0 ] && status=1
    printf '%-32s rc=%-3s %s\n' "$name" "$rc" "$(grep -E '^test result' "$OUT/logs/$name.log" | tail -1)"
    grep -E "panicked|FAILED|^trace\[[0-9]\]:| tf32 .*truncated" "$OUT/logs/$name.log" | head -14
done

step "the cuDNN algorithms chosen for the L-BFGS reference test (fp32)"
NST_CACHE_DIR="$OUT/cache/lbfgs-log" NST_CUDNN_LOG=1 NST_REQUIRE_CUDA=1 \
    timeout 120 "$BIN/tests/nst-optim-reference" --exact \
    lbfgs_trace_matches_reference::cuda --nocapture >"$OUT/logs/lbfgs-cudnn-log.log" 2>&1
rc=$?; [ $rc -ne 0 ] && status=1
echo "rc=$rc"; grep -E "^cuDNN" "$OUT/logs/lbfgs-cudnn-log.log" | sort | uniq -c

step "the L-BFGS reference trace on CUDA without cuDNN (NST_CUDNN=0: im2col + cuBLAS), to compare"
NST_CUDNN=0 NST_REQUIRE_CUDA=1 timeout 120 "$BIN/tests/nst-optim-reference" --exact \
    lbfgs_trace_matches_reference::cuda --nocapture >"$OUT/logs/lbfgs-im2col.log" 2>&1
rc=$?; [ $rc -ne 0 ] && status=1
echo "rc=$rc"; grep -E "^trace\[[0-9]\]:|^test result" "$OUT/logs/lbfgs-im2col.log"

step "compute-sanitizer memcheck on the kernel parity tests"
if command -v compute-sanitizer >/dev/null; then
    NST_REQUIRE_CUDA=1 timeout 180 compute-sanitizer --tool memcheck --error-exitcode 9 \
        "$BIN/tests/nst-cuda-kernels" --test-threads 1 --skip two_giga_values \
        >"$OUT/logs/memcheck.log" 2>&1
    rc=$?
    [ $rc -ne 0 ] && status=1
    echo "rc=$rc"; grep -E "ERROR SUMMARY|test result" "$OUT/logs/memcheck.log" | tail -3
else
    echo "compute-sanitizer not found (not on PATH nor in /usr/local/cuda/bin)"
fi

step "nst on the README example, --device cuda (tf32 twice, fp32, tf32 searching every shape, tf32 NHWC)"
# tf32 searches for the final scale's algorithms and keeps them; tf32_again takes them from
# the cache (what that saves: compare the final scale's time before its first step).
# tf32_search_all: cuDNN's algorithm search for every shape (NST_SEARCH_EVERY_SCALE=1: every
# scale's and the targets', as before the heuristic picks), with an empty cache: what the
# heuristic picks save in one-off time and cost in iterations (compare its lines with tf32's).
# tf32_nhwc: activations stored NHWC (NST_CUDA_LAYOUT=nhwc), its own empty cache: whether
# cuDNN's tensor-core convolutions gain from the layout (compare its ms/iter with tf32's).
for run in tf32 tf32_again fp32 tf32_search_all tf32_nhwc; do
    precision=${run%%_*}
    search_all=0; cache="$OUT/cache/readme"; layout=nchw
    [ "$run" = tf32_search_all ] && { search_all=1; cache="$OUT/cache/readme-search-all"; }
    [ "$run" = tf32_nhwc ] && { layout=nhwc; cache="$OUT/cache/readme-nhwc"; }
    NST_CACHE_DIR=$cache NST_SEARCH_EVERY_SCALE=$search_all NST_CUDA_LAYOUT=$layout \
        timeout 240 "$BIN/nst" -c examples/content_chelsea.png \
        -s examples/style_vangogh_starry_night.jpg -o "$OUT/result_cuda_$run.png" \
        --device cuda --precision "$precision" --report "$OUT/result_cuda_$run.json" \
        >"$OUT/logs/readme_$run.log" 2>&1
    rc=$?
    [ $rc -ne 0 ] && status=1
    tail -2 "$OUT/logs/readme_$run.log" | head -1
    "$PY" - "$OUT/result_cuda_$run.json" "$run" 2>/dev/null <<'PY' || echo "rc=$rc, no report"
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]}: final loss {r['trace'][-1]['total']:.6e}, "
      f"{r['timing']['ms_per_iter_median']:.1f} ms/iter at the final scale, "
      f"{r['timing']['total_s']:.1f} s in all, peak GPU {r.get('peak_device_bytes', 0) / 2**20:.0f} MiB, "
      f"device {r['device']}")
t = r["timing"]
print(f"  setup {t['setup_s']:.2f} s; per scale (w×h: before the first step + steps × median): "
      + ", ".join(f"{c['width']}×{c['height']}: {c['before_first_iter_s']:.2f} s + "
                  f"{c['iterations']} × {c['ms_per_iter_median']:.1f} ms" for c in t["scales"]))
PY
done
# The same bits: the images (8-bit) and the reports' loss traces (every iteration, f64).
if [ ! -f "$OUT/result_cuda_tf32.png" ] || [ ! -f "$OUT/result_cuda_tf32_again.png" ]; then
    echo "no two tf32 images to compare"
elif cmp -s "$OUT/result_cuda_tf32.png" "$OUT/result_cuda_tf32_again.png" &&
    "$PY" -c "import json,sys; t=[json.load(open(f))['trace'] for f in sys.argv[1:]]; sys.exit(t[0]!=t[1])" \
        "$OUT/result_cuda_tf32.json" "$OUT/result_cuda_tf32_again.json"; then
    echo "the two tf32 runs gave the same image and the same loss trace"
    rm -f "$OUT/result_cuda_tf32_again.png"
else
    echo "the two tf32 runs differ (image or loss trace): not deterministic"; status=1
fi
# NHWC computes the same up to rounding: its final loss beside NCHW's.
"$PY" - "$OUT/result_cuda_tf32.json" "$OUT/result_cuda_tf32_nhwc.json" 2>/dev/null <<'PY' ||
import json, sys
a, b = (json.load(open(f))["trace"][-1]["total"] for f in sys.argv[1:])
print(f"final loss tf32 nchw {a:.6e}, nhwc {b:.6e}: {abs(a - b) / a:.2e} apart")
PY
    echo "no NCHW and NHWC reports to compare"

# One iteration of the README example at --size $1: its peak GPU memory, time per iteration
# and time before the first step (image big_$1.png, report big_$1.json, log logs/big_$1.log).
big_iteration() {
    timeout 240 "$BIN/nst" -c examples/content_chelsea.png \
        -s examples/style_vangogh_starry_night.jpg -o "$OUT/big_$1.png" --device cuda \
        --size "$1" --scales 1 --iters 1 --report "$OUT/big_$1.json" >"$OUT/logs/big_$1.log" 2>&1
    echo "rc=$?"; tail -1 "$OUT/logs/big_$1.log"
    "$PY" -c "import json,sys; r=json.load(open(sys.argv[1])); t=r['timing']; print('%s: peak GPU %.0f MiB (estimated %.0f), %.0f ms/iter, %.1f s before the first step' % (sys.argv[2], r['peak_device_bytes']/2**20, (r.get('estimated_peak_bytes') or 0)/2**20, t['ms_per_iter_median'], t['scales'][-1]['before_first_iter_s']))" "$OUT/big_$1.json" "$1" 2>/dev/null
}

step "one 4096² iteration on the GPU (peak memory)"
big_iteration 4096

step "the same 4096² iteration in tiles (NST_GPU_MEMORY_LIMIT=4G: the whole image, 9.2 GB, does not fit)"
# The network tile by tile (nst_loss::Objective::new_tiled): the start's loss must be the
# whole image's up to summation order (within 2e-3: both tf32, whose rounding moved a start
# loss by 6.4e-4 in the emulator, with other cuDNN algorithms for the tiles' shapes); the
# peak should be near the estimate, under 4 GiB (12 tiles of 1200 px by the emulator's
# preflight).
NST_GPU_MEMORY_LIMIT=4G timeout 240 "$BIN/nst" -c examples/content_chelsea.png \
    -s examples/style_vangogh_starry_night.jpg -o "$OUT/logs/tiled_4096.png" \
    --device cuda --size 4096 --scales 1 --iters 1 --report "$OUT/tiled_4096.json" \
    >"$OUT/logs/tiled_4096.log" 2>&1
echo "rc=$?"; grep -F "tile by tile" "$OUT/logs/tiled_4096.log"
tail -1 "$OUT/logs/tiled_4096.log"
"$PY" - "$OUT/big_4096.json" "$OUT/tiled_4096.json" 2>/dev/null <<'PY' ||
import json, sys
whole, tiled = (json.load(open(f)) for f in sys.argv[1:])
a, b = whole["trace"][0]["total"], tiled["trace"][0]["total"]
gib = 2**20
print(f"tiles of {tiled['tile_side']} px: start loss {b:.7e}, whole {a:.7e}: "
      f"{abs(a - b) / a:.1e} apart")
print(f"peak GPU {tiled['peak_device_bytes'] / gib:.0f} MiB "
      f"(estimated {tiled['estimated_peak_bytes'] / gib:.0f}); "
      f"{tiled['timing']['ms_per_iter_median']:.0f} ms/iter, "
      f"whole {whole['timing']['ms_per_iter_median']:.0f}")
sys.exit(0 if abs(a - b) / a <= 2e-3 else 1)
PY
    { echo "the tiled start loss is not the whole image's, or no report"; status=1; }
rm -f "$OUT/logs/tiled_4096.png"

step "where the GPU time goes (NST_CUDA_PROFILE=1: each operation timed alone, 3 iterations)"
# tf32 1024² is where nst is furthest from PyTorch: set it beside PyTorch's own profile at the
# same size (torch_profile_1024.txt, written in the PyTorch step below).
for cfg in "tf32 512 nchw" "fp32 512 nchw" "tf32 1024 nchw" "tf32 2048 nchw" "tf32 512 nhwc"; do
    read -r precision size layout <<<"$cfg"
    name="${precision}_${size}_$layout"
    NST_CUDA_PROFILE=1 timeout 120 "$BIN/xtask" bench-worker --device cuda \
        --precision "$precision" --size "$size" --iters 3 --layout "$layout" \
        >"$OUT/logs/profile_$name.json" 2>"$OUT/logs/profile_$name.txt"
    echo "-- $precision $size² $layout (rc=$?)"; head -25 "$OUT/logs/profile_$name.txt"
done

step "the README example with NST_CUDA_PROFILE=1 (one-off costs: the kernels, algorithm choices)"
NST_CACHE_DIR="$OUT/cache/profile-readme" NST_CUDA_PROFILE=1 \
    timeout 240 "$BIN/nst" -c examples/content_chelsea.png \
    -s examples/style_vangogh_starry_night.jpg -o "$OUT/logs/profiled.png" --device cuda -q \
    2>"$OUT/logs/profile_readme.txt"
echo "rc=$?"; head -30 "$OUT/logs/profile_readme.txt"
for what in "conv algorithm search" "conv algorithm heuristics" "conv algorithm remembered" \
    "kernels"; do
    grep -F "× $what" "$OUT/logs/profile_readme.txt" | awk -v what="$what" \
        '{ms += $1; n += $4} END { printf "one-off, %s: %.0f ms in %d calls\n", what, ms, n }'
done
rm -f "$OUT/logs/profiled.png"

step "bench: ours against PyTorch, on CUDA (fp32, tf32) and then on the CPU"
# NST_BENCH_SIZES / _ITERS narrow the CUDA part when device time is short.
timeout 360 "$BIN/xtask" bench --device cuda --sizes "${NST_BENCH_SIZES:-512,1024,2048}" \
    --iters "${NST_BENCH_ITERS:-10}" --peer 2>"$OUT/logs/bench.log" | tee "$OUT/bench.md"
cp target/bench/bench.json "$OUT/bench.json" 2>/dev/null

step "bench: ours with NHWC activations (bench --layout nhwc), against the NCHW rows above"
timeout 200 "$BIN/xtask" bench --device cuda --sizes "${NST_BENCH_SIZES:-512,1024}" \
    --iters "${NST_BENCH_ITERS:-10}" --layout nhwc 2>"$OUT/logs/bench-nhwc.log" |
    tee "$OUT/bench-nhwc.md"
cp target/bench/bench.json "$OUT/bench-nhwc.json" 2>/dev/null

step "PyTorch alone: NHWC (channels_last), deterministic algorithms, and its GPU profile"
# Beside ours in NHWC above: what PyTorch gains from channels_last itself, and what cuDNN's
# deterministic algorithms (which nst takes, PyTorch not) cost it. The
# same pixels and iterations as the bench above (target/bench/*.f32), whose PyTorch rows are
# the NCHW, nondeterministic baseline.
for cfg in "512 on channels_last" "1024 on channels_last" "1024 off channels_last" \
    "1024 off nchw --deterministic"; do
    read -r size tf32 format flag <<<"$cfg"
    input="target/bench/content_$size.f32"
    [ -f "$input" ] || { echo "no $input"; continue; }
    result=$(timeout 60 "$PY" xtask/peer/torch_nst.py --weights weights/vgg19.safetensors \
        --content "target/bench/content_$size.f32" --style "target/bench/style_$size.f32" \
        --size "$size" --iters "${NST_BENCH_ITERS:-10}" --threads 16 --device cuda --tf32 "$tf32" \
        --memory-format "$format" $flag 2>>"$OUT/logs/peer-formats.log")
    echo "$size² tf32 $tf32 $format ${flag:-}: $result"
done
# PyTorch's GPU time per kernel at 1024² tf32 (its default setting), to set beside ours
# (logs/profile_tf32_1024_nchw.txt above): which kind of work nst spends more time on.
if [ -f target/bench/content_1024.f32 ]; then
    timeout 90 "$PY" xtask/peer/torch_nst.py --weights weights/vgg19.safetensors \
        --content target/bench/content_1024.f32 --style target/bench/style_1024.f32 \
        --size 1024 --iters 3 --threads 16 --device cuda --tf32 on \
        --profile "$OUT/logs/torch_profile_1024.txt" 2>>"$OUT/logs/peer-formats.log"
    echo "-- PyTorch's profile, 1024² tf32 (rc=$?)"; head -30 "$OUT/logs/torch_profile_1024.txt"
    echo "-- ours, 1024² tf32"; head -30 "$OUT/logs/profile_tf32_1024_nchw.txt"
fi
timeout 120 "$BIN/xtask" bench --device cpu --sizes 512 --iters 3 --peer \
    2>"$OUT/logs/bench-cpu.log" | tee "$OUT/bench-cpu.md"

step "one 8192² iteration (8192×5449: past cuDNN's 2³¹ values a tensor, so convolutions in channel groups)"
# Last, because its algorithm search at this size may be long: if the time runs out, only
# this is lost. Its 8192×5449 image is not kept.
big_iteration 8192
rm -f "$OUT/big_8192.png"

echo; echo "status $status; logs, images and reports in $OUT"
# Let tee finish summary.txt before it is packed.
exec 1>&3 2>&4
wait "$tee_pid" 2>/dev/null || sleep 1
# The device tool brings back at most 8 files of 16 MiB: one archive (give it a path outside
# $OUT's folder) of everything but the 4096² image.
if [ -n "${NST_DEVICE_PACK:-}" ]; then
    tar czf "$NST_DEVICE_PACK" --exclude big_4096.png -C "$OUT" .
fi
exit $status
