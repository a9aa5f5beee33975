// Runs CUDA C kernels on the host, as written, for tests on machines without a GPU
// (../../shared/notes/cuda-design.md). Each block runs as blockDim.x std::threads, blocks
// one after another, so `__shared__` memory can be a function-local static and
// `__syncthreads()` a barrier. Of warp-level code, only `__ballot_sync` with every lane of
// the warp taking part (a barrier per warp); the rest is not emulated (our kernels use none).
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

// One warp's vote: each lane ORs its bit into `votes`; when the last lane arrives, the
// barrier's completion (run once, before any lane leaves) publishes the word and clears
// `votes` for the next vote. A lane reads `word` before it can arrive at the next vote, so
// the next completion cannot overwrite it first.
struct NstWarpVote {
    struct Publish {
        NstWarpVote* vote;
        void operator()() noexcept { vote->word = vote->votes.exchange(0); }
    };
    std::atomic<unsigned> votes{0};
    unsigned word = 0;
    std::barrier<Publish> barrier;
    explicit NstWarpVote(unsigned lanes) : barrier(lanes, Publish{this}) {}
};
// One vote per warp of the block being run (set for each launch by nst_launch).
inline std::vector<std::unique_ptr<NstWarpVote>>* nst_warp_votes = nullptr;

// Every lane of the warp must call it (the kernels pass the full mask); lanes outside
// `mask` add no bit, as on a GPU.
inline unsigned __ballot_sync(unsigned mask, int predicate) {
    NstWarpVote& v = *(*nst_warp_votes)[threadIdx.x / 32];
    if (predicate) v.votes.fetch_or(1u << (threadIdx.x % 32));
    v.barrier.arrive_and_wait();
    return v.word & mask;
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
