// Runs CUDA C kernels on the host, as written, for tests on machines without a GPU
// (../../shared/notes/cuda-design.md). Each block runs as blockDim.x std::threads, blocks
// one after another, so `__shared__` memory can be a function-local static and
// `__syncthreads()` a barrier. Of warp-level code, only `__syncwarp` with every lane of the
// warp taking part (a barrier per warp); the rest is not emulated (our kernels use none).
#pragma once
#include <atomic>
#include <barrier>
#include <cstring>
#include <math.h>
#include <memory>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;
inline std::barrier<>* nst_block_barrier = nullptr;

inline void __syncthreads() { nst_block_barrier->arrive_and_wait(); }

// A warp's own barrier, for __syncwarp: the lanes of warp w are threads 32w .. 32w + 31 of
// the block (fewer in a last, partial warp).
struct NstWarp {
    std::barrier<> barrier;
    explicit NstWarp(unsigned lanes) : barrier(lanes) {}
};
// The warps of the block being run (set for each launch by nst_launch).
inline std::vector<std::unique_ptr<NstWarp>>* nst_warps = nullptr;

// Every lane of the warp must call it, as the kernels do (the full mask).
inline void __syncwarp(unsigned = 0xffffffffu) {
    (*nst_warps)[threadIdx.x / 32]->barrier.arrive_and_wait();
}

inline int atomicMax(int* address, int v) {
    std::atomic_ref<int> a(*address);
    int old = a.load();
    while (old < v && !a.compare_exchange_weak(old, v)) {
    }
    return old;
}

inline int __float_as_int(float f) {
    int i;
    std::memcpy(&i, &f, sizeof i);
    return i;
}
