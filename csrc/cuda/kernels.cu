// CUDA kernels of the tanh-Gaussian op. Torch-free: device pointers, sizes and a stream.
//
// Work is split into chunks: up to 8 * L consecutive elements of one example, handled by a group
// of L lanes of a warp (L = 32 for examples of 256 elements or more, down to 1 for tiny ones), so
// no lane idles on a small example. A lane works on quads, the four consecutive elements whose
// normals of one sample come from one Philox call (docs/randomness.md): quads j, j + L, ... of
// its chunk, so a warp's accesses are coalesced and, when D is a multiple of 4 and every array is
// aligned (kVec), each quad is one 16-byte load or store. A launch handles up to kMaxPass samples
// (larger k takes several launches), a template parameter of the vector path.
// Forward: a lane draws, writes and scores the samples of its quads, summing each sample's -log p
// terms in a register; one shuffle tree per sample and chunk adds the group's lanes. An example
// that is one chunk gets neg_log_prob directly; otherwise each chunk's sums go to a workspace that
// a small second kernel adds up in chunk order. No atomics, no shared memory: results are
// deterministic.
// Backward: the same chunks; a lane regenerates r from (seed, offset) and sums the samples in
// registers; the example's grad_nlp values are read once per chunk.
// The per-element maths is core/elementwise.h, shared with the CPU kernels; see docs/kernels.md.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "../core/chunking.h"
#include "../core/elementwise.h"
#include "../core/philox.h"
#include "adt_cuda.h"

namespace adt_fast {
namespace cuda {
namespace {

constexpr int kThreads = 256;  // the default split's blocks; the small-call split's have half
constexpr int kMaxPass = 8;  // samples per launch: accumulators live in registers
// 4 blocks (1024 threads, 64 registers) per SM for every type. Measured on an H200
// (benchmarks/RESULTS.md, 2026-12-04): at full occupancy's 32 registers the float kernels spill,
// the spills' local-memory traffic nearly doubled the DRAM bytes, and forward + backward took
// 533 us at B = 4096 against 329 us here (40 registers: 371 us).
constexpr int kBlocksPerSM = 1024 / kThreads;
constexpr int64_t kMaxBlocks = 1 << 20;  // grid-stride beyond this

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
  const int warps = static_cast<int>(blockDim.x >> 5);
  const int64_t step = static_cast<int64_t>(gridDim.x) * warps * per_warp;
  for (int64_t first = (static_cast<int64_t>(blockIdx.x) * warps + (threadIdx.x >> 5)) * per_warp;
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
  const uint64_t seed = (src.seed_ptr ? static_cast<uint64_t>(__ldg(src.seed_ptr)) : src.seed_value) ^ src.seed_xor;
  const uint64_t offset = (src.offset_ptr ? static_cast<uint64_t>(__ldg(src.offset_ptr)) : src.offset_value) +
                          src.offset_add;
  return Seed{philox_key(seed), offset};
}

// One quad of a storage type as a single access: float4 and two double2 through the read-only
// path; 16-bit types as an 8-byte struct. (A plain struct copy of four floats is not reliably
// one 16-byte access: nvcc splits some into four.)
template <class S>
struct alignas(8) Four {
  S v[4];
};

__device__ __forceinline__ void load4(const float* p, float (&v)[4]) {
  const float4 f = __ldg(reinterpret_cast<const float4*>(p));
  v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
}
__device__ __forceinline__ void load4(const double* p, double (&v)[4]) {
  const double2 a = __ldg(reinterpret_cast<const double2*>(p)), b = __ldg(reinterpret_cast<const double2*>(p + 2));
  v[0] = a.x, v[1] = a.y, v[2] = b.x, v[3] = b.y;
}
template <class S>
__device__ __forceinline__ void load4(const S* p, float (&v)[4]) {
  const Four<S> f = *reinterpret_cast<const Four<S>*>(p);
#pragma unroll
  for (int e = 0; e < 4; ++e) v[e] = widen(f.v[e]);
}

__device__ __forceinline__ void store4(float* p, const float (&v)[4]) {
#if defined(__CUDA_ARCH__)  // nvcc splits all but the first of a pass's float4 stores into four
  asm volatile("st.global.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(p), "f"(v[0]), "f"(v[1]), "f"(v[2]), "f"(v[3]));
#else
  *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
#endif
}
__device__ __forceinline__ void store4(double* p, const double (&v)[4]) {
  reinterpret_cast<double2*>(p)[0] = make_double2(v[0], v[1]);
  reinterpret_cast<double2*>(p)[1] = make_double2(v[2], v[3]);
}
template <class S>
__device__ __forceinline__ void store4(S* p, const float (&v)[4]) {
  Four<S> f;
#pragma unroll
  for (int e = 0; e < 4; ++e) store(&f.v[e], v[e]);
  *reinterpret_cast<Four<S>*>(p) = f;
}

// A lane's quad of a chunk: elements [first, last) of the quad starting at element n4 belong to
// the chunk (first = last = 0 when the lane has no quad on this trip). A chunk starts on a quad
// boundary when D is a multiple of 4; otherwise its first and last quads are shared with the
// neighbouring chunks, each of which draws the quad's normals and handles its own elements.
struct LaneQuad {
  int64_t n4;
  int first, last;
};

// The quads of chunk c: q0, the first, and how many.
struct ChunkQuads {
  int64_t q0;
  int count;
  ADT_FN static ChunkQuads of(const Chunk& c) {
    const int64_t q0 = c.start / kElementsPerCall;
    return ChunkQuads{q0, c.len > 0 ? static_cast<int>((c.start + c.len - 1) / kElementsPerCall - q0 + 1) : 0};
  }
  // Quad j of the chunk, or (j >= count) the chunk's first quad with no elements. kVec: the
  // chunk is whole quads (D a multiple of 4).
  template <bool kVec>
  ADT_FN LaneQuad lane_quad(const Chunk& c, int j) const {
    const bool valid = j < count;
    const int64_t n4 = (q0 + (valid ? j : 0)) * kElementsPerCall;
    if (kVec) return LaneQuad{n4, 0, valid ? kElementsPerCall : 0};
    const int64_t from = c.start - n4, to = c.start + c.len - n4;
    const int first = static_cast<int>(from > 0 ? from : 0);
    const int last = static_cast<int>(to < kElementsPerCall ? to : kElementsPerCall);
    return valid ? LaneQuad{n4, first, last} : LaneQuad{n4, 0, 0};
  }
};

// Whether element e of the quad is the chunk's. kVec: all four or none.
template <bool kVec>
__device__ __forceinline__ bool holds(const LaneQuad& lq, int e) {
  return kVec ? lq.last > 0 : (e >= lq.first && e < lq.last);
}

// The quad's values at p in the compute type: kVec (whole quads, every array aligned for a
// vector access), one 16-byte load (8 for 16-bit types, two for double) of a quad that always
// lies in the chunk (a lane with none reads the chunk's first); otherwise a load per element of
// the chunk and zero elsewhere.
template <bool kVec, class S, class C>
__device__ __forceinline__ void load_quad(const S* p, const LaneQuad& lq, C (&v)[4]) {
  if (kVec) {
    load4(p, v);
  } else {
#pragma unroll
    for (int e = 0; e < 4; ++e) v[e] = holds<false>(lq, e) ? load(p + e) : C(0);
  }
}

// Stores the chunk's elements of the quad.
template <bool kVec, class S, class C>
__device__ __forceinline__ void store_quad(S* p, const LaneQuad& lq, const C (&v)[4]) {
  if (kVec) {
    if (lq.last > 0) store4(p, v);
  } else {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      if (holds<false>(lq, e)) store(p + e, v[e]);
    }
  }
}

// p, hidden from nvvm's optimiser: a load through it stays where it is written instead of being
// merged with an earlier one or hoisted out of the sample loop (ptxas may still hoist it). Measured
// with benchmarks/sass_report.py: 2 instructions per element fewer for the backward's mean and x,
// 6 for its std_param read again after the loop.
template <class S>
__device__ __forceinline__ const S* opaque(const S* p) {
#if defined(__CUDA_ARCH__)
  asm volatile("" : "+l"(p));
#else
  asm volatile("" : "+r"(p));
#endif
  return p;
}

// The normals of sample s of quad q (docs/randomness.md): Box-Muller on both word pairs.
template <class C>
__device__ __forceinline__ void quad_normals(const Seed& seed, uint64_t q, uint64_t offset_plus_s, C (&z)[4]) {
  uint32_t w0, w1, w2, w3;
  philox_words4(seed.key, q, offset_plus_s, w0, w1, w2, w3);
  box_muller<C>(w0, w1, z[0], z[1]);
  box_muller<C>(w2, w3, z[2], z[3]);
}

// A lane takes quads lane, lane + L, ... of its chunk: two when D is a multiple of 4 (8 * L
// elements), one more when the chunk starts mid-quad.
constexpr int kQuadsPerLane = kElementsPerThread / kElementsPerCall + 1;
static_assert(kElementsPerThread % kElementsPerCall == 0, "a lane's elements are whole quads");

// The pass's normals of quad lq, one sample at a time: f(s, z) for s = 0 .. count-1, z the four
// elements' normals of sample s0 + s (Philox's, or rows of `noise`). kUnroll: the samples as
// straight-line code, at most kUnroll of them (the forward indexes its per-sample sums by s);
// otherwise a loop, which keeps ptxas from interleaving the Philox calls of several samples: the
// backward holds 24 values of its quad across the samples, and two samples' Philox state on top
// of them spills.
template <int kUnroll, bool kNoise, bool kVec, class C, class S, class F>
__device__ __forceinline__ void for_each_sample(const Seed& seed, const S* noise, int64_t numel, int s0, int count,
                                                const LaneQuad& lq, F&& f) {
  if (kNoise) noise += static_cast<int64_t>(s0) * numel + lq.n4;
  const uint64_t q = static_cast<uint64_t>(lq.n4) / kElementsPerCall;
  uint64_t counter = seed.offset + static_cast<uint64_t>(s0);  // Philox's (offset + s), kept running
#pragma unroll(kUnroll > 0 ? kUnroll : 1)
  for (int s = 0; s < (kUnroll > 0 ? kUnroll : count); ++s) {
    if (kUnroll > 0 && s >= count) break;
    C z[4];
    if (kNoise) {
      load_quad<kVec>(noise, lq, z);
      noise += numel;
    } else {
      quad_normals<C>(seed, q, counter++, z);
    }
    f(s, z);
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
  int s0;    // the pass's first sample
  int pass;  // and how many samples it has
  C eps, lo, hi;

  Inputs(const void* mean_, const void* std_param_, const void* x_, const void* noise_, const SeedSource& seed_,
         int64_t batch_, int64_t dim, int per_lane, double epsilon, double lo_, double hi_)
      : mean(static_cast<const S*>(mean_)),
        std_param(static_cast<const S*>(std_param_)),
        x(static_cast<const S*>(x_)),
        noise(static_cast<const S*>(noise_)),
        seed(seed_),
        batch(batch_),
        numel(batch_ * dim),
        chunks(Chunking::of(batch_, dim, per_lane)),
        s0(0),
        pass(0),
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

// kPass: the samples of the launch, known at compile time for the vector path (which all common
// shapes take); the element-wise path is compiled once with kMaxPass and runs p.pass of them.
template <class S, bool kNoise, bool kX, bool kVec, int kPass>
__global__ void __launch_bounds__(kThreads, kBlocksPerSM) forward_kernel(const ForwardParams<S> p) {
  using C = typename ComputeOf<S>::type;
  const int pass = kVec ? kPass : p.pass;
  Seed seed{{0u, 0u}, 0};
  if (!kNoise) seed = read_seed(p.seed);
  if (p.seed.used != nullptr && p.s0 == 0 && blockIdx.x == 0 && threadIdx.x == 0) {
    p.seed.used[0] = static_cast<int64_t>(kNoise ? 0 : (uint64_t{seed.key.k1} << 32 | seed.key.k0));
    p.seed.used[1] = static_cast<int64_t>(kNoise ? 0 : seed.offset);
  }
  for_each_chunk(p.chunks, [&](const Chunk& c, int lane) {
    const int lanes = p.chunks.lanes();
    const ChunkQuads quads = ChunkQuads::of(c);
    C acc[kPass];
#pragma unroll
    for (int s = 0; s < kPass; ++s) acc[s] = C(0);
    C log_sigma_sum = C(0);
#pragma unroll 1
    for (int i = 0; i < kQuadsPerLane; ++i) {
      if (lanes * i >= quads.count) break;  // the same for the whole group
      // A lane past the chunk's last quad runs the trip with no elements (first = last).
      const LaneQuad lq = quads.template lane_quad<kVec>(c, lane + lanes * i);
      C mu[4], rho[4], xv[4], sigma[4];
      load_quad<kVec>(p.mean + lq.n4, lq, mu);
      load_quad<kVec>(p.std_param + lq.n4, lq, rho);
      if (kX) load_quad<kVec>(p.x + lq.n4, lq, xv);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const RhoTerms<C> rt = rho_terms<C>(rho[e]);
        sigma[e] = rt.sigma;
        // the 2 log 2 each sample term lacks
        if (holds<kVec>(lq, e)) log_sigma_sum += rt.log_sigma + C(2 * kLog2);
      }
      S* out = p.out + static_cast<int64_t>(p.s0) * p.numel + lq.n4;
      for_each_sample<kPass, kNoise, kVec, C>(seed, p.noise, p.numel, p.s0, pass, lq, [&](int s, const C(&z)[4]) {
        C o[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const TanhTerms<C> tt = tanh_terms<C>(mu[e] + sigma[e] * z[e]);
          const C d = p.eps * tt.t;
          o[e] = kX ? math::clamp_<C>(xv[e] + d, p.lo, p.hi) : d;
          if (holds<kVec>(lq, e)) acc[s] = add_doubled_sample_term<C>(acc[s], z[e], tt.log2_quarter_dtanh);
        }
        store_quad<kVec>(out, lq, o);
        out += p.numel;
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
      if (s >= pass) break;  // the same for the whole warp
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
  int64_t go_sample_stride, go_element_stride;  // element stride 1, or 0 (one value per sample)
  const C* grad_nlp;
  int64_t ge_sample_stride, ge_example_stride;
  S* grad_mean;
  S* grad_std_param;
  S* grad_x;  // null: not wanted
  bool accumulate;  // add to the gradients of the earlier passes (only passes of kMaxPass samples)
};

// kPass as in the forward.
template <class S, bool kNoise, bool kX, bool kVec, int kPass>
__global__ void __launch_bounds__(kThreads, kBlocksPerSM) backward_kernel(const BackwardParams<S> p) {
  using C = typename ComputeOf<S>::type;
  const int pass = kVec ? kPass : p.pass;
  Seed seed{{0u, 0u}, 0};
  if (!kNoise) seed = read_seed(p.seed);
  const S* grad_out = (p.grad_out != nullptr ? p.grad_out : reinterpret_cast<const S*>(kZero)) +
                      static_cast<int64_t>(p.s0) * p.go_sample_stride;
  const C* grad_nlp = p.grad_nlp != nullptr ? p.grad_nlp : reinterpret_cast<const C*>(kZero);
  for_each_chunk(p.chunks, [&](const Chunk& c, int lane) {
    const int lanes = p.chunks.lanes();
    const ChunkQuads quads = ChunkQuads::of(c);
    // d(loss)/d(-log p) of the example's samples: -2 ge t enters d/du, ge d log sigma / d rho.
    const C* ge = grad_nlp + p.s0 * p.ge_sample_stride + c.example * p.ge_example_stride;
    C ge_sum = C(0);
#pragma unroll
    for (int s = 0; s < kPass; ++s) {
      if (s < pass) ge_sum += __ldg(ge + s * p.ge_sample_stride);
    }
#pragma unroll 1
    for (int i = 0; i < kQuadsPerLane; ++i) {
      const int j = lane + lanes * i;
      if (j >= quads.count) break;
      const LaneQuad lq = quads.template lane_quad<kVec>(c, j);
      C rho[4], sigma[4];
      load_quad<kVec>(p.std_param + lq.n4, lq, rho);
#pragma unroll
      for (int e = 0; e < 4; ++e) sigma[e] = softplus_from<C>(rho[e], math::exp_neg_abs(rho[e]));
      C acc_du4[4], acc_dur4[4], acc_gx[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_du4[e] = acc_dur4[e] = acc_gx[e] = C(0);
      const S* go = grad_out + lq.n4 * p.go_element_stride;
      const C* ge_at = ge;  // sample s's grad_nlp, kept running like go
      for_each_sample<0, kNoise, kVec, C>(seed, p.noise, p.numel, p.s0, pass, lq, [&](int s, const C(&z)[4]) {
        C mu[4], xv[4], gd[4];
        load_quad<kVec>(opaque(p.mean) + lq.n4, lq, mu);
        if (kX) load_quad<kVec>(opaque(p.x) + lq.n4, lq, xv);
        if (p.go_element_stride != 0) {
          load_quad<kVec>(go, lq, gd);
        } else {
          const C g = load(go);
#pragma unroll
          for (int e = 0; e < 4; ++e) gd[e] = g;
        }
        go += p.go_sample_stride;
        const C ge_s = __ldg(ge_at);
        ge_at += p.ge_sample_stride;
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const TanhTerms<C> tt = tanh_terms<C>(mu[e] + sigma[e] * z[e]);
          C g = gd[e];
          if (kX) {  // the gradient passes where the clamp did not bind, as torch.clamp's
            const C unclamped = xv[e] + p.eps * tt.t;
            g = (unclamped >= p.lo && unclamped <= p.hi) ? g : C(0);
            acc_gx[e] += g;
          }
          // d/du over 4, summed and scaled by 4 once per element: a huge eps then overflows only where
          // the gradient does (4 eps overflowed past FLT_MAX / 4), and the powers of two are exact.
          const C du4 = g * (p.eps * tt.quarter_dtanh) - C(0.5) * ge_s * tt.t;
          acc_du4[e] += du4;
          acc_dur4[e] += du4 * z[e];
        }
      });
      C g_mean[4], g_std[4];
      load_quad<kVec>(opaque(p.std_param) + lq.n4, lq, rho);  // read again rather than held
#pragma unroll
      for (int e = 0; e < 4; ++e) {  // exp(-|rho|) again rather than held across the loop
        const RhoGrads<C> rg = rho_grads<C>(rho[e], math::exp_neg_abs(rho[e]), sigma[e]);
        g_mean[e] = C(4) * acc_du4[e];
        g_std[e] = rg.sigmoid * (C(4) * acc_dur4[e]) + rg.sigmoid_over_softplus * ge_sum;
      }
      if (kPass == kMaxPass && p.accumulate) {
        C prev[4];
        load_quad<kVec>(p.grad_mean + lq.n4, lq, prev);
#pragma unroll
        for (int e = 0; e < 4; ++e) g_mean[e] += prev[e];
        load_quad<kVec>(p.grad_std_param + lq.n4, lq, prev);
#pragma unroll
        for (int e = 0; e < 4; ++e) g_std[e] += prev[e];
        if (kX && p.grad_x != nullptr) {
          load_quad<kVec>(p.grad_x + lq.n4, lq, prev);
#pragma unroll
          for (int e = 0; e < 4; ++e) acc_gx[e] += prev[e];
        }
      }
      store_quad<kVec>(p.grad_mean + lq.n4, lq, g_mean);
      store_quad<kVec>(p.grad_std_param + lq.n4, lq, g_std);
      if (kX && p.grad_x != nullptr) store_quad<kVec>(p.grad_x + lq.n4, lq, acc_gx);
    }
  });
}

__global__ void philox_words_kernel(const int64_t* __restrict seed_offset, int64_t quads, int64_t samples,
                                    int64_t* __restrict out) {
  SeedSource src;
  src.seed_ptr = seed_offset;
  src.offset_ptr = seed_offset + 1;
  const Seed seed = read_seed(src);
  const int64_t total = quads * samples;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t s = i / quads, q = i % quads;
    uint32_t w0, w1, w2, w3;
    philox_words4(seed.key, static_cast<uint64_t>(q), seed.offset + static_cast<uint64_t>(s), w0, w1, w2, w3);
    int64_t* dst = out + i * 4;
    dst[0] = w0;
    dst[1] = w1;
    dst[2] = w2;
    dst[3] = w3;
  }
}

// The launches' error, read and cleared as torch's C10_CUDA_KERNEL_LAUNCH_CHECK reads it: a
// non-sticky error (a bad launch configuration) left pending would be raised again by torch's next
// check, against an op that did nothing wrong.
const char* launch_error() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

unsigned grid_for(int64_t work, int64_t per_block) {
  return static_cast<unsigned>(std::min<int64_t>((work + per_block - 1) / per_block, kMaxBlocks));
}

// Blocks of `threads` for the chunks: each of a block's warps takes chunks.per_warp() chunks per trip.
unsigned grid_for(const Chunking& chunks, int threads) { return grid_for(chunks.count, threads / 32 * chunks.per_warp()); }

// The work split of a call (docs/kernels.md, "Work split"). The default, 8 elements per lane in
// blocks of 8 warps, spends the fewest instructions per element. A call of fewer than
// kSmallCallElements elements would leave part of a GPU idle with it (at B = 64, D = 3072, 96
// blocks for an H100's or H200's 132 SMs), so it takes 4 elements per lane in blocks of 4 warps:
// four times the blocks. The choice depends on (B, D) only, never on the device, so a call gives
// the same results on any GPU; set_work_split forces one (tests, benchmarks).
struct Split {
  int per_lane, threads;
};
constexpr int64_t kSmallCallElements = int64_t{1} << 20;  // 512 default blocks: about one wave
constexpr Split kDefaultSplit{kElementsPerThread, kThreads};
constexpr Split kSmallCallSplit{kElementsPerThreadSmallCalls, kThreads / 2};
std::atomic<int> forced_split{static_cast<int>(WorkSplit::kAuto)};

Split split_for(int64_t numel) {
  switch (static_cast<WorkSplit>(forced_split.load(std::memory_order_relaxed))) {
    case WorkSplit::kDefault: return kDefaultSplit;
    case WorkSplit::kSmallCalls: return kSmallCallSplit;
    case WorkSplit::kAuto: break;
  }
  return numel < kSmallCallElements ? kSmallCallSplit : kDefaultSplit;
}

// f(std::bool_constant<b>...) for the runtime bools b: one instantiation per combination.
template <class F>
void with_bools(F&& f) {
  f();
}
template <class F, class... Rest>
void with_bools(F&& f, bool b, Rest... rest) {
  if (b) {
    with_bools([&](auto... tail) { f(std::true_type{}, tail...); }, rest...);
  } else {
    with_bools([&](auto... tail) { f(std::false_type{}, tail...); }, rest...);
  }
}

// f(std::integral_constant<int, pass>) for pass in 1 .. kMaxPass.
template <class F>
void with_pass(int pass, F&& f) {
  static_assert(kMaxPass == 8, "with_pass lists the passes 1..8");
  switch (pass) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 6: return f(std::integral_constant<int, 6>{});
    case 7: return f(std::integral_constant<int, 7>{});
    default: return f(std::integral_constant<int, kMaxPass>{});
  }
}

// The float and 16-bit kernels have a vector path; float64 takes the element-wise one only (it is
// rare on a GPU, and each instantiation costs nvcc time).
template <class S>
constexpr bool kHasVec = !std::is_same<S, double>::value;

// launch(kNoise, kX, kVec, kPass) as compile-time constants (static constexpr members of the
// arguments' types): the vector path for each pass of 1 .. kMaxPass samples, the element-wise path
// once, with kMaxPass (it runs p.pass samples).
template <class S, class F>
void with_variant(bool noise, bool x, bool vec, int pass, F&& launch) {
  with_bools(
      [&](auto kNoise, auto kX, auto kVec) {
        constexpr bool kVecPath = decltype(kVec)::value && kHasVec<S>;
        const auto go = [&](auto kPass) { launch(kNoise, kX, std::bool_constant<kVecPath>{}, kPass); };
        if constexpr (kVecPath) {
          with_pass(pass, go);
        } else {
          go(std::integral_constant<int, kMaxPass>{});
        }
      },
      noise, x, vec);
}

// Whether the kernels can take every quad whole, as one vector access: D a multiple of 4 (so
// chunks and rows of samples start on a quad) and every array (null: absent) aligned.
template <class S>
bool quads_aligned(int64_t dim, std::initializer_list<const void*> arrays) {
  constexpr uintptr_t align = sizeof(S) == 2 ? 8 : 16;
  bool ok = dim % kElementsPerCall == 0;
  for (const void* a : arrays) ok = ok && reinterpret_cast<uintptr_t>(a) % align == 0;
  return ok;
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
  const Split split = split_for(batch * dim);
  ForwardParams<S> p(mean, std_param, x, noise, seed, batch, dim, split.per_lane, epsilon, lo, hi);
  p.out = static_cast<S*>(out);
  p.nlp = nlp;
  p.partial = static_cast<C*>(workspace);
  p.constant = neg_log_prob_constant(dim, epsilon);
  const bool vec = quads_aligned<S>(dim, {mean, std_param, x, noise, out});
  // With no elements the kernel still runs (one block, no chunks) to report the (seed, offset).
  const unsigned grid = std::max(1u, grid_for(p.chunks, split.threads));
  for (int64_t s0 = 0; s0 < k; s0 += kMaxPass) {
    p.s0 = static_cast<int>(s0);
    p.pass = pass_size(k, s0);
    with_variant<S>(noise != nullptr, x != nullptr, vec, p.pass, [&](auto kNoise, auto kX, auto kVec, auto kPass) {
      forward_kernel<S, decltype(kNoise)::value, decltype(kX)::value, decltype(kVec)::value, decltype(kPass)::value>
          <<<grid, split.threads, 0, stream>>>(p);
    });
  }
  if (p.numel == 0 && batch > 0) {  // -log p of an empty example: the empty sum
    if (cudaMemsetAsync(nlp, 0, sizeof(C) * static_cast<size_t>(k * batch), stream) != cudaSuccess) {
      return launch_error();
    }
  }
  if (p.chunks.per_example > 1 && batch > 0) {  // (a launch of 0 blocks is an error)
    combine_partials_kernel<C><<<grid_for(k * batch, 128), 128, 0, stream>>>(p.partial, k * batch,
                                                                            p.chunks.per_example, p.constant, nlp);
  }
  return launch_error();
}

template <class S>
const char* backward_typed(const void* grad_out, int64_t go_sample_stride, int64_t go_element_stride,
                           const void* grad_nlp, int64_t ge_sample_stride, int64_t ge_example_stride,
                           const void* mean, const void* std_param, const void* x, const void* noise,
                           const SeedSource& seed, int64_t batch, int64_t dim, int64_t k,
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
  const Split split = split_for(batch * dim);
  BackwardParams<S> p(mean, std_param, x, noise, seed, batch, dim, split.per_lane, epsilon, lo, hi);
  p.grad_out = static_cast<const S*>(grad_out);
  p.go_sample_stride = grad_out != nullptr ? go_sample_stride : 0;
  p.go_element_stride = grad_out != nullptr ? go_element_stride : 0;
  p.grad_nlp = static_cast<const C*>(grad_nlp);
  p.ge_sample_stride = grad_nlp != nullptr ? ge_sample_stride : 0;
  p.ge_example_stride = grad_nlp != nullptr ? ge_example_stride : 0;
  p.grad_mean = static_cast<S*>(grad_mean);
  p.grad_std_param = static_cast<S*>(grad_std);
  p.grad_x = static_cast<S*>(grad_x);
  const bool vec = quads_aligned<S>(dim, {mean, std_param, x, noise, grad_mean, grad_std, grad_x,
                                          p.go_element_stride != 0 ? grad_out : nullptr}) &&
                   p.go_sample_stride % kElementsPerCall == 0;
  const unsigned grid = grid_for(p.chunks, split.threads);
  const auto launch = [&](int64_t s0, bool accumulate) {
    p.s0 = static_cast<int>(s0);
    p.pass = pass_size(k, s0);
    p.accumulate = accumulate;
    with_variant<S>(noise != nullptr, x != nullptr, vec, p.pass, [&](auto kNoise, auto kX, auto kVec, auto kPass) {
      backward_kernel<S, decltype(kNoise)::value, decltype(kX)::value, decltype(kVec)::value, decltype(kPass)::value>
          <<<grid, split.threads, 0, stream>>>(p);
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

// Enough for either split, so that a set_work_split between this and the launch cannot overrun.
size_t forward_workspace_bytes(DType dtype, int64_t batch, int64_t dim, int64_t num_samples) {
  size_t bytes = 0;
  for (const Split split : {kDefaultSplit, kSmallCallSplit}) {
    const Chunking chunks = Chunking::of(batch, dim, split.per_lane);
    if (batch > 0 && num_samples > 0 && chunks.per_example > 1) {
      bytes = std::max(bytes, compute_size(dtype) * static_cast<size_t>(num_samples * chunks.count));
    }
  }
  return bytes;
}

void set_work_split(WorkSplit split) { forced_split.store(static_cast<int>(split), std::memory_order_relaxed); }

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
                            int64_t grad_out_element_stride, const void* grad_nlp, int64_t grad_nlp_sample_stride,
                            int64_t grad_nlp_example_stride, const void* mean, const void* std_param, const void* x,
                            const void* noise, const SeedSource& seed, int64_t batch, int64_t dim,
                            int64_t num_samples, double epsilon, double lo, double hi, void* grad_mean,
                            void* grad_std_param, void* grad_x, CUstream_st* stream) {
  ADT_FAST_DISPATCH(dtype, backward_typed, grad_out, grad_out_sample_stride, grad_out_element_stride, grad_nlp,
                    grad_nlp_sample_stride, grad_nlp_example_stride, mean, std_param, x, noise, seed, batch, dim,
                    num_samples, epsilon, lo, hi, grad_mean, grad_std_param, grad_x, stream);
}

const char* philox_words(const int64_t* seed_offset, int64_t numel, int64_t num_samples, int64_t* out,
                         CUstream_st* stream) {
  const int64_t quads = num_quads(numel);
  const int64_t total = quads * num_samples;
  if (total <= 0) return nullptr;
  const int threads = 256;
  philox_words_kernel<<<grid_for(total, threads), threads, 0, stream>>>(seed_offset, quads, num_samples, out);
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
