// The one binding file: registers the torch-free kernels of csrc/cpu (and csrc/cuda in CUDA
// builds, ADT_FAST_WITH_CUDA) as torch ops in the namespace adt_fast_C, and defines the Python
// module adt_fast._C (importing it registers the ops):
//
//   adt_fast_C::sample_forward(mean, std_param, x?, noise?, seed_offset?, generator?, num_samples,
//                              epsilon, lo, hi) -> (out [k, *mean.shape] in mean's dtype,
//                              neg_log_prob [k, B] float32 / float64, seed_offset_used int64 [2])
//   adt_fast_C::sample_backward(grad_out?, grad_nlp?, mean, std_param, x?, noise?, seed_offset,
//                               num_samples, epsilon, lo, hi, need_grad_x=True)
//                               -> (grad_mean, grad_std_param, grad_x; empty without x or need_grad_x)
//   adt_fast_C::philox_words(seed_offset, numel, num_samples) -> int64 [k, ceil(numel/4), 4]
//
// and, in adt_fast._C, `sample_forward_eager` and `sample_backward_eager`: the first two ops'
// kernels called without torch.ops, or None where the call must go through it (see below).
//
// Without seed_offset and noise, the forward draws (seed, offset) here from `generator` or the
// device's default generator (docs/randomness.md) and returns the pair it used; the backward is
// given that pair. An absent gradient is zero; grad_out expanded over the samples or from a
// scalar, and grad_nlp of any strides, are read in place (docs/kernels.md). The maths is in adt_fast/ops/reference.py (the spec);
// this file only validates, draws seeds and allocates.
#include <torch/extension.h>
#include <torch/library.h>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/record_function.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/Generator.h>
#include <torch/csrc/autograd/python_variable.h>

#include <mutex>

#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "core/common.h"
#include "cpu/adt_cpu.h"

#if defined(ADT_FAST_WITH_CUDA)
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/adt_cuda.h"
#endif

#define ADT_FAST_STR_(...) #__VA_ARGS__
#define ADT_FAST_STR(...) ADT_FAST_STR_(__VA_ARGS__)
#if defined(ADT_FAST_VERSION_TOKENS)
#define ADT_FAST_VERSION ADT_FAST_STR(ADT_FAST_VERSION_TOKENS)
#else
#define ADT_FAST_VERSION "unknown"
#endif

namespace {

namespace py = pybind11;
using at::Tensor;
using OptTensor = c10::optional<Tensor>;

// The two ops' qualified names: error messages, the profiler and the dispatcher lookups use them.
constexpr char kForwardOp[] = "adt_fast_C::sample_forward";
constexpr char kBackwardOp[] = "adt_fast_C::sample_backward";

bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

at::ScalarType compute_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// Shapes are checked and built as SymInts (sym_sizes, sym_numel): the Meta kernels then serve
// torch.compile(dynamic=True), whose fake tensors have symbolic sizes that sizes() and numel()
// refuse; on real tensors the SymInts are plain integers.
template <class Size>
std::vector<Size> with_samples(int64_t k, c10::ArrayRef<Size> sizes) {
  std::vector<Size> out{Size(k)};
  out.insert(out.end(), sizes.begin(), sizes.end());
  return out;
}

void check_tensor_like(const char* op, const char* name, const Tensor& t, const Tensor& mean,
                       c10::SymIntArrayRef sizes, at::ScalarType dtype) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is an undefined tensor");
  TORCH_CHECK(t.device() == mean.device(), op, ": ", name, " is on ", t.device(), " but mean is on ",
              mean.device());
  TORCH_CHECK(t.scalar_type() == dtype, op, ": ", name, " has dtype ", t.scalar_type(), ", expected ", dtype);
  TORCH_CHECK(t.sym_sizes() == sizes, op, ": ", name, " must have shape ", sizes, ", got ", t.sym_sizes());
}

struct Dims {
  int64_t batch, dim;
};

// Validation shared by every op (defence in depth: the Python layer checks first).
bool present(const OptTensor& t) { return t.has_value() && t->defined(); }

void check_seed_offset(const char* op, const Tensor& seed_offset, const Tensor& mean) {
  TORCH_CHECK(seed_offset.defined() && seed_offset.scalar_type() == at::kLong && seed_offset.sym_numel() == 2, op,
              ": seed_offset must be an int64 tensor of 2 values (seed, offset), got ",
              seed_offset.defined() ? seed_offset.toString() : std::string("undefined"), " of shape ",
              seed_offset.defined() ? seed_offset.sym_sizes() : c10::SymIntArrayRef{});
  TORCH_CHECK(seed_offset.device() == mean.device(), op, ": seed_offset is on ", seed_offset.device(),
              " but mean is on ", mean.device());
}

void check_arguments(const char* op, const Tensor& mean, const Tensor& std_param, const OptTensor& x,
                     const OptTensor& noise, const OptTensor& seed_offset, int64_t k, double epsilon, double lo,
                     double hi) {
  TORCH_CHECK(mean.defined(), op, ": mean is an undefined tensor");
  TORCH_CHECK(is_supported_float(mean.scalar_type()), op,
              ": mean must be float16, bfloat16, float32 or float64, got ", mean.scalar_type());
  TORCH_CHECK(mean.dim() >= 1, op, ": mean must have a batch dimension (B, *S), got a 0-d tensor");
  TORCH_CHECK(k >= 1, op, ": num_samples must be >= 1, got ", k);
  TORCH_CHECK(std::isfinite(epsilon) && epsilon > 0, op, ": epsilon must be finite and > 0, got ", epsilon);
  TORCH_CHECK(lo < hi, op, ": the clamp bounds must satisfy lo < hi, got lo=", lo, " hi=", hi);
  check_tensor_like(op, "std_param", std_param, mean, mean.sym_sizes(), mean.scalar_type());
  if (x.has_value() && x->defined()) check_tensor_like(op, "x", *x, mean, mean.sym_sizes(), mean.scalar_type());
  if (noise.has_value() && noise->defined()) {
    check_tensor_like(op, "noise", *noise, mean, with_samples(k, mean.sym_sizes()), mean.scalar_type());
  }
  if (present(seed_offset)) check_seed_offset(op, *seed_offset, mean);
}

// The checks, and the sizes the real kernels are given.
Dims check_common(const char* op, const Tensor& mean, const Tensor& std_param, const OptTensor& x,
                  const OptTensor& noise, const OptTensor& seed_offset, int64_t k, double epsilon, double lo,
                  double hi) {
  check_arguments(op, mean, std_param, x, noise, seed_offset, k, epsilon, lo, hi);
  Dims d;
  d.batch = mean.size(0);
  d.dim = 1;
  for (int64_t i = 1; i < mean.dim(); ++i) d.dim *= mean.size(i);
  return d;
}

void check_grads(const char* op, const OptTensor& grad_out, const OptTensor& grad_nlp, const Tensor& mean,
                 int64_t k) {
  if (present(grad_out)) {
    TORCH_CHECK(grad_out->device() == mean.device(), op, ": grad_out is on ", grad_out->device(),
                " but mean is on ", mean.device());
    const auto expected = with_samples(k, mean.sym_sizes());
    TORCH_CHECK(grad_out->sym_sizes() == c10::SymIntArrayRef(expected), op, ": grad_out must have shape ",
                c10::SymIntArrayRef(expected), ", got ", grad_out->sym_sizes());
    TORCH_CHECK(at::isFloatingType(grad_out->scalar_type()), op, ": grad_out must be floating, got ",
                grad_out->scalar_type());
  }
  if (present(grad_nlp)) {
    TORCH_CHECK(grad_nlp->device() == mean.device(), op, ": grad_nlp is on ", grad_nlp->device(),
                " but mean is on ", mean.device());
    const c10::SymInt batch = mean.sym_size(0);
    TORCH_CHECK(grad_nlp->sym_sizes() == c10::SymIntArrayRef({c10::SymInt(k), batch}), op,
                ": grad_nlp must have shape [", k, ", ", batch, "], got ", grad_nlp->sym_sizes());
    TORCH_CHECK(at::isFloatingType(grad_nlp->scalar_type()), op, ": grad_nlp must be floating, got ",
                grad_nlp->scalar_type());
  }
}

// t in `dtype`, without a trip through the dispatcher when it already is (Tensor::to would return
// t itself, after that trip: the op's host cost is measured, benchmarks/RESULTS.md).
Tensor as_dtype(const Tensor& t, at::ScalarType dtype) { return t.scalar_type() == dtype ? t : t.to(dtype); }

// grad_out as the kernels read it: element (s, n) at data[s * sample_stride + n * element_stride].
// Contiguous, expanded over the samples (g.expand(k, ...) of a contiguous (B, *S): strides (0, 1))
// and a broadcast scalar (delta.sum()'s gradient: (0, 0)) are read in place; any other layout is
// made contiguous. Undefined data means a zero gradient.
struct GradOut {
  Tensor data;
  int64_t sample_stride = 0, element_stride = 0;
};

GradOut grad_out_layout(const OptTensor& g_in, at::ScalarType dtype, int64_t numel) {
  GradOut g;
  if (!present(g_in)) return g;
  const Tensor& t = *g_in;
  const bool all_zero = std::all_of(t.strides().begin(), t.strides().end(), [](int64_t v) { return v == 0; });
  if (t.numel() > 0 && !t.is_contiguous() && all_zero) {
    g.data = t.scalar_type() == dtype ? t : t.as_strided({1}, {1}).to(dtype);  // its first element, read k x N times
  } else if (t.numel() > 0 && t.dim() >= 1 && t.stride(0) == 0 && t.size(0) > 1 && t.select(0, 0).is_contiguous()) {
    g.data = as_dtype(t.select(0, 0), dtype).contiguous();
    g.element_stride = 1;
  } else {
    g.data = as_dtype(t, dtype).contiguous();
    g.sample_stride = numel;
    g.element_stride = 1;
  }
  return g;
}

// grad_nlp [k, B] as the kernels read it: in place whatever its strides (nlp.sum() gives (0, 0)),
// converted only when its dtype is not the compute type. Undefined data means a zero gradient.
struct GradNlp {
  Tensor data;
  int64_t sample_stride = 0, example_stride = 0;
};

GradNlp grad_nlp_layout(const OptTensor& g_in, at::ScalarType ctype) {
  GradNlp g;
  if (!present(g_in)) return g;
  g.data = as_dtype(*g_in, ctype);
  g.sample_stride = g.data.stride(0);
  g.example_stride = g.data.stride(1);
  return g;
}

// The x gradient's buffer: only when x is given and its gradient wanted (else an empty tensor and
// a null pointer for the kernels, which then still mask the other gradients by the clamp).
Tensor grad_x_buffer(const OptTensor& x, bool need_grad_x, const Tensor& like) {
  return present(x) && need_grad_x ? at::empty_like(like) : like.new_empty({0});
}

OptTensor contiguous_as(const OptTensor& t, at::ScalarType dtype) {
  if (!present(t)) return c10::nullopt;
  return as_dtype(*t, dtype).contiguous();
}

template <class T>
const T* ptr_or_null(const OptTensor& t) {
  return present(t) ? t->data_ptr<T>() : nullptr;
}

std::pair<uint64_t, uint64_t> read_seed_offset_cpu(const Tensor& seed_offset) {
  const Tensor so = seed_offset.contiguous();
  const int64_t* p = so.data_ptr<int64_t>();
  return {static_cast<uint64_t>(p[0]), static_cast<uint64_t>(p[1])};
}

// A fresh (seed, offset) from the CPU generator (or `generator`), both below 2^62 (so offset + g
// never wraps: docs/randomness.md), drawn exactly as torch.randint(0, 2**62, (2,), generator=g)
// draws them (random64() mod the range, in order): the Python-launched backends draw that way,
// so one generator state gives the same samples on every CPU backend.
std::pair<uint64_t, uint64_t> draw_seed_offset_cpu(const c10::optional<at::Generator>& generator) {
  auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(generator, at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  constexpr uint64_t kRange = uint64_t{1} << 62;
  const uint64_t seed = gen->random64() % kRange;
  const uint64_t offset = gen->random64() % kRange;
  return {seed, offset};
}

Tensor seed_offset_tensor(uint64_t seed, uint64_t offset, const Tensor& like) {
  Tensor t = at::empty({2}, like.options().dtype(at::kLong));
  t.data_ptr<int64_t>()[0] = static_cast<int64_t>(seed);
  t.data_ptr<int64_t>()[1] = static_cast<int64_t>(offset);
  return t;
}

// ---- CPU ----------------------------------------------------------------------------------------

std::tuple<Tensor, Tensor, Tensor> forward_cpu(const Tensor& mean_in, const Tensor& std_in, const OptTensor& x_in,
                                               const OptTensor& noise_in, const OptTensor& seed_offset_in,
                                               const c10::optional<at::Generator>& generator, int64_t k,
                                               double epsilon, double lo, double hi) {
  const char* op = kForwardOp;
  const Dims d = check_common(op, mean_in, std_in, x_in, noise_in, seed_offset_in, k, epsilon, lo, hi);
  uint64_t seed = 0, offset = 0;
  if (!present(noise_in)) {
    std::tie(seed, offset) =
        present(seed_offset_in) ? read_seed_offset_cpu(*seed_offset_in) : draw_seed_offset_cpu(generator);
  }
  const Tensor used = seed_offset_tensor(seed, offset, mean_in);
  const at::ScalarType dtype = mean_in.scalar_type();
  if (dtype == at::kHalf || dtype == at::kBFloat16) {  // computed in float32, stored back
    auto result = forward_cpu(mean_in.to(at::kFloat), std_in.to(at::kFloat), contiguous_as(x_in, at::kFloat),
                              contiguous_as(noise_in, at::kFloat), used, c10::nullopt, k, epsilon, lo, hi);
    return {std::get<0>(result).to(dtype), std::get<1>(result), used};
  }
  const Tensor mean = mean_in.contiguous(), std_param = std_in.contiguous();
  const OptTensor x = contiguous_as(x_in, dtype), noise = contiguous_as(noise_in, dtype);
  Tensor out = at::empty(with_samples(k, mean.sizes()), mean.options());
  Tensor nlp = at::empty({k, d.batch}, mean.options());
  const int threads = at::get_num_threads();
  if (dtype == at::kFloat) {
    adt_fast::cpu::sample_forward(mean.data_ptr<float>(), std_param.data_ptr<float>(), ptr_or_null<float>(x),
                                  ptr_or_null<float>(noise), seed, offset, d.batch, d.dim, k, epsilon, lo, hi,
                                  out.data_ptr<float>(), nlp.data_ptr<float>(), threads);
  } else {
    adt_fast::cpu::sample_forward(mean.data_ptr<double>(), std_param.data_ptr<double>(), ptr_or_null<double>(x),
                                  ptr_or_null<double>(noise), seed, offset, d.batch, d.dim, k, epsilon, lo, hi,
                                  out.data_ptr<double>(), nlp.data_ptr<double>(), threads);
  }
  return {out, nlp, used};
}

std::tuple<Tensor, Tensor, Tensor> backward_cpu(const OptTensor& grad_out_in, const OptTensor& grad_nlp_in,
                                                const Tensor& mean_in, const Tensor& std_in, const OptTensor& x_in,
                                                const OptTensor& noise_in, const Tensor& seed_offset, int64_t k,
                                                double epsilon, double lo, double hi, bool need_grad_x) {
  const char* op = kBackwardOp;
  const Dims d = check_common(op, mean_in, std_in, x_in, noise_in, seed_offset, k, epsilon, lo, hi);
  check_grads(op, grad_out_in, grad_nlp_in, mean_in, k);
  const at::ScalarType dtype = mean_in.scalar_type();
  const at::ScalarType ctype = compute_type(dtype);
  const bool half = dtype == at::kHalf || dtype == at::kBFloat16;  // computed in float32, stored back
  const at::ScalarType kdtype = half ? at::kFloat : dtype;
  const Tensor mean = as_dtype(mean_in, kdtype).contiguous(), std_param = as_dtype(std_in, kdtype).contiguous();
  const GradOut go = grad_out_layout(grad_out_in, kdtype, d.batch * d.dim);
  const GradNlp ge = grad_nlp_layout(grad_nlp_in, ctype);
  const OptTensor x = contiguous_as(x_in, kdtype), noise = contiguous_as(noise_in, kdtype);
  Tensor grad_mean = at::empty_like(mean), grad_std = at::empty_like(std_param);
  Tensor grad_x = grad_x_buffer(x, need_grad_x, mean);
  const auto [seed, offset] = read_seed_offset_cpu(seed_offset);
  const int threads = at::get_num_threads();
  if (kdtype == at::kFloat) {
    adt_fast::cpu::sample_backward(go.data.defined() ? go.data.data_ptr<float>() : nullptr, go.sample_stride,
                                   go.element_stride, ge.data.defined() ? ge.data.data_ptr<float>() : nullptr,
                                   ge.sample_stride, ge.example_stride, mean.data_ptr<float>(),
                                   std_param.data_ptr<float>(), ptr_or_null<float>(x), ptr_or_null<float>(noise),
                                   seed, offset, d.batch, d.dim, k, epsilon, lo, hi, grad_mean.data_ptr<float>(),
                                   grad_std.data_ptr<float>(), grad_x.numel() ? grad_x.data_ptr<float>() : nullptr,
                                   threads);
  } else {
    adt_fast::cpu::sample_backward(go.data.defined() ? go.data.data_ptr<double>() : nullptr, go.sample_stride,
                                   go.element_stride, ge.data.defined() ? ge.data.data_ptr<double>() : nullptr,
                                   ge.sample_stride, ge.example_stride, mean.data_ptr<double>(),
                                   std_param.data_ptr<double>(), ptr_or_null<double>(x), ptr_or_null<double>(noise),
                                   seed, offset, d.batch, d.dim, k, epsilon, lo, hi, grad_mean.data_ptr<double>(),
                                   grad_std.data_ptr<double>(), grad_x.numel() ? grad_x.data_ptr<double>() : nullptr,
                                   threads);
  }
  if (half) {
    return {grad_mean.to(dtype), grad_std.to(dtype), grad_x.to(dtype)};
  }
  return {grad_mean, grad_std, grad_x};
}

void check_words_args(const Tensor& seed_offset, int64_t numel, int64_t k) {
  const char* op = "adt_fast_C::philox_words";
  TORCH_CHECK(seed_offset.scalar_type() == at::kLong && seed_offset.sym_numel() == 2, op,
              ": seed_offset must be an int64 tensor of 2 values (seed, offset)");
  TORCH_CHECK(numel >= 0, op, ": numel must be >= 0, got ", numel);
  TORCH_CHECK(k >= 1, op, ": num_samples must be >= 1, got ", k);
}

Tensor philox_words_cpu(const Tensor& seed_offset, int64_t numel, int64_t k) {
  check_words_args(seed_offset, numel, k);
  Tensor out = at::empty({k, adt_fast::num_quads(numel), 4}, seed_offset.options().dtype(at::kLong));
  const auto [seed, offset] = read_seed_offset_cpu(seed_offset);
  adt_fast::cpu::philox_words(seed, offset, numel, k, out.data_ptr<int64_t>(), at::get_num_threads());
  return out;
}

// ---- Meta (shapes only) ------------------------------------------------------------------------

std::tuple<Tensor, Tensor, Tensor> forward_meta(const Tensor& mean, const Tensor& std_param, const OptTensor& x,
                                                const OptTensor& noise, const OptTensor& seed_offset,
                                                const c10::optional<at::Generator>& generator, int64_t k,
                                                double epsilon, double lo, double hi) {
  (void)generator;
  check_arguments(kForwardOp, mean, std_param, x, noise, seed_offset, k, epsilon, lo, hi);
  return {at::empty_symint(with_samples(k, mean.sym_sizes()), mean.options()),
          at::empty_symint({c10::SymInt(k), mean.sym_size(0)}, mean.options().dtype(compute_type(mean.scalar_type()))),
          at::empty({2}, mean.options().dtype(at::kLong))};
}

std::tuple<Tensor, Tensor, Tensor> backward_meta(const OptTensor& grad_out, const OptTensor& grad_nlp,
                                                 const Tensor& mean, const Tensor& std_param, const OptTensor& x,
                                                 const OptTensor& noise, const Tensor& seed_offset, int64_t k,
                                                 double epsilon, double lo, double hi, bool need_grad_x) {
  const char* op = kBackwardOp;
  check_arguments(op, mean, std_param, x, noise, seed_offset, k, epsilon, lo, hi);
  check_grads(op, grad_out, grad_nlp, mean, k);
  // Contiguous, as the kernels write them (empty_like would keep a channels_last input's strides).
  const Tensor grad_mean = at::empty_symint(mean.sym_sizes(), mean.options());
  return {grad_mean, at::empty_symint(std_param.sym_sizes(), std_param.options()),
          grad_x_buffer(x, need_grad_x, grad_mean)};
}

Tensor philox_words_meta(const Tensor& seed_offset, int64_t numel, int64_t k) {
  check_words_args(seed_offset, numel, k);
  return at::empty({k, adt_fast::num_quads(numel), 4}, seed_offset.options().dtype(at::kLong));
}

// ---- CUDA ---------------------------------------------------------------------------------------

#if defined(ADT_FAST_WITH_CUDA)

adt_fast::cuda::DType cuda_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return adt_fast::cuda::DType::kFloat32;
    case at::kDouble: return adt_fast::cuda::DType::kFloat64;
    case at::kHalf: return adt_fast::cuda::DType::kFloat16;
    case at::kBFloat16: return adt_fast::cuda::DType::kBFloat16;
    default: TORCH_CHECK(false, "adt_fast_C: unsupported dtype ", t);
  }
}

const void* cptr_or_null(const OptTensor& t) { return present(t) ? t->data_ptr() : nullptr; }

// Philox state from torch's CUDA generator, as its fused dropout takes it: no kernel launch, no
// host synchronisation, and inside CUDA-graph capture the kernels read the seed and offset from
// the graph's device memory (at::cuda::philox::unpack's rule). The offset advances by at least the
// k counter values one call uses (offset + s for sample s; torch wants multiples of 4), so our
// calls never overlap; the key is the seed XOR kGeneratorSeedXor, so they never meet the counters
// of torch's own random ops either (adt_cuda.h).
adt_fast::cuda::SeedSource draw_seed_cuda(const c10::optional<at::Generator>& generator, const at::Device& device,
                                          int64_t k) {
  auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(
      generator, at::cuda::detail::getDefaultCUDAGenerator(device.index()));
  const uint64_t increment = static_cast<uint64_t>((k + 3) / 4 * 4);
  at::PhiloxCudaState state;
  {
    std::lock_guard<std::mutex> lock(gen->mutex_);
    state = gen->philox_cuda_state(increment);
  }
  adt_fast::cuda::SeedSource src;
  if (state.captured_) {
    src.seed_ptr = state.seed_.ptr;
    src.offset_ptr = state.offset_.ptr;
    src.offset_add = state.offset_intragraph_;
  } else {
    src.seed_value = state.seed_.val;
    src.offset_value = state.offset_.val;
  }
  src.seed_xor = adt_fast::cuda::kGeneratorSeedXor;
  return src;
}

adt_fast::cuda::SeedSource seed_from_tensor(const Tensor& seed_offset) {
  adt_fast::cuda::SeedSource src;
  src.seed_ptr = seed_offset.data_ptr<int64_t>();
  src.offset_ptr = src.seed_ptr + 1;
  return src;
}

std::tuple<Tensor, Tensor, Tensor> forward_cuda(const Tensor& mean_in, const Tensor& std_in, const OptTensor& x_in,
                                                const OptTensor& noise_in, const OptTensor& seed_offset_in,
                                                const c10::optional<at::Generator>& generator, int64_t k,
                                                double epsilon, double lo, double hi) {
  const char* op = kForwardOp;
  const Dims d = check_common(op, mean_in, std_in, x_in, noise_in, seed_offset_in, k, epsilon, lo, hi);
  const c10::cuda::CUDAGuard guard(mean_in.device());
  const at::ScalarType dtype = mean_in.scalar_type();
  const Tensor mean = mean_in.contiguous(), std_param = std_in.contiguous();
  const OptTensor x = contiguous_as(x_in, dtype), noise = contiguous_as(noise_in, dtype);
  const Tensor seed_offset = present(seed_offset_in) ? seed_offset_in->contiguous() : Tensor();
  adt_fast::cuda::SeedSource src;
  if (!present(noise)) src = seed_offset.defined() ? seed_from_tensor(seed_offset) : draw_seed_cuda(generator, mean.device(), k);
  Tensor used = at::empty({2}, mean.options().dtype(at::kLong));
  src.used = used.data_ptr<int64_t>();
  Tensor out = at::empty(with_samples(k, mean.sizes()), mean.options());
  Tensor nlp = at::empty({k, d.batch}, mean.options().dtype(compute_type(dtype)));
  const adt_fast::cuda::DType dt = cuda_dtype(dtype);
  const size_t ws_bytes = adt_fast::cuda::forward_workspace_bytes(dt, d.batch, d.dim, k);
  Tensor workspace = at::empty({static_cast<int64_t>(ws_bytes)}, mean.options().dtype(at::kByte));
  const char* err = adt_fast::cuda::sample_forward(
      dt, mean.data_ptr(), std_param.data_ptr(), cptr_or_null(x), cptr_or_null(noise), src, d.batch, d.dim, k,
      epsilon, lo, hi, out.data_ptr(), nlp.data_ptr(), ws_bytes ? workspace.data_ptr() : nullptr,
      c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == nullptr, op, ": CUDA kernel launch failed: ", err);
  return {out, nlp, used};
}

std::tuple<Tensor, Tensor, Tensor> backward_cuda(const OptTensor& grad_out_in, const OptTensor& grad_nlp_in,
                                                 const Tensor& mean_in, const Tensor& std_in,
                                                 const OptTensor& x_in, const OptTensor& noise_in,
                                                 const Tensor& seed_offset_in, int64_t k, double epsilon,
                                                 double lo, double hi, bool need_grad_x) {
  const char* op = kBackwardOp;
  const Dims d = check_common(op, mean_in, std_in, x_in, noise_in, seed_offset_in, k, epsilon, lo, hi);
  check_grads(op, grad_out_in, grad_nlp_in, mean_in, k);
  const c10::cuda::CUDAGuard guard(mean_in.device());
  const at::ScalarType dtype = mean_in.scalar_type();
  const Tensor mean = mean_in.contiguous(), std_param = std_in.contiguous(), seed_offset = seed_offset_in.contiguous();
  const GradOut go = grad_out_layout(grad_out_in, dtype, d.batch * d.dim);
  const GradNlp ge = grad_nlp_layout(grad_nlp_in, compute_type(dtype));
  const OptTensor x = contiguous_as(x_in, dtype), noise = contiguous_as(noise_in, dtype);
  Tensor grad_mean = at::empty_like(mean), grad_std = at::empty_like(std_param);
  Tensor grad_x = grad_x_buffer(x, need_grad_x, mean);
  const char* err = adt_fast::cuda::sample_backward(
      cuda_dtype(dtype), go.data.defined() ? go.data.data_ptr() : nullptr, go.sample_stride, go.element_stride,
      ge.data.defined() ? ge.data.data_ptr() : nullptr, ge.sample_stride, ge.example_stride, mean.data_ptr(),
      std_param.data_ptr(), cptr_or_null(x), cptr_or_null(noise), seed_from_tensor(seed_offset), d.batch, d.dim, k,
      epsilon, lo, hi, grad_mean.data_ptr(), grad_std.data_ptr(), grad_x.numel() ? grad_x.data_ptr() : nullptr,
      c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == nullptr, op, ": CUDA kernel launch failed: ", err);
  return {grad_mean, grad_std, grad_x};
}

Tensor philox_words_cuda(const Tensor& seed_offset_in, int64_t numel, int64_t k) {
  check_words_args(seed_offset_in, numel, k);
  const c10::cuda::CUDAGuard guard(seed_offset_in.device());
  const Tensor seed_offset = seed_offset_in.contiguous();
  Tensor out = at::empty({k, adt_fast::num_quads(numel), 4}, seed_offset.options().dtype(at::kLong));
  const char* err = adt_fast::cuda::philox_words(seed_offset.data_ptr<int64_t>(), numel, k,
                                                 out.data_ptr<int64_t>(), c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == nullptr, "adt_fast_C::philox_words: CUDA kernel launch failed: ", err);
  return out;
}

#endif  // ADT_FAST_WITH_CUDA

// ---- Eager entry points (adt_fast._C.sample_forward_eager / sample_backward_eager) ---------------
// A registered op called from Python goes through torch.ops' argument parsing and the boxed
// dispatcher: about 2 us of a 5 us call of the forward or the backward at small sizes
// (benchmarks/RESULTS.md, the host cost of one eager call). These entries run the same kernels directly, only where
// nothing could see or redirect the op: every tensor exactly a torch.Tensor or Parameter (no
// __torch_function__), no torch-function mode, and no dispatch key before the device's kernel but
// those that pass these ops on unchanged (DirectCall::kPassedThrough). So a dispatch mode, a fake,
// wrapper or lazily negated tensor, the JIT tracer or a functorch transform still meets
// adt_fast_C::sample_forward: there the entries return None, and the caller takes torch.ops
// (adt_fast/ops/dispatch.py). They release the GIL, name themselves to the profiler and raise
// torch's Python exceptions, as torch.ops does.
class DirectCall {
  // Keys the dispatcher passes these ops through unchanged: BackendSelect (included by default)
  // and ADInplaceOrView fall through; autograd's fallback only redispatches when no input requires
  // grad or grad mode is off (direct() checks); autocast falls through unless a kernel was
  // registered for it since (direct() checks too).
  static constexpr c10::DispatchKeySet kPassedThrough =
      c10::autograd_dispatch_keyset_with_ADInplaceOrView | c10::DispatchKeySet(c10::DispatchKey::BackendSelect);

 public:
  // The tensor `obj` holds; nullopt for None (or for what only torch.ops may take).
  OptTensor optional(py::handle obj) {
    if (obj.is_none()) return c10::nullopt;
    if (!THPVariable_CheckExact(obj.ptr())) {
      direct_ = false;
      return c10::nullopt;
    }
    const Tensor& t = THPVariable_Unpack(obj.ptr());
    keys_ = keys_ | t.key_set();
    requires_grad_ = requires_grad_ || t.requires_grad();
    return t;
  }
  Tensor required(py::handle obj) {
    OptTensor t = optional(obj);
    direct_ = direct_ && t.has_value();
    return t.has_value() ? *t : Tensor();
  }
  c10::optional<at::Generator> generator(py::handle obj) {
    if (obj.is_none()) return c10::nullopt;
    if (!THPGenerator_Check(obj.ptr())) {
      direct_ = false;
      return c10::nullopt;
    }
    return reinterpret_cast<THPGenerator*>(obj.ptr())->cdata;
  }
  // Where the dispatcher would take `op` to the kernel named by `key` with nothing in between that
  // counts. (A tensor that requires grad under grad mode meets autograd's not-implemented fallback,
  // which marks the outputs; a user's register_autograd or register_autocast kernel must run.)
  bool direct(const c10::OperatorHandle& op, c10::DispatchKey* key) const {
    if (!direct_ || at::impl::torch_function_mode_enabled()) return false;
    if (requires_grad_ && at::GradMode::is_enabled()) return false;
    const c10::impl::LocalDispatchKeySet local = c10::impl::tls_local_dispatch_key_set();
    c10::DispatchKeySet seen = ((keys_ | local.included_) - local.excluded_) - kPassedThrough;
    if (!(seen & c10::autocast_dispatch_keyset).empty()) {  // autocast is on
      if (op.hasKernelForAnyDispatchKey(c10::autocast_dispatch_keyset)) return false;
      seen = seen - c10::autocast_dispatch_keyset;
    }
    *key = seen.highestPriorityTypeId();
#if defined(ADT_FAST_WITH_CUDA)
    return *key == c10::DispatchKey::CPU || *key == c10::DispatchKey::CUDA;
#else
    return *key == c10::DispatchKey::CPU;
#endif
  }

 private:
  bool direct_ = true, requires_grad_ = false;
  c10::DispatchKeySet keys_;
};

// The registered op `kName` (TORCH_LIBRARY below registers them when the module loads).
template <const char* kName>
const c10::OperatorHandle& registered_op() {
  static const c10::OperatorHandle op = c10::Dispatcher::singleton().findSchemaOrThrow(kName, "");
  return op;
}

// The kernel `fn`_cpu or `fn`_cuda, as `key` says.
#if defined(ADT_FAST_WITH_CUDA)
#define ADT_FAST_ON_DEVICE(key, fn, ...) \
  ((key) == c10::DispatchKey::CUDA ? fn##_cuda(__VA_ARGS__) : fn##_cpu(__VA_ARGS__))
#else
#define ADT_FAST_ON_DEVICE(key, fn, ...) ((void)(key), fn##_cpu(__VA_ARGS__))
#endif

// `kernel`'s results, run as torch.ops runs an op: named to the profiler, the GIL released.
template <class Kernel>
py::object run_directly(const char* name, const Tensor& mean, const Tensor& std_param, const Kernel& kernel) {
  RECORD_FUNCTION(name, std::vector<c10::IValue>({mean, std_param}));
  std::tuple<Tensor, Tensor, Tensor> result;
  {
    const py::gil_scoped_release no_gil;
    result = kernel();
  }
  return py::cast(result);
}

py::object sample_forward_eager(py::handle mean_obj, py::handle std_obj, py::handle x_obj, py::handle noise_obj,
                                py::handle seed_offset_obj, py::handle generator_obj, int64_t k, double epsilon,
                                double lo, double hi) {
  HANDLE_TH_ERRORS
  DirectCall call;
  const Tensor mean = call.required(mean_obj), std_param = call.required(std_obj);
  const OptTensor x = call.optional(x_obj), noise = call.optional(noise_obj),
                  seed_offset = call.optional(seed_offset_obj);
  const c10::optional<at::Generator> generator = call.generator(generator_obj);
  c10::DispatchKey key;
  if (!call.direct(registered_op<kForwardOp>(), &key)) return py::none();
  return run_directly(kForwardOp, mean, std_param, [&] {
    return ADT_FAST_ON_DEVICE(key, forward, mean, std_param, x, noise, seed_offset, generator, k, epsilon, lo, hi);
  });
  END_HANDLE_TH_ERRORS_PYBIND
}

py::object sample_backward_eager(py::handle grad_out_obj, py::handle grad_nlp_obj, py::handle mean_obj,
                                 py::handle std_obj, py::handle x_obj, py::handle noise_obj, py::handle seed_offset_obj,
                                 int64_t k, double epsilon, double lo, double hi, bool need_grad_x) {
  HANDLE_TH_ERRORS
  DirectCall call;
  const OptTensor grad_out = call.optional(grad_out_obj), grad_nlp = call.optional(grad_nlp_obj);
  const Tensor mean = call.required(mean_obj), std_param = call.required(std_obj);
  const OptTensor x = call.optional(x_obj), noise = call.optional(noise_obj);
  const Tensor seed_offset = call.required(seed_offset_obj);
  c10::DispatchKey key;
  if (!call.direct(registered_op<kBackwardOp>(), &key)) return py::none();
  return run_directly(kBackwardOp, mean, std_param, [&] {
    return ADT_FAST_ON_DEVICE(key, backward, grad_out, grad_nlp, mean, std_param, x, noise, seed_offset, k, epsilon,
                              lo, hi, need_grad_x);
  });
  END_HANDLE_TH_ERRORS_PYBIND
}

}  // namespace

TORCH_LIBRARY(adt_fast_C, m) {
  m.def(
      "sample_forward(Tensor mean, Tensor std_param, Tensor? x, Tensor? noise, Tensor? seed_offset, "
      "Generator? generator, int num_samples, float epsilon, float lo, float hi) -> (Tensor, Tensor, Tensor)");
  m.def(
      "sample_backward(Tensor? grad_out, Tensor? grad_nlp, Tensor mean, Tensor std_param, Tensor? x, "
      "Tensor? noise, Tensor seed_offset, int num_samples, float epsilon, float lo, float hi, "
      "bool need_grad_x=True) -> (Tensor, Tensor, Tensor)");
  m.def("philox_words(Tensor seed_offset, int numel, int num_samples) -> Tensor");
}

TORCH_LIBRARY_IMPL(adt_fast_C, CPU, m) {
  m.impl("sample_forward", &forward_cpu);
  m.impl("sample_backward", &backward_cpu);
  m.impl("philox_words", &philox_words_cpu);
}

TORCH_LIBRARY_IMPL(adt_fast_C, Meta, m) {
  m.impl("sample_forward", &forward_meta);
  m.impl("sample_backward", &backward_meta);
  m.impl("philox_words", &philox_words_meta);
}

#if defined(ADT_FAST_WITH_CUDA)
TORCH_LIBRARY_IMPL(adt_fast_C, CUDA, m) {
  m.impl("sample_forward", &forward_cuda);
  m.impl("sample_backward", &backward_cuda);
  m.impl("philox_words", &philox_words_cuda);
}
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "adt_fast C++/CUDA kernels. Importing this module registers torch.ops.adt_fast_C.";
  m.def(
      "build_info",
      [] {
        py::dict info;
        info["version"] = ADT_FAST_VERSION;
        info["cpu_isa"] = adt_fast::cpu::isa();
        info["cpu_isas"] = adt_fast::cpu::available_isas();
        info["openmp"] = adt_fast::cpu::has_openmp();
        info["openmp_threads"] = adt_fast::cpu::default_num_threads();
#if defined(ADT_FAST_WITH_CUDA)
        info["cuda"] = true;
        info["cuda_archs"] = adt_fast::cuda::compiled_architectures();
#else
        info["cuda"] = false;
        info["cuda_archs"] = "";
#endif
#if defined(__VERSION__)
        info["compiler"] = __VERSION__;
#endif
        return info;
      },
      "How the extension was built: version, CPU instruction set in use, OpenMP, CUDA.");
  m.def("sample_forward_eager", &sample_forward_eager,
        "adt_fast_C::sample_forward's kernel without torch.ops, or None where the call needs torch.ops.");
  m.def("sample_backward_eager", &sample_backward_eager,
        "adt_fast_C::sample_backward's kernel without torch.ops, or None where the call needs torch.ops.");
  m.def("cpu_isa", [] { return std::string(adt_fast::cpu::isa()); },
        "The instruction set the CPU kernels run with (avx512, avx2 or generic).");
  m.def(
      "set_cpu_isa", [](const std::string& name) { return adt_fast::cpu::set_isa(name.c_str()); },
      py::arg("name"),
      "Force the CPU kernels' instruction set (for tests); False if it is unknown or unsupported here.");
  m.def(
      "set_cuda_work_split",
      [](const std::string& name) {
#if defined(ADT_FAST_WITH_CUDA)
        using adt_fast::cuda::WorkSplit;
        const WorkSplit split = name == "auto" ? WorkSplit::kAuto
                                : name == "default" ? WorkSplit::kDefault
                                : name == "small-calls" ? WorkSplit::kSmallCalls
                                                        : static_cast<WorkSplit>(-1);
        if (static_cast<int>(split) < 0) return false;
        adt_fast::cuda::set_work_split(split);
        return true;
#else
        (void)name;
        return false;
#endif
      },
      py::arg("name"),
      "Force the CUDA kernels' work split, 'auto' (by the call's size), 'default' or 'small-calls' "
      "(docs/kernels.md; for tests and benchmarks, process-wide); False if the name is unknown or "
      "the extension has no CUDA kernels.");
}
