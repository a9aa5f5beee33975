// nst CUDA kernels, compiled at run time by NVRTC (no CUDA toolkit needed at build time).
// The f32 counterparts of nst-cpu's kernels, same NCHW layouts (pooling also NHWC);
// products go to cuBLAS.
// Every kernel uses a grid-stride loop, so any grid size covers any n.

#define GRID_STRIDE(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (long long)blockDim.x * gridDim.x)

extern "C" {

// cols[k][q] = x at the input pixel that output position p0 + q reads through kernel tap k,
// for one image and the np output positions [p0, p0 + np) (zero outside the image);
// k = (ci·kh + ky)·kw + kx, p = oy·ow + ox. A band of positions at a time keeps the buffer
// bounded for large images.
__global__ void im2col(const float* x, float* cols, int cin, int h, int w, int kh, int kw,
                       int stride, int pad, int ow, long long p0, long long np) {
    long long n = (long long)cin * kh * kw * np;
    GRID_STRIDE(i, n) {
        long long p = p0 + i % np;
        int k = (int)(i / np);
        int kx = k % kw, ky = (k / kw) % kh, ci = k / (kw * kh);
        int oy = (int)(p / ow), ox = (int)(p % ow);
        int iy = oy * stride + ky - pad, ix = ox * stride + kx - pad;
        cols[i] = (iy >= 0 && iy < h && ix >= 0 && ix < w)
                      ? x[((long long)ci * h + iy) * w + ix] : 0.0f;
    }
}

// The adjoint of im2col, added into dx: each input pixel of rows [iy0, iy0 + rows) gathers
// the dcols entries (laid out as im2col's cols for positions [p0, p0 + np)) that im2col
// copied from it. One thread per input pixel and a fixed loop order, so no atomics and the
// same sums on every run.
__global__ void col2im_add(const float* dcols, float* dx, int cin, int h, int w, int kh, int kw,
                           int stride, int pad, int ow, long long p0, long long np, int iy0,
                           int rows) {
    GRID_STRIDE(i, (long long)cin * rows * w) {
        int ix = (int)(i % w), iy = iy0 + (int)((i / w) % rows);
        int ci = (int)(i / ((long long)w * rows));
        float acc = 0.0f;
        for (int ky = 0; ky < kh; ky++) {
            int ty = iy + pad - ky;
            if (ty < 0 || ty % stride != 0) continue;
            for (int kx = 0; kx < kw; kx++) {
                int tx = ix + pad - kx;
                if (tx < 0 || tx % stride != 0 || tx / stride >= ow) continue;
                long long p = (long long)(ty / stride) * ow + tx / stride;
                if (p < p0 || p >= p0 + np) continue;
                acc += dcols[((long long)(ci * kh + ky) * kw + kx) * np + (p - p0)];
            }
        }
        dx[((long long)ci * h + iy) * w + ix] += acc;
    }
}

// y[c][p] += b[c] over `planes` = batch·channels planes of `hw` values.
__global__ void add_bias(float* y, const float* b, int channels, long long planes, int hw) {
    GRID_STRIDE(i, planes * hw) { y[i] += b[(i / hw) % channels]; }
}

// add_bias then relu_forward in one pass (a convolution's bias and ReLU): the activation is
// read and written once instead of twice. NaN becomes 0, as in relu_forward.
__global__ void add_bias_relu(float* y, const float* b, int channels, long long planes, int hw) {
    GRID_STRIDE(i, planes * hw) {
        float v = y[i] + b[(i / hw) % channels];
        y[i] = v > 0.0f ? v : 0.0f;
    }
}

__global__ void relu_forward(const float* x, float* y, long long n) {
    GRID_STRIDE(i, n) { y[i] = x[i] > 0.0f ? x[i] : 0.0f; }
}

// What a frozen layer keeps of its ReLU's output for the backward pass: bit (i % 32) of word
// i / 32 is y[i] > 0 (NaN is not), the layout of nst_cpu::relu::relu_mask_pack.
//
// A warp packs a chunk of 32 words (1024 values) at a time. Lane l reads values 32k + l
// (k = 0..31) of the chunk, so each of the warp's loads reads 128 consecutive bytes, and
// gathers their signs as bit k of one register: its column of the chunk's 32×32 bit matrix.
// Word k is row k, bit l of every lane's column: transposed through shared memory
// (store_mask_word), with one __syncwarp a chunk. (The first version had each thread
// read its own word's 128 bytes one value at a time, every load touching 32 cache lines; a
// __ballot_sync per word was coalesced too, but 32 times the warp synchronisations.)
// blockDim.x must be a multiple of 32 (Gpu launches 256), at most 1024.

// The chunks of mask words a warp packs: a grid-stride loop over the ⌈n/1024⌉ chunks of n
// values, counted in the block's warps (threadIdx.x / 32), so the same for every lane of a
// warp, as __syncwarp requires. One warp a chunk is what the launches ask for.
#define WARP_CHUNKS(chunk, n)                                                              \
    for (long long chunk = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;    \
         chunk < ((n) + 1023) / 1024; chunk += (long long)gridDim.x * (blockDim.x / 32))

// Stores word `lane` of `chunk` (of the ⌈n/32⌉ words of `bits`) from the 32 lanes'
// columns: row `lane` of the chunk's bit matrix is bit `lane` of every column, read back
// through shared memory after one __syncwarp. The warp alternates (`parity`) between two
// arrays of 32 words: a lane can write its next column only after every lane has reached
// the next __syncwarp, that is, after they all finished reading this chunk's array.
__device__ __forceinline__ void store_mask_word(unsigned int* bits, long long n,
                                                long long chunk, unsigned int column,
                                                int& parity) {
    __shared__ unsigned int columns[2][32][32];  // [parity][warp of the block][lane]
    int lane = threadIdx.x % 32;
    unsigned int* mine = columns[parity][threadIdx.x / 32];
    parity ^= 1;
    mine[lane] = column;
    __syncwarp();
    unsigned int word = 0u;
    for (int l = 0; l < 32; l++) word |= ((mine[l] >> lane) & 1u) << l;
    if (chunk * 32 + lane < (n + 31) / 32) bits[chunk * 32 + lane] = word;
}

__global__ void relu_mask_pack(const float* y, unsigned int* bits, long long n) {
    int lane = threadIdx.x % 32, parity = 0;
    WARP_CHUNKS(chunk, n) {
        unsigned int column = 0u;  // bit k: value 32k + lane of the chunk is positive
        for (int k = 0; k < 32; k++) {
            long long i = (chunk * 32 + k) * 32 + lane;
            if (i < n && y[i] > 0.0f) column |= 1u << k;
        }
        store_mask_word(bits, n, chunk, column, parity);
    }
}

// add_bias_relu and relu_mask_pack in one pass: bit (i % 32) of bits[i / 32] is whether
// the output y[i] is positive, so a frozen layer's mask costs no second read of y. A warp
// does a chunk of 32 words at a time, as relu_mask_pack does (same requirements).
__global__ void add_bias_relu_mask(float* y, const float* b, unsigned int* bits, int channels,
                                   long long planes, int hw) {
    long long n = planes * hw;
    int lane = threadIdx.x % 32, parity = 0;
    WARP_CHUNKS(chunk, n) {
        unsigned int column = 0u;
        for (int k = 0; k < 32; k++) {
            long long i = (chunk * 32 + k) * 32 + lane;
            if (i >= n) continue;
            float v = y[i] + b[(i / hw) % channels];
            v = v > 0.0f ? v : 0.0f;  // NaN becomes 0, as in add_bias_relu
            y[i] = v;
            if (v > 0.0f) column |= 1u << k;
        }
        store_mask_word(bits, n, chunk, column, parity);
    }
}

// ReLU's backward from a packed mask: dy = 0 where the bit is clear.
__global__ void relu_mask_apply(const unsigned int* bits, float* dy, long long n) {
    GRID_STRIDE(i, n) {
        if (((bits[i >> 5] >> (i & 31)) & 1u) == 0u) dy[i] = 0.0f;
    }
}

// 2×2, stride 2, floor mode; argmax is the winner's place in its window, 2·row + column, one
// byte an output as on the CPU (first maximum in row-major order wins ties, as in PyTorch).
//
// Both layouts with one indexing: `images` images of h×w pixels with `channels` values per
// pixel, interleaved (NHWC). NCHW is the case channels = 1 with one "image" per plane
// (images = N·C), so the NCHW callers pass that.
__device__ __forceinline__ long long pool_window(long long i, int channels, int h, int w,
                                                 int oh, int ow) {
    // The output pixel, counted over all images, and the channel. NCHW (one channel) skips
    // the 64-bit division, which a GPU does in software.
    long long pixel = channels == 1 ? i : i / channels;
    int c = channels == 1 ? 0 : (int)(i % channels);
    long long image = pixel / ((long long)oh * ow);
    int p = (int)(pixel % ((long long)oh * ow));
    int oy = p / ow, ox = p % ow;
    return ((image * h + 2 * oy) * w + 2 * ox) * channels + c; // the window's top-left
}

__global__ void max_pool2x2_forward(const float* x, float* y, unsigned char* argmax,
                                    long long images, int channels, int h, int w, int oh,
                                    int ow) {
    GRID_STRIDE(i, images * oh * ow * channels) {
        const float* src = x + pool_window(i, channels, h, w, oh, ow);
        long long row = (long long)w * channels;
        int code = 0;
        float v = src[0];
        for (int dy = 0; dy < 2; dy++)
            for (int dx = 0; dx < 2; dx++) {
                float s = src[dy * row + dx * channels];
                if (s > v || (s != s && v == v)) { v = s; code = 2 * dy + dx; }
            }
        y[i] = v;
        argmax[i] = (unsigned char)code;
    }
}

// dx must be zeroed first; windows do not overlap, so each input gets at most one write.
__global__ void max_pool2x2_backward(const float* dy, const unsigned char* argmax, float* dx,
                                     long long images, int channels, int h, int w, int oh,
                                     int ow) {
    GRID_STRIDE(i, images * oh * ow * channels) {
        int code = argmax[i];
        long long at = pool_window(i, channels, h, w, oh, ow) +
                       (long long)(code >> 1) * w * channels + (code & 1) * channels;
        dx[at] = dy[i];
    }
}

__global__ void avg_pool2x2_forward(const float* x, float* y, long long images, int channels,
                                    int h, int w, int oh, int ow) {
    GRID_STRIDE(i, images * oh * ow * channels) {
        const float* s = x + pool_window(i, channels, h, w, oh, ow);
        long long row = (long long)w * channels;
        y[i] = 0.25f * (s[0] + s[channels] + s[row] + s[row + channels]);
    }
}

// dx must be zeroed first (rows/columns beyond the floor keep zero gradient).
__global__ void avg_pool2x2_backward(const float* dy, float* dx, long long images, int channels,
                                     int h, int w, int oh, int ow) {
    GRID_STRIDE(i, images * oh * ow * channels) {
        float* d = dx + pool_window(i, channels, h, w, oh, ow);
        long long row = (long long)w * channels;
        float g = 0.25f * dy[i];
        d[0] = g; d[channels] = g; d[row] = g; d[row + channels] = g;
    }
}

// out = a·x + b·y
__global__ void axpby(float a, const float* x, float b, const float* y, float* out, long long n) {
    GRID_STRIDE(i, n) { out[i] = a * x[i] + b * y[i]; }
}

__global__ void scale(float a, const float* x, float* out, long long n) {
    GRID_STRIDE(i, n) { out[i] = a * x[i]; }
}

// out = s·x·y (the backward of a product, s = 1, and of a square, s = 2), in nst-cpu's order.
__global__ void scaled_mul(float s, const float* x, const float* y, float* out, long long n) {
    GRID_STRIDE(i, n) { out[i] = s * x[i] * y[i]; }
}

// y_b = x_bᵀ for `batch` row-major rows × cols matrices one after another: a matrix
// transpose (batch 1), NCHW ↔ NHWC (one matrix per image: C × H·W ↔ H·W × C), and a
// convolution's weights KCRS → KRSC (one matrix per output channel: C × R·S).
__global__ void transpose2d(const float* x, float* y, long long batch, long long rows,
                            long long cols) {
    GRID_STRIDE(i, batch * rows * cols) {
        long long m = rows * cols, b = i / m, j = i % m;
        long long r = j / cols, c = j % cols;
        y[b * m + c * rows + r] = x[i];
    }
}

// dst[r][c] = src[r][c] for a rows × cols block, each side with its own row stride (a band of
// a wider matrix written back from a compact buffer).
__global__ void copy2d(const float* src, long long src_stride, float* dst, long long dst_stride,
                       long long rows, long long cols) {
    GRID_STRIDE(i, rows * cols) {
        long long r = i / cols, c = i % cols;
        dst[r * dst_stride + c] = src[r * src_stride + c];
    }
}

// The rows × cols window of every plane: dst[p][dst_top + r][dst_left + c] = (or +=)
// src[p][src_top + r][src_left + c], planes of src_h × src_w and dst_h × dst_w values
// (nst-cpu's copy_window: a tile cropped out of an image or features, or pasted back).
__global__ void copy_window(const float* src, float* dst, long long planes, long long src_h,
                            long long src_w, long long dst_h, long long dst_w,
                            long long src_top, long long src_left, long long dst_top,
                            long long dst_left, long long rows, long long cols,
                            int accumulate) {
    GRID_STRIDE(i, planes * rows * cols) {
        long long m = rows * cols, p = i / m, r = (i % m) / cols, c = i % cols;
        float v = src[(p * src_h + src_top + r) * src_w + src_left + c];
        float* d = &dst[(p * dst_h + dst_top + r) * dst_w + dst_left + c];
        *d = accumulate ? *d + v : v;
    }
}

// out[i] = v[0]: the backward of a sum, without the scalar leaving the device.
__global__ void broadcast_first(const float* v, float* out, long long n) {
    GRID_STRIDE(i, n) { out[i] = v[0]; }
}

// a = (s·g[0])·(a − b) in place: the gradient of g·Σ(a − b)² (s = 2) written over a, with
// the loss's upstream gradient g read on the device (nst-cpu's scaled_difference_in_place).
__global__ void scaled_difference(const float* g, float s, float* a, const float* b,
                                  long long n) {
    float c = s * g[0];
    GRID_STRIDE(i, n) { a[i] = c * (a[i] - b[i]); }
}

// A reduction's f64 result as the f32 value of a one-element tensor.
__global__ void double_to_float(const double* src, float* dst, long long n) {
    GRID_STRIDE(i, n) { dst[i] = (float)src[i]; }
}

// The optimizer's scalars kept on the device (L-BFGS's two-loop recursion: α = ρ·sᵀq, then
// α − β), so that no step of the recursion waits for the host.
__global__ void scalar_scale(const double* a, double r, double* out, long long n) {
    GRID_STRIDE(i, n) { out[i] = a[i] * r; }
}

__global__ void scalar_sub(const double* a, const double* b, double* out, long long n) {
    GRID_STRIDE(i, n) { out[i] = a[i] - b[i]; }
}

// out = x + (float)(factor·coef[0])·y: axpby with α = 1 and a β that never leaves the device,
// rounded to f32 as the host would round it.
__global__ void axpy_device_coef(const double* coef, double factor, const float* x,
                                 const float* y, float* out, long long n) {
    float b = (float)(factor * coef[0]);
    GRID_STRIDE(i, n) { out[i] = 1.0f * x[i] + b * y[i]; }
}

// Reductions accumulate in double, like nst-cpu, and in a fixed order, so the same input
// gives the same bits on every run: reduce_partial leaves one partial sum per block, and
// reduce_finish (one block) adds them up. Adding the partials atomically, as this first did,
// added them in whatever order the blocks finished; the first GPU run showed the last bit of
// a dot product differing between two calls, and L-BFGS grows such differences.
// op: 0 Σ(a−b)² (each term in float, as nst-cpu's sum_squared_difference), 1 Σa·b, 2 Σ|a|,
// 3 Σa. block_sum_to (used by reduce_partial, reduce_finish
// and axpy_coef_dot) needs a power-of-two block of at most 256 threads (the GPU runs 256,
// the emulator 32); reduce_finish runs as exactly one block (its thread 0 scales *out).
__device__ __forceinline__ void block_sum_to(double acc, double* part, double* dst) {
    part[threadIdx.x] = acc;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) part[threadIdx.x] += part[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) *dst = part[0];
}

__global__ void reduce_partial(const float* a, const float* b, double* partial, long long n,
                               int op) {
    __shared__ double part[256];
    double acc = 0.0;
    GRID_STRIDE(i, n) {
        double x = a[i];
        if (op == 0) { float d = a[i] - b[i]; acc += (double)(d * d); }
        else if (op == 1) acc += x * (double)b[i];
        else if (op == 2) acc += fabs(x);
        else acc += x;
    }
    block_sum_to(acc, part, &partial[blockIdx.x]);
}

// *out = scale·Σ partial (scale 1 for a plain sum: exact).
__global__ void reduce_finish(const double* partial, double* out, long long blocks,
                              double scale) {
    __shared__ double part[256];
    double acc = 0.0;
    for (long long i = threadIdx.x; i < blocks; i += blockDim.x) acc += partial[i];
    block_sum_to(acc, part, out);
    if (threadIdx.x == 0) *out *= scale;
}

// One step of L-BFGS's two-loop recursion in one pass over the vectors:
//   out = x + (float)(factor·(coef[0] − minus[0]))·y        (minus may be null: 0)
// and, when next is not null, reduce_partial's Σ next·out, per block, for the next pair's
// scalar (finished by reduce_finish). The same arithmetic in the same order as
// scalar_sub, axpy_device_coef and reduce_partial (op 1) one after another, so the same
// bits; it reads out's operands once and launches once instead of two or three times.
__global__ void axpy_coef_dot(const double* coef, const double* minus, double factor,
                              const float* x, const float* y, float* out, const float* next,
                              double* partial, long long n) {
    __shared__ double part[256];
    double c = minus ? coef[0] - minus[0] : coef[0];
    float b = (float)(factor * c);
    double acc = 0.0;
    GRID_STRIDE(i, n) {
        float o = 1.0f * x[i] + b * y[i];
        out[i] = o;
        if (next) acc += (double)next[i] * (double)o;
    }
    if (next) block_sum_to(acc, part, &partial[blockIdx.x]);
}

// max |a|; *out starts at 0. Non-negative floats order like their bit patterns as ints, and
// NaN (made positive by fabsf) is above +inf, so a NaN anywhere wins, as on the CPU. The
// comparisons are written out because fmaxf drops NaN (the host shim test caught that).
__device__ __forceinline__ float max_nan(float m, float v) { return (v > m || v != v) ? v : m; }

__global__ void abs_max(const float* a, int* out, long long n) {
    __shared__ float part[256];
    float m = 0.0f;
    GRID_STRIDE(i, n) { m = max_nan(m, fabsf(a[i])); }
    part[threadIdx.x] = m;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) part[threadIdx.x] = max_nan(part[threadIdx.x], part[threadIdx.x + s]);
        __syncthreads();
    }
    if (threadIdx.x == 0) atomicMax(out, __float_as_int(part[0]));
}

// Adam (Kingma & Ba), the update nst-cpu's adam_update makes. The bias corrections
// c1 = 1 − β₁ᵗ and c2 = 1 − β₂ᵗ come from the host (AdamParams): powf here differed from the
// CPU's powi by an ulp, which 1 − β₂ᵗ ≈ 0.003 magnified to 1e-5 in the step.
__global__ void adam_update(float* x, const float* g, float* m, float* v, float lr, float beta1,
                            float beta2, float eps, float c1, float c2, long long n) {
    GRID_STRIDE(i, n) {
        m[i] = beta1 * m[i] + (1.0f - beta1) * g[i];
        v[i] = beta2 * v[i] + (1.0f - beta2) * g[i] * g[i];
        x[i] -= lr * (m[i] / c1) / (sqrtf(v[i] / c2) + eps);
    }
}

}  // extern "C"
