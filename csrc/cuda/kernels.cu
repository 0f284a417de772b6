// CUDA kernels of the tanh-Gaussian op. Torch-free: device pointers, sizes and a stream.
//
// Forward: one block of up to 256 threads per (example b, chunk c of the example's elements), one
// element per thread; the thread draws all k samples of its element, four per Philox call
// (core/philox.h), writes them, and the block reduces each sample's -log p terms with a fixed
// shuffle tree into partial[s][b][c] (or straight into neg_log_prob when an example is one chunk).
// A tiny second kernel adds the chunks in order. No float atomics: results are deterministic.
// Backward: the same grid, elementwise; it regenerates r from (seed, offset) and sums over k.
// (seed, offset) are read from device memory inside the kernels: no host synchronisation.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "../core/elementwise.h"
#include "../core/philox.h"
#include "adt_cuda.h"

namespace adt_fast {
namespace cuda {
namespace {

constexpr int kMaxThreads = 256;
constexpr int kMaxWarps = kMaxThreads / 32;

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

template <class C>
__device__ __forceinline__ C warp_sum(C v) {
#pragma unroll
  for (int delta = 16; delta > 0; delta >>= 1) v += __shfl_down_sync(0xffffffffu, v, delta);
  return v;
}

struct Geometry {
  int threads;     // per block, a multiple of 32, at most kMaxThreads
  int64_t chunks;  // blocks per example
  int64_t blocks;
};

Geometry geometry(int64_t batch, int64_t dim) {
  Geometry g;
  const int64_t rounded = ((dim + 31) / 32) * 32;
  g.threads = static_cast<int>(std::min<int64_t>(kMaxThreads, std::max<int64_t>(32, rounded)));
  g.chunks = (dim + g.threads - 1) / g.threads;
  g.blocks = batch * g.chunks;
  return g;
}

template <class S, bool kNoise, bool kX>
__global__ void __launch_bounds__(kMaxThreads)
    forward_kernel(const S* __restrict__ mean, const S* __restrict__ std_param, const S* __restrict__ x,
                   const S* __restrict__ noise, const int64_t* __restrict__ seed_offset, int64_t batch,
                   int64_t dim, int k, int64_t chunks, typename ComputeOf<S>::type eps,
                   typename ComputeOf<S>::type lo, typename ComputeOf<S>::type hi, double constant,
                   S* __restrict__ out, typename ComputeOf<S>::type* __restrict__ nlp,
                   typename ComputeOf<S>::type* __restrict__ partial) {
  using C = typename ComputeOf<S>::type;
  __shared__ C red[2][kSamplesPerCall][kMaxWarps];
  const int64_t numel = batch * dim;
  const int64_t b = blockIdx.x / chunks;
  const int64_t c = blockIdx.x % chunks;
  const int64_t j = c * blockDim.x + threadIdx.x;
  const bool active = j < dim;
  const int64_t n = b * dim + j;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;

  C mu = C(0), sigma = C(0), log_sigma = C(0), xv = C(0);
  if (active) {
    mu = load(mean + n);
    const RhoTerms<C> rt = rho_terms<C>(load(std_param + n));
    sigma = rt.sigma;
    log_sigma = rt.log_sigma;
    if (kX) xv = load(x + n);
  }
  PhiloxKey key{0u, 0u};
  uint64_t offset = 0;
  if (!kNoise) {
    key = philox_key(static_cast<uint64_t>(__ldg(seed_offset)));
    offset = static_cast<uint64_t>(__ldg(seed_offset + 1));
  }

  const int groups = (k + kSamplesPerCall - 1) / kSamplesPerCall;
  for (int g = 0; g < groups; ++g) {
    const int lanes = min(kSamplesPerCall, k - kSamplesPerCall * g);
    C z[kSamplesPerCall] = {C(0), C(0), C(0), C(0)};
    if (!kNoise && active) {
      uint32_t w0, w1, w2, w3;
      philox_words4(key, static_cast<uint64_t>(n), offset + static_cast<uint64_t>(g), w0, w1, w2, w3);
      box_muller<C>(w0, w1, z[0], z[1]);
      if (lanes > 2) box_muller<C>(w2, w3, z[2], z[3]);
    }
    C term[kSamplesPerCall];
#pragma unroll
    for (int l = 0; l < kSamplesPerCall; ++l) {
      term[l] = C(0);
      if (l < lanes && active) {
        const int64_t s = kSamplesPerCall * g + l;
        const C r = kNoise ? load(noise + s * numel + n) : z[l];
        const TanhTerms<C> tt = tanh_terms<C>(mu + sigma * r);
        const C d = eps * tt.t;
        store(out + s * numel + n, kX ? clamp_<C>(xv + d, lo, hi) : d);
        term[l] = neg_log_prob_term<C>(r, log_sigma, tt.log1m);
      }
    }
    // Block sums of the (up to) four samples: fixed shuffle trees, double-buffered shared memory.
#pragma unroll
    for (int l = 0; l < kSamplesPerCall; ++l) {
      const C v = warp_sum<C>(term[l]);
      if (lane == 0) red[g & 1][l][warp] = v;
    }
    __syncthreads();
    if (warp == 0) {
#pragma unroll
      for (int l = 0; l < kSamplesPerCall; ++l) {
        const C v = warp_sum<C>(lane < warps ? red[g & 1][l][lane] : C(0));
        if (lane == 0 && l < lanes) {
          const int64_t s = kSamplesPerCall * g + l;
          if (chunks == 1) {
            nlp[s * batch + b] = static_cast<C>(static_cast<double>(v) + constant);
          } else {
            partial[(s * batch + b) * chunks + c] = v;
          }
        }
      }
    }
  }
}

template <class C>
__global__ void reduce_partials_kernel(const C* __restrict__ partial, int64_t rows, int64_t chunks,
                                       double constant, C* __restrict__ nlp) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= rows) return;
  const C* p = partial + row * chunks;
  double acc = 0.0;
  for (int64_t c = 0; c < chunks; ++c) acc += static_cast<double>(p[c]);
  nlp[row] = static_cast<C>(acc + constant);
}

template <class S, bool kNoise, bool kX>
__global__ void __launch_bounds__(kMaxThreads)
    backward_kernel(const S* __restrict__ grad_out, const typename ComputeOf<S>::type* __restrict__ grad_nlp,
                    const S* __restrict__ mean, const S* __restrict__ std_param, const S* __restrict__ x,
                    const S* __restrict__ noise, const int64_t* __restrict__ seed_offset, int64_t batch,
                    int64_t dim, int k, int64_t chunks, typename ComputeOf<S>::type eps,
                    typename ComputeOf<S>::type lo, typename ComputeOf<S>::type hi,
                    S* __restrict__ grad_mean, S* __restrict__ grad_std_param, S* __restrict__ grad_x) {
  using C = typename ComputeOf<S>::type;
  const int64_t numel = batch * dim;
  const int64_t b = blockIdx.x / chunks;
  const int64_t j = (blockIdx.x % chunks) * blockDim.x + threadIdx.x;
  if (j >= dim) return;
  const int64_t n = b * dim + j;
  const C mu = load(mean + n);
  const RhoTerms<C> rt = rho_terms<C>(load(std_param + n));
  const C xv = kX ? load(x + n) : C(0);
  PhiloxKey key{0u, 0u};
  uint64_t offset = 0;
  if (!kNoise) {
    key = philox_key(static_cast<uint64_t>(__ldg(seed_offset)));
    offset = static_cast<uint64_t>(__ldg(seed_offset + 1));
  }
  C acc_du = C(0), acc_dur = C(0), acc_gx = C(0), ge_sum = C(0);
  const int groups = (k + kSamplesPerCall - 1) / kSamplesPerCall;
  for (int g = 0; g < groups; ++g) {
    const int lanes = min(kSamplesPerCall, k - kSamplesPerCall * g);
    C z[kSamplesPerCall] = {C(0), C(0), C(0), C(0)};
    if (!kNoise) {
      uint32_t w0, w1, w2, w3;
      philox_words4(key, static_cast<uint64_t>(n), offset + static_cast<uint64_t>(g), w0, w1, w2, w3);
      box_muller<C>(w0, w1, z[0], z[1]);
      if (lanes > 2) box_muller<C>(w2, w3, z[2], z[3]);
    }
#pragma unroll
    for (int l = 0; l < kSamplesPerCall; ++l) {
      if (l < lanes) {
        const int64_t s = kSamplesPerCall * g + l;
        const C r = kNoise ? load(noise + s * numel + n) : z[l];
        const TanhTerms<C> tt = tanh_terms<C>(mu + rt.sigma * r);
        const C ge = __ldg(grad_nlp + s * batch + b);
        C gd = load(grad_out + s * numel + n);
        if (kX) {
          const C unclamped = xv + eps * tt.t;
          gd = (unclamped >= lo && unclamped <= hi) ? gd : C(0);
          acc_gx += gd;
        }
        const C du = gd * (eps * tt.dtanh) - C(2) * ge * tt.t;
        acc_du += du;
        acc_dur += du * r;
        ge_sum += ge;
      }
    }
  }
  store(grad_mean + n, acc_du);
  store(grad_std_param + n, rt.sigmoid * acc_dur + rt.sigmoid_over_softplus * ge_sum);
  if (kX) store(grad_x + n, acc_gx);
}

__global__ void philox_words_kernel(const int64_t* __restrict__ seed_offset, int64_t numel, int64_t groups,
                                    int64_t* __restrict__ out) {
  const PhiloxKey key = philox_key(static_cast<uint64_t>(__ldg(seed_offset)));
  const uint64_t offset = static_cast<uint64_t>(__ldg(seed_offset + 1));
  const int64_t total = numel * groups;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t g = i / numel, n = i % numel;
    uint32_t w0, w1, w2, w3;
    philox_words4(key, static_cast<uint64_t>(n), offset + static_cast<uint64_t>(g), w0, w1, w2, w3);
    int64_t* dst = out + i * 4;
    dst[0] = w0;
    dst[1] = w1;
    dst[2] = w2;
    dst[3] = w3;
  }
}

const char* last_error() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

template <class S>
const char* forward_typed(const void* mean, const void* std_param, const void* x, const void* noise,
                          const int64_t* seed_offset, int64_t batch, int64_t dim, int64_t k, double epsilon,
                          double lo, double hi, void* out, void* nlp_v, void* workspace, cudaStream_t stream) {
  using C = typename ComputeOf<S>::type;
  C* nlp = static_cast<C*>(nlp_v);
  if (batch <= 0 || k <= 0) return nullptr;
  if (dim <= 0) {
    const cudaError_t err = cudaMemsetAsync(nlp, 0, sizeof(C) * static_cast<size_t>(k * batch), stream);
    return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
  }
  const Geometry geo = geometry(batch, dim);
  const double constant = neg_log_prob_constant(dim, epsilon);
  C* partial = static_cast<C*>(workspace);
  auto launch = [&](auto kernel) {
    kernel<<<static_cast<unsigned>(geo.blocks), geo.threads, 0, stream>>>(
        static_cast<const S*>(mean), static_cast<const S*>(std_param), static_cast<const S*>(x),
        static_cast<const S*>(noise), seed_offset, batch, dim, static_cast<int>(k), geo.chunks,
        static_cast<C>(epsilon), static_cast<C>(lo), static_cast<C>(hi), constant, static_cast<S*>(out), nlp,
        partial);
  };
  if (noise != nullptr) {
    if (x != nullptr) launch(forward_kernel<S, true, true>);
    else launch(forward_kernel<S, true, false>);
  } else {
    if (x != nullptr) launch(forward_kernel<S, false, true>);
    else launch(forward_kernel<S, false, false>);
  }
  if (geo.chunks > 1) {
    const int64_t rows = k * batch;
    const int threads = 128;
    reduce_partials_kernel<C><<<static_cast<unsigned>((rows + threads - 1) / threads), threads, 0, stream>>>(
        partial, rows, geo.chunks, constant, nlp);
  }
  return last_error();
}

template <class S>
const char* backward_typed(const void* grad_out, const void* grad_nlp, const void* mean, const void* std_param,
                           const void* x, const void* noise, const int64_t* seed_offset, int64_t batch,
                           int64_t dim, int64_t k, double epsilon, double lo, double hi, void* grad_mean,
                           void* grad_std, void* grad_x, cudaStream_t stream) {
  using C = typename ComputeOf<S>::type;
  if (batch <= 0 || dim <= 0) return nullptr;
  const Geometry geo = geometry(batch, dim);
  auto launch = [&](auto kernel) {
    kernel<<<static_cast<unsigned>(geo.blocks), geo.threads, 0, stream>>>(
        static_cast<const S*>(grad_out), static_cast<const C*>(grad_nlp), static_cast<const S*>(mean),
        static_cast<const S*>(std_param), static_cast<const S*>(x), static_cast<const S*>(noise), seed_offset,
        batch, dim, static_cast<int>(k), geo.chunks, static_cast<C>(epsilon), static_cast<C>(lo),
        static_cast<C>(hi), static_cast<S*>(grad_mean), static_cast<S*>(grad_std), static_cast<S*>(grad_x));
  };
  if (noise != nullptr) {
    if (x != nullptr) launch(backward_kernel<S, true, true>);
    else launch(backward_kernel<S, true, false>);
  } else {
    if (x != nullptr) launch(backward_kernel<S, false, true>);
    else launch(backward_kernel<S, false, false>);
  }
  return last_error();
}

size_t compute_size(DType dtype) { return dtype == DType::kFloat64 ? sizeof(double) : sizeof(float); }

}  // namespace

size_t forward_workspace_bytes(DType dtype, int64_t batch, int64_t dim, int64_t num_samples) {
  if (batch <= 0 || dim <= 0 || num_samples <= 0) return 0;
  const Geometry geo = geometry(batch, dim);
  if (geo.chunks <= 1) return 0;
  return compute_size(dtype) * static_cast<size_t>(num_samples * batch * geo.chunks);
}

const char* sample_forward(DType dtype, const void* mean, const void* std_param, const void* x, const void* noise,
                           const int64_t* seed_offset, int64_t batch, int64_t dim, int64_t num_samples,
                           double epsilon, double lo, double hi, void* out, void* neg_log_prob, void* workspace,
                           CUstream_st* stream) {
  switch (dtype) {
    case DType::kFloat32:
      return forward_typed<float>(mean, std_param, x, noise, seed_offset, batch, dim, num_samples, epsilon, lo,
                                  hi, out, neg_log_prob, workspace, stream);
    case DType::kFloat64:
      return forward_typed<double>(mean, std_param, x, noise, seed_offset, batch, dim, num_samples, epsilon, lo,
                                   hi, out, neg_log_prob, workspace, stream);
    case DType::kFloat16:
      return forward_typed<__half>(mean, std_param, x, noise, seed_offset, batch, dim, num_samples, epsilon, lo,
                                   hi, out, neg_log_prob, workspace, stream);
    case DType::kBFloat16:
      return forward_typed<__nv_bfloat16>(mean, std_param, x, noise, seed_offset, batch, dim, num_samples,
                                          epsilon, lo, hi, out, neg_log_prob, workspace, stream);
  }
  return "adt_fast: unknown dtype";
}

const char* sample_backward(DType dtype, const void* grad_out, const void* grad_nlp, const void* mean,
                            const void* std_param, const void* x, const void* noise, const int64_t* seed_offset,
                            int64_t batch, int64_t dim, int64_t num_samples, double epsilon, double lo,
                            double hi, void* grad_mean, void* grad_std_param, void* grad_x, CUstream_st* stream) {
  switch (dtype) {
    case DType::kFloat32:
      return backward_typed<float>(grad_out, grad_nlp, mean, std_param, x, noise, seed_offset, batch, dim,
                                   num_samples, epsilon, lo, hi, grad_mean, grad_std_param, grad_x, stream);
    case DType::kFloat64:
      return backward_typed<double>(grad_out, grad_nlp, mean, std_param, x, noise, seed_offset, batch, dim,
                                    num_samples, epsilon, lo, hi, grad_mean, grad_std_param, grad_x, stream);
    case DType::kFloat16:
      return backward_typed<__half>(grad_out, grad_nlp, mean, std_param, x, noise, seed_offset, batch, dim,
                                    num_samples, epsilon, lo, hi, grad_mean, grad_std_param, grad_x, stream);
    case DType::kBFloat16:
      return backward_typed<__nv_bfloat16>(grad_out, grad_nlp, mean, std_param, x, noise, seed_offset, batch,
                                           dim, num_samples, epsilon, lo, hi, grad_mean, grad_std_param,
                                           grad_x, stream);
  }
  return "adt_fast: unknown dtype";
}

const char* philox_words(const int64_t* seed_offset, int64_t numel, int64_t num_samples, int64_t* out,
                         CUstream_st* stream) {
  const int64_t groups = num_groups(num_samples);
  const int64_t total = numel * groups;
  if (total <= 0) return nullptr;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, 65536);
  philox_words_kernel<<<static_cast<unsigned>(blocks), threads, 0, stream>>>(seed_offset, numel, groups, out);
  return last_error();
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
