// CUDA kernels of the tanh-Gaussian op. Torch-free: device pointers, sizes and a stream.
//
// Work is split into chunks: up to 8 * L consecutive elements of one example, handled by a group
// of L lanes of a warp (L = 32 for examples of 256 elements or more, down to 1 for tiny ones;
// lane j takes elements j + L i), so loads and stores are coalesced and no lane idles on a small
// example. The number of samples a launch handles is a template parameter (kPass <= kMaxPass;
// larger k takes several launches), so the sample loop unrolls into straight-line code: four
// samples per Philox call (core/philox.h), a partial last group specialised at compile time.
// Forward: a lane draws, writes and scores the samples of its elements, summing each sample's
// -log p terms in a register; one shuffle tree per sample and chunk adds the group's lanes. An
// example that is one chunk gets neg_log_prob directly; otherwise each chunk's sums go to a
// workspace that a small second kernel adds up in chunk order. No atomics, no shared memory:
// results are deterministic.
// Backward: the same chunks; a lane regenerates r from (seed, offset) and sums the samples in
// registers; the example's grad_nlp values are read once per chunk.
// The per-element maths is core/elementwise.h, shared with the CPU kernels; see docs/kernels.md.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <type_traits>

#include "../core/chunking.h"
#include "../core/elementwise.h"
#include "../core/philox.h"
#include "adt_cuda.h"

namespace adt_fast {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxPass = 8;  // samples per launch: accumulators live in registers
// Full occupancy (32 registers per thread) for float compute; double needs twice the registers.
template <class S>
constexpr int kBlocksPerSM = (std::is_same<S, double>::value ? 1024 : 2048) / kThreads;
constexpr int64_t kMaxBlocks = 1 << 20;  // grid-stride beyond this
static_assert(kMaxPass % kSamplesPerCall == 0, "a pass starts at a whole sample group");

template <class S>
struct ComputeOf {
  using type = float;
};
template <>
struct ComputeOf<double> {
  using type = double;
};

__device__ __forceinline__ float widen(float v) { return v; }
__device__ __forceinline__ double widen(double v) { return v; }
__device__ __forceinline__ float widen(__half v) { return __half2float(v); }
__device__ __forceinline__ float widen(__nv_bfloat16 v) { return __bfloat162float(v); }

// A read of an input (through the read-only data cache) in the compute type.
template <class S>
__device__ __forceinline__ auto load(const S* p) {
  return widen(__ldg(p));
}

__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(double* p, double v) { *p = v; }
__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// A zero of every storage type, for gradients that are absent (read with stride 0).
__device__ const double kZero[1] = {0.0};

// The sum over each group of `width` lanes (a power of two <= 32), in lane 0 of the group.
template <class C>
__device__ __forceinline__ C group_sum(C v, int width) {
#pragma unroll
  for (int delta = 16; delta > 0; delta >>= 1) {
    const C other = __shfl_down_sync(0xffffffffu, v, delta, width);
    v += delta < width ? other : C(0);
  }
  return v;
}

// Calls f(chunk, lane in its group) for the chunks of this thread's group: a grid-stride loop in
// which every lane of a warp runs the same trips (a group past the end gets an empty chunk), so
// the warp's shuffles always have all 32 lanes.
template <class F>
__device__ __forceinline__ void for_each_chunk(const Chunking& chunks, F&& f) {
  const int per_warp = chunks.per_warp();
  const int64_t step = static_cast<int64_t>(gridDim.x) * kWarps * per_warp;
  for (int64_t first = (static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5)) * per_warp;
       first < chunks.count; first += step) {
    int lane;
    const Chunk c = chunks.of_lane(first, threadIdx.x & 31, lane);
    f(c, lane);
  }
}

struct Seed {
  PhiloxKey key;
  uint64_t offset;
};

__device__ __forceinline__ Seed read_seed(const SeedSource& src) {
  const uint64_t seed = src.seed_ptr ? static_cast<uint64_t>(__ldg(src.seed_ptr)) : src.seed_value;
  const uint64_t offset = (src.offset_ptr ? static_cast<uint64_t>(__ldg(src.offset_ptr)) : src.offset_value) +
                          src.offset_add;
  return Seed{philox_key(seed), offset};
}

// The normals of sample group g of element n: lanes [0, kLanes) of z (kLanes known at compile time,
// so a partial group computes only what it uses).
template <int kLanes, class C>
__device__ __forceinline__ void group_normals(const Seed& seed, uint64_t n, uint64_t g, C (&z)[kSamplesPerCall]) {
  uint32_t w0, w1, w2, w3;
  philox_words4(seed.key, n, seed.offset + g, w0, w1, w2, w3);
  box_muller<C>(w0, w1, z[0], z[1]);
  if (kLanes > 2) box_muller<C>(w2, w3, z[2], z[3]);
}

// Calls f(s, r) for the pass's samples s = 0 .. kPass-1 of element n in order, r its normal:
// Philox's (group (s0 + s) / 4 of the stream) or row s0 + s of `noise`.
template <int kPass, bool kNoise, class C, class S, class F>
__device__ __forceinline__ void for_each_sample(const Seed& seed, const S* noise, int64_t numel, int s0, int64_t n,
                                                F&& f) {
  if (kNoise) noise += static_cast<int64_t>(s0) * numel + n;
#pragma unroll
  for (int g = 0; g * kSamplesPerCall < kPass; ++g) {
    constexpr int kFull = kSamplesPerCall;
    C z[kFull];
    if (!kNoise) {
      if (kPass - g * kFull >= kFull) {
        group_normals<kFull, C>(seed, static_cast<uint64_t>(n), static_cast<uint64_t>(s0 / kFull + g), z);
      } else {
        group_normals<(kPass % kFull), C>(seed, static_cast<uint64_t>(n), static_cast<uint64_t>(s0 / kFull + g), z);
      }
    }
#pragma unroll
    for (int l = 0; l < kFull; ++l) {
      const int s = g * kFull + l;
      if (s < kPass) {
        f(s, kNoise ? load(noise) : z[l]);
        if (kNoise) noise += numel;
      }
    }
  }
}

// What both passes read: the op's inputs, sizes and the pass of samples a launch handles.
template <class S>
struct Inputs {
  using C = typename ComputeOf<S>::type;
  const S* mean;
  const S* std_param;
  const S* x;
  const S* noise;
  SeedSource seed;
  int64_t batch, numel;
  Chunking chunks;
  int s0;  // the pass's first sample
  C eps, lo, hi;

  Inputs(const void* mean_, const void* std_param_, const void* x_, const void* noise_, const SeedSource& seed_,
         int64_t batch_, int64_t dim, double epsilon, double lo_, double hi_)
      : mean(static_cast<const S*>(mean_)),
        std_param(static_cast<const S*>(std_param_)),
        x(static_cast<const S*>(x_)),
        noise(static_cast<const S*>(noise_)),
        seed(seed_),
        batch(batch_),
        numel(batch_ * dim),
        chunks(Chunking::of(batch_, dim)),
        s0(0),
        eps(static_cast<C>(epsilon)),
        lo(static_cast<C>(lo_)),
        hi(static_cast<C>(hi_)) {}
};

template <class S>
struct ForwardParams : Inputs<S> {
  using C = typename ComputeOf<S>::type;
  using Inputs<S>::Inputs;
  S* out;
  C* nlp;
  C* partial;  // [k][B][chunks per example], when an example spans several chunks
  double constant;
};

template <class S, bool kNoise, bool kX, int kPass>
__global__ void __launch_bounds__(kThreads, kBlocksPerSM<S>) forward_kernel(const ForwardParams<S> p) {
  using C = typename ComputeOf<S>::type;
  Seed seed{{0u, 0u}, 0};
  if (!kNoise) seed = read_seed(p.seed);
  if (p.seed.used != nullptr && p.s0 == 0 && blockIdx.x == 0 && threadIdx.x == 0) {
    p.seed.used[0] = static_cast<int64_t>(kNoise ? 0 : (uint64_t{seed.key.k1} << 32 | seed.key.k0));
    p.seed.used[1] = static_cast<int64_t>(kNoise ? 0 : seed.offset);
  }
  for_each_chunk(p.chunks, [&](const Chunk& c, int lane) {
    const int lanes = p.chunks.lanes();
    C acc[kPass];
#pragma unroll
    for (int s = 0; s < kPass; ++s) acc[s] = C(0);
    C log_sigma_sum = C(0);
#pragma unroll 1
    for (int i = 0; i < kElementsPerThread; ++i) {
      if (lanes * i >= c.len) break;  // the same for the whole group
      const int at = lane + lanes * i;
      const bool valid = at < c.len;
      // A lane past the chunk's end redoes the chunk's first element (storing the same values
      // again) and leaves its terms out.
      const int64_t n = c.start + (valid ? at : 0);
      const C mu = load(p.mean + n);
      const RhoTerms<C> rt = rho_terms<C>(load(p.std_param + n));
      const C xv = kX ? load(p.x + n) : C(0);
      if (valid) log_sigma_sum += rt.log_sigma + C(2 * kLog2);  // the 2 log 2 each sample term lacks
      S* out = p.out + static_cast<int64_t>(p.s0) * p.numel + n;
      for_each_sample<kPass, kNoise, C>(seed, p.noise, p.numel, p.s0, n, [&](int s, C r) {
        const TanhTerms<C> tt = tanh_terms<C>(mu + rt.sigma * r);
        const C d = p.eps * tt.t;
        store(out, kX ? math::clamp_<C>(xv + d, p.lo, p.hi) : d);
        out += p.numel;
        if (valid) acc[s] = add_doubled_sample_term<C>(acc[s], r, tt.log2_quarter_dtanh);
      });
    }
    // An example of one chunk gets its -log p, else the chunk's sum goes to its workspace slot.
    const bool whole = p.chunks.per_example == 1;
    C* dst = whole ? p.nlp + static_cast<int64_t>(p.s0) * p.batch + c.example
                   : p.partial + (static_cast<int64_t>(p.s0) * p.batch + c.example) * p.chunks.per_example +
                         c.index;
    const int64_t row_step = whole ? p.batch : p.batch * p.chunks.per_example;
    const double add = whole ? p.constant : 0.0;
#pragma unroll
    for (int s = 0; s < kPass; ++s) {
      const C v = group_sum<C>(C(0.5) * acc[s] + log_sigma_sum, lanes);
      if (lane == 0 && c.len > 0) dst[s * row_step] = static_cast<C>(static_cast<double>(v) + add);
    }
  });
}

// neg_log_prob of examples that span several chunks: their chunk sums added in chunk order.
template <class C>
__global__ void combine_partials_kernel(const C* __restrict partial, int64_t rows, int64_t per_example,
                                        double constant, C* __restrict nlp) {
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; row < rows;
       row += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const C* ps = partial + row * per_example;
    double acc = 0.0;
    for (int64_t j = 0; j < per_example; ++j) acc += static_cast<double>(ps[j]);
    nlp[row] = static_cast<C>(acc + constant);
  }
}

template <class S>
struct BackwardParams : Inputs<S> {
  using C = typename ComputeOf<S>::type;
  using Inputs<S>::Inputs;
  const S* grad_out;
  int64_t go_sample_stride, go_element_stride;
  const C* grad_nlp;
  int64_t ge_sample_stride, ge_example_stride;
  S* grad_mean;
  S* grad_std_param;
  S* grad_x;
  bool accumulate;  // add to the gradients of the earlier passes (only passes of kMaxPass samples)
};

template <class S, bool kNoise, bool kX, int kPass>
__global__ void __launch_bounds__(kThreads, kBlocksPerSM<S>) backward_kernel(const BackwardParams<S> p) {
  using C = typename ComputeOf<S>::type;
  Seed seed{{0u, 0u}, 0};
  if (!kNoise) seed = read_seed(p.seed);
  const S* grad_out = (p.grad_out != nullptr ? p.grad_out : reinterpret_cast<const S*>(kZero)) +
                      static_cast<int64_t>(p.s0) * p.go_sample_stride;
  const C* grad_nlp = p.grad_nlp != nullptr ? p.grad_nlp : reinterpret_cast<const C*>(kZero);
  for_each_chunk(p.chunks, [&](const Chunk& c, int lane) {
    const int lanes = p.chunks.lanes();
    // d(loss)/d(-log p) of the example's samples: -2 ge t enters d/du, ge d log sigma / d rho.
    C ge[kPass];
    C ge_sum = C(0);
#pragma unroll
    for (int s = 0; s < kPass; ++s) {
      ge[s] = __ldg(grad_nlp + (p.s0 + s) * p.ge_sample_stride + c.example * p.ge_example_stride);
      ge_sum += ge[s];
    }
    const C eps4 = C(4) * p.eps;  // times (1 - t^2) / 4
#pragma unroll 1
    for (int i = 0; i < kElementsPerThread; ++i) {
      const int at = lane + lanes * i;
      if (at >= c.len) break;
      const int64_t n = c.start + at;
      const C mu = load(p.mean + n);
      const C rho = load(p.std_param + n);
      const RhoTerms<C> rt = rho_terms<C>(rho);
      const C xv = kX ? load(p.x + n) : C(0);
      const S* go = grad_out + n * p.go_element_stride;
      C acc_du = C(0), acc_dur = C(0), acc_gx = C(0);
      for_each_sample<kPass, kNoise, C>(seed, p.noise, p.numel, p.s0, n, [&](int s, C r) {
        const TanhTerms<C> tt = tanh_terms<C>(mu + rt.sigma * r);
        C gd = load(go);
        go += p.go_sample_stride;
        if (kX) {  // the gradient passes where the clamp did not bind, as torch.clamp's
          const C unclamped = xv + p.eps * tt.t;
          gd = (unclamped >= p.lo && unclamped <= p.hi) ? gd : C(0);
          acc_gx += gd;
        }
        const C du = gd * (eps4 * tt.quarter_dtanh) - C(2) * ge[s] * tt.t;
        acc_du += du;
        acc_dur += du * r;
      });
      C g_mean = acc_du;
      C g_std = rt.sigmoid * acc_dur + rt.sigmoid_over_softplus * ge_sum;
      C g_x = acc_gx;
      if (kPass == kMaxPass && p.accumulate) {
        g_mean += widen(p.grad_mean[n]);
        g_std += widen(p.grad_std_param[n]);
        if (kX) g_x += widen(p.grad_x[n]);
      }
      store(p.grad_mean + n, g_mean);
      store(p.grad_std_param + n, g_std);
      if (kX) store(p.grad_x + n, g_x);
    }
  });
}

__global__ void philox_words_kernel(const int64_t* __restrict seed_offset, int64_t numel, int64_t groups,
                                    int64_t* __restrict out) {
  SeedSource src;
  src.seed_ptr = seed_offset;
  src.offset_ptr = seed_offset + 1;
  const Seed seed = read_seed(src);
  const int64_t total = numel * groups;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t g = i / numel, n = i % numel;
    uint32_t w0, w1, w2, w3;
    philox_words4(seed.key, static_cast<uint64_t>(n), seed.offset + static_cast<uint64_t>(g), w0, w1, w2, w3);
    int64_t* dst = out + i * 4;
    dst[0] = w0;
    dst[1] = w1;
    dst[2] = w2;
    dst[3] = w3;
  }
}

// The launch's error, peeked: cudaGetLastError would also clear (and blame us for) an error left
// pending by someone else's earlier launch.
const char* launch_error() {
  const cudaError_t err = cudaPeekAtLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

unsigned grid_for(int64_t work, int64_t per_block) {
  return static_cast<unsigned>(std::min<int64_t>((work + per_block - 1) / per_block, kMaxBlocks));
}

// Blocks for the chunks: each of a block's warps takes chunks.per_warp() chunks per trip.
unsigned grid_for(const Chunking& chunks) { return grid_for(chunks.count, kWarps * chunks.per_warp()); }

// launch(noise, x, pass) with each as a compile-time constant (std::integral_constant).
template <class F>
void with_variant(bool noise, bool x, int pass, F&& launch) {
  const auto with_pass = [&](auto kNoise, auto kX) {
    switch (pass) {
      case 1: return launch(kNoise, kX, std::integral_constant<int, 1>{});
      case 2: return launch(kNoise, kX, std::integral_constant<int, 2>{});
      case 3: return launch(kNoise, kX, std::integral_constant<int, 3>{});
      case 4: return launch(kNoise, kX, std::integral_constant<int, 4>{});
      case 5: return launch(kNoise, kX, std::integral_constant<int, 5>{});
      case 6: return launch(kNoise, kX, std::integral_constant<int, 6>{});
      case 7: return launch(kNoise, kX, std::integral_constant<int, 7>{});
      default: return launch(kNoise, kX, std::integral_constant<int, kMaxPass>{});
    }
  };
  static_assert(kMaxPass == 8, "with_variant lists the passes 1..8");
  if (noise) {
    x ? with_pass(std::true_type{}, std::true_type{}) : with_pass(std::true_type{}, std::false_type{});
  } else {
    x ? with_pass(std::false_type{}, std::true_type{}) : with_pass(std::false_type{}, std::false_type{});
  }
}

// The passes of k samples: kMaxPass at a time, and the rest.
int pass_size(int64_t k, int64_t s0) { return static_cast<int>(std::min<int64_t>(kMaxPass, k - s0)); }

template <class S>
const char* forward_typed(const void* mean, const void* std_param, const void* x, const void* noise,
                          const SeedSource& seed, int64_t batch, int64_t dim, int64_t k, double epsilon, double lo,
                          double hi, void* out, void* nlp_v, void* workspace, cudaStream_t stream) {
  using C = typename ComputeOf<S>::type;
  C* nlp = static_cast<C*>(nlp_v);
  if (k <= 0 || k > INT_MAX) return k <= 0 ? nullptr : "adt_fast: num_samples must fit 31 bits";
  ForwardParams<S> p(mean, std_param, x, noise, seed, batch, dim, epsilon, lo, hi);
  p.out = static_cast<S*>(out);
  p.nlp = nlp;
  p.partial = static_cast<C*>(workspace);
  p.constant = neg_log_prob_constant(dim, epsilon);
  // With no elements the kernel still runs (one block, no chunks) to report the (seed, offset).
  const unsigned grid = std::max(1u, grid_for(p.chunks));
  for (int64_t s0 = 0; s0 < k; s0 += kMaxPass) {
    p.s0 = static_cast<int>(s0);
    with_variant(noise != nullptr, x != nullptr, pass_size(k, s0), [&](auto kNoise, auto kX, auto kPass) {
      forward_kernel<S, decltype(kNoise)::value, decltype(kX)::value, decltype(kPass)::value>
          <<<grid, kThreads, 0, stream>>>(p);
    });
  }
  if (p.numel == 0 && batch > 0) {  // -log p of an empty example: the empty sum
    if (cudaMemsetAsync(nlp, 0, sizeof(C) * static_cast<size_t>(k * batch), stream) != cudaSuccess) {
      return launch_error();
    }
  }
  if (p.chunks.per_example > 1) {
    combine_partials_kernel<C><<<grid_for(k * batch, 128), 128, 0, stream>>>(p.partial, k * batch,
                                                                            p.chunks.per_example, p.constant, nlp);
  }
  return launch_error();
}

template <class S>
const char* backward_typed(const void* grad_out, int64_t go_sample_stride, int64_t go_element_stride,
                           const void* grad_nlp, const void* mean, const void* std_param, const void* x,
                           const void* noise, const SeedSource& seed, int64_t batch, int64_t dim, int64_t k,
                           double epsilon, double lo, double hi, void* grad_mean, void* grad_std, void* grad_x,
                           cudaStream_t stream) {
  using C = typename ComputeOf<S>::type;
  if (batch <= 0 || dim <= 0) return nullptr;
  if (k > INT_MAX) return "adt_fast: num_samples must fit 31 bits";
  if (k <= 0) {  // no samples: every gradient is the empty sum
    const size_t bytes = sizeof(S) * static_cast<size_t>(batch * dim);
    for (void* g : {grad_mean, grad_std, grad_x}) {
      if (g != nullptr && cudaMemsetAsync(g, 0, bytes, stream) != cudaSuccess) return launch_error();
    }
    return launch_error();
  }
  BackwardParams<S> p(mean, std_param, x, noise, seed, batch, dim, epsilon, lo, hi);
  p.grad_out = static_cast<const S*>(grad_out);
  p.go_sample_stride = grad_out != nullptr ? go_sample_stride : 0;
  p.go_element_stride = grad_out != nullptr ? go_element_stride : 0;
  p.grad_nlp = static_cast<const C*>(grad_nlp);
  p.ge_sample_stride = grad_nlp != nullptr ? batch : 0;
  p.ge_example_stride = grad_nlp != nullptr ? 1 : 0;
  p.grad_mean = static_cast<S*>(grad_mean);
  p.grad_std_param = static_cast<S*>(grad_std);
  p.grad_x = static_cast<S*>(grad_x);
  const unsigned grid = grid_for(p.chunks);
  const auto launch = [&](int64_t s0, bool accumulate) {
    p.s0 = static_cast<int>(s0);
    p.accumulate = accumulate;
    with_variant(noise != nullptr, x != nullptr, pass_size(k, s0), [&](auto kNoise, auto kX, auto kPass) {
      backward_kernel<S, decltype(kNoise)::value, decltype(kX)::value, decltype(kPass)::value>
          <<<grid, kThreads, 0, stream>>>(p);
    });
  };
  // The partial pass (k mod kMaxPass samples) first, so that only passes of kMaxPass samples ever
  // add to earlier ones: the other kernels carry no code to read the gradients back.
  const int64_t partial = k % kMaxPass;
  if (partial > 0) launch(k - partial, false);
  for (int64_t s0 = 0; s0 < k - partial; s0 += kMaxPass) launch(s0, partial > 0 || s0 > 0);
  return launch_error();
}

size_t compute_size(DType dtype) { return dtype == DType::kFloat64 ? sizeof(double) : sizeof(float); }

}  // namespace

size_t forward_workspace_bytes(DType dtype, int64_t batch, int64_t dim, int64_t num_samples) {
  const Chunking chunks = Chunking::of(batch, dim);
  if (batch <= 0 || num_samples <= 0 || chunks.per_example <= 1) return 0;
  return compute_size(dtype) * static_cast<size_t>(num_samples * chunks.count);
}

#define ADT_FAST_DISPATCH(dtype, FN, ...)                                        \
  switch (dtype) {                                                               \
    case DType::kFloat32: return FN<float>(__VA_ARGS__);                         \
    case DType::kFloat64: return FN<double>(__VA_ARGS__);                        \
    case DType::kFloat16: return FN<__half>(__VA_ARGS__);                        \
    case DType::kBFloat16: return FN<__nv_bfloat16>(__VA_ARGS__);                \
  }                                                                              \
  return "adt_fast: unknown dtype"

const char* sample_forward(DType dtype, const void* mean, const void* std_param, const void* x, const void* noise,
                           const SeedSource& seed, int64_t batch, int64_t dim, int64_t num_samples, double epsilon,
                           double lo, double hi, void* out, void* neg_log_prob, void* workspace,
                           CUstream_st* stream) {
  ADT_FAST_DISPATCH(dtype, forward_typed, mean, std_param, x, noise, seed, batch, dim, num_samples, epsilon, lo,
                    hi, out, neg_log_prob, workspace, stream);
}

const char* sample_backward(DType dtype, const void* grad_out, int64_t grad_out_sample_stride,
                            int64_t grad_out_element_stride, const void* grad_nlp, const void* mean,
                            const void* std_param, const void* x, const void* noise, const SeedSource& seed,
                            int64_t batch, int64_t dim, int64_t num_samples, double epsilon, double lo,
                            double hi, void* grad_mean, void* grad_std_param, void* grad_x, CUstream_st* stream) {
  ADT_FAST_DISPATCH(dtype, backward_typed, grad_out, grad_out_sample_stride, grad_out_element_stride, grad_nlp,
                    mean, std_param, x, noise, seed, batch, dim, num_samples, epsilon, lo, hi, grad_mean,
                    grad_std_param, grad_x, stream);
}

const char* philox_words(const int64_t* seed_offset, int64_t numel, int64_t num_samples, int64_t* out,
                         CUstream_st* stream) {
  const int64_t groups = num_groups(num_samples);
  const int64_t total = numel * groups;
  if (total <= 0) return nullptr;
  const int threads = 256;
  philox_words_kernel<<<grid_for(total, threads), threads, 0, stream>>>(seed_offset, numel, groups, out);
  return launch_error();
}

#define ADT_FAST_STR_(...) #__VA_ARGS__
#define ADT_FAST_STR(...) ADT_FAST_STR_(__VA_ARGS__)

const char* compiled_architectures() {
#if defined(ADT_FAST_CUDA_ARCHS_TOKENS)
  return ADT_FAST_STR(ADT_FAST_CUDA_ARCHS_TOKENS);
#else
  return "unknown";
#endif
}

}  // namespace cuda
}  // namespace adt_fast
