// The CPU kernels, written once and compiled once per instruction set by kernels_<isa>.cpp, which
// define ADT_ISA_NS (a namespace), ADT_ISA_NAME and ADT_TABLE_FN, include every header first and
// then this file under `#pragma GCC target(...)`. Nothing here is parallel: cpu_api.cpp splits the
// work into fixed ranges and runs them with OpenMP.
//
// Layout: the flat element range is walked in tiles of up to kTile elements. Per tile, structure-
// of-arrays buffers hold the per-element terms (mu, sigma, log sigma); per tile and sample, the
// Philox words of the quads that cover the tile (one call per quad: four consecutive elements)
// and their normals, first per quad lane, then interleaved into element order. Every inner loop
// is a branch-free `omp simd` loop that g++ -O3 vectorises (no libm calls: see core/fastmath.h).
#if !defined(ADT_ISA_NS) || !defined(ADT_ISA_NAME) || !defined(ADT_TABLE_FN)
#error "kernels_impl.h is included by kernels_<isa>.cpp only"
#endif
#if defined(__GNUC__) && !defined(__clang__) && (!defined(__NO_TRAPPING_MATH__) || !defined(__NO_MATH_ERRNO__))
// Without these flags g++ keeps the selects of core/elementwise.h as branches (it may not
// speculate floating-point operations) and calls sqrt through errno checks: nothing vectorises
// below AVX-512, and the kernels run up to 10x slower. Results are the same either way.
#warning "compile the CPU kernels with -fno-trapping-math -fno-math-errno (setup.py and CMakeLists.txt do)"
#endif

namespace adt_fast {
namespace cpu {
namespace ADT_ISA_NS {

// A tile's elements; a multiple of the quad size, so that a tile ending on a quad boundary spans
// at most kTileQuads quads (see tile_end).
constexpr int kTile = 256;
constexpr int kTileQuads = kTile / kElementsPerCall;
static_assert(kTile % kElementsPerCall == 0, "tiles hold whole quads");

// Philox words of quads [q0, q0 + len) for counter high half ctr, scalar (portable; also where
// q's low word wraps inside a vector).
inline void philox_tile_scalar(PhiloxKey key, uint64_t q0, uint64_t ctr, int begin, int len, uint32_t* __restrict w0,
                               uint32_t* __restrict w1, uint32_t* __restrict w2, uint32_t* __restrict w3) {
  const uint32_t c2 = static_cast<uint32_t>(ctr), c3 = static_cast<uint32_t>(ctr >> 32);
  const uint32_t k0 = key.k0, k1 = key.k1;
  for (int i = begin; i < len; ++i) {
    const uint64_t q = q0 + static_cast<uint64_t>(i);
    uint32_t x0 = static_cast<uint32_t>(q), x1 = static_cast<uint32_t>(q >> 32), x2 = c2, x3 = c3;
    philox4x32_10(x0, x1, x2, x3, k0, k1);
    w0[i] = x0;
    w1[i] = x1;
    w2[i] = x2;
    w3[i] = x3;
  }
}

#if defined(ADT_FAST_X86_MULTIVERSION) && defined(ADT_ISA_LEVEL)
// Philox with SIMD intrinsics: the compiler's own vectorisation of the 32x32->64-bit products
// (zero-extend, 64-bit multiply, repack) is several times slower than mul_epu32 on even and odd
// lanes. ADT_ISA_LEVEL: 2 = AVX-512 (16 lanes), 1 = AVX2 (8 lanes), 0 = SSE2 (4 lanes).
#if ADT_ISA_LEVEL == 2
using VecU = __m512i;
constexpr int kLanes = 16;
ADT_FN VecU v_set1(uint32_t v) { return _mm512_set1_epi32(static_cast<int>(v)); }
ADT_FN VecU v_iota() { return _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15); }
ADT_FN VecU v_add(VecU a, VecU b) { return _mm512_add_epi32(a, b); }
ADT_FN VecU v_xor3(VecU a, VecU b, VecU c) { return _mm512_ternarylogic_epi32(a, b, c, 0x96); }
ADT_FN void v_store(uint32_t* p, VecU v) { _mm512_storeu_si512(reinterpret_cast<void*>(p), v); }
// (hi, lo) 32-bit halves of a * m for every 32-bit lane.
ADT_FN void v_mulhilo(VecU a, VecU m, VecU& hi, VecU& lo) {
  const VecU even = _mm512_mul_epu32(a, m);
  const VecU odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
  lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
}
#elif ADT_ISA_LEVEL == 1
using VecU = __m256i;
constexpr int kLanes = 8;
ADT_FN VecU v_set1(uint32_t v) { return _mm256_set1_epi32(static_cast<int>(v)); }
ADT_FN VecU v_iota() { return _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7); }
ADT_FN VecU v_add(VecU a, VecU b) { return _mm256_add_epi32(a, b); }
ADT_FN VecU v_xor3(VecU a, VecU b, VecU c) { return _mm256_xor_si256(_mm256_xor_si256(a, b), c); }
ADT_FN void v_store(uint32_t* p, VecU v) { _mm256_storeu_si256(reinterpret_cast<VecU*>(p), v); }
ADT_FN void v_mulhilo(VecU a, VecU m, VecU& hi, VecU& lo) {
  const VecU even = _mm256_mul_epu32(a, m);
  const VecU odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}
#else
using VecU = __m128i;
constexpr int kLanes = 4;
ADT_FN VecU v_set1(uint32_t v) { return _mm_set1_epi32(static_cast<int>(v)); }
ADT_FN VecU v_iota() { return _mm_setr_epi32(0, 1, 2, 3); }
ADT_FN VecU v_add(VecU a, VecU b) { return _mm_add_epi32(a, b); }
ADT_FN VecU v_xor3(VecU a, VecU b, VecU c) { return _mm_xor_si128(_mm_xor_si128(a, b), c); }
ADT_FN void v_store(uint32_t* p, VecU v) { _mm_storeu_si128(reinterpret_cast<VecU*>(p), v); }
ADT_FN void v_mulhilo(VecU a, VecU m, VecU& hi, VecU& lo) {  // SSE2 has no blend: mask and or
  const VecU odd_mask = _mm_set_epi32(-1, 0, -1, 0);
  const VecU even = _mm_mul_epu32(a, m);
  const VecU odd = _mm_mul_epu32(_mm_srli_epi64(a, 32), m);
  hi = _mm_or_si128(_mm_srli_epi64(even, 32), _mm_and_si128(odd, odd_mask));
  lo = _mm_or_si128(_mm_andnot_si128(odd_mask, even), _mm_slli_epi64(odd, 32));
}
#endif

// Philox's rounds form a serial dependency chain (multiply, shift, blend, xor): kUnroll
// independent vectors are interleaved so that the chain's latency is hidden.
constexpr int kUnroll = 4;  // measured best for AVX-512, AVX2 and SSE2 (6 spills on AVX-512)

// Philox words of quads [q0, q0 + len) for counter high half ctr. A tile spans only kTileQuads
// quads (one step on AVX-512), so partial steps are common: the last one runs vectorised too, into
// `part`, and keeps its first len - i words (cheaper than up to kStep - 1 scalar calls).
inline void philox_tile(PhiloxKey key, uint64_t q0, uint64_t ctr, int len, uint32_t* __restrict w0,
                        uint32_t* __restrict w1, uint32_t* __restrict w2, uint32_t* __restrict w3) {
  constexpr int kStep = kLanes * kUnroll;
  const VecU m0 = v_set1(kPhiloxM0), m1 = v_set1(kPhiloxM1), iota = v_iota();
  const VecU c2_init = v_set1(static_cast<uint32_t>(ctr)), c3_init = v_set1(static_cast<uint32_t>(ctr >> 32));
  alignas(64) uint32_t part[4][kStep];
  int i = 0;
  for (; i < len; i += kStep) {
    const uint64_t base = q0 + static_cast<uint64_t>(i);
    if (static_cast<uint32_t>(base) > 0xffffffffu - (kStep - 1)) break;  // q's low word wraps: scalar
    VecU c0[kUnroll], c1[kUnroll], c2[kUnroll], c3[kUnroll];
    for (int u = 0; u < kUnroll; ++u) {
      c0[u] = v_add(v_set1(static_cast<uint32_t>(base) + static_cast<uint32_t>(u * kLanes)), iota);
      c1[u] = v_set1(static_cast<uint32_t>(base >> 32));
      c2[u] = c2_init;
      c3[u] = c3_init;
    }
    uint32_t k0 = key.k0, k1 = key.k1;
#pragma GCC unroll 10
    for (int round = 0; round < kPhiloxRounds; ++round) {
      const VecU kv0 = v_set1(k0), kv1 = v_set1(k1);
#pragma GCC unroll 4
      for (int u = 0; u < kUnroll; ++u) {
        VecU hi0, lo0, hi1, lo1;
        v_mulhilo(c0[u], m0, hi0, lo0);
        v_mulhilo(c2[u], m1, hi1, lo1);
        c0[u] = v_xor3(hi1, c1[u], kv0);
        c2[u] = v_xor3(hi0, c3[u], kv1);
        c1[u] = lo1;
        c3[u] = lo0;
      }
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    const bool whole = i + kStep <= len;
    uint32_t* const dst[4] = {whole ? w0 + i : part[0], whole ? w1 + i : part[1], whole ? w2 + i : part[2],
                              whole ? w3 + i : part[3]};
    for (int u = 0; u < kUnroll; ++u) {
      v_store(dst[0] + u * kLanes, c0[u]);
      v_store(dst[1] + u * kLanes, c1[u]);
      v_store(dst[2] + u * kLanes, c2[u]);
      v_store(dst[3] + u * kLanes, c3[u]);
    }
    if (!whole) {
      std::copy(part[0], part[0] + (len - i), w0 + i);
      std::copy(part[1], part[1] + (len - i), w1 + i);
      std::copy(part[2], part[2] + (len - i), w2 + i);
      std::copy(part[3], part[3] + (len - i), w3 + i);
    }
  }
  philox_tile_scalar(key, q0, ctr, i, len, w0, w1, w2, w3);
}
#else
inline void philox_tile(PhiloxKey key, uint64_t q0, uint64_t ctr, int len, uint32_t* __restrict w0,
                        uint32_t* __restrict w1, uint32_t* __restrict w2, uint32_t* __restrict w3) {
  philox_tile_scalar(key, q0, ctr, 0, len, w0, w1, w2, w3);
}
#endif

template <class T>
inline void normals_tile(int len, const uint32_t* __restrict wa, const uint32_t* __restrict wb,
                         T* __restrict z_cos, T* __restrict z_sin) {
#pragma omp simd
  for (int i = 0; i < len; ++i) {
    T zc, zs;
    box_muller<T>(wa[i], wb[i], zc, zs);
    z_cos[i] = zc;
    z_sin[i] = zs;
  }
}

// r[4 j + l] = lane l of quad j: the quads' normals in element order.
template <class T>
inline void interleave_quads(int quads, const T* __restrict z0, const T* __restrict z1, const T* __restrict z2,
                             const T* __restrict z3, T* __restrict r) {
#pragma omp simd
  for (int j = 0; j < quads; ++j) {
    r[kElementsPerCall * j + 0] = z0[j];
    r[kElementsPerCall * j + 1] = z1[j];
    r[kElementsPerCall * j + 2] = z2[j];
    r[kElementsPerCall * j + 3] = z3[j];
  }
}

// The end of the tile that starts at n0: kTile elements after n0's quad starts, or the range's
// end. Tiles then end on quad boundaries, so that no quad is drawn twice within a range; only a
// range's first tile may start mid-quad (ranges start at b * dim + c * 4096, and dim is any size).
inline int64_t tile_end(int64_t n0, int64_t n_end) {
  return std::min<int64_t>(n_end, n0 - n0 % kElementsPerCall + kTile);
}

// Sample s's normals r[s, n] for the tile [n0, n0 + len), returned as a pointer to r[s, n0]:
// the quads that cover the tile are drawn (one Philox call each) and Box-Muller'd lane pair by
// lane pair, then interleaved into r, whose first n0 mod 4 entries belong to elements before n0.
template <class T>
inline const T* sample_normals(PhiloxKey key, uint64_t offset, int64_t s, int64_t n0, int len,
                               uint32_t (&w)[4][kTileQuads], T (&z)[4][kTileQuads], T (&r)[kTile]) {
  const int lead = static_cast<int>(n0 % kElementsPerCall);
  const int quads = (lead + len + kElementsPerCall - 1) / kElementsPerCall;
  philox_tile(key, static_cast<uint64_t>(n0 / kElementsPerCall), offset + static_cast<uint64_t>(s), quads, w[0],
              w[1], w[2], w[3]);
  normals_tile<T>(quads, w[0], w[1], z[0], z[1]);
  normals_tile<T>(quads, w[2], w[3], z[2], z[3]);
  interleave_quads<T>(quads, z[0], z[1], z[2], z[3], r);
  return r + lead;
}

// Adds the sums of term[0, len) over each example's segment to that example's partial sum.
template <class T>
inline void add_segment_sums(const T* __restrict term, int len, int64_t n0, int64_t dim, int64_t num_chunks,
                             int64_t chunk, int64_t k, int64_t s, double* __restrict partial) {
  int i = 0;
  while (i < len) {
    const int64_t b = (n0 + i) / dim;
    const int end = static_cast<int>(std::min<int64_t>(len, (b + 1) * dim - n0));
    T acc = T(0);
#pragma omp simd reduction(+ : acc)
    for (int j = i; j < end; ++j) acc += term[j];
    partial[(b * num_chunks + chunk) * k + s] += static_cast<double>(acc);
    i = end;
  }
}

template <class T, bool kNoise, bool kX>
void forward_range(const detail::ForwardArgs<T>& a, int64_t n_begin, int64_t n_end, int64_t chunk,
                   double* partial) {
  alignas(64) T mu[kTile], sigma[kTile], log_sigma[kTile], term[kTile], normals[kTile];
  alignas(64) T z[4][kTileQuads];
  alignas(64) uint32_t w[4][kTileQuads];
  const PhiloxKey key = philox_key(a.seed);
  const T eps = a.epsilon, lo = a.lo, hi = a.hi;
  for (int64_t n0 = n_begin, n1; n0 < n_end; n0 = n1) {
    n1 = tile_end(n0, n_end);
    const int len = static_cast<int>(n1 - n0);
    {
      const T* __restrict mean = a.mean + n0;
      const T* __restrict rho = a.std_param + n0;
#pragma omp simd
      for (int i = 0; i < len; ++i) {
        const RhoTerms<T> rt = rho_terms<T>(rho[i]);
        mu[i] = mean[i];
        sigma[i] = rt.sigma;
        log_sigma[i] = rt.log_sigma;
      }
    }
    for (int64_t s = 0; s < a.num_samples; ++s) {
      const T* __restrict rs =
          kNoise ? a.noise + s * a.numel + n0 : sample_normals<T>(key, a.offset, s, n0, len, w, z, normals);
      T* __restrict out = a.out + s * a.numel + n0;
      const T* __restrict x = kX ? a.x + n0 : nullptr;
#pragma omp simd
      for (int i = 0; i < len; ++i) {
        const T r = rs[i];
        const TanhTerms<T> tt = tanh_terms<T>(mu[i] + sigma[i] * r);
        if constexpr (kX) {
          out[i] = math::clamp_<T>(x[i] + eps * tt.t, lo, hi);
        } else {
          out[i] = eps * tt.t;
        }
        term[i] = neg_log_prob_term<T>(r, log_sigma[i], tt.log2_quarter_dtanh);
      }
      add_segment_sums<T>(term, len, n0, a.dim, a.num_chunks, chunk, a.num_samples, s, partial);
    }
  }
}

// Fills v[0, len) with src[b * stride] of each element's example b (zeros where src is null).
template <class T>
inline void fill_per_example(T* __restrict v, int len, int64_t n0, int64_t dim, const T* __restrict src,
                             int64_t stride) {
  if (src == nullptr) {
    std::fill(v, v + len, T(0));
    return;
  }
  int i = 0;
  while (i < len) {
    const int64_t b = (n0 + i) / dim;
    const int end = static_cast<int>(std::min<int64_t>(len, (b + 1) * dim - n0));
    const T value = src[b * stride];
    for (int j = i; j < end; ++j) v[j] = value;
    i = end;
  }
}

// Sample s's grad_out over the tile [n0, n0 + len): read in place when it is laid out per element,
// else (a broadcast value, or zero) written into `fill` (the same values either way).
template <class T>
inline const T* grad_out_tile(const detail::BackwardArgs<T>& a, int64_t s, int64_t n0, int len, T* fill) {
  if (a.grad_out != nullptr && a.go_element_stride != 0) return a.grad_out + s * a.go_sample_stride + n0;
  std::fill(fill, fill + len, a.grad_out != nullptr ? a.grad_out[s * a.go_sample_stride] : T(0));
  return fill;
}

template <class T, bool kNoise, bool kX>
void backward_range(const detail::BackwardArgs<T>& a, int64_t n_begin, int64_t n_end) {
  alignas(64) T mu[kTile], sigma[kTile], sigmoid[kTile], sos[kTile], ge[kTile], ge_sum[kTile];
  alignas(64) T acc_du4[kTile], acc_dur4[kTile], acc_gx[kTile], gd_fill[kTile], normals[kTile];
  alignas(64) T z[4][kTileQuads];
  alignas(64) uint32_t w[4][kTileQuads];
  const PhiloxKey key = philox_key(a.seed);
  const T eps = a.epsilon, lo = a.lo, hi = a.hi;
  for (int64_t n0 = n_begin, n1; n0 < n_end; n0 = n1) {
    n1 = tile_end(n0, n_end);
    const int len = static_cast<int>(n1 - n0);
    {
      const T* __restrict mean = a.mean + n0;
      const T* __restrict rho = a.std_param + n0;
#pragma omp simd
      for (int i = 0; i < len; ++i) {
        const RhoTerms<T> rt = rho_terms<T>(rho[i]);
        mu[i] = mean[i];
        sigma[i] = rt.sigma;
        sigmoid[i] = rt.grads.sigmoid;
        sos[i] = rt.grads.sigmoid_over_softplus;
        acc_du4[i] = T(0);
        acc_dur4[i] = T(0);
        acc_gx[i] = T(0);
        ge_sum[i] = T(0);
      }
    }
    for (int64_t s = 0; s < a.num_samples; ++s) {
      const T* __restrict rs =
          kNoise ? a.noise + s * a.numel + n0 : sample_normals<T>(key, a.offset, s, n0, len, w, z, normals);
      const T* __restrict gout = grad_out_tile(a, s, n0, len, gd_fill);
      fill_per_example<T>(ge, len, n0, a.dim, a.grad_nlp ? a.grad_nlp + s * a.ge_sample_stride : nullptr,
                          a.ge_example_stride);
      const T* __restrict x = kX ? a.x + n0 : nullptr;
#pragma omp simd
      for (int i = 0; i < len; ++i) {
        const T r = rs[i];
        const TanhTerms<T> tt = tanh_terms<T>(mu[i] + sigma[i] * r);
        T gd = gout[i];
        if constexpr (kX) {  // the gradient passes where the clamp did not bind, as torch.clamp's
          const T unclamped = x[i] + eps * tt.t;
          gd = ((unclamped >= lo) & (unclamped <= hi)) ? gd : T(0);
          acc_gx[i] += gd;
        }
        // d/du over 4, summed and scaled by 4 once per element: a huge eps then overflows only where
        // the gradient does (4 eps overflowed past FLT_MAX / 4), and the powers of two are exact.
        const T du4 = gd * (eps * tt.quarter_dtanh) - T(0.5) * ge[i] * tt.t;
        acc_du4[i] += du4;
        acc_dur4[i] += du4 * r;
        ge_sum[i] += ge[i];
      }
    }
    T* __restrict grad_mean = a.grad_mean + n0;
    T* __restrict grad_std = a.grad_std_param + n0;
#pragma omp simd
    for (int i = 0; i < len; ++i) {
      grad_mean[i] = T(4) * acc_du4[i];
      grad_std[i] = sigmoid[i] * (T(4) * acc_dur4[i]) + sos[i] * ge_sum[i];
    }
    if (kX && a.grad_x != nullptr) {
      T* __restrict grad_x = a.grad_x + n0;
      for (int i = 0; i < len; ++i) grad_x[i] = acc_gx[i];
    }
  }
}

// The words of quads [q_begin, q_end) of every sample into out, shaped [num_samples, quads, 4].
void words_range(uint64_t seed, uint64_t offset, int64_t quads, int64_t num_samples, int64_t q_begin,
                 int64_t q_end, int64_t* out) {
  alignas(64) uint32_t w[4][kTile];
  const PhiloxKey key = philox_key(seed);
  for (int64_t s = 0; s < num_samples; ++s) {
    for (int64_t q0 = q_begin; q0 < q_end; q0 += kTile) {
      const int len = static_cast<int>(std::min<int64_t>(kTile, q_end - q0));
      philox_tile(key, static_cast<uint64_t>(q0), offset + static_cast<uint64_t>(s), len, w[0], w[1], w[2],
                  w[3]);
      int64_t* __restrict dst = out + (s * quads + q0) * 4;
      for (int i = 0; i < len; ++i) {
        dst[4 * i + 0] = w[0][i];
        dst[4 * i + 1] = w[1][i];
        dst[4 * i + 2] = w[2][i];
        dst[4 * i + 3] = w[3][i];
      }
    }
  }
}

void philox_tile_entry(uint64_t seed, uint64_t ctr, uint64_t q0, int len, uint32_t* w0, uint32_t* w1, uint32_t* w2,
                       uint32_t* w3) {
  philox_tile(philox_key(seed), q0, ctr, len, w0, w1, w2, w3);
}

}  // namespace ADT_ISA_NS

namespace detail {

const KernelTable& ADT_TABLE_FN() {
  using namespace ADT_ISA_NS;
  static const KernelTable table = {
      ADT_ISA_NAME,
      {{&forward_range<float, false, false>, &forward_range<float, false, true>},
       {&forward_range<float, true, false>, &forward_range<float, true, true>}},
      {{&forward_range<double, false, false>, &forward_range<double, false, true>},
       {&forward_range<double, true, false>, &forward_range<double, true, true>}},
      {{&backward_range<float, false, false>, &backward_range<float, false, true>},
       {&backward_range<float, true, false>, &backward_range<float, true, true>}},
      {{&backward_range<double, false, false>, &backward_range<double, false, true>},
       {&backward_range<double, true, false>, &backward_range<double, true, true>}},
      &words_range,
      &philox_tile_entry,
  };
  return table;
}

}  // namespace detail
}  // namespace cpu
}  // namespace adt_fast
