// A cache of freed large CPU buffers for the outputs and stashes of the CPU kernels.
//
// Every fresh multi-megabyte allocation costs one page fault (and a page zeroing) per 4 KiB on first touch: at
// 4x64x64x64 a SADFFM training step allocates ~60 MB, and those faults cost as much as a tenth of the step. glibc
// returns such blocks to the OS on free (mmap, heap trimming), so the next step faults again. pooled_empty() hands
// out tensors whose memory comes back here when they die and is reused by the next request of the same size, as
// the CUDA caching allocator does on the GPU.
//
// Only buffers of kPoolMinBytes or more are pooled. The bytes held while unused are capped (least recently freed
// blocks go back to the OS first): environment variable EIMN_CPU_POOL_MB (read once, default 1024; 0 turns the
// pool off). pool_clear() frees every cached block (eimn_kernels.empty_cpu_cache()).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <vector>

namespace eimn::cpu {

constexpr size_t kPoolMinBytes = size_t(1) << 20;
constexpr size_t kPoolAlign = 64;

class BufferPool {
 public:
  BufferPool() {
    const char* e = std::getenv("EIMN_CPU_POOL_MB");
    cap_ = (e && *e ? size_t(std::strtoull(e, nullptr, 10)) : size_t(1024)) << 20;
  }
  size_t cap() const { return cap_; }

  // A block of exactly `bytes` (a multiple of kPoolAlign): the most recently freed cached one, else a new one.
  void* get(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (size_t i = free_.size(); i-- > 0;)
        if (free_[i].bytes == bytes) {
          void* p = free_[i].p;
          free_.erase(free_.begin() + i);
          cached_ -= bytes;
          ++hits_;
          return p;
        }
      ++misses_;
    }
    void* p = std::aligned_alloc(kPoolAlign, bytes);
    TORCH_CHECK(p, "eimn cpu pool: out of memory allocating ", bytes, " bytes");
    return p;
  }

  // Takes back a block from get(); frees the least recently freed blocks beyond the cap.
  void put(void* p, size_t bytes) {
    std::vector<void*> release;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (bytes > cap_) {
        release.push_back(p);
      } else {
        free_.push_back({p, bytes});
        cached_ += bytes;
        size_t drop = 0;
        while (cached_ > cap_) cached_ -= free_[drop++].bytes;
        for (size_t i = 0; i < drop; ++i) release.push_back(free_[i].p);
        free_.erase(free_.begin(), free_.begin() + drop);
      }
    }
    for (void* q : release) std::free(q);
  }

  void clear() {
    std::vector<Block> all;
    {
      std::lock_guard<std::mutex> lock(mu_);
      all.swap(free_);
      cached_ = 0;
    }
    for (auto& b : all) std::free(b.p);
  }

  // {cached bytes, cached blocks, hits, misses, cap bytes}
  std::vector<int64_t> stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return {int64_t(cached_), int64_t(free_.size()), hits_, misses_, int64_t(cap_)};
  }

 private:
  struct Block {
    void* p;
    size_t bytes;
  };
  std::mutex mu_;
  std::vector<Block> free_;  // in the order they were freed
  size_t cached_ = 0, cap_ = 0;
  int64_t hits_ = 0, misses_ = 0;
};

// The process-wide pool. Never destroyed: tensors may outlive static destructors at interpreter exit.
inline BufferPool& pool() {
  static BufferPool* p = new BufferPool();
  return *p;
}

// at::empty(sizes, opts) for a CPU tensor, from the pool when it is kPoolMinBytes or more (and the pool is on).
// The tensor is contiguous; its storage cannot be resized.
inline at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  const size_t raw = size_t(numel) * c10::elementSize(c10::typeMetaToScalarType(opts.dtype()));
  BufferPool& bp = pool();
  if (raw < kPoolMinBytes || bp.cap() == 0) return at::empty(sizes, opts);
  const size_t bytes = (raw + kPoolAlign - 1) / kPoolAlign * kPoolAlign;
  void* p = bp.get(bytes);
  return at::from_blob(p, sizes, [bytes](void* q) { pool().put(q, bytes); }, opts.device(at::kCPU));
}

// at::empty_like(t) for a contiguous CPU tensor of t's sizes and options, through pooled_empty.
inline at::Tensor pooled_empty_like(const at::Tensor& t) { return pooled_empty(t.sizes(), t.options()); }

// Uninitialised scratch of n elements of T from the pool (large) or the heap (small), returned on destruction.
template <typename T> class PoolBuf {
 public:
  explicit PoolBuf(size_t n) : bytes_((n * sizeof(T) + kPoolAlign - 1) / kPoolAlign * kPoolAlign) {
    pooled_ = bytes_ >= kPoolMinBytes && pool().cap() > 0;
    p_ = static_cast<T*>(pooled_ ? pool().get(bytes_) : std::aligned_alloc(kPoolAlign, bytes_ ? bytes_ : kPoolAlign));
    TORCH_CHECK(p_, "eimn cpu: out of memory allocating ", bytes_, " bytes");
  }
  ~PoolBuf() {
    if (pooled_) pool().put(p_, bytes_);
    else std::free(p_);
  }
  PoolBuf(const PoolBuf&) = delete;
  PoolBuf& operator=(const PoolBuf&) = delete;
  T* data() { return p_; }
  const T* data() const { return p_; }

 private:
  size_t bytes_;
  bool pooled_;
  T* p_;
};

}  // namespace eimn::cpu
