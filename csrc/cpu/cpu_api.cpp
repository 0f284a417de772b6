// The CPU backend's entry points: pick the kernel table for this CPU, split the work into fixed
// ranges, run them with OpenMP and combine the per-range partial sums in a fixed order, so that
// results are identical for any number of threads.
#include "adt_cpu.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "../core/elementwise.h"
#include "kernels.h"

namespace adt_fast {
namespace cpu {
namespace {

using detail::KernelTable;

bool cpu_supports(const std::string& name) {
#if defined(ADT_FAST_X86_MULTIVERSION)
  __builtin_cpu_init();
  if (name == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                             __builtin_cpu_supports("bmi2");
  if (name == "avx512")
    return cpu_supports("avx2") && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw");
#endif
  return name == "generic";
}

const KernelTable* table_named(const std::string& name) {
  if (!cpu_supports(name)) return nullptr;
#if defined(ADT_FAST_X86_MULTIVERSION)
  if (name == "avx512") return &detail::table_avx512();
  if (name == "avx2") return &detail::table_avx2();
#endif
  if (name == "generic") return &detail::table_generic();
  return nullptr;
}

const char* const kIsaOrder[] = {"avx512", "avx2", "generic"};

const KernelTable* detect() {
  if (const char* forced = std::getenv("ADT_FAST_CPU_ISA")) {
    if (const KernelTable* t = table_named(forced)) return t;
  }
  for (const char* name : kIsaOrder) {
    if (const KernelTable* t = table_named(name)) return t;
  }
  return &detail::table_generic();
}

std::atomic<const KernelTable*> g_table{nullptr};

const KernelTable& table() {
  const KernelTable* t = g_table.load(std::memory_order_acquire);
  if (t == nullptr) {
    t = detect();
    g_table.store(t, std::memory_order_release);
  }
  return *t;
}

// Work split: ranges of whole examples (about kChunk elements) when examples are small, else
// kChunk-element pieces of one example. It depends on (batch, dim) only, never on threads. A
// range starts mid-quad where dim is not a multiple of 4; a quad two ranges share is drawn by both
// (kernels_impl.h, tile_end).
constexpr int64_t kChunk = 4096;

struct Plan {
  int64_t batch, dim;
  bool split;          // one example cut into num_chunks pieces
  int64_t num_chunks;  // pieces per example (1 unless split)
  int64_t per_task;    // whole examples per task (unless split)
  int64_t tasks;

  Plan(int64_t b, int64_t d) : batch(b), dim(d) {
    split = dim >= kChunk;
    if (split) {
      num_chunks = (dim + kChunk - 1) / kChunk;
      per_task = 1;
      tasks = batch * num_chunks;
    } else {
      num_chunks = 1;
      per_task = std::max<int64_t>(1, kChunk / std::max<int64_t>(dim, 1));
      tasks = (batch + per_task - 1) / per_task;
    }
  }

  void range(int64_t task, int64_t& n_begin, int64_t& n_end, int64_t& chunk) const {
    if (split) {
      const int64_t b = task / num_chunks;
      chunk = task % num_chunks;
      n_begin = b * dim + chunk * kChunk;
      n_end = b * dim + std::min(dim, (chunk + 1) * kChunk);
    } else {
      chunk = 0;
      n_begin = task * per_task * dim;
      n_end = std::min(batch, (task + 1) * per_task) * dim;
    }
  }
};

int resolve_threads(int requested, int64_t tasks, int64_t work) {
#if defined(_OPENMP)
  int n = requested > 0 ? requested : omp_get_max_threads();
  if (work < 32768) n = 1;  // not worth waking threads; results are the same either way
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(n, tasks)));
#else
  (void)requested, (void)tasks, (void)work;
  return 1;
#endif
}

template <class Fn>
void run_tasks(int64_t tasks, int threads, const Fn& fn) {
#if defined(_OPENMP)
  if (threads > 1) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t t = 0; t < tasks; ++t) fn(t);
    return;
  }
#else
  (void)threads;
#endif
  // One thread: not through the runtime (an `if (false)` parallel region still starts a team of one).
  for (int64_t t = 0; t < tasks; ++t) fn(t);
}

template <class T>
const detail::ForwardFn<T>& forward_fn(const KernelTable& kt, bool noise, bool x);
template <>
const detail::ForwardFn<float>& forward_fn<float>(const KernelTable& kt, bool noise, bool x) {
  return kt.forward_f32[noise][x];
}
template <>
const detail::ForwardFn<double>& forward_fn<double>(const KernelTable& kt, bool noise, bool x) {
  return kt.forward_f64[noise][x];
}
template <class T>
const detail::BackwardFn<T>& backward_fn(const KernelTable& kt, bool noise, bool x);
template <>
const detail::BackwardFn<float>& backward_fn<float>(const KernelTable& kt, bool noise, bool x) {
  return kt.backward_f32[noise][x];
}
template <>
const detail::BackwardFn<double>& backward_fn<double>(const KernelTable& kt, bool noise, bool x) {
  return kt.backward_f64[noise][x];
}

template <class T>
void forward_impl(const T* mean, const T* std_param, const T* x, const T* noise, uint64_t seed,
                  uint64_t offset, int64_t batch, int64_t dim, int64_t k, double epsilon, double lo,
                  double hi, T* out, T* nlp, int num_threads) {
  if (batch <= 0 || k <= 0) return;
  if (dim <= 0) {
    std::fill(nlp, nlp + k * batch, T(0));
    return;
  }
  const Plan plan(batch, dim);
  detail::ForwardArgs<T> args{mean,  std_param, x,     noise, out,   seed,           offset,
                              batch, dim,       batch * dim, k, plan.num_chunks, static_cast<T>(epsilon),
                              static_cast<T>(lo), static_cast<T>(hi)};
  const detail::ForwardFn<T> fn = forward_fn<T>(table(), noise != nullptr, x != nullptr);
  std::vector<double> partial(static_cast<size_t>(batch * plan.num_chunks * k), 0.0);
  double* partial_ptr = partial.data();
  const int threads = resolve_threads(num_threads, plan.tasks, batch * dim * k);
  run_tasks(plan.tasks, threads, [&](int64_t t) {
    int64_t n_begin, n_end, chunk;
    plan.range(t, n_begin, n_end, chunk);
    fn(args, n_begin, n_end, chunk, partial_ptr);
  });
  const double constant = neg_log_prob_constant(dim, epsilon);
  for (int64_t s = 0; s < k; ++s) {
    for (int64_t b = 0; b < batch; ++b) {
      double acc = 0.0;
      for (int64_t c = 0; c < plan.num_chunks; ++c) acc += partial[(b * plan.num_chunks + c) * k + s];
      nlp[s * batch + b] = static_cast<T>(acc + constant);
    }
  }
}

template <class T>
void backward_impl(const T* grad_out, int64_t go_sample_stride, int64_t go_element_stride, const T* grad_nlp,
                   int64_t ge_sample_stride, int64_t ge_example_stride, const T* mean, const T* std_param, const T* x,
                   const T* noise, uint64_t seed, uint64_t offset, int64_t batch, int64_t dim, int64_t k,
                   double epsilon, double lo, double hi, T* grad_mean, T* grad_std, T* grad_x,
                   int num_threads) {
  if (batch <= 0 || dim <= 0) return;
  if (k <= 0) {
    std::fill(grad_mean, grad_mean + batch * dim, T(0));
    std::fill(grad_std, grad_std + batch * dim, T(0));
    if (grad_x != nullptr) std::fill(grad_x, grad_x + batch * dim, T(0));
    return;
  }
  const Plan plan(batch, dim);
  detail::BackwardArgs<T> args{grad_out,  go_sample_stride, go_element_stride, grad_nlp, ge_sample_stride,
                               ge_example_stride, mean, std_param, x, noise, grad_mean, grad_std, grad_x, seed,
                               offset, batch, dim, batch * dim, k, static_cast<T>(epsilon), static_cast<T>(lo),
                               static_cast<T>(hi)};
  const detail::BackwardFn<T> fn = backward_fn<T>(table(), noise != nullptr, x != nullptr);
  const int threads = resolve_threads(num_threads, plan.tasks, batch * dim * k);
  run_tasks(plan.tasks, threads, [&](int64_t t) {
    int64_t n_begin, n_end, chunk;
    plan.range(t, n_begin, n_end, chunk);
    fn(args, n_begin, n_end);
  });
}

}  // namespace

void sample_forward(const float* mean, const float* std_param, const float* x, const float* noise,
                    uint64_t seed, uint64_t offset, int64_t batch, int64_t dim, int64_t num_samples,
                    double epsilon, double lo, double hi, float* out, float* neg_log_prob, int num_threads) {
  forward_impl<float>(mean, std_param, x, noise, seed, offset, batch, dim, num_samples, epsilon, lo, hi, out,
                      neg_log_prob, num_threads);
}

void sample_forward(const double* mean, const double* std_param, const double* x, const double* noise,
                    uint64_t seed, uint64_t offset, int64_t batch, int64_t dim, int64_t num_samples,
                    double epsilon, double lo, double hi, double* out, double* neg_log_prob,
                    int num_threads) {
  forward_impl<double>(mean, std_param, x, noise, seed, offset, batch, dim, num_samples, epsilon, lo, hi, out,
                       neg_log_prob, num_threads);
}

void sample_backward(const float* grad_out, int64_t go_sample_stride, int64_t go_element_stride,
                     const float* grad_nlp, int64_t ge_sample_stride, int64_t ge_example_stride,
                     const float* mean, const float* std_param, const float* x, const float* noise, uint64_t seed,
                     uint64_t offset, int64_t batch, int64_t dim, int64_t num_samples, double epsilon, double lo,
                     double hi, float* grad_mean, float* grad_std_param, float* grad_x, int num_threads) {
  backward_impl<float>(grad_out, go_sample_stride, go_element_stride, grad_nlp, ge_sample_stride, ge_example_stride,
                       mean, std_param, x, noise, seed, offset, batch, dim, num_samples, epsilon, lo, hi, grad_mean,
                       grad_std_param, grad_x, num_threads);
}

void sample_backward(const double* grad_out, int64_t go_sample_stride, int64_t go_element_stride,
                     const double* grad_nlp, int64_t ge_sample_stride, int64_t ge_example_stride,
                     const double* mean, const double* std_param, const double* x, const double* noise,
                     uint64_t seed, uint64_t offset, int64_t batch, int64_t dim, int64_t num_samples,
                     double epsilon, double lo, double hi, double* grad_mean, double* grad_std_param,
                     double* grad_x, int num_threads) {
  backward_impl<double>(grad_out, go_sample_stride, go_element_stride, grad_nlp, ge_sample_stride,
                        ge_example_stride, mean, std_param, x, noise, seed, offset, batch, dim, num_samples, epsilon,
                        lo, hi, grad_mean, grad_std_param, grad_x, num_threads);
}

void philox_words(uint64_t seed, uint64_t offset, int64_t numel, int64_t num_samples, int64_t* out,
                  int num_threads) {
  const int64_t quads = num_quads(numel);
  if (quads <= 0 || num_samples <= 0) return;
  const int64_t tasks = (quads + kChunk - 1) / kChunk;  // ranges of kChunk quads
  const detail::WordsFn fn = table().words;
  const int threads = resolve_threads(num_threads, tasks, quads * num_samples * 4);
  run_tasks(tasks, threads, [&](int64_t t) {
    fn(seed, offset, quads, num_samples, t * kChunk, std::min(quads, (t + 1) * kChunk), out);
  });
}

const char* isa() { return table().name; }

const char* available_isas() {
  static const std::string list = [] {
    std::string s;
    for (const char* name : kIsaOrder) {
      if (table_named(name) != nullptr) s += (s.empty() ? "" : ",") + std::string(name);
    }
    return s;
  }();
  return list.c_str();
}

bool set_isa(const char* name) {
  const KernelTable* t = name == nullptr ? nullptr : table_named(name);
  if (t == nullptr) return false;
  g_table.store(t, std::memory_order_release);
  return true;
}

bool has_openmp() {
#if defined(_OPENMP)
  return true;
#else
  return false;
#endif
}

int default_num_threads() {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace cpu
}  // namespace adt_fast
