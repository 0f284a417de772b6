// CUDA kernels of the tanh-Gaussian op. Torch-free: device pointers, sizes and a stream.
//
// Forward: a grid over the flat elements in tiles of kThreads (one element per thread), so no
// lane idles however small an example is. A thread draws all k samples of its element, four per
// Philox call (core/philox.h), writes them, and keeps each sample's -log p term in shared memory;
// once per tile (per kRows samples when k > kRows) the block adds the terms of each (sample,
// example) segment of the tile with a fixed tree: examples inside the tile go straight to
// neg_log_prob, the ends of examples that cross a tile edge to a workspace, which a small second
// kernel adds up in tile order. No atomics: results are deterministic.
// Backward: a grid-stride loop over the elements; it regenerates r from (seed, offset) and sums
// the k samples in registers.
// The per-element maths is core/elementwise.h, shared with the CPU kernels; see docs/kernels.md.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <type_traits>

#include "../core/elementwise.h"
#include "../core/intdiv.h"
#include "../core/philox.h"
#include "adt_cuda.h"

namespace adt_fast {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Full occupancy (32 registers per thread) for float compute; double needs twice the registers.
template <class S>
constexpr int kBlocksPerSM = (std::is_same<S, double>::value ? 1024 : 2048) / kThreads;
constexpr int kRows = 8;                   // samples whose terms shared memory holds at once
constexpr int64_t kMaxBlocks = 1 << 20;    // grid-stride beyond this
static_assert(kRows % kSamplesPerCall == 0, "a row block holds whole sample groups");

template <class S>
struct ComputeOf {
  using type = float;
};
template <>
struct ComputeOf<double> {
  using type = double;
};

__device__ __forceinline__ float load(const float* p) { return __ldg(p); }
__device__ __forceinline__ double load(const double* p) { return __ldg(p); }
__device__ __forceinline__ float load(const __half* p) { return __half2float(__ldg(p)); }
__device__ __forceinline__ float load(const __nv_bfloat16* p) { return __bfloat162float(__ldg(p)); }

__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(double* p, double v) { *p = v; }
__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// A zero of every storage type, for gradients that are absent (read with stride 0).
__device__ const double kZero[1] = {0.0};

template <class C>
__device__ __forceinline__ C warp_sum(C v) {
#pragma unroll
  for (int delta = 16; delta > 0; delta >>= 1) v += __shfl_down_sync(0xffffffffu, v, delta);
  return v;
}

// The example of flat element n: a multiply-high when every index fits 31 bits.
struct ExampleOf {
  FastDivider fast;
  int64_t dim;
  bool narrow;
  __device__ __forceinline__ int64_t operator()(int64_t n) const {
    return narrow ? static_cast<int64_t>(fast.div(static_cast<uint32_t>(n))) : n / dim;
  }
};

ExampleOf example_of(int64_t batch, int64_t dim) {
  ExampleOf e;
  e.dim = dim;
  e.narrow = batch * dim < (int64_t{1} << 31);
  if (e.narrow) e.fast = FastDivider(static_cast<uint32_t>(dim));
  return e;
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

// The normals of sample group g of element n: lanes [0, lanes) of z.
template <class C>
__device__ __forceinline__ void group_normals(const Seed& seed, uint64_t n, int g, int lanes, C (&z)[4]) {
  uint32_t w0, w1, w2, w3;
  philox_words4(seed.key, n, seed.offset + static_cast<uint64_t>(g), w0, w1, w2, w3);
  box_muller<C>(w0, w1, z[0], z[1]);
  if (lanes > 2) box_muller<C>(w2, w3, z[2], z[3]);
}

// Sample l of the group: its Philox normal, or the next row of `noise` (then advanced by numel).
template <bool kNoise, class C, class S>
__device__ __forceinline__ C next_normal(const C (&z)[kSamplesPerCall], int l, const S*& noise, int64_t numel) {
  if (!kNoise) return z[l];
  const C r = load(noise);
  noise += numel;
  return r;
}

template <class S>
struct ForwardParams {
  using C = typename ComputeOf<S>::type;
  const S* mean;
  const S* std_param;
  const S* x;
  const S* noise;
  SeedSource seed;
  S* out;
  C* nlp;
  C* partial;  // [k][tiles][2]: the tile's first and last example where they cross its edges
  int64_t batch, dim, numel, tiles;
  ExampleOf example_of;
  bool tile_in_one_example;  // dim is a multiple of kThreads: tile t lies in example t / tiles_of
  ExampleOf example_of_tile;  // t -> t / (dim / kThreads)
  int k;
  C eps, lo, hi;
  double constant;
};

// Example b's sum of sample s over the tile: its -log p if the tile holds all of the example,
// else its piece for combine_partials_kernel (slot 0: the tile's first example, 1: its last).
template <class S, class C>
__device__ __forceinline__ void write_sum(const ForwardParams<S>& p, int s, int64_t b, int64_t n0, int64_t tile,
                                          int64_t first, C v) {
  const int64_t start = b * p.dim - n0;
  if (start >= 0 && start + p.dim <= kThreads) {
    p.nlp[s * p.batch + b] = static_cast<C>(static_cast<double>(v) + p.constant);
  } else {
    p.partial[(s * p.tiles + tile) * 2 + (b == first ? 0 : 1)] = v;
  }
}

template <class S, bool kNoise, bool kX>
__global__ void __launch_bounds__(kThreads, kBlocksPerSM<S>) forward_kernel(const ForwardParams<S> p) {
  using C = typename ComputeOf<S>::type;
  __shared__ C red[kRows][kThreads];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  Seed seed{{0u, 0u}, 0};
  if (!kNoise) seed = read_seed(p.seed);
  if (p.seed.used != nullptr && blockIdx.x == 0 && tid == 0) {
    p.seed.used[0] = static_cast<int64_t>(kNoise ? 0 : (uint64_t{seed.key.k1} << 32 | seed.key.k0));
    p.seed.used[1] = static_cast<int64_t>(kNoise ? 0 : seed.offset);
  }
  for (int64_t tile = blockIdx.x; tile < p.tiles; tile += gridDim.x) {
    const int64_t n0 = tile * kThreads;
    const int len = static_cast<int>(p.numel - n0 < kThreads ? p.numel - n0 : kThreads);
    const int64_t n = n0 + tid;
    const bool active = tid < len;
    C mu = C(0), sigma = C(0), log_sigma = C(0), xv = C(0);
    if (active) {
      mu = load(p.mean + n);
      const RhoTerms<C> rt = rho_terms<C>(load(p.std_param + n));
      sigma = rt.sigma;
      log_sigma = rt.log_sigma;
      if (kX) xv = load(p.x + n);
    }
    for (int s0 = 0; s0 < p.k; s0 += kRows) {
      const int rows = min(kRows, p.k - s0);
      if (active) {
        S* out = p.out + s0 * p.numel + n;
        const S* noise = kNoise ? p.noise + s0 * p.numel + n : nullptr;
        C* term = &red[0][tid];
        for (int g = s0 / kSamplesPerCall; g * kSamplesPerCall < s0 + rows; ++g) {
          const int lanes = min(kSamplesPerCall, p.k - kSamplesPerCall * g);
          C z[kSamplesPerCall];
          if (!kNoise) group_normals<C>(seed, static_cast<uint64_t>(n), g, lanes, z);
#pragma unroll
          for (int l = 0; l < kSamplesPerCall; ++l) {
            if (l < lanes) {
              const C r = next_normal<kNoise>(z, l, noise, p.numel);
              const TanhTerms<C> tt = tanh_terms<C>(mu + sigma * r);
              const C d = p.eps * tt.t;
              store(out, kX ? clamp_<C>(xv + d, p.lo, p.hi) : d);
              out += p.numel;
              *term = neg_log_prob_term<C>(r, log_sigma, tt.log1m);
              term += kThreads;
            }
          }
        }
      } else {
        for (int row = 0; row < rows; ++row) red[row][tid] = C(0);  // the fast path sums whole rows
      }
      __syncthreads();
      const int64_t first = p.tile_in_one_example ? p.example_of_tile(tile) : p.example_of(n0);
      const int64_t examples = p.tile_in_one_example ? 1 : p.example_of(n0 + len - 1) - first + 1;
      if (examples == 1) {
        // The whole tile is one example's: warp w adds row w, eight consecutive terms per lane.
        if (warp < rows) {
          C v = C(0);
#pragma unroll
          for (int j = 0; j < kThreads / 32; ++j) v += red[warp][lane * (kThreads / 32) + j];
          v = warp_sum<C>(v);
          if (lane == 0) write_sum(p, s0 + warp, first, n0, tile, first, v);
        }
      } else {
        // One warp per (sample, example) segment of the tile: lanes stride over it, then a tree.
        for (int64_t pair = warp; pair < rows * examples; pair += kWarps) {
          const int row = static_cast<int>(pair / examples);
          const int64_t b = first + pair % examples;
          const int64_t start = b * p.dim - n0, end = start + p.dim;  // relative to the tile
          const int lo_i = start > 0 ? static_cast<int>(start) : 0;
          const int hi_i = end < len ? static_cast<int>(end) : len;
          C v = C(0);
          for (int i = lo_i + lane; i < hi_i; i += 32) v += red[row][i];
          v = warp_sum<C>(v);
          if (lane == 0) write_sum(p, s0 + row, b, n0, tile, first, v);
        }
      }
      __syncthreads();
    }
  }
}

// neg_log_prob of the examples that cross tile edges: their pieces added in tile order.
template <class C>
__global__ void combine_partials_kernel(const C* __restrict partial, int64_t batch, int64_t dim, int k,
                                        int64_t tiles, double constant, C* __restrict nlp) {
  const int64_t rows = static_cast<int64_t>(k) * batch;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; row < rows;
       row += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t s = row / batch, b = row % batch;
    const int64_t t0 = b * dim / kThreads, t1 = ((b + 1) * dim - 1) / kThreads;
    if (t0 == t1) continue;  // inside one tile: written by the forward kernel
    const bool first_of_t0 = (t0 * kThreads) / dim == b;
    const C* ps = partial + s * tiles * 2;
    double acc = static_cast<double>(ps[t0 * 2 + (first_of_t0 ? 0 : 1)]);
    for (int64_t t = t0 + 1; t <= t1; ++t) acc += static_cast<double>(ps[t * 2]);
    nlp[row] = static_cast<C>(acc + constant);
  }
}

template <class S>
struct BackwardParams {
  using C = typename ComputeOf<S>::type;
  const S* grad_out;
  int64_t go_sample_stride, go_element_stride;
  const C* grad_nlp;
  int64_t ge_sample_stride, ge_example_stride;
  const S* mean;
  const S* std_param;
  const S* x;
  const S* noise;
  SeedSource seed;
  S* grad_mean;
  S* grad_std_param;
  S* grad_x;
  int64_t batch, numel;
  ExampleOf example_of;
  int k;
  C eps, lo, hi;
};

template <class S, bool kNoise, bool kX>
__global__ void __launch_bounds__(kThreads, kBlocksPerSM<S>) backward_kernel(const BackwardParams<S> p) {
  using C = typename ComputeOf<S>::type;
  Seed seed{{0u, 0u}, 0};
  if (!kNoise) seed = read_seed(p.seed);
  const S* grad_out = p.grad_out != nullptr ? p.grad_out : reinterpret_cast<const S*>(kZero);
  const C* grad_nlp = p.grad_nlp != nullptr ? p.grad_nlp : reinterpret_cast<const C*>(kZero);
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; n < p.numel;
       n += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t b = p.example_of(n);
    const C mu = load(p.mean + n);
    const C rho = load(p.std_param + n);
    const C sigma = rho_terms<C>(rho).sigma;
    const C xv = kX ? load(p.x + n) : C(0);
    const S* go = grad_out + n * p.go_element_stride;
    const C* ge = grad_nlp + b * p.ge_example_stride;
    const S* noise = kNoise ? p.noise + n : nullptr;
    C acc_du = C(0), acc_dur = C(0), acc_gx = C(0), ge_sum = C(0);
    for (int g = 0; g * kSamplesPerCall < p.k; ++g) {
      const int lanes = min(kSamplesPerCall, p.k - kSamplesPerCall * g);
      C z[kSamplesPerCall];
      if (!kNoise) group_normals<C>(seed, static_cast<uint64_t>(n), g, lanes, z);
#pragma unroll
      for (int l = 0; l < kSamplesPerCall; ++l) {
        if (l < lanes) {
          const C r = next_normal<kNoise>(z, l, noise, p.numel);
          const TanhTerms<C> tt = tanh_terms<C>(mu + sigma * r);
          const C ge_s = __ldg(ge);
          ge += p.ge_sample_stride;
          C gd = load(go);
          go += p.go_sample_stride;
          if (kX) {  // the gradient passes where the clamp did not bind, as torch.clamp's
            const C unclamped = xv + p.eps * tt.t;
            gd = (unclamped >= p.lo && unclamped <= p.hi) ? gd : C(0);
            acc_gx += gd;
          }
          const C du = gd * (p.eps * tt.dtanh) - C(2) * ge_s * tt.t;
          acc_du += du;
          acc_dur += du * r;
          ge_sum += ge_s;
        }
      }
    }
    const RhoTerms<C> rt = rho_terms<C>(rho);  // the rest of the rho terms, off the sample loop
    store(p.grad_mean + n, acc_du);
    store(p.grad_std_param + n, rt.sigmoid * acc_dur + rt.sigmoid_over_softplus * ge_sum);
    if (kX) store(p.grad_x + n, acc_gx);
  }
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

int64_t num_tiles(int64_t batch, int64_t dim) { return (batch * dim + kThreads - 1) / kThreads; }

// Whether some example crosses a tile edge (then the forward needs the workspace and the combine).
bool examples_cross_tiles(int64_t batch, int64_t dim) { return batch > 1 && kThreads % dim != 0; }

template <class S>
const char* forward_typed(const void* mean, const void* std_param, const void* x, const void* noise,
                          const SeedSource& seed, int64_t batch, int64_t dim, int64_t k, double epsilon, double lo,
                          double hi, void* out, void* nlp_v, void* workspace, cudaStream_t stream) {
  using C = typename ComputeOf<S>::type;
  C* nlp = static_cast<C*>(nlp_v);
  if (k <= 0 || k > INT_MAX) return k <= 0 ? nullptr : "adt_fast: num_samples must fit 31 bits";
  ForwardParams<S> p;
  p.mean = static_cast<const S*>(mean);
  p.std_param = static_cast<const S*>(std_param);
  p.x = static_cast<const S*>(x);
  p.noise = static_cast<const S*>(noise);
  p.seed = seed;
  p.out = static_cast<S*>(out);
  p.nlp = nlp;
  p.partial = static_cast<C*>(workspace);
  p.batch = batch;
  p.dim = dim;
  p.numel = batch * dim;
  p.tiles = num_tiles(batch, dim);
  p.example_of = example_of(batch, std::max<int64_t>(dim, 1));
  p.tile_in_one_example = dim > 0 && dim % kThreads == 0;
  if (p.tile_in_one_example) p.example_of_tile = example_of(batch, dim / kThreads);
  p.k = static_cast<int>(k);
  p.eps = static_cast<C>(epsilon);
  p.lo = static_cast<C>(lo);
  p.hi = static_cast<C>(hi);
  p.constant = neg_log_prob_constant(dim, epsilon);
  // With no elements the kernel still runs (one block, no tiles) to report the (seed, offset).
  const unsigned grid = std::max(1u, grid_for(p.tiles, 1));
  if (noise != nullptr) {
    if (x != nullptr) forward_kernel<S, true, true><<<grid, kThreads, 0, stream>>>(p);
    else forward_kernel<S, true, false><<<grid, kThreads, 0, stream>>>(p);
  } else {
    if (x != nullptr) forward_kernel<S, false, true><<<grid, kThreads, 0, stream>>>(p);
    else forward_kernel<S, false, false><<<grid, kThreads, 0, stream>>>(p);
  }
  if (p.numel == 0 && batch > 0) {  // -log p of an empty example: the empty sum
    if (cudaMemsetAsync(nlp, 0, sizeof(C) * static_cast<size_t>(k * batch), stream) != cudaSuccess) {
      return launch_error();
    }
  }
  if (p.numel > 0 && examples_cross_tiles(batch, dim)) {
    combine_partials_kernel<C><<<grid_for(k * batch, 128), 128, 0, stream>>>(p.partial, batch, dim, p.k, p.tiles,
                                                                            p.constant, nlp);
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
  BackwardParams<S> p;
  p.grad_out = static_cast<const S*>(grad_out);
  p.go_sample_stride = grad_out != nullptr ? go_sample_stride : 0;
  p.go_element_stride = grad_out != nullptr ? go_element_stride : 0;
  p.grad_nlp = static_cast<const C*>(grad_nlp);
  p.ge_sample_stride = grad_nlp != nullptr ? batch : 0;
  p.ge_example_stride = grad_nlp != nullptr ? 1 : 0;
  p.mean = static_cast<const S*>(mean);
  p.std_param = static_cast<const S*>(std_param);
  p.x = static_cast<const S*>(x);
  p.noise = static_cast<const S*>(noise);
  p.seed = seed;
  p.grad_mean = static_cast<S*>(grad_mean);
  p.grad_std_param = static_cast<S*>(grad_std);
  p.grad_x = static_cast<S*>(grad_x);
  p.batch = batch;
  p.numel = batch * dim;
  p.example_of = example_of(batch, dim);
  p.k = static_cast<int>(std::max<int64_t>(k, 0));
  p.eps = static_cast<C>(epsilon);
  p.lo = static_cast<C>(lo);
  p.hi = static_cast<C>(hi);
  const unsigned grid = grid_for(p.numel, kThreads);
  if (noise != nullptr) {
    if (x != nullptr) backward_kernel<S, true, true><<<grid, kThreads, 0, stream>>>(p);
    else backward_kernel<S, true, false><<<grid, kThreads, 0, stream>>>(p);
  } else {
    if (x != nullptr) backward_kernel<S, false, true><<<grid, kThreads, 0, stream>>>(p);
    else backward_kernel<S, false, false><<<grid, kThreads, 0, stream>>>(p);
  }
  return launch_error();
}

size_t compute_size(DType dtype) { return dtype == DType::kFloat64 ? sizeof(double) : sizeof(float); }

}  // namespace

size_t forward_workspace_bytes(DType dtype, int64_t batch, int64_t dim, int64_t num_samples) {
  if (batch <= 0 || dim <= 0 || num_samples <= 0 || !examples_cross_tiles(batch, dim)) return 0;
  return compute_size(dtype) * static_cast<size_t>(num_samples * num_tiles(batch, dim) * 2);
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
