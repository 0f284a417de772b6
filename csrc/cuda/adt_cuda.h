// Public, torch-free API of the CUDA kernels (device pointers, sizes, a stream).
//
// Storage dtypes float32, float64, float16 and bfloat16; the kernels compute in float (double for
// float64). neg_log_prob / grad_nlp are float, or double for float64. Shapes as in
// cpu/adt_cpu.h. `seed_offset` points at two int64 values (seed, offset) in device memory: the
// kernels read them there, so no host synchronisation is needed (CUDA-graph capturable). Every
// function returns nullptr on success, else the CUDA error string of the failed launch.
#pragma once

#include <cstddef>
#include <cstdint>

struct CUstream_st;  // cudaStream_t without including the CUDA headers

namespace adt_fast {
namespace cuda {

enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// Bytes of device scratch memory sample_forward needs (per-block partial sums of -log p); may be 0.
size_t forward_workspace_bytes(DType dtype, int64_t batch, int64_t dim, int64_t num_samples);

const char* sample_forward(DType dtype, const void* mean, const void* std_param, const void* x,
                           const void* noise, const int64_t* seed_offset, int64_t batch, int64_t dim,
                           int64_t num_samples, double epsilon, double lo, double hi, void* out,
                           void* neg_log_prob, void* workspace, CUstream_st* stream);

const char* sample_backward(DType dtype, const void* grad_out, const void* grad_nlp, const void* mean,
                            const void* std_param, const void* x, const void* noise,
                            const int64_t* seed_offset, int64_t batch, int64_t dim, int64_t num_samples,
                            double epsilon, double lo, double hi, void* grad_mean, void* grad_std_param,
                            void* grad_x, CUstream_st* stream);

// The raw Philox words as int64 holding uint32 values: [ceil(num_samples / 4), numel, 4].
const char* philox_words(const int64_t* seed_offset, int64_t numel, int64_t num_samples, int64_t* out,
                         CUstream_st* stream);

// The architectures this file was compiled for (e.g. "sm_90"), for build information.
const char* compiled_architectures();

}  // namespace cuda
}  // namespace adt_fast
