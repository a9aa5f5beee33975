"""The PyTorch peer of `cargo xtask bench`: the same style-transfer iteration in eager PyTorch.

Same weights (read from weights/vgg19.safetensors, 8-bit codes + codebooks), same Caffe
preprocessing, same layers (VGG-19 up to relu5_1; content relu4_2; style relu1_1..relu5_1 with
weights 0.1, 0.2, 0.4, 0.2, 0.1), same losses (J_c = 1/(4CHW)·Σ(ΔF)², J_s^l = 1/(4C²)·Σ(ΔĜ)²
with Ĝ = F·Fᵀ/(HW)), α = 1, β = 1e-3, and one torch.optim.LBFGS step (history 100, one
evaluation) per iteration, on the exact pixels the Rust side used (raw f32 [3, S, S] files).

Prints one JSON line: ms_per_iter (median, first iteration dropped as warm-up), loss0 (the
loss at the start, to check both sides computed the same thing) and peak_rss_bytes.

    python3 torch_nst.py --weights W --content C.f32 --style S.f32 --size N --iters K --threads T
        [--device cpu|cuda] [--tf32 on|off] [--memory-format nchw|channels_last] [--deterministic]
        [--profile FILE]

With --device cuda it sets torch.backends.cudnn.benchmark = True (algorithm search, as the
fastest published PyTorch neural-style setups do), synchronises before reading the clock,
uses TF32 for cuDNN convolutions unless --tf32 off (on is PyTorch's default; matmul stays f32,
also its default), and adds peak_gpu_bytes (torch.cuda.max_memory_allocated after the warm-up iteration).

With --profile FILE it then runs PROFILE_ITERS more iterations under torch.profiler and writes
where their time went to FILE (see write_profile), to set beside nst's own NST_CUDA_PROFILE
table: scripts/device-check.sh runs both at 1024², where nst's time is furthest from PyTorch's.
"""

import argparse
import json
import resource
import statistics
import struct
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

BLOCKS = [(1, 2), (2, 2), (3, 4), (4, 4), (5, 4)]
CAFFE_MEAN_BGR = torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)
STYLE_LAYERS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
STYLE_WEIGHTS = [0.1, 0.2, 0.4, 0.2, 0.1]
CONTENT_LAYER = "relu4_2"
DEEPEST = "relu5_1"
PROFILE_ITERS = 3


def load_vgg(path):
    """(name, weight, bias) for every conv layer, decoded from our safetensors file."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    dtypes = {"F32": np.float32, "F16": np.float16, "U8": np.uint8}

    def get(name):
        h = header[name]
        a, b = h["data_offsets"]
        return np.frombuffer(data[a:b], dtype=dtypes[h["dtype"]]).reshape(h["shape"])

    layers = []
    for block, count in BLOCKS:
        for i in range(1, count + 1):
            name = f"conv{block}_{i}"
            if f"{name}.weight" in header:
                w = get(f"{name}.weight").astype(np.float32)
            else:
                w = get(f"{name}.weight_codebook")[get(f"{name}.weight_codes")]
            b = get(f"{name}.bias").astype(np.float32)
            layers.append((name, torch.from_numpy(w.copy()), torch.from_numpy(b.copy())))
    return layers


def features(vgg, rgb, wanted, fmt=torch.contiguous_format):
    """Activations at `wanted` for an RGB 0..255 image, stopping at the deepest one, in
    memory format `fmt` (the image itself stays NCHW: L-BFGS views its gradient flat)."""
    x = (rgb[:, [2, 1, 0]] - CAFFE_MEAN_BGR.to(rgb.device)).contiguous(memory_format=fmt)
    out = {}
    for name, w, b in vgg:
        x = F.relu(F.conv2d(x, w, b, padding=1), inplace=True)
        relu = "relu" + name[4:]
        if relu in wanted:
            out[relu] = x
        if relu == DEEPEST:
            break
        if name.endswith(f"_{dict(BLOCKS)[int(name[4])]}"):
            x = F.max_pool2d(x, 2, 2)
    return out


def gram_hat(f):
    c = f.shape[1]
    if c > 1 and f.is_contiguous(memory_format=torch.channels_last):
        # NHWC: F is stored as [HW × C], so Ĝ = FᵀF/(HW) without a transposed copy.
        m = f.permute(0, 2, 3, 1).reshape(-1, c)
        return m.t() @ m / m.shape[0]
    m = f.reshape(c, -1)
    return m @ m.t() / m.shape[1]


def kernel_kind(name):
    """A GPU kernel's kind, from its name (cuDNN's and cuBLAS's names, as of cuDNN 9)."""
    n = name.lower()
    if "nchwtonhwc" in n or "nhwctonchw" in n:
        return "cuDNN layout conversion"
    if "dgrad" in n:
        return "convolution backward-data"
    if "wgrad" in n:
        return "convolution backward-filter (should be none)"
    if "fprop" in n or "convolve" in n or "conv" in n or "winograd" in n:
        return "convolution forward (and other cuDNN kernels)"
    if "gemm" in n or "gemv" in n or "splitk" in n:
        return "GEMM (Gram matrices and their gradients)"
    return "elementwise, pooling, reductions, copies"


def device_us(event, prefix):
    """An event's (self_) device time in µs: `device_time_total` since PyTorch 2.4, before
    that `cuda_time_total`."""
    for name in (f"{prefix}device_time_total", f"{prefix}cuda_time_total"):
        if hasattr(event, name):
            return getattr(event, name)
    return 0.0


def write_profile(prof, args, iters):
    """The profile as text: on CUDA, each GPU kernel's own time per iteration (largest first)
    and the totals by kind; the aten operators' device time (a parent's includes its
    children's, so those rows overlap); on the CPU, the operators' own CPU time."""
    cuda = args.device == "cuda"
    head = (f"PyTorch {torch.__version__}, {args.device}, {args.size}², tf32 {args.tf32}, "
            f"{args.memory_format}, deterministic {args.deterministic}: ms per iteration over "
            f"{iters} profiled iterations\n")
    kernels, operators = [], []
    for e in prof.key_averages():
        on_device = getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA
        if cuda and on_device:
            kernels.append((device_us(e, "self_") / iters / 1e3, e.count / iters, e.key))
        elif cuda and e.key.startswith("aten::"):
            operators.append((device_us(e, "") / iters / 1e3, e.count / iters, e.key))
        elif not cuda:
            operators.append((e.self_cpu_time_total / iters / 1e3, e.count / iters, e.key))
    lines = [head]
    if cuda:
        total = sum(ms for ms, _, _ in kernels)
        lines.append(f"GPU kernels: {total:.3f} ms per iteration in all\n")
        lines.append("by kind (from the kernels' names):")
        kinds = {}
        for ms, _, name in kernels:
            kind = kernel_kind(name)
            kinds[kind] = kinds.get(kind, 0.0) + ms
        by_time = sorted(kinds.items(), key=lambda kv: -kv[1])
        lines += [f"{ms:9.3f} ms  {kind}" for kind, ms in by_time]
        lines.append("\nkernels (ms, launches per iteration, name):")
        lines += [f"{ms:9.3f} ms {n:6.1f}  {name[:160]}"
                  for ms, n, name in sorted(kernels, reverse=True)]
        lines.append("\naten operators' device time (including their children's):")
    else:
        lines.append("aten operators' own CPU time:")
    lines += [f"{ms:9.3f} ms {n:6.1f}  {name}"
              for ms, n, name in sorted(operators, reverse=True)[:30] if ms > 0]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    for arg in ["--weights", "--content", "--style"]:
        ap.add_argument(arg, required=True)
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--tf32", default="on", choices=["on", "off"],
                    help="CUDA: TF32 for cuDNN convolutions (PyTorch's default: on); matmul stays f32")
    # Experiments for scripts/device-check.sh (the bench uses the defaults): how much NHWC
    # (channels_last) and cuDNN's deterministic algorithms change PyTorch's time.
    ap.add_argument("--memory-format", default="nchw", choices=["nchw", "channels_last"])
    ap.add_argument("--deterministic", action="store_true",
                    help="torch.backends.cudnn.deterministic = True (as nst's algorithm choice)")
    ap.add_argument("--profile", metavar="FILE",
                    help="after timing, profile PROFILE_ITERS iterations and write the table here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = args.tf32 == "on"
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.deterministic = args.deterministic
    dev = torch.device(args.device)
    fmt = torch.channels_last if args.memory_format == "channels_last" else torch.contiguous_format
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)

    vgg = [(n, w.to(dev).contiguous(memory_format=fmt), b.to(dev))
           for n, w, b in load_vgg(args.weights)]
    s = args.size

    def image(path):
        return torch.from_numpy(np.fromfile(path, dtype=np.float32).reshape(1, 3, s, s)).to(dev)

    content, style = image(args.content), image(args.style)
    wanted = set(STYLE_LAYERS) | {CONTENT_LAYER}
    with torch.no_grad():
        target_c = features(vgg, content, wanted, fmt)[CONTENT_LAYER].clone()
        style_features = features(vgg, style, wanted, fmt)
        target_s = {k: gram_hat(v) for k, v in style_features.items() if k in STYLE_LAYERS}

    x = content.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1, max_iter=1, history_size=100)

    def closure():
        opt.zero_grad()
        f = features(vgg, x, wanted, fmt)
        fc = f[CONTENT_LAYER]
        j_c = ((fc - target_c) ** 2).sum() / (4 * fc.numel())
        j_s = 0.0
        for layer, wl in zip(STYLE_LAYERS, STYLE_WEIGHTS):
            c = f[layer].shape[1]
            j_s = j_s + wl * ((gram_hat(f[layer]) - target_s[layer]) ** 2).sum() / (4 * c * c)
        loss = j_c + 1e-3 * j_s
        loss.backward()
        return loss

    times, loss0 = [], None
    for _ in range(args.iters + 1):
        sync()
        t = time.perf_counter()
        loss = opt.step(closure)
        sync()
        times.append((time.perf_counter() - t) * 1e3)
        if loss0 is None:
            loss0 = float(loss.detach())
            if args.device == "cuda":
                # The warm-up's algorithm search (cudnn.benchmark) tries algorithms with
                # workspaces of up to all free memory (33 GiB at 512² on an H200): not what
                # the iterations need, so the peak counts from here.
                torch.cuda.reset_peak_memory_stats()
    times.pop(0)  # warm-up
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    result = {"ms_per_iter": statistics.median(times), "loss0": loss0, "peak_rss_bytes": peak}
    if args.device == "cuda":
        result["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
        result["gpu"] = torch.cuda.get_device_name()
        result["tf32"] = args.tf32 == "on"
        result["memory_format"] = args.memory_format
        result["deterministic"] = args.deterministic
    print(json.dumps(result), flush=True)
    if args.profile:
        # After the measurements are out, so neither the profiler's cost nor its failure
        # (a torch whose profiler API differs) can touch them.
        try:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if args.device == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            with torch.profiler.profile(activities=activities) as prof:
                for _ in range(PROFILE_ITERS):
                    opt.step(closure)
                sync()
            with open(args.profile, "w") as f:
                f.write(write_profile(prof, args, PROFILE_ITERS))
        except Exception as e:  # noqa: BLE001 - reported, the measurement stands
            print(f"profile failed: {e!r}", file=sys.stderr)


if __name__ == "__main__":
    main()
