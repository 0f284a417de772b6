// Public, torch-free API of the CPU kernels (raw pointers and sizes).
//
// Shapes (row-major, contiguous): mean, std_param, x: [batch, dim]; noise, out, grad_out:
// [num_samples, batch, dim]; neg_log_prob: [num_samples, batch] (grad_nlp: strided, below); words:
// [num_samples, ceil(numel / 4), 4]. x and noise may be null (then grad_x must be null too);
// grad_x may be null with x given, when x's gradient is not wanted (the clamp still masks the
// others' gradients).
// With noise == null the normals come from Philox(seed, offset) as in docs/randomness.md.
// lo/hi clamp x + delta (pass -inf/+inf for none); they are ignored when x is null.
// Results do not depend on num_threads (0 = OpenMP's default): the work is split in fixed chunks
// and partial sums are combined in a fixed order.
#pragma once

#include <cstdint>

namespace adt_fast {
namespace cpu {

void sample_forward(const float* mean, const float* std_param, const float* x, const float* noise,
                    uint64_t seed, uint64_t offset, int64_t batch, int64_t dim, int64_t num_samples,
                    double epsilon, double lo, double hi, float* out, float* neg_log_prob,
                    int num_threads = 0);
void sample_forward(const double* mean, const double* std_param, const double* x, const double* noise,
                    uint64_t seed, uint64_t offset, int64_t batch, int64_t dim, int64_t num_samples,
                    double epsilon, double lo, double hi, double* out, double* neg_log_prob,
                    int num_threads = 0);

// grad_out element (s, n) is grad_out[s * grad_out_sample_stride + n * grad_out_element_stride]:
// (numel, 1) contiguous, (0, 1) expanded over the samples, (0, 0) a broadcast scalar. grad_nlp
// element (s, b) is grad_nlp[s * grad_nlp_sample_stride + b * grad_nlp_example_stride] (any
// strides: (batch, 1) contiguous, (0, 0) from nlp.sum()). A null grad_out or grad_nlp is a zero
// gradient.
void sample_backward(const float* grad_out, int64_t grad_out_sample_stride, int64_t grad_out_element_stride,
                     const float* grad_nlp, int64_t grad_nlp_sample_stride,
                     int64_t grad_nlp_example_stride, const float* mean,
                     const float* std_param, const float* x, const float* noise, uint64_t seed,
                     uint64_t offset, int64_t batch, int64_t dim, int64_t num_samples, double epsilon,
                     double lo, double hi, float* grad_mean, float* grad_std_param, float* grad_x,
                     int num_threads = 0);
void sample_backward(const double* grad_out, int64_t grad_out_sample_stride, int64_t grad_out_element_stride,
                     const double* grad_nlp, int64_t grad_nlp_sample_stride,
                     int64_t grad_nlp_example_stride, const double* mean,
                     const double* std_param, const double* x, const double* noise, uint64_t seed,
                     uint64_t offset, int64_t batch, int64_t dim, int64_t num_samples, double epsilon,
                     double lo, double hi, double* grad_mean, double* grad_std_param, double* grad_x,
                     int num_threads = 0);

// The raw Philox words, as int64 holding uint32 values: [num_samples, ceil(numel / 4), 4], those of
// sample s and quad q (elements 4q .. 4q+3) at [s, q].
void philox_words(uint64_t seed, uint64_t offset, int64_t numel, int64_t num_samples, int64_t* out,
                  int num_threads = 0);

// The instruction set the kernels run with: "avx512", "avx2" or "generic". Chosen once from the
// CPU (and $ADT_FAST_CPU_ISA if set); set_isa forces one (false if unknown or unsupported here).
const char* isa();
// Comma-separated list of the instruction sets compiled in and supported by this CPU.
const char* available_isas();
bool set_isa(const char* name);
// Whether the kernels were compiled with OpenMP, and its default thread count (1 without).
bool has_openmp();
int default_num_threads();

}  // namespace cpu
}  // namespace adt_fast
