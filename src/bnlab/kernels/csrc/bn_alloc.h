// Outputs of 32 MiB and more (y, dx) on transparent huge pages.
//
// glibc serves every allocation of at least 32 MiB (its largest mmap threshold) with a
// fresh mmap, so each page of a large output is faulted in, and zeroed, on first write:
// at 4 KiB a page that is one fault per 4 KiB written — on the machines measured
// (docs/kernels.md) 1.3 µs each, more than the kernel's own pass over the page. Here such
// outputs are mapped 2 MiB-aligned with madvise(MADV_HUGEPAGE): one fault per 2 MiB where
// the kernel runs transparent huge pages ("always" or "madvise"), the 4 KiB behaviour
// otherwise. The memory goes back to the system when the tensor is freed (munmap), as
// with glibc; smaller outputs use torch's CPU allocator.
#pragma once

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <sys/mman.h>

#include <cstdint>

namespace bnlab {

constexpr size_t kHugeThreshold = size_t(32) << 20;  // glibc's DEFAULT_MMAP_THRESHOLD_MAX
constexpr size_t kHugePage = size_t(2) << 20;

struct HugePageAllocator final : c10::Allocator {
  struct Mapping {
    void* base;
    size_t len;
  };

  static void release(void* ctx) {
    auto* m = static_cast<Mapping*>(ctx);
    munmap(m->base, m->len);
    delete m;
  }

  c10::DataPtr allocate(size_t n) override {
    if (n < kHugeThreshold) return c10::GetCPUAllocator()->allocate(n);
    // over-map by one huge page to place the data on a 2 MiB boundary
    const size_t len = ((n + kHugePage - 1) / kHugePage + 1) * kHugePage;
    void* base = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) return c10::GetCPUAllocator()->allocate(n);
    const uintptr_t aligned = (reinterpret_cast<uintptr_t>(base) + kHugePage - 1) & ~(uintptr_t(kHugePage) - 1);
    void* data = reinterpret_cast<void*>(aligned);
#ifdef MADV_HUGEPAGE
    madvise(data, len - (aligned - reinterpret_cast<uintptr_t>(base)), MADV_HUGEPAGE);
#endif
    return {data, new Mapping{base, len}, &release, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return nullptr; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

inline HugePageAllocator* huge_allocator() {
  static HugePageAllocator a;
  return &a;
}

// empty tensor with ``like``'s sizes, strides and dtype; large ones on huge pages.
// ``like`` must be dense (contiguous or channels-last: no gaps, no overlap). Under
// InferenceMode the TensorImpl constructor makes it an inference tensor, as at::empty does.
inline at::Tensor empty_dense_like(const at::Tensor& like) {
  const size_t nbytes = static_cast<size_t>(like.numel()) * like.element_size();
  if (nbytes < kHugeThreshold || !like.is_cpu()) return at::empty_like(like);
  return at::Tensor(at::detail::empty_strided_generic(like.sizes(), like.strides(), huge_allocator(),
                                                       c10::DispatchKeySet(c10::DispatchKey::CPU),
                                                       like.scalar_type()));
}

}  // namespace bnlab
