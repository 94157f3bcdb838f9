// Minimal CPU emulation of the CUDA execution model, to unit-test the index math, halos, shared-memory
// layout and synchronisation of csrc/cuda/molrcm_kernels.cu on a machine without a GPU.
//
// Each thread block runs as blockDim.x real std::threads (blocks one after another) sharing one dynamic
// shared-memory buffer; __syncthreads is a block barrier and __shfl_xor_sync a warp exchange through
// per-warp slots and a warp barrier. Only what molrcm_kernels.cu uses is provided (1-D grids, float/double).
// A missing __syncthreads is not detected (threads run truly concurrently, so a race may or may not show):
// compute-sanitizer racecheck on a GPU remains the real race check.
#pragma once
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(x)

typedef int cudaError_t;
typedef void* cudaStream_t;
enum { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorInvalidConfiguration = 9 };
enum { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum { cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };

struct emu_dim3 { unsigned int x = 0, y = 1, z = 1; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) uint4 { unsigned int x, y, z, w; };
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
template <typename V> inline V __ldg(const V* p) { return *p; }
template <typename V> inline void __stwb(V* p, V v) { *p = v; }

namespace emu {

class Barrier {  // reusable generation barrier
 public:
  explicit Barrier(int n) : n_(n) {}
  void wait() {
    std::unique_lock<std::mutex> lk(m_);
    const long gen = gen_;
    if (++count_ == n_) {
      count_ = 0;
      ++gen_;
      cv_.notify_all();
    } else {
      cv_.wait(lk, [&] { return gen_ != gen; });
    }
  }
 private:
  std::mutex m_;
  std::condition_variable cv_;
  int n_, count_ = 0;
  long gen_ = 0;
};

struct Warp {
  Barrier bar{32};
  double slot[32];
};

struct Block {
  explicit Block(int threads) : bar(threads), warps(static_cast<size_t>((threads + 31) / 32)) {}
  Barrier bar;
  std::vector<Warp> warps;
  std::vector<unsigned char> smem;
};

inline thread_local Block* cur_block = nullptr;
inline thread_local unsigned char* cur_smem = nullptr;
inline int smem_limit = 48 * 1024;  // what cudaDeviceGetAttribute(opt-in smem) reports; tests lower it
inline size_t max_smem_used = 0;

}  // namespace emu

inline thread_local emu_dim3 threadIdx, blockIdx, blockDim, gridDim;

inline void __syncthreads() { emu::cur_block->bar.wait(); }

template <typename T> inline T __shfl_xor_sync(unsigned int, T v, int m) {
  emu::Warp& w = emu::cur_block->warps[threadIdx.x / 32];
  const int lane = static_cast<int>(threadIdx.x % 32);
  w.slot[lane] = static_cast<double>(v);  // exact for float and double
  w.bar.wait();
  const T r = static_cast<T>(w.slot[lane ^ m]);
  w.bar.wait();
  return r;
}

inline cudaError_t cudaGetLastError() { return cudaSuccess; }
template <typename F> inline cudaError_t cudaFuncSetAttribute(F, int, int v) {
  return v <= emu::smem_limit ? cudaSuccess : cudaErrorInvalidValue;
}
inline cudaError_t cudaDeviceGetAttribute(int* v, int, int) { *v = emu::smem_limit; return cudaSuccess; }
inline cudaError_t cudaGetDevice(int* d) { *d = 0; return cudaSuccess; }

namespace emu {

template <typename K> struct Launcher {
  K kernel;
  unsigned int grid, block;
  size_t smem;
  template <typename... Args> void operator()(Args... args) const {
    if (smem > static_cast<size_t>(smem_limit)) throw "emu: dynamic shared memory above the limit";
    if (smem > max_smem_used) max_smem_used = smem;
    for (unsigned int b = 0; b < grid; ++b) {
      Block blk(static_cast<int>(block));
      // poison shared memory: reading a slot never written in this block gives NaN
      blk.smem.assign(smem, 0xff);  // exact size: ASan builds catch overflows
      std::vector<std::thread> ts;
      ts.reserve(block);
      for (unsigned int t = 0; t < block; ++t) {
        ts.emplace_back([&, t] {
          threadIdx.x = t; blockIdx.x = b; blockDim.x = block; gridDim.x = grid;
          cur_block = &blk;
          cur_smem = blk.smem.data();
          kernel(args...);
        });
      }
      for (auto& th : ts) th.join();
    }
  }
};

template <typename K> Launcher<K> make_launcher(K k, unsigned int grid, unsigned int block, size_t smem) {
  return Launcher<K>{k, grid, block, smem};
}

}  // namespace emu

#define EIMN_LAUNCH(kernel, grid, block, smem, stream) emu::make_launcher(kernel, (grid), (block), (smem))
#define EIMN_DYN_SMEM(name) unsigned char* name = emu::cur_smem
