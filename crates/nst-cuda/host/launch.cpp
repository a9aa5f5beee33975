// The host side of the shim: `nst_launch(name, grid, block, params)` runs kernel `name` of
// kernels.cu with cuLaunchKernel's argument convention (params[i] points at argument i), so
// the Rust tests pass arguments exactly as they would to the GPU and an argument-order
// mistake shows up here.
#include "cuda_host.h"
#include "../src/kernels.cu"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <semaphore>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

namespace {

template <typename... A, std::size_t... I>
void call(void (*f)(A...), void** params, std::index_sequence<I...>) {
    f(*static_cast<A*>(params[I])...);
}

template <typename... A>
void call(void (*f)(A...), void** params) {
    call(f, params, std::index_sequence_for<A...>{});
}

struct Entry {
    const char* name;
    void (*run)(void**);
};

#define KERNEL(k) Entry{#k, [](void** p) { call(k, p); }}

const Entry KERNELS[] = {
    KERNEL(im2col),
    KERNEL(col2im_add),
    KERNEL(add_bias),
    KERNEL(add_bias_relu),
    KERNEL(add_bias_relu_mask),
    KERNEL(relu_forward),
    KERNEL(relu_mask_pack),
    KERNEL(relu_mask_apply),
    KERNEL(max_pool2x2_forward),
    KERNEL(max_pool2x2_backward),
    KERNEL(avg_pool2x2_forward),
    KERNEL(avg_pool2x2_backward),
    KERNEL(axpby),
    KERNEL(scale),
    KERNEL(scaled_mul),
    KERNEL(scaled_difference),
    KERNEL(transpose2d),
    KERNEL(copy2d),
    KERNEL(copy_window),
    KERNEL(broadcast_first),
    KERNEL(double_to_float),
    KERNEL(scalar_scale),
    KERNEL(scalar_sub),
    KERNEL(axpy_device_coef),
    KERNEL(axpy_coef_dot),
    KERNEL(reduce_partial),
    KERNEL(reduce_finish),
    KERNEL(abs_max),
    KERNEL(adam_update),
};

// The threads that run a block: started once and kept (starting 64 OS threads a launch cost
// about 2.9 ms on a 2-core machine, most of an emulated iteration), each woken through its
// own semaphore for a block it takes part in (one shared condition variable woke all of
// them into one mutex: 1.2 ms a launch). Never destroyed: the workers wait on its members
// until the process ends.
class BlockRunner {
  public:
    static constexpr unsigned MOST_THREADS = 1024;  // CUDA's most threads a block

    // Runs block `block_index` of `kernel` on workers 0..block (1 ≤ block ≤ MOST_THREADS)
    // and waits for them.
    void run(const Entry& kernel, void** params, unsigned block_index, unsigned block) {
        while (workers_ < block) {
            std::thread([this, t = workers_] { work(t); }).detach();
            ++workers_;
        }
        job_ = Job{&kernel, params, block_index};
        running_.store(block);
        // A release happens before the matching acquire: each worker sees job_ as set here.
        for (unsigned t = 0; t < block; t++) go_[t].ready.release();
        done_.acquire();
    }

  private:
    struct Job {
        const Entry* kernel;
        void** params;
        unsigned block_index;
    };

    void work(unsigned t) {
        for (;;) {
            go_[t].ready.acquire();
            blockIdx = dim3{job_.block_index, 0, 0};
            threadIdx = dim3{t, 0, 0};
            job_.kernel->run(job_.params);
            if (running_.fetch_sub(1) == 1) done_.release();
        }
    }

    struct Signal {
        std::binary_semaphore ready{0};
    };
    Signal go_[MOST_THREADS];
    std::binary_semaphore done_{0};
    std::atomic<unsigned> running_{0};
    unsigned workers_ = 0;  // only nst_launch's caller, one at a time, starts workers
    Job job_{};
};

}  // namespace

extern "C" {

// Number of kernels and the name of kernel i, so the tests can compare with KERNEL_NAMES.
int nst_kernel_count() { return sizeof(KERNELS) / sizeof(KERNELS[0]); }
const char* nst_kernel_name(int i) { return KERNELS[i].name; }

// 0 on success, -1 for an unknown kernel, -2 for a block size CUDA would refuse. Launches
// run one at a time, like the kernels of one CUDA stream: gridDim, blockDim and the barrier
// are process-wide.
int nst_launch(const char* name, unsigned grid_x, unsigned block_x, void** params) {
    static std::mutex one_at_a_time;
    static BlockRunner* runner = new BlockRunner;  // never destroyed (see BlockRunner)
    std::lock_guard<std::mutex> lock(one_at_a_time);
    // CUDA takes 1 to 1024 threads a block (the emulator asks for at most 32).
    if (block_x == 0 || block_x > BlockRunner::MOST_THREADS) return -2;
    for (const Entry& e : KERNELS) {
        if (std::strcmp(e.name, name) != 0) continue;
        gridDim = dim3{grid_x, 1, 1};
        blockDim = dim3{block_x, 1, 1};
        std::barrier<> barrier(block_x);
        nst_block_barrier = &barrier;
        // A barrier per warp: 32 lanes, or what is left of the block for the last one.
        std::vector<std::unique_ptr<NstWarp>> warps;
        for (unsigned first = 0; first < block_x; first += 32) {
            warps.push_back(std::make_unique<NstWarp>(std::min(32u, block_x - first)));
        }
        nst_warps = &warps;
        // Blocks one after another, so `__shared__` (a static) is one block's at a time.
        for (unsigned b = 0; b < grid_x; b++) runner->run(e, params, b, block_x);
        nst_block_barrier = nullptr;
        nst_warps = nullptr;
        return 0;
    }
    return -1;
}
}
