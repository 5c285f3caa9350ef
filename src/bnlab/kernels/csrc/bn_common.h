// Shared pieces of the bnlab CPU kernels: memory layouts, vector loads in the math
// dtype, the fused activations, and the two loop shapes every kernel is made of.
//
// Layouts. An input (N, C, *) is viewed in memory order as one of
//   CF  "channels first": rows (n, c) of S = prod(*) contiguous values;
//   CL  "channels last" : rows r = 0..N*S-1 of C contiguous values (channel axis innermost:
//                         (N, C), channels_last 2d/3d, or any (N, C, *) with S == 1).
// Math runs in opmath (float for float/half/bfloat16, double for double) with
// at::vec::Vectorized; sums are flushed into double accumulators every few dozen terms.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/irange.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <string_view>
#include <vector>

namespace bnlab {

using at::Tensor;

enum class Act { Identity, ReLU, LeakyReLU, SiLU };

inline Act parse_act(c10::string_view s) {
  if (s == "identity") return Act::Identity;
  if (s == "relu") return Act::ReLU;
  if (s == "leaky_relu") return Act::LeakyReLU;
  if (s == "silu") return Act::SiLU;
  TORCH_CHECK(false, "bnlab: unknown activation '", std::string(s), "'; choose identity, relu, leaky_relu or silu");
}

// elements per task below which a pass stays on one thread (torch's own default grain)
constexpr int64_t kGrain = 32768;

struct Geometry {
  bool cl = false;       // channels-last (see above)
  int64_t n = 0, c = 0, s = 0;  // N, C, S (CL: rows = n * s)
  int64_t rows() const { return cl ? n * s : n * c; }
  int64_t count() const { return n * s; }  // m, values per channel
};

// ``x`` in a layout the kernels read (contiguous or channel axis innermost), copying only
// when it is neither; ``geo`` describes it.
inline Tensor dense_input(const Tensor& x, Geometry& geo) {
  TORCH_CHECK(x.dim() >= 2, "bnlab: expected an input (N, C, *) with at least 2 dimensions, got ", x.dim());
  geo.n = x.size(0);
  geo.c = x.size(1);
  geo.s = x.dim() > 2 ? x.numel() / std::max<int64_t>(geo.n * geo.c, 1) : 1;
  if (x.dim() > 2 && geo.n * geo.c == 0) {
    geo.s = 1;
    for (int64_t d = 2; d < x.dim(); ++d) geo.s *= x.size(d);
  }
  if (x.is_contiguous()) {
    geo.cl = geo.s == 1;
    return x;
  }
  if (x.dim() > 2) {
    std::vector<int64_t> perm{0};
    for (int64_t d = 2; d < x.dim(); ++d) perm.push_back(d);
    perm.push_back(1);
    if (x.permute(perm).is_contiguous()) {
      geo.cl = true;
      return x;
    }
  }
  geo.cl = geo.s == 1;
  return x.contiguous();
}

// ``t`` with exactly ``like``'s strides (a copy when they differ, e.g. an expanded gradient)
inline Tensor same_layout(const Tensor& t, const Tensor& like) {
  if (t.strides() == like.strides() && t.scalar_type() == like.scalar_type()) return t;
  return at::empty_like(like).copy_(t);
}

template <typename scalar_t>
using opmath_t = at::opmath_type<scalar_t>;

template <typename scalar_t>
using VecOf = at::vec::Vectorized<opmath_t<scalar_t>>;

// n (<= Vec::size()) values of scalar_t as a Vec of opmath (unused lanes zero)
template <typename scalar_t>
inline VecOf<scalar_t> load(const scalar_t* p, int64_t n) {
  using Vec = VecOf<scalar_t>;
  if constexpr (std::is_same_v<scalar_t, opmath_t<scalar_t>>) {
    return n == Vec::size() ? Vec::loadu(p) : Vec::loadu(p, n);
  } else {
    alignas(64) opmath_t<scalar_t> tmp[Vec::size()] = {};
    for (int64_t i = 0; i < n; ++i) tmp[i] = static_cast<opmath_t<scalar_t>>(p[i]);
    return Vec::loadu(tmp);
  }
}

template <typename scalar_t>
inline void store(scalar_t* p, const VecOf<scalar_t>& v, int64_t n) {
  using Vec = VecOf<scalar_t>;
  if constexpr (std::is_same_v<scalar_t, opmath_t<scalar_t>>) {
    if (n == Vec::size()) v.store(p); else v.store(p, n);
  } else {
    alignas(64) opmath_t<scalar_t> tmp[Vec::size()];
    v.store(tmp);
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<scalar_t>(tmp[i]);
  }
}

template <typename Vec>
inline Vec sigmoid(const Vec& z) {
  using T = typename Vec::value_type;
  if constexpr (std::is_same_v<T, float>) {
    return Vec(1.0f) / (Vec(1.0f) + z.neg().exp_u20());
  } else {
    return z.map([](T v) { return T(1) / (T(1) + std::exp(-v)); });
  }
}

using ActIdentity = std::integral_constant<Act, Act::Identity>;

// f(std::integral_constant<Act, A>) for the activation given at run time: one
// instantiation of each loop per activation, no branch in the inner loops
template <typename F>
inline void with_act(Act act, const F& f) {
  switch (act) {
    case Act::Identity: return f(std::integral_constant<Act, Act::Identity>{});
    case Act::ReLU: return f(std::integral_constant<Act, Act::ReLU>{});
    case Act::LeakyReLU: return f(std::integral_constant<Act, Act::LeakyReLU>{});
    case Act::SiLU: return f(std::integral_constant<Act, Act::SiLU>{});
  }
}

// g(z)
template <Act A, typename Vec>
inline Vec act_fwd(const Vec& z, const Vec& slope) {
  if constexpr (A == Act::ReLU) return at::vec::clamp_min(z, Vec(0));
  else if constexpr (A == Act::LeakyReLU) return Vec::blendv(z * slope, z, z > Vec(0));
  else if constexpr (A == Act::SiLU) return z * sigmoid(z);
  else return z;
}

// dy·g'(z)
template <Act A, typename Vec>
inline Vec act_bwd(const Vec& dy, const Vec& z, const Vec& slope) {
  if constexpr (A == Act::ReLU) return Vec::blendv(Vec(0), dy, z > Vec(0));
  else if constexpr (A == Act::LeakyReLU) return Vec::blendv(dy * slope, dy, z > Vec(0));
  else if constexpr (A == Act::SiLU) {
    Vec s = sigmoid(z);
    return dy * (s * (Vec(1) + z * (Vec(1) - s)));
  } else return dy;
}

// g⁻¹(y) for the invertible activations (identity, leaky_relu)
template <Act A, typename Vec>
inline Vec act_inv(const Vec& y, const Vec& inv_slope) {
  if constexpr (A == Act::LeakyReLU) return Vec::blendv(y * inv_slope, y, y > Vec(0));
  else return y;
}

template <typename Vec>
inline double hsum(const Vec& v) {
  alignas(64) typename Vec::value_type tmp[Vec::size()];
  v.store(tmp);
  double s = 0;
  for (int64_t i = 0; i < Vec::size(); ++i) s += static_cast<double>(tmp[i]);
  return s;
}

// Per-channel parameters (C values each, opmath) handed to the element functions:
// broadcast for a CF row, loaded at channel offset c for a CL row.
template <typename T, size_t K>
using Params = std::array<const T*, K>;

// Note on the loops below: at::vec's stores are may_alias stores, after which the compiler
// must assume any memory changed — the pointers, sizes, parameters and the functor a lambda
// reaches through its captures included. Every loop therefore first copies what it reads
// into locals (registers); without that each vector reloaded half a dozen pointers
// (measured: the channels-last dx pass ran at 8 GB/s from L2).

// Outputs of this many bytes and more are written with non-temporal (streaming) stores,
// where the build has them: such an output does not stay in cache for its consumer anyway,
// and a streaming store writes a line without first reading it (a third less traffic for
// eval's read + write). Measured on the 2-core machine (docs/kernels.md), a read + write
// pass: 0.57x at 3 MB (the output would have stayed in cache), 0.91-0.98x at 12 MB,
// 1.04-1.20x at 25 MB, 1.4-1.5x at 205 MB; oneDNN's batch normalization does the same.
constexpr int64_t kStreamBytes = int64_t(24) << 20;  // = kHugeThreshold of bn_alloc.h

// true when ``Vec`` stores of scalar_t can stream here (a float or double vector of AVX2)
template <typename scalar_t>
constexpr bool can_stream() {
#if defined(CPU_CAPABILITY_AVX2)
  return std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>;
#else
  return false;
#endif
}

// a streaming store of a full vector at a 32-byte aligned ``p`` (see can_stream)
template <typename scalar_t, typename Vec>
inline void stream_store(scalar_t* p, const Vec& v) {
#if defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<scalar_t, float>) {
    _mm256_stream_ps(p, static_cast<__m256>(v));
  } else if constexpr (std::is_same_v<scalar_t, double>) {
    _mm256_stream_pd(p, static_cast<__m256d>(v));
  } else {
    store(p, v, Vec::size());
  }
#else
  store(p, v, Vec::size());
#endif
}

inline void stream_fence() {
#if defined(CPU_CAPABILITY_AVX2)
  _mm_sfence();
#endif
}

// Elementwise pass: out = f(x, dy, p[0..K)) over every element, in parallel over rows.
// ``dy`` may be null (forward passes). f(const Vec& x, const Vec& dy, const Vec* p) -> Vec.
template <typename scalar_t, size_t K, typename F>
void elementwise(const Geometry& g, const scalar_t* x, const scalar_t* dy, scalar_t* out,
                 const Params<opmath_t<scalar_t>, K>& P, const F& f) {
  using Vec = VecOf<scalar_t>;
  constexpr int64_t V = Vec::size();
  const int64_t inner = g.cl ? g.c : g.s;
  if (inner == 0) return;
  // out of place (out aliases neither input) and rows of at least V values: tails overlap
  const bool overlap = inner >= V && static_cast<const void*>(out) != static_cast<const void*>(x) &&
                       static_cast<const void*>(out) != static_cast<const void*>(dy);
  const bool cl = g.cl;
  const int64_t C = g.c;
  // streaming stores: a large output whose every full vector is 32-byte aligned (rows of a
  // whole number of vectors on an aligned base: no tails, where a masked store would mix in)
  const bool nt = can_stream<scalar_t>() && g.rows() * inner * static_cast<int64_t>(sizeof(scalar_t)) >= kStreamBytes &&
                  inner % V == 0 && reinterpret_cast<uintptr_t>(out) % 32 == 0 && overlap;
  auto run = [&](auto NT) {
  constexpr bool kNT = decltype(NT)::value;
  at::parallel_for(0, g.rows(), std::max<int64_t>(1, kGrain / inner), [&](int64_t r0, int64_t r1) {
    const scalar_t* const xp = x;
    const scalar_t* const dp = dy;
    scalar_t* const op = out;
    const int64_t n_in = inner;
    const Params<opmath_t<scalar_t>, K> Pl = P;
    const F fl(f);
    const Vec zero(0);
    Vec pv[K > 0 ? K : 1];
    if (!cl) {
      // CF: one channel per row, its parameters broadcast
      const bool ov = overlap;
      const int64_t nc = C;
      for (int64_t r = r0, ch = r0 % nc; r < r1; ++r, ch = ch + 1 == nc ? 0 : ch + 1) {
        const int64_t off = r * n_in;
        for (size_t k = 0; k < K; ++k) pv[k] = Vec(Pl[k][ch]);
        const scalar_t* xr = xp + off;
        const scalar_t* dr = dp ? dp + off : nullptr;
        scalar_t* orow = op + off;
        int64_t i = 0;
        for (; i + V <= n_in; i += V) {
          if constexpr (kNT) {
            stream_store(orow + i, fl(load(xr + i, V), dr ? load(dr + i, V) : zero, pv));
          } else {
            store(orow + i, fl(load(xr + i, V), dr ? load(dr + i, V) : zero, pv), V);
          }
        }
        if (i < n_in) {
          if (ov) {
            // the row's last V values once more (same inputs, same outputs): a full vector
            // instead of a masked one (a masked load/store goes through memory, ~10 ns)
            const int64_t o = n_in - V;
            store(orow + o, fl(load(xr + o, V), dr ? load(dr + o, V) : zero, pv), V);
          } else {
            const int64_t n = n_in - i;
            store(orow + i, fl(load(xr + i, n), dr ? load(dr + i, n) : zero, pv), n);
          }
        }
      }
      if constexpr (kNT) stream_fence();
      return;
    }
    // CL: rows in memory order (one stream: a pass over several rows at once, interleaved
    // within a page, measured 2.5x slower beyond L2), the parameters of each channel vector
    // loaded from L1
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t off = r * n_in;
      const scalar_t* xr = xp + off;
      const scalar_t* dr = dp ? dp + off : nullptr;
      scalar_t* orow = op + off;
      int64_t i = 0;
      for (; i + V <= n_in; i += V) {
        // parameters local to the iteration: those the functor does not read are dead loads
        // the compiler drops (an array live across the loop kept all K loads per vector)
        Vec pl[K > 0 ? K : 1];
        for (size_t k = 0; k < K; ++k) pl[k] = Vec::loadu(Pl[k] + i);
        if constexpr (kNT) {
          stream_store(orow + i, fl(load(xr + i, V), dr ? load(dr + i, V) : zero, pl));
        } else {
          store(orow + i, fl(load(xr + i, V), dr ? load(dr + i, V) : zero, pl), V);
        }
      }
      if (i < n_in) {
        const int64_t n = n_in - i;
        for (size_t k = 0; k < K; ++k) pv[k] = Vec::loadu(Pl[k] + i, n);
        store(orow + i, fl(load(xr + i, n), dr ? load(dr + i, n) : zero, pv), n);
      }
    }
    if constexpr (kNT) stream_fence();
  });
  };
  if (nt) {
    run(std::true_type{});
  } else {
    run(std::false_type{});
  }
}

// a[0..n) += p + q, the opmath vectors widened to double first (n <= Vec::size())
template <typename Vec>
inline void add_wide(double* a, const Vec& p, const Vec& q, int64_t n) {
  using T = typename Vec::value_type;
  if constexpr (std::is_same_v<T, double>) {
    if (n == Vec::size()) {
      (Vec::loadu(a) + p + q).store(a);
    } else {
      (Vec::loadu(a, n) + p + q).store(a, n);
    }
  } else {
#if defined(CPU_CAPABILITY_AVX2)
    if constexpr (Vec::size() == 8) {
      if (n == 8) {
        const __m256 pv = p, qv = q;
        const __m256d lo = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(pv)),
                                         _mm256_cvtps_pd(_mm256_castps256_ps128(qv)));
        const __m256d hi = _mm256_add_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(pv, 1)),
                                         _mm256_cvtps_pd(_mm256_extractf128_ps(qv, 1)));
        _mm256_storeu_pd(a, _mm256_add_pd(_mm256_loadu_pd(a), lo));
        _mm256_storeu_pd(a + 4, _mm256_add_pd(_mm256_loadu_pd(a + 4), hi));
        return;
      }
    }
#endif
    alignas(64) T tp[Vec::size()], tq[Vec::size()];
    p.store(tp);
    q.store(tq);
    for (int64_t j = 0; j < n; ++j) a[j] += static_cast<double>(tp[j]) + static_cast<double>(tq[j]);
  }
}

// Reduction pass: per channel, s1 = Σ f1 and s2 = Σ f2 in double, where
// f(const Vec& x, const Vec& dy, const Vec* p, Vec& v1, Vec& v2) gives the two terms.
// Lanes beyond a row's end are masked out.
template <typename scalar_t, size_t K, typename F>
void reduce2(const Geometry& g, const scalar_t* x, const scalar_t* dy,
             const Params<opmath_t<scalar_t>, K>& P, const F& f, double* s1, double* s2) {
  using Vec = VecOf<scalar_t>;
  using T = opmath_t<scalar_t>;
  constexpr int64_t V = Vec::size();
  const int64_t C = g.c;
  std::fill(s1, s1 + C, 0.0);
  std::fill(s2, s2 + C, 0.0);
  const int64_t inner = g.cl ? g.c : g.s;
  if (inner == 0 || g.rows() == 0) return;
  const int64_t grain = std::max<int64_t>(1, kGrain / inner);
  if (!g.cl) {
    // one (s1, s2) per row (n, c), then summed over n: no shared accumulators
    std::vector<double> rs(2 * g.rows());
    at::parallel_for(0, g.rows(), grain, [&](int64_t r0, int64_t r1) {
      const scalar_t* const xp = x;
      const scalar_t* const dp = dy;
      double* const rp = rs.data();
      const int64_t n_in = inner, nc = C;
      const Params<T, K> Pl = P;
      const F fl(f);
      const Vec zero(0);
      Vec pv[K > 0 ? K : 1];
      constexpr int64_t kFlush = 64 * V;  // terms per lane before a flush into double
      for (int64_t r = r0, ch = r0 % nc; r < r1; ++r, ch = ch + 1 == nc ? 0 : ch + 1) {
        for (size_t k = 0; k < K; ++k) pv[k] = Vec(Pl[k][ch]);
        const scalar_t* xr = xp + r * n_in;
        const scalar_t* dr = dp ? dp + r * n_in : nullptr;
        double d1 = 0, d2 = 0;
        int64_t i = 0;
        while (i < n_in) {
          Vec a1(0), a2(0), b1(0), b2(0), v1, v2, w1, w2;
          const int64_t stop = std::min(n_in, i + kFlush);
          for (; i + 2 * V <= stop; i += 2 * V) {
            fl(load(xr + i, V), dr ? load(dr + i, V) : zero, pv, v1, v2);
            fl(load(xr + i + V, V), dr ? load(dr + i + V, V) : zero, pv, w1, w2);
            a1 += v1; a2 += v2; b1 += w1; b2 += w2;
          }
          for (; i < stop; i += V) {
            const int64_t n = std::min<int64_t>(V, stop - i);
            if (n == V) {
              fl(load(xr + i, V), dr ? load(dr + i, V) : zero, pv, v1, v2);
            } else if (n_in >= V) {
              // the row's tail (i + n == inner): its last V values, the V − n counted already zeroed
              fl(load(xr + n_in - V, V), dr ? load(dr + n_in - V, V) : zero, pv, v1, v2);
              v1 = Vec::set(v1, zero, V - n); v2 = Vec::set(v2, zero, V - n);
            } else {
              fl(load(xr + i, n), dr ? load(dr + i, n) : zero, pv, v1, v2);
              v1 = Vec::set(zero, v1, n); v2 = Vec::set(zero, v2, n);
            }
            a1 += v1; a2 += v2;
          }
          d1 += hsum(a1 + b1);
          d2 += hsum(a2 + b2);
        }
        rp[2 * r] = d1;
        rp[2 * r + 1] = d2;
      }
    });
    for (int64_t r = 0, ch = 0; r < g.rows(); ++r, ch = ch + 1 == C ? 0 : ch + 1) {
      s1[ch] += rs[2 * r];
      s2[ch] += rs[2 * r + 1];
    }
    return;
  }
  // CL: each thread sums its rows into its own (C,) double sums, eight rows at a time: for
  // each vector of channels the eight rows' terms are summed in registers as two opmath
  // partials of four rows each, then both added into the double sums. At most four terms of
  // a channel are rounded in opmath before the double sum (the channels-first path rounds a
  // few terms per lane too), so both layouts agree to float32 tolerance. The eight rows are
  // adjacent in memory (one stream of 8·C values). Measured at (256, 1024), 1 thread: the
  // former loop (an opmath (C,) partial in L1 loaded and stored for every row, flushed into
  // double every four rows) ran the statistics pass at 16 GB/s, stores being the bound.
  const int nt = at::get_num_threads();
  std::vector<double> acc(static_cast<size_t>(nt) * 2 * C, 0.0);
  at::parallel_for(0, g.rows(), grain, [&](int64_t r0, int64_t r1) {
    // the thread's own slot; a serial call from inside someone else's parallel region may
    // report a thread id beyond our count: it is then the only thread here
    const int slot = std::min<int>(at::get_thread_num(), nt - 1);
    double* const a1 = acc.data() + static_cast<size_t>(slot) * 2 * C;
    double* const a2 = a1 + C;
    const scalar_t* const xp = x;
    const scalar_t* const dp = dy;
    const int64_t nc = C;
    const Params<T, K> Pl = P;
    const F fl(f);
    const Vec zero(0);
    constexpr int64_t kHalf = 4, kBlock = 2 * kHalf;
    constexpr int64_t kLine = 64 / static_cast<int64_t>(sizeof(scalar_t));  // values per cache line
    constexpr int64_t kPrefetchBytes = 32768;
    const int64_t r_end = r1;
    const int64_t row_bytes = nc * static_cast<int64_t>(sizeof(scalar_t));
    const int64_t ahead_rows = std::max<int64_t>(1, (kPrefetchBytes + kBlock * row_bytes - 1) / (kBlock * row_bytes)) * kBlock;
    // rows [rb, rb + nr) of the vector of channels [i, i + n) into the double sums
    auto block = [&](auto NR, int64_t rb, int64_t nr_rt, int64_t i, int64_t n) {
      constexpr int64_t nr_ct = decltype(NR)::value;  // > 0: a full block, unrolled
      const int64_t nr = nr_ct > 0 ? nr_ct : nr_rt;
      Vec pl[K > 0 ? K : 1];
      for (size_t k = 0; k < K; ++k) pl[k] = n == V ? Vec::loadu(Pl[k] + i) : Vec::loadu(Pl[k] + i, n);
      Vec p1(0), p2(0), q1(0), q2(0), v1, v2;
      const scalar_t* xr = xp + rb * nc + i;
      const scalar_t* dr = dp ? dp + rb * nc + i : nullptr;
      if constexpr (nr_ct > 0) {
        // a block ~32 KiB ahead, in memory order, into L2: this vector's share of it (kBlock·V
        // values; blocks are read column-wise, which the hardware prefetchers follow poorly
        // from DRAM). Measured at 1 thread, against no prefetch / into L1 16 KiB ahead:
        // (64,256,14,14) CL statistics 1138 / 718 / 599 us, Σdz sums 3464 / 2708 / 1838 us.
        // For every size: an input in L3 or DRAM, as when other layers ran since it was
        // written, gains too (1 thread, after a 32 MB copy: (1024,256) forward 202 -> 172 us,
        // backward 218 -> 180 us); a cached 3.2 MB one is unchanged (611 / 612 us).
        const int64_t ahead = ahead_rows * nc + i * kBlock;
        if (rb + ahead_rows + kBlock <= r_end) {
          for (int64_t o = 0; o < kBlock * V; o += kLine) {
            __builtin_prefetch(xr - i + ahead + o, 0, 2);  // into L2
            if (dr) __builtin_prefetch(dr - i + ahead + o, 0, 2);
          }
        }
      }
      const int64_t h = std::min(nr, kHalf);
      for (int64_t r = 0; r < h; ++r) {
        fl(load(xr + r * nc, n), dr ? load(dr + r * nc, n) : zero, pl, v1, v2);
        p1 += v1; p2 += v2;
      }
      for (int64_t r = h; r < nr; ++r) {
        fl(load(xr + r * nc, n), dr ? load(dr + r * nc, n) : zero, pl, v1, v2);
        q1 += v1; q2 += v2;
      }
      if (n < V) {  // lanes past the channels: whatever the functor made of the zeros
        p1 = Vec::set(zero, p1, n); p2 = Vec::set(zero, p2, n);
        q1 = Vec::set(zero, q1, n); q2 = Vec::set(zero, q2, n);
      }
      add_wide(a1 + i, p1, q1, n);
      add_wide(a2 + i, p2, q2, n);
    };
    using Full = std::integral_constant<int64_t, kBlock>;
    using Any = std::integral_constant<int64_t, 0>;
    int64_t rb = r0;
    for (; rb + kBlock <= r1; rb += kBlock) {
      int64_t i = 0;
      for (; i + V <= nc; i += V) block(Full{}, rb, kBlock, i, V);
      if (i < nc) block(Full{}, rb, kBlock, i, nc - i);
    }
    if (rb < r1) {
      int64_t i = 0;
      for (; i + V <= nc; i += V) block(Any{}, rb, r1 - rb, i, V);
      if (i < nc) block(Any{}, rb, r1 - rb, i, nc - i);
    }
  });
  for (int t = 0; t < nt; ++t) {
    const double* a = acc.data() + static_cast<size_t>(t) * 2 * C;
    for (int64_t c = 0; c < C; ++c) {
      s1[c] += a[c];
      s2[c] += a[C + c];
    }
  }
}

}  // namespace bnlab
