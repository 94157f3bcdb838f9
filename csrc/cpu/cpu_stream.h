// Streaming (non-temporal) stores of the CPU kernels and when to use them. An image-sized output that the next op
// reads only after the whole image is done gains nothing from the caches: a plain store first reads each line
// (read-for-ownership) and evicts the working set; a streaming store writes whole lines past the caches. On the
// 2-core Xeon VM, MOLRCM's proj_qv at 1x64x180x320 ran 1.18x faster with its q and v streamed (single calls,
// interleaved), close to the 1.24x of not storing them at all. Outputs read back at once (a band's GEMM
// result, packed panels) keep plain stores. Callers end their parallel region with stream_fence().
#pragma once
#include "cpu/cpu_isa.h"
#include <cstdint>
#include <cstdlib>
#include <cstring>
#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace eimn::cpu {
inline namespace EIMN_ISA {

// A vector V (GCC vector extension, 32 or 64 bytes) from / to memory without an alignment requirement.
template <typename V> inline V load_vec(const void* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V> inline void store_vec(void* p, V v) { std::memcpy(p, &v, sizeof(V)); }

// The first n elements (of type T) of V to p, 0 <= n: a masked store where the ISA has one. A partial store
// through a buffer and memcpy made the micro-kernels that inline it call a library function, which clobbers
// every vector register: GCC then kept half of mk_rows2's accumulators on the stack for the whole K loop
// (proj_qv's v rows and gate_out's: an FMA with a load and a store per row and k).
template <typename T, typename V> __attribute__((always_inline)) inline void store_vec_first(T* p, V v, int64_t n) {
  constexpr int64_t L = int64_t(sizeof(V) / sizeof(T));
  if (n >= L) return store_vec(p, v);
  if (n <= 0) return;
#if defined(__AVX512F__)
  if constexpr (sizeof(V) == 64 && sizeof(T) == 4)
    return _mm512_mask_storeu_ps(p, __mmask16((1u << n) - 1), reinterpret_cast<__m512&>(v));
  if constexpr (sizeof(V) == 64 && sizeof(T) == 8)
    return _mm512_mask_storeu_pd(p, __mmask8((1u << n) - 1), reinterpret_cast<__m512d&>(v));
#endif
#if defined(__AVX512VL__)
  if constexpr (sizeof(V) == 32 && sizeof(T) == 4)
    return _mm256_mask_storeu_ps(p, __mmask8((1u << n) - 1), reinterpret_cast<__m256&>(v));
  if constexpr (sizeof(V) == 32 && sizeof(T) == 8)
    return _mm256_mask_storeu_pd(p, __mmask8((1u << n) - 1), reinterpret_cast<__m256d&>(v));
#elif defined(__AVX2__)
  if constexpr (sizeof(V) == 32 && sizeof(T) == 4) {
    const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    return _mm256_maskstore_ps(reinterpret_cast<float*>(p), m, reinterpret_cast<__m256&>(v));
  }
  if constexpr (sizeof(V) == 32 && sizeof(T) == 8) {
    const __m256i m = _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
    return _mm256_maskstore_pd(reinterpret_cast<double*>(p), m, reinterpret_cast<__m256d&>(v));
  }
#endif
  T tmp[L];
  store_vec(tmp, v);
  for (int64_t j = 0; j < n; ++j) p[j] = tmp[j];
}

// Non-temporal store of V to p, aligned to sizeof(V) (a plain store where the ISA has no such store).
template <typename V> inline void stream_vec(void* p, V v) {
#if defined(__AVX512F__)
  if constexpr (sizeof(V) == 64) {
    _mm512_stream_si512(static_cast<__m512i*>(p), reinterpret_cast<__m512i&>(v));
    return;
  }
#endif
#if defined(__AVX__)
  if constexpr (sizeof(V) == 32) {
    _mm256_stream_si256(static_cast<__m256i*>(p), reinterpret_cast<__m256i&>(v));
    return;
  }
#endif
  store_vec(p, v);
}

// Orders this thread's streaming stores before what follows (end of a parallel region's task).
inline void stream_fence() {
#if defined(__AVX__)
  _mm_sfence();
#endif
}

// Whether an op streams an output of `bytes` bytes that the next op reads only after the whole image: outputs
// of at least 8 MiB (larger than this machine's L2s together, so no plain store would leave them in L2;
// 1x64x180x320 float32 is 14 MiB). EIMN_STREAM_MIN_MB overrides the bound (read once; 0 streams every
// aligned output, a huge value none: for A/B timing).
inline bool stream_output(int64_t bytes) {
  static const int64_t min_bytes = [] {
    const char* e = std::getenv("EIMN_STREAM_MIN_MB");
    return (e != nullptr ? std::atoll(e) : int64_t(8)) << 20;
  }();
  return bytes >= min_bytes;
}

}  // namespace EIMN_ISA
}  // namespace eimn::cpu
