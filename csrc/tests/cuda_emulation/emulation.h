// The CUDA kernels on the CPU, for ctest `core_cuda_emulated`: the parts of the CUDA runtime and of
// the device intrinsics that csrc/cuda/kernels.cu and csrc/tests/test_cuda.cu use, so that the
// kernels' own logic (work split, lane groups, shuffle reductions, passes of samples, strides,
// workspaces) runs and is compared with the CPU kernels on a machine without a GPU or nvcc.
//
// What it is: the fake cuda_runtime.h, cuda_fp16.h and cuda_bf16.h beside this file shadow the
// real ones; CMakeLists.txt compiles kernels.cu as C++ after rewriting its launch syntax
// `kernel<<<grid, block, smem, stream>>>(args)` to `kernel | ::adt_emu::Launch{grid, block, smem,
// stream}(args)`. A launch runs its blocks one after another and each warp as 32 fibers
// (ucontext), one per lane: a lane runs until it reaches a shuffle, and once all 32 have, the
// values are exchanged and they go on. So the warp-synchronous code runs as on a GPU, and lanes
// that would diverge around a shuffle (some at a shuffle, some finished, or at different numbers
// of shuffles) abort the test with a message, where a GPU would hang or read garbage.
//
// The device's arithmetic: the build defines ADT_FAST_EMULATE_DEVICE, so the kernels take their
// device code paths (core/common.h's ADT_FAST_DEVICE_MATH): CUDA's math functions are the host's,
// and PTX's approximate instructions (ex2, lg2, rcp, sqrt.approx.ftz and __sincosf's sin/cos) are
// the exact value moved by up to the bound docs/kernels.md budgets for ("Device float maths"),
// by an amount and in a direction that a hash of the argument picks. So the float32 comparisons
// at 1e-5 test the device formulas and that error budget, with every approximate instruction off
// by up to its documented bound. What the hardware really returns within those bounds, and its
// speed, only a GPU run shows.
#pragma once

#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <tuple>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3() = default;
  dim3(unsigned x_, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

// The running lane's coordinates: the scheduler sets them before it resumes a lane.
inline uint3 threadIdx{0, 0, 0};
inline uint3 blockIdx{0, 0, 0};
inline dim3 blockDim;
inline dim3 gridDim;

template <class T>
T __ldg(const T* p) {
  return *p;
}

namespace adt_emu {

constexpr int kWarp = 32;

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "adt_emu: %s (block %u, thread %u)\n", what, blockIdx.x, threadIdx.x);
  std::abort();
}

// One warp: 32 lanes as fibers on their own stacks, run in turn by `run`.
class Warp {
 public:
  // Runs `body` as every lane of warp `warp` of the current block, in lockstep at each shuffle.
  void run(const std::function<void()>& body, unsigned warp) {
    body_ = &body;
    for (int lane = 0; lane < kWarp; ++lane) {
      Lane& l = lanes_[lane];
      l.state = State::kRunning;
      l.shuffles = 0;
      l.stack.resize(kStackBytes);
      getcontext(&l.context);
      l.context.uc_stack.ss_sp = l.stack.data();
      l.context.uc_stack.ss_size = l.stack.size();
      l.context.uc_link = &scheduler_;
      makecontext(&l.context, &Warp::entry, 0);
    }
    for (;;) {
      int waiting = 0, done = 0;
      for (int lane = 0; lane < kWarp; ++lane) {
        Lane& l = lanes_[lane];
        if (l.state == State::kDone) {
          ++done;
          continue;
        }
        current_ = this;
        lane_ = lane;
        threadIdx.x = warp * kWarp + static_cast<unsigned>(lane);
        l.state = State::kRunning;
        swapcontext(&scheduler_, &l.context);  // back at the lane's next shuffle, or its end
        if (l.state == State::kAtShuffle) {
          ++waiting;
        } else {
          ++done;
        }
      }
      if (done == kWarp) return;
      if (waiting != kWarp) fail("lanes of a warp diverged: some finished while others wait at a shuffle");
      for (int lane = 1; lane < kWarp; ++lane) {
        if (lanes_[lane].shuffles != lanes_[0].shuffles) fail("lanes of a warp are at different shuffles");
      }
      std::memcpy(exchanged_, slots_, sizeof(slots_));
    }
  }

  // __shfl_down_sync as the hardware does it: the value of lane + delta within the lane's segment
  // of `width` lanes, else the lane's own.
  template <class T>
  T shfl_down(unsigned mask, T v, unsigned delta, int width) {
    static_assert(sizeof(T) <= sizeof(Slot), "a shuffled value is at most 8 bytes");
    if (mask != 0xffffffffu) fail("only full-warp shuffles are emulated");
    const int lane = lane_;
    std::memcpy(slots_[lane], &v, sizeof(T));
    Lane& l = lanes_[lane];
    ++l.shuffles;
    l.state = State::kAtShuffle;
    swapcontext(&l.context, &scheduler_);  // resumed once every lane has arrived
    const int segment = lane & ~(width - 1);
    const int source = lane + static_cast<int>(delta);
    T out = v;
    if (source < segment + width) std::memcpy(&out, exchanged_[source], sizeof(T));
    return out;
  }

  static Warp* current() { return current_; }

 private:
  enum class State { kRunning, kAtShuffle, kDone };
  static constexpr size_t kStackBytes = 256 * 1024;
  using Slot = unsigned char[8];
  struct Lane {
    ucontext_t context;
    std::vector<unsigned char> stack;
    State state = State::kDone;
    long shuffles = 0;
  };

  static void entry() {
    Warp* w = current_;
    (*w->body_)();
    w->lanes_[w->lane_].state = State::kDone;  // then uc_link returns to the scheduler
  }

  inline static Warp* current_ = nullptr;
  inline static int lane_ = 0;
  const std::function<void()>* body_ = nullptr;
  ucontext_t scheduler_;
  Lane lanes_[kWarp];
  Slot slots_[kWarp];
  Slot exchanged_[kWarp];
};

inline Warp& warp() {
  static Warp w;
  return w;
}

template <class... Args>
struct LaunchArgs {
  dim3 grid, block;
  std::tuple<Args...> args;
};

// The launch configuration; called with the kernel's arguments it makes what `kernel | ...` runs.
struct Launch {
  dim3 grid, block;
  size_t shared_bytes = 0;
  void* stream = nullptr;

  template <class... Args>
  LaunchArgs<std::decay_t<Args>...> operator()(Args&&... args) const {
    return {grid, block, std::tuple<std::decay_t<Args>...>(std::forward<Args>(args)...)};
  }
};

// kernel<<<grid, block, 0, stream>>>(args...): every block, one after another, each warp as fibers.
template <class... Params, class... Args>
void operator|(void (*kernel)(Params...), const LaunchArgs<Args...>& launch) {
  if (launch.block.x % kWarp != 0 || launch.block.y != 1 || launch.grid.y != 1) {
    fail("only 1-D launches of whole warps are emulated");
  }
  if (launch.grid.x == 0 || launch.block.x == 0) {
    fail("a launch of no blocks or no threads, which a GPU refuses (invalid configuration argument)");
  }
  const std::function<void()> body = [&] { std::apply([&](const auto&... a) { kernel(a...); }, launch.args); };
  gridDim = launch.grid;
  blockDim = launch.block;
  for (unsigned b = 0; b < launch.grid.x; ++b) {
    blockIdx.x = b;
    for (unsigned w = 0; w < launch.block.x / kWarp; ++w) warp().run(body, w);
  }
}

}  // namespace adt_emu

template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return adt_emu::Warp::current()->shfl_down(mask, v, delta, width);
}

// ---- the device's math -------------------------------------------------------------------------

inline uint32_t __umulhi(uint32_t a, uint32_t b) {
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
}

inline void sincospi(double x, double* s, double* c) {
  *s = std::sin(M_PI * x);
  *c = std::cos(M_PI * x);
}

namespace adt_emu {

// A deterministic value in [-1, 1] from the argument's bits and the instruction.
inline double jitter(float x, uint32_t salt) {
  uint32_t h;
  std::memcpy(&h, &x, sizeof h);
  h = (h ^ salt) * 0x9E3779B1u;
  h ^= h >> 15;
  h *= 0x85EBCA77u;
  h ^= h >> 13;
  h *= 0xC2B2AE3Du;
  h ^= h >> 16;
  return h / 2147483647.5 - 1.0;
}

// float's flush-to-zero of results below 2^-126 (the .ftz instructions).
inline float ftz(double v) { return std::fabs(v) < 0x1p-126 ? 0.0f : static_cast<float>(v); }

}  // namespace adt_emu

namespace adt_fast {
namespace math {

// ex2.approx.ftz: 2 ulp.
inline float ptx_ex2(float x) { return adt_emu::ftz(std::exp2(double(x)) * (1 + 0x1p-22 * adt_emu::jitter(x, 1))); }
// rcp.approx.ftz: 1 ulp.
inline float ptx_rcp(float x) { return adt_emu::ftz(1.0 / x * (1 + 0x1p-23 * adt_emu::jitter(x, 2))); }
// sqrt.approx.ftz: 1 ulp.
inline float ptx_sqrt(float x) { return adt_emu::ftz(std::sqrt(double(x)) * (1 + 0x1p-23 * adt_emu::jitter(x, 3))); }
// lg2.approx.ftz: 2^-21.41 absolute for x in [0.5, 2], 3 ulp elsewhere.
inline float ptx_lg2(float x) {
  const double l = std::log2(double(x));
  const double bound = (x >= 0.5f && x <= 2.0f) ? 0x1p-21 * std::exp2(-0.41) : 3 * 0x1p-23 * std::fabs(l);
  return static_cast<float>(l + bound * adt_emu::jitter(x, 4));
}

}  // namespace math
}  // namespace adt_fast

// __sincosf (sin.approx and cos.approx): 2^-21.41 absolute for x in [-pi, pi].
inline void __sincosf(float x, float* s, float* c) {
  const double bound = 0x1p-21 * std::exp2(-0.41);
  *s = static_cast<float>(std::sin(double(x)) + bound * adt_emu::jitter(x, 5));
  *c = static_cast<float>(std::cos(double(x)) + bound * adt_emu::jitter(x, 6));
}
