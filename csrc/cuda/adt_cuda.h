// Public, torch-free API of the CUDA kernels (device pointers, sizes, a stream).
//
// Storage dtypes float32, float64, float16 and bfloat16; the kernels compute in float (double for
// float64). neg_log_prob / grad_nlp are float, or double for float64. Shapes as in
// cpu/adt_cpu.h. Every function returns nullptr on success, else the CUDA error string of the
// failed launch, read and cleared with cudaGetLastError as torch's C10_CUDA_KERNEL_LAUNCH_CHECK
// does (left pending, a non-sticky error would surface at torch's next check, blamed on its op).
#pragma once

#include <cstddef>
#include <cstdint>

struct CUstream_st;  // cudaStream_t without including the CUDA headers

namespace adt_fast {
namespace cuda {

enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// Where the kernels take Philox's (seed, offset) from, with no host synchronisation:
//   seed   = (seed_ptr ? *seed_ptr : seed_value) ^ seed_xor
//   offset = (offset_ptr ? *offset_ptr : offset_value) + offset_add
// An int64 seed_offset tensor is (seed_ptr, seed_ptr + 1); torch's PhiloxCudaState is the values
// outside CUDA-graph capture and (seed_.ptr, offset_.ptr, offset_intragraph_) inside it, the way
// at::cuda::philox::unpack reads it. The forward kernel writes the pair it used to `used` (two
// int64 in device memory; zeros when noise is given) when `used` is not null.
struct SeedSource {
  const int64_t* seed_ptr = nullptr;
  const int64_t* offset_ptr = nullptr;
  uint64_t seed_value = 0;
  uint64_t offset_value = 0;
  uint64_t offset_add = 0;
  uint64_t seed_xor = 0;
  int64_t* used = nullptr;
};

// seed_xor for a seed from torch's CUDA generator (docs/randomness.md): torch's own random ops key
// Philox with the generator's seed itself and give each thread the counters (offset / 4 + j,
// thread), a layout that crosses ours, (quad, offset + s); with this key no counter of theirs is
// ever one of ours. A given seed_offset is used as it is (seed_xor 0).
constexpr uint64_t kGeneratorSeedXor = 0x9E3779B97F4A7C15ULL;

// How the kernels split a call over lanes and blocks (docs/kernels.md, "Work split"): kAuto picks
// by the call's size; the others force a split, for tests and benchmarks. Process-wide.
enum class WorkSplit : int { kAuto = 0, kDefault = 1, kSmallCalls = 2 };
void set_work_split(WorkSplit split);

// Bytes of device scratch memory sample_forward needs (partial sums of examples that span chunks).
size_t forward_workspace_bytes(DType dtype, int64_t batch, int64_t dim, int64_t num_samples);

const char* sample_forward(DType dtype, const void* mean, const void* std_param, const void* x,
                           const void* noise, const SeedSource& seed, int64_t batch, int64_t dim,
                           int64_t num_samples, double epsilon, double lo, double hi, void* out,
                           void* neg_log_prob, void* workspace, CUstream_st* stream);

// grad_out [k, B, *S] is read at s * grad_out_sample_stride + n * grad_out_element_stride (strides
// in elements: (N, 1) contiguous, (0, 1) expanded over k, (0, 0) a broadcast scalar), grad_nlp
// [k, B] at s * grad_nlp_sample_stride + b * grad_nlp_example_stride (any strides); null means
// zero. A null grad_x with x given: x's gradient is not wanted (the clamp still masks the others).
const char* sample_backward(DType dtype, const void* grad_out, int64_t grad_out_sample_stride,
                            int64_t grad_out_element_stride, const void* grad_nlp, int64_t grad_nlp_sample_stride,
                            int64_t grad_nlp_example_stride, const void* mean,
                            const void* std_param, const void* x, const void* noise, const SeedSource& seed,
                            int64_t batch, int64_t dim, int64_t num_samples, double epsilon, double lo,
                            double hi, void* grad_mean, void* grad_std_param, void* grad_x, CUstream_st* stream);

// The raw Philox words as int64 holding uint32 values: [ceil(num_samples / 4), numel, 4].
const char* philox_words(const int64_t* seed_offset, int64_t numel, int64_t num_samples, int64_t* out,
                         CUstream_st* stream);

// The architectures this file was compiled for (e.g. "sm_90"), for build information.
const char* compiled_architectures();

}  // namespace cuda
}  // namespace adt_fast
