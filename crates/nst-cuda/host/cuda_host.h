// Runs CUDA C kernels on the host, as written, for tests on machines without a GPU
// (../../shared/notes/cuda-design.md). Each block runs as blockDim.x std::threads, blocks
// one after another, so `__shared__` memory can be a function-local static and
// `__syncthreads()` a barrier. Warp-synchronous code is not emulated (our kernels have none).
#pragma once
#include <atomic>
#include <barrier>
#include <cstring>
#include <math.h>

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
