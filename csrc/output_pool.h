// Memory for the kernels' large (T, B, H) outputs: transparent huge pages, recycled across calls.
//
// Each forward/backward returns two or three tensors of tens of MB that live until the optimizer
// step and are then freed. From the system allocator such blocks are fresh mmap'ed pages: the OS
// zeroes every page on first touch (one extra pass of memory writes) and, with 4 KiB pages, takes a
// fault per page; together that costs about a fifth of the forward pass. Here blocks are 2 MiB
// aligned and advised as huge pages (Linux), and a freed block is kept for the next call that needs
// one of about its size, up to kMaxBlocks / kMaxBytes; release() (timescale_kernels.empty_cache())
// hands them all back. The Python side takes the input projection, a stacked layer's concatenated
// input and its gradient from here too (ops/eager.py).
#pragma once

#include <ATen/ATen.h>

#include <cstdlib>
#include <map>
#include <mutex>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace timescale_kernels {

class OutputPool {
 public:
  static OutputPool& instance() {
    // Never destroyed: tensors holding pool memory may be freed during interpreter shutdown.
    static OutputPool* pool = new OutputPool();
    return *pool;
  }

  // An uninitialised contiguous tensor; small ones come from at::empty.
  at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
    const size_t nbytes = c10::multiply_integers(sizes) * options.dtype().itemsize();
    if (nbytes < kMinBytes) return at::empty(sizes, options);
    size_t length = (nbytes + kAlign - 1) / kAlign * kAlign;
    void* data = take(length);
    if (data == nullptr) return at::empty(sizes, options);
    return at::from_blob(
        data, sizes, [this, length](void* p) { give_back(p, length); }, options);
  }

  // Frees every cached block.
  void release() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& [length, data] : cached_) std::free(data);
    cached_.clear();
    cached_bytes_ = 0;
  }

 private:
  static constexpr size_t kAlign = size_t(2) << 20;  // the x86-64 huge page size
  // From 1 MiB: an ensemble's training step allocates tensors of a few MB whose size changes with
  // the step's longest sequence, and glibc serves those from fresh mmap'ed pages time and again;
  // rounded up to whole 2 MiB blocks, most steps find one of the right size here.
  static constexpr size_t kMinBytes = size_t(1) << 20;
  // A stacked bidirectional network frees about ten blocks at the end of a step (each direction's h and
  // drive, the layers' concatenated inputs and their gradients), and the next step needs them all again.
  static constexpr size_t kMaxBlocks = 16;
  static constexpr size_t kMaxBytes = size_t(4) << 30;

  // A cached block of at least length bytes and at most 25% more (length is updated to its size),
  // or a new one.
  void* take(size_t& length) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = cached_.lower_bound(length);
      if (it != cached_.end() && it->first <= length + length / 4) {
        void* data = it->second;
        length = it->first;
        cached_bytes_ -= length;
        cached_.erase(it);
        return data;
      }
    }
    void* data = std::aligned_alloc(kAlign, length);
#ifdef __linux__
    if (data != nullptr) madvise(data, length, MADV_HUGEPAGE);  // advice: may be ignored
#endif
    return data;
  }

  void give_back(void* data, size_t length) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (cached_.size() >= kMaxBlocks || cached_bytes_ + length > kMaxBytes) {
      // Make room by dropping the smallest block, if this one is larger; else drop this one.
      auto smallest = cached_.begin();
      if (smallest == cached_.end() || smallest->first >= length) {
        std::free(data);
        return;
      }
      std::free(smallest->second);
      cached_bytes_ -= smallest->first;
      cached_.erase(smallest);
      if (cached_bytes_ + length > kMaxBytes) {
        std::free(data);
        return;
      }
    }
    cached_.emplace(length, data);
    cached_bytes_ += length;
  }

  std::mutex mutex_;
  std::multimap<size_t, void*> cached_;  // length -> block
  size_t cached_bytes_ = 0;
};

}  // namespace timescale_kernels
