// Outputs of 24 MiB and more (y, dx) on transparent huge pages, reused when freed.
//
// glibc serves every allocation of at least 32 MiB (its largest mmap threshold) with a
// fresh mmap, and smaller ones from its heap, whose top it gives back to the system when
// more than twice its current threshold lies free there: a repeated large output is often
// written on fresh pages, one fault and a zeroing per 4 KiB page — on the machines measured
// (docs/kernels.md) 1.3-1.6 µs each, more than the kernel's own pass over the page (a
// 25.7 MB training step paid 0 or 6240 faults from one run to the next). Here outputs of
// at least 24 MiB — those the kernels write with streaming stores (bn_common.h: they are
// not kept in cache for their consumer anyway, so the heap's warm recycled chunk is no
// advantage) — are mapped 2 MiB-aligned with madvise(MADV_HUGEPAGE): one fault per 2 MiB
// where the kernel runs transparent huge pages ("always" or "madvise"), the 4 KiB
// behaviour otherwise. Freed mappings are kept for reuse within a budget (below); beyond it
// they go back to the system (munmap), as with glibc. Smaller outputs use torch's CPU
// allocator: there the heap hands the next call a chunk still in cache (a separate mapping
// measured 10-25% slower in eval at 1-26 MB).
#pragma once

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <vector>

namespace bnlab {

constexpr size_t kHugeThreshold = size_t(24) << 20;  // = kStreamBytes of bn_common.h
constexpr size_t kHugePage = size_t(2) << 20;

// Freed mappings are kept for reuse, up to a byte budget ($BNLAB_HUGEPAGE_CACHE_MB, default
// 1024; 0 turns the cache off): a reused mapping is already faulted in and needs no second
// zeroing by the kernel — without it a call whose output glibc would have served from its heap
// (already touched) paid a fresh mapping every time (measured 0.52x torch at exactly 32 MiB).
struct Mapping {
  void* base;
  size_t len;
};

struct MappingCache {
  std::mutex mu;
  std::vector<Mapping*> free;
  size_t bytes = 0;
  size_t budget = 0;

  MappingCache() {
    const char* env = std::getenv("BNLAB_HUGEPAGE_CACHE_MB");
    const long long mb = env && *env ? std::atoll(env) : 1024;
    budget = mb > 0 ? static_cast<size_t>(mb) << 20 : 0;
  }

  // the smallest cached mapping of at least ``len`` bytes and at most twice that, or null
  Mapping* take(size_t len) {
    std::lock_guard<std::mutex> lock(mu);
    size_t best = free.size();
    for (size_t k = 0; k < free.size(); ++k) {
      const size_t l = free[k]->len;
      if (l >= len && l <= 2 * len && (best == free.size() || l < free[best]->len)) best = k;
    }
    if (best == free.size()) return nullptr;
    Mapping* m = free[best];
    free.erase(free.begin() + static_cast<std::ptrdiff_t>(best));
    bytes -= m->len;
    return m;
  }

  // keep ``m`` if it fits the budget (evicting the oldest first), else false
  bool keep(Mapping* m) {
    std::lock_guard<std::mutex> lock(mu);
    if (m->len > budget) return false;
    while (bytes + m->len > budget && !free.empty()) {
      Mapping* old = free.front();
      free.erase(free.begin());
      bytes -= old->len;
      munmap(old->base, old->len);
      delete old;
    }
    free.push_back(m);
    bytes += m->len;
    return true;
  }
};

inline MappingCache& mapping_cache() {
  static MappingCache* c = new MappingCache();  // never destroyed: tensors may be freed at exit
  return *c;
}

struct HugePageAllocator final : c10::Allocator {
  static void release(void* ctx) {
    auto* m = static_cast<Mapping*>(ctx);
    if (mapping_cache().keep(m)) return;
    munmap(m->base, m->len);
    delete m;
  }

  static void* aligned_data(const Mapping* m) {
    const uintptr_t a = (reinterpret_cast<uintptr_t>(m->base) + kHugePage - 1) & ~(uintptr_t(kHugePage) - 1);
    return reinterpret_cast<void*>(a);
  }

  c10::DataPtr allocate(size_t n) override {
    if (n < kHugeThreshold) return c10::GetCPUAllocator()->allocate(n);
    // over-map by one huge page to place the data on a 2 MiB boundary
    const size_t len = ((n + kHugePage - 1) / kHugePage + 1) * kHugePage;
    if (Mapping* m = mapping_cache().take(len)) {
      return {aligned_data(m), m, &release, c10::Device(c10::DeviceType::CPU)};
    }
    void* base = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) return c10::GetCPUAllocator()->allocate(n);
    auto* m = new Mapping{base, len};
    void* data = aligned_data(m);
#ifdef MADV_HUGEPAGE
    madvise(data, len - (reinterpret_cast<uintptr_t>(data) - reinterpret_cast<uintptr_t>(base)), MADV_HUGEPAGE);
#endif
    return {data, m, &release, c10::Device(c10::DeviceType::CPU)};
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
