// CUDA kernels against the CPU kernels (ctest core_cuda on a GPU, exit 77 = skipped without one;
// core_cuda_emulated runs the same on the CPU, see tests/cuda_emulation/emulation.h).
// Raw Philox words must be bit-identical; outputs and gradients within 1e-12 (float64) and
// 1e-5 (float32) norm-wise relative error, and loose bounds for float16 / bfloat16 storage.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cinttypes>
#include <cstdlib>
#include <initializer_list>
#include <type_traits>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include "core/philox.h"
#include "tests/check.h"
#include "cpu/adt_cpu.h"
#include "cuda/adt_cuda.h"

namespace {

using adt_test::rel_err;

#define CUDA_OK(expr)                                                                               \
  do {                                                                                              \
    const cudaError_t err_ = (expr);                                                                \
    if (err_ != cudaSuccess) {                                                                      \
      std::printf("CUDA error %s at %s:%d: %s\n", cudaGetErrorString(err_), __FILE__, __LINE__, #expr); \
      std::exit(1);                                                                                 \
    }                                                                                               \
  } while (0)

template <class T>
struct Device {
  T* base = nullptr;
  T* ptr = nullptr;  // base + shift: shift 1 takes the kernels off their vector loads and stores
  size_t n = 0;
  explicit Device(size_t count, size_t shift = 0) : n(count) {
    CUDA_OK(cudaMalloc(&base, (std::max<size_t>(1, count) + shift) * sizeof(T)));
    ptr = base + shift;
  }
  Device(const std::vector<T>& host, size_t shift = 0) : Device(host.size(), shift) {
    CUDA_OK(cudaMemcpy(ptr, host.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  }
  ~Device() { cudaFree(base); }
  std::vector<T> get() const {
    std::vector<T> h(n);
    CUDA_OK(cudaMemcpy(h.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
};

double to_double(float v) { return v; }
double to_double(double v) { return v; }
double to_double(__half v) { return __half2float(v); }
double to_double(__nv_bfloat16 v) { return __bfloat162float(v); }
template <class S>
S from_double(double v) { return static_cast<S>(v); }
template <>
__half from_double<__half>(double v) { return __float2half_rn(static_cast<float>(v)); }
template <>
__nv_bfloat16 from_double<__nv_bfloat16>(double v) { return __float2bfloat16_rn(static_cast<float>(v)); }

template <class S>
std::vector<S> convert(const std::vector<double>& v) {
  std::vector<S> out;
  for (double d : v) out.push_back(from_double<S>(d));
  return out;
}
template <class S>
std::vector<double> widen(const std::vector<S>& v) {
  std::vector<double> out;
  for (const S& s : v) out.push_back(to_double(s));
  return out;
}

template <class S>
adt_fast::cuda::DType dtype_of();
template <>
adt_fast::cuda::DType dtype_of<float>() { return adt_fast::cuda::DType::kFloat32; }
template <>
adt_fast::cuda::DType dtype_of<double>() { return adt_fast::cuda::DType::kFloat64; }
template <>
adt_fast::cuda::DType dtype_of<__half>() { return adt_fast::cuda::DType::kFloat16; }
template <>
adt_fast::cuda::DType dtype_of<__nv_bfloat16>() { return adt_fast::cuda::DType::kBFloat16; }

// Runs the CUDA kernels with storage S and the CPU kernels in double on the values S holds.
template <class S>
void check(const char* name, int64_t batch, int64_t dim, int64_t k, bool use_noise, bool use_x, double tol,
           size_t shift = 0) {
  using C = typename std::conditional<std::is_same<S, double>::value, double, float>::type;
  const int64_t n = batch * dim;
  std::mt19937_64 rng(static_cast<uint64_t>(batch * 1000 + dim + k));
  std::normal_distribution<double> normal;
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  std::vector<double> mean, rho, x, noise, gout, gnlp;
  for (int64_t i = 0; i < n; ++i) {
    mean.push_back(to_double(from_double<S>(normal(rng))));
    rho.push_back(to_double(from_double<S>(-4 + 7 * uni(rng))));
    x.push_back(to_double(from_double<S>(uni(rng))));
  }
  for (int64_t i = 0; i < k * n; ++i) {
    noise.push_back(to_double(from_double<S>(normal(rng))));
    gout.push_back(to_double(from_double<S>(normal(rng))));
  }
  for (int64_t i = 0; i < k * batch; ++i) gnlp.push_back(static_cast<double>(static_cast<C>(normal(rng))));
  const double eps = 0.3, lo = use_x ? 0.1 : -INFINITY, hi = use_x ? 0.9 : INFINITY;
  const int64_t so_host[2] = {0x1234567890abcdefLL, 987654321LL};

  // CPU in double: the truth up to float rounding.
  std::vector<double> out_ref(k * n), nlp_ref(k * batch), gm_ref(n), gs_ref(n), gx_ref(n);
  adt_fast::cpu::sample_forward(mean.data(), rho.data(), use_x ? x.data() : nullptr, use_noise ? noise.data() : nullptr,
                                static_cast<uint64_t>(so_host[0]), static_cast<uint64_t>(so_host[1]), batch, dim, k,
                                eps, lo, hi, out_ref.data(), nlp_ref.data());
  adt_fast::cpu::sample_backward(gout.data(), n, 1, gnlp.data(), batch, 1, mean.data(), rho.data(), use_x ? x.data() : nullptr,
                                 use_noise ? noise.data() : nullptr, static_cast<uint64_t>(so_host[0]),
                                 static_cast<uint64_t>(so_host[1]), batch, dim, k, eps, lo, hi, gm_ref.data(),
                                 gs_ref.data(), use_x ? gx_ref.data() : nullptr);

  Device<S> d_mean(convert<S>(mean), shift), d_rho(convert<S>(rho), shift), d_x(convert<S>(x), shift),
      d_noise(convert<S>(noise), shift), d_gout(convert<S>(gout), shift);
  std::vector<C> gnlp_c(gnlp.begin(), gnlp.end());
  Device<C> d_gnlp(gnlp_c);
  Device<int64_t> d_so(std::vector<int64_t>(so_host, so_host + 2));
  Device<S> d_out(k * n, shift), d_gm(n, shift), d_gs(n, shift), d_gx(n, shift);
  Device<C> d_nlp(k * batch);
  adt_fast::cuda::SeedSource seed;
  seed.seed_ptr = d_so.ptr;
  seed.offset_ptr = d_so.ptr + 1;
  const size_t ws = adt_fast::cuda::forward_workspace_bytes(dtype_of<S>(), batch, dim, k);
  Device<unsigned char> d_ws(ws);
  const char* err = adt_fast::cuda::sample_forward(dtype_of<S>(), d_mean.ptr, d_rho.ptr, use_x ? d_x.ptr : nullptr,
                                                   use_noise ? d_noise.ptr : nullptr, seed, batch, dim, k, eps, lo,
                                                   hi, d_out.ptr, d_nlp.ptr, d_ws.ptr, nullptr);
  CHECK(err == nullptr, "forward launch: %s", err);
  err = adt_fast::cuda::sample_backward(dtype_of<S>(), d_gout.ptr, n, 1, d_gnlp.ptr, batch, 1, d_mean.ptr, d_rho.ptr,
                                        use_x ? d_x.ptr : nullptr, use_noise ? d_noise.ptr : nullptr, seed, batch,
                                        dim, k, eps, lo, hi, d_gm.ptr, d_gs.ptr, use_x ? d_gx.ptr : nullptr, nullptr);
  CHECK(err == nullptr, "backward launch: %s", err);
  CUDA_OK(cudaDeviceSynchronize());
  std::vector<double> gm = widen(d_gm.get()), gs = widen(d_gs.get()), gx = widen(d_gx.get());
  if (use_x) {
    // Where x + delta lies within rounding of a clamp bound the two sides may disagree on whether
    // the gradient passes: leave those elements out of the gradient comparison.
    for (int64_t i = 0; i < n; ++i) {
      const double sigma = rho[i] > 0 ? rho[i] + std::log1p(std::exp(-rho[i])) : std::log1p(std::exp(rho[i]));
      bool near = false;
      for (int64_t s = 0; s < k; ++s) {
        const double r = use_noise ? noise[s * n + i]
                                   : adt_fast::philox_normal<double>(static_cast<uint64_t>(so_host[0]),
                                                                     static_cast<uint64_t>(so_host[1]), i, s);
        const double v = x[i] + eps * std::tanh(mean[i] + sigma * r);
        near = near || std::fabs(v - lo) < 1e-4 || std::fabs(v - hi) < 1e-4;
      }
      if (near) gm[i] = gm_ref[i], gs[i] = gs_ref[i], gx[i] = gx_ref[i];
    }
  }
  const double e_out = rel_err(widen(d_out.get()), out_ref), e_nlp = rel_err(widen(d_nlp.get()), nlp_ref);
  const double e_gm = rel_err(gm, gm_ref), e_gs = rel_err(gs, gs_ref);
  const double e_gx = use_x ? rel_err(gx, gx_ref) : 0.0;
  const double worst = std::max({e_out, e_nlp, e_gm, e_gs, e_gx});
  std::printf("  %-9s B=%-5" PRId64 " D=%-6" PRId64 " k=%-3" PRId64 " noise=%d x=%d%s  max rel err %.2e\n", name,
              batch, dim, k, use_noise, use_x, shift ? " misaligned" : "", worst);
  CHECK(worst <= tol, "%s: out %.2e nlp %.2e grad_mean %.2e grad_std %.2e grad_x %.2e > %.1e", name, e_out, e_nlp,
        e_gm, e_gs, e_gx, tol);
}

// Backward with grad_out laid out per element (s, n), expanded over the samples (0, 1), one value
// for everything (0, 0) or absent, grad_nlp per example (B, 1), expanded over the samples (0, 1),
// one value (0, 0) or absent, and x's gradient wanted or not: the same as the CPU kernels given
// dense gradients (the CPU kernels read the same layouts, and must agree with themselves exactly).
void check_gradient_layouts(int64_t batch, int64_t dim, int64_t k) {
  const int64_t n = batch * dim;
  std::mt19937_64 rng(static_cast<uint64_t>(batch * 31 + dim * 7 + k));
  std::normal_distribution<double> normal;
  std::vector<double> mean(n), rho(n), x(n), gout(k * n), gnlp(k * batch);
  for (auto* v : {&mean, &rho, &x, &gout, &gnlp}) {
    for (double& e : *v) e = normal(rng);
  }
  for (double& e : x) e = 0.5 + 0.2 * e;
  const uint64_t seed = 0xfeedbeefULL, offset = 12345;
  Device<double> d_mean(mean), d_rho(rho), d_x(x), d_gout(gout), d_gnlp(gnlp);
  Device<int64_t> d_so(std::vector<int64_t>{static_cast<int64_t>(seed), static_cast<int64_t>(offset)});
  adt_fast::cuda::SeedSource src;
  src.seed_ptr = d_so.ptr;
  src.offset_ptr = d_so.ptr + 1;
  struct Layout {
    const char* name;
    bool present;
    int64_t sample_stride, element_stride;
  };
  const Layout out_layouts[] = {
      {"per element", true, n, 1}, {"expanded", true, 0, 1}, {"one value", true, 0, 0}, {"absent", false, 0, 0}};
  const Layout nlp_layouts[] = {
      {"per example", true, batch, 1}, {"expanded", true, 0, 1}, {"one value", true, 0, 0}, {"absent", false, 0, 0}};
  // The layout's values written out densely: element (s, i) of a [k, count] array.
  const auto dense = [k](const std::vector<double>& v, const Layout& l, int64_t count) {
    std::vector<double> d(k * count, 0.0);
    for (int64_t s = 0; s < k; ++s) {
      for (int64_t i = 0; i < count && l.present; ++i) d[s * count + i] = v[s * l.sample_stride + i * l.element_stride];
    }
    return d;
  };
  for (const Layout& go : out_layouts) {
    for (const Layout& ge : nlp_layouts) {
      const std::vector<double> go_dense = dense(gout, go, n), ge_dense = dense(gnlp, ge, batch);
      std::vector<double> gm_ref(n), gs_ref(n), gx_ref(n), gm_cpu(n), gs_cpu(n);
      adt_fast::cpu::sample_backward(go_dense.data(), n, 1, ge_dense.data(), batch, 1, mean.data(), rho.data(),
                                     x.data(), nullptr, seed, offset, batch, dim, k, 0.3, 0.1, 0.9, gm_ref.data(),
                                     gs_ref.data(), gx_ref.data());
      adt_fast::cpu::sample_backward(go.present ? gout.data() : nullptr, go.sample_stride, go.element_stride,
                                     ge.present ? gnlp.data() : nullptr, ge.sample_stride, ge.element_stride,
                                     mean.data(), rho.data(), x.data(), nullptr, seed, offset, batch, dim, k, 0.3, 0.1,
                                     0.9, gm_cpu.data(), gs_cpu.data(), nullptr);
      CHECK(gm_cpu == gm_ref && gs_cpu == gs_ref, "CPU: grad_out %s, grad_nlp %s, no grad_x: differs from dense",
            go.name, ge.name);
      for (const bool want_gx : {true, false}) {
        Device<double> d_gm(n), d_gs(n), d_gx(n);
        const char* err = adt_fast::cuda::sample_backward(
            adt_fast::cuda::DType::kFloat64, go.present ? d_gout.ptr : nullptr, go.sample_stride, go.element_stride,
            ge.present ? d_gnlp.ptr : nullptr, ge.sample_stride, ge.element_stride, d_mean.ptr, d_rho.ptr, d_x.ptr,
            nullptr, src, batch, dim, k, 0.3, 0.1, 0.9, d_gm.ptr, d_gs.ptr, want_gx ? d_gx.ptr : nullptr, nullptr);
        CHECK(err == nullptr, "backward launch: %s", err);
        CUDA_OK(cudaDeviceSynchronize());
        const double worst = std::max({rel_err(d_gm.get(), gm_ref), rel_err(d_gs.get(), gs_ref),
                                       want_gx ? rel_err(d_gx.get(), gx_ref) : 0.0});
        CHECK(worst <= 1e-12, "grad_out %s, grad_nlp %s, grad_x %s, B=%" PRId64 " D=%" PRId64 " k=%" PRId64
              ": rel err %.2e", go.name, ge.name, want_gx ? "wanted" : "not wanted", batch, dim, k, worst);
      }
    }
  }
}

// (seed, offset) as values (torch's generator outside CUDA-graph capture) or as pointers plus
// offset_add (inside capture): the samples of (seed, offset + offset_add), and the forward writes
// the pair it used to `used`.
void check_seed_sources() {
  const int64_t batch = 4, dim = 300, k = 6, n = batch * dim;
  const uint64_t seed = 0x0123456789abcdefULL, offset = 1000, add = 77;
  std::vector<double> mean(n, 0.25), rho(n, -0.5);
  std::vector<double> out_ref(k * n), nlp_ref(k * batch);
  adt_fast::cpu::sample_forward(mean.data(), rho.data(), nullptr, nullptr, seed, offset + add, batch, dim, k, 0.3,
                                -INFINITY, INFINITY, out_ref.data(), nlp_ref.data());
  Device<double> d_mean(mean), d_rho(rho);
  Device<int64_t> d_so(std::vector<int64_t>{static_cast<int64_t>(seed), static_cast<int64_t>(offset)});
  // ... and with torch's generator as the source, the key is that seed XOR kGeneratorSeedXor.
  const uint64_t mixed = seed ^ adt_fast::cuda::kGeneratorSeedXor;
  std::vector<double> out_mixed(k * n), nlp_mixed(k * batch);
  adt_fast::cpu::sample_forward(mean.data(), rho.data(), nullptr, nullptr, mixed, offset + add, batch, dim, k, 0.3,
                                -INFINITY, INFINITY, out_mixed.data(), nlp_mixed.data());
  for (const int variant : {0, 1, 2}) {
    const bool pointers = variant == 1, generator = variant == 2;
    adt_fast::cuda::SeedSource src;
    if (generator) src.seed_xor = adt_fast::cuda::kGeneratorSeedXor;
    if (pointers) {
      src.seed_ptr = d_so.ptr;
      src.offset_ptr = d_so.ptr + 1;
    } else {
      src.seed_value = seed;
      src.offset_value = offset;
    }
    src.offset_add = add;
    Device<int64_t> d_used(std::vector<int64_t>{-1, -1});
    src.used = d_used.ptr;
    Device<double> d_out(k * n), d_nlp(k * batch);
    Device<unsigned char> d_ws(adt_fast::cuda::forward_workspace_bytes(adt_fast::cuda::DType::kFloat64, batch, dim, k));
    const char* err = adt_fast::cuda::sample_forward(adt_fast::cuda::DType::kFloat64, d_mean.ptr, d_rho.ptr, nullptr,
                                                     nullptr, src, batch, dim, k, 0.3, -INFINITY, INFINITY, d_out.ptr,
                                                     d_nlp.ptr, d_ws.ptr, nullptr);
    CHECK(err == nullptr, "forward launch: %s", err);
    CUDA_OK(cudaDeviceSynchronize());
    const char* how = generator ? "values from the generator" : pointers ? "pointers" : "values";
    const double worst = std::max(rel_err(d_out.get(), generator ? out_mixed : out_ref),
                                  rel_err(d_nlp.get(), generator ? nlp_mixed : nlp_ref));
    CHECK(worst <= 1e-12, "seed and offset as %s: rel err %.2e", how, worst);
    const std::vector<int64_t> used = d_used.get();
    CHECK(used[0] == static_cast<int64_t>(generator ? mixed : seed) && used[1] == static_cast<int64_t>(offset + add),
          "seed and offset as %s: used (%" PRId64 ", %" PRId64 ")", how, used[0], used[1]);
  }
}

// Empty shapes launch nothing they should not: -log p of an empty example is 0, and k = 0 leaves
// every gradient 0 (the empty sum).
void check_empty() {
  adt_fast::cuda::SeedSource src;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  Device<double> d_nlp(std::vector<double>(2 * 3, nan)), d_scratch(std::vector<double>(8, nan));
  const char* err = adt_fast::cuda::sample_forward(adt_fast::cuda::DType::kFloat64, d_scratch.ptr, d_scratch.ptr,
                                                   nullptr, nullptr, src, 3, 0, 2, 0.3, -INFINITY, INFINITY,
                                                   d_scratch.ptr, d_nlp.ptr, nullptr, nullptr);
  CHECK(err == nullptr, "forward of D = 0: %s", err);
  for (const int64_t dim : {5, 300}) {  // 300: examples span chunks, so a non-empty batch would be combined
    err = adt_fast::cuda::sample_forward(adt_fast::cuda::DType::kFloat64, d_scratch.ptr, d_scratch.ptr, nullptr,
                                         nullptr, src, 0, dim, 2, 0.3, -INFINITY, INFINITY, d_scratch.ptr, d_nlp.ptr,
                                         nullptr, nullptr);
    CHECK(err == nullptr, "forward of B = 0, D = %" PRId64 ": %s", dim, err);
  }
  CUDA_OK(cudaDeviceSynchronize());
  CHECK(d_nlp.get() == std::vector<double>(6, 0.0), "-log p of empty examples is not 0");
  Device<double> d_mean(std::vector<double>(6, 0.1)), d_gm(std::vector<double>(6, nan)), d_gs(std::vector<double>(6, nan));
  err = adt_fast::cuda::sample_backward(adt_fast::cuda::DType::kFloat64, nullptr, 0, 0, nullptr, 0, 0, d_mean.ptr, d_mean.ptr,
                                        nullptr, nullptr, src, 2, 3, 0, 0.3, -INFINITY, INFINITY, d_gm.ptr, d_gs.ptr,
                                        nullptr, nullptr);
  CHECK(err == nullptr, "backward of k = 0: %s", err);
  CUDA_OK(cudaDeviceSynchronize());
  CHECK(d_gm.get() == std::vector<double>(6, 0.0) && d_gs.get() == std::vector<double>(6, 0.0),
        "gradients of k = 0 are not 0");
}

void check_words() {
  const int64_t so_host[2] = {-3LL, (1LL << 62) - 1};
  const int64_t numel = 70001, k = 11, words = k * adt_fast::num_quads(numel) * 4;
  Device<int64_t> d_so(std::vector<int64_t>(so_host, so_host + 2));
  Device<int64_t> d_words(words);
  const char* err = adt_fast::cuda::philox_words(d_so.ptr, numel, k, d_words.ptr, nullptr);
  CHECK(err == nullptr, "philox_words launch: %s", err);
  std::vector<int64_t> cpu(words);
  adt_fast::cpu::philox_words(static_cast<uint64_t>(so_host[0]), static_cast<uint64_t>(so_host[1]), numel, k,
                              cpu.data());
  CHECK(d_words.get() == cpu, "CUDA Philox words differ from the CPU ones");
}

}  // namespace

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: skipped\n");
    return 77;
  }
  cudaDeviceProp prop;
  CUDA_OK(cudaGetDeviceProperties(&prop, 0));
  std::printf("CUDA kernels (%s) on %s\n", adt_fast::cuda::compiled_architectures(), prop.name);
  check_words();
  // Every check under both work splits (the calls here are small, so auto would take the
  // small-call split for all of them).
  for (const auto split : {adt_fast::cuda::WorkSplit::kDefault, adt_fast::cuda::WorkSplit::kSmallCalls}) {
    adt_fast::cuda::set_work_split(split);
    std::printf("work split: %s\n", split == adt_fast::cuda::WorkSplit::kDefault ? "default" : "small calls");
    check_seed_sources();
    check_empty();
    for (const auto& s : {std::vector<int64_t>{3, 37, 5}, {2, 600, 11}, {16, 4, 3}}) {
      check_gradient_layouts(s[0], s[1], s[2]);
    }
    // (B, D, k): D picks the lanes per chunk (1 for D <= 8 elements per lane, then 2, 4, 8, 16,
    // 32), whether an example spans chunks (D > 256 or 128) and whether chunks start on a quad (D
    // a multiple of 4: vector loads and stores; otherwise quads shared by neighbouring chunks);
    // k > 8 takes several launches.
    const int64_t shapes[][3] = {{5, 6, 3}, {3, 37, 5}, {2, 5000, 3}, {700, 1, 9}, {64, 3072, 5}, {4, 300, 64},
                                 {33, 12, 4}, {5, 20, 6}, {9, 100, 8}, {7, 256, 1}, {3, 257, 2}, {6, 129, 3}};
    for (const auto& s : shapes) {
      for (int noise = 0; noise < 2; ++noise) {
        for (int x = 0; x < 2; ++x) {
          check<double>("float64", s[0], s[1], s[2], noise, x, 1e-12);
          check<float>("float32", s[0], s[1], s[2], noise, x, 1e-5);
          check<__half>("float16", s[0], s[1], s[2], noise, x, 2e-3);
          check<__nv_bfloat16>("bfloat16", s[0], s[1], s[2], noise, x, 2e-2);
        }
      }
    }
    // D a multiple of 4 with every array one element off its alignment: the element-wise path.
    for (const auto& s : {std::vector<int64_t>{3, 64, 5}, {2, 600, 9}}) {
      for (int noise = 0; noise < 2; ++noise) {
        check<double>("float64", s[0], s[1], s[2], noise, 1, 1e-12, 1);
        check<float>("float32", s[0], s[1], s[2], noise, 1, 1e-5, 1);
        check<__half>("float16", s[0], s[1], s[2], noise, 1, 2e-3, 1);
      }
    }
  }
  adt_fast::cuda::set_work_split(adt_fast::cuda::WorkSplit::kAuto);
  return adt_test::report();
}
