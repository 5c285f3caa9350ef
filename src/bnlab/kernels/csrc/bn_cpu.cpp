// CPU kernels of the bnlab operators (schemas: bnlab/kernels/_schema.py).
//
// Every kernel is one or two passes over memory:
//   stats     one read pass: shifted sums Σ(x−K), Σ(x−K)² per channel (K = a value of the
//             channel), opmath partial sums flushed into double — μ_B = K + S1/m,
//             σ²_B = (S2 − S1²/m)/m  (Alg. 1, lines 1-2)
//   train     stats, the running-statistics update (C values), then one read+write pass
//             y = g((x − μ)·γσ⁻¹ + β)  (Alg. 1, lines 3-4, fused activation g)
//   backward  one read pass for Σdz, Σdz·(x − μ) (dz = dy·g'(z)), one read+write pass
//             dx = γσ⁻¹·dz + B·(x − μ) + C' with B = −γσ⁻³·Σdz(x−μ)/m, C' = −γσ⁻¹·Σdz/m
//             (Section 3's closed form)
//   eval      one read+write pass (Alg. 2)
#include <torch/library.h>

#include <c10/util/SmallVector.h>

#include <limits>
#include <tuple>

#include "bn_alloc.h"
#include "bn_common.h"

namespace bnlab {

using std::optional;

namespace {

// (C,) vectors of per-channel values: on the stack up to 64 channels (a tiny call
// otherwise spends more time in malloc than in its kernels)
template <typename T>
using SVec = c10::SmallVector<T, 64>;
using DVec = SVec<double>;

at::ScalarType stats_type(const Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// the dtypes a (C,) tensor may have (those VecReader reads)
bool vec_dtype(at::ScalarType dt) {
  return dt == at::kDouble || dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16;
}

void check_vec(const optional<Tensor>& t, int64_t c, const char* name) {
  if (!t.has_value() || !t->defined()) return;
  TORCH_CHECK(t->numel() == c, "bnlab: ", name, " should contain ", c, " elements (one per channel), got ", t->numel());
  TORCH_CHECK(t->dim() <= 1, "bnlab: ", name, " should be a 1-D tensor of ", c, " elements, got shape ", t->sizes());
  // here, before a kernel writes anything: a refused call leaves the running statistics as they were
  TORCH_CHECK(vec_dtype(t->scalar_type()), "bnlab: ", name, " should be a float64, float32, float16 or bfloat16 tensor, got ",
              t->scalar_type());
}

bool has(const optional<Tensor>& t) { return t.has_value() && t->defined(); }

// bnlab's dtype rule for the (C,) tensors of a call (functional.check_input's): the input's
// dtype, or float32 beside a float16/bfloat16 input
void check_vec_dtype(const optional<Tensor>& t, const Tensor& x, const char* name) {
  if (!has(t)) return;
  const auto dt = t->scalar_type(), xt = x.scalar_type();
  TORCH_CHECK(dt == xt || (dt == at::kFloat && (xt == at::kHalf || xt == at::kBFloat16)),
              "bnlab: mixed dtype: ", name, " has dtype ", dt, " but the input has dtype ", xt);
}

// p[i·st] of a (C,) tensor of any floating dtype as double (``fill`` when absent), for i < C.
// The dtype is checked once here; operator() is small enough to inline into the callers'
// per-channel loops (out of line, its call per value was a fifth of a C = 4096 call).
struct VecReader {
  const void* p = nullptr;
  int64_t st = 0;
  at::ScalarType dt = at::kFloat;
  double fill = 0;
  VecReader(const optional<Tensor>& t, double f) : fill(f) {
    if (!has(t)) return;
    // read as p[i·stride(0)]: a tensor of more dimensions would be read out of bounds
    TORCH_CHECK(t->dim() <= 1, "bnlab: expected a 1-D (C,) tensor, got shape ", t->sizes());
    dt = t->scalar_type();
    TORCH_CHECK(vec_dtype(dt), "bnlab: expected a floating-point (C,) tensor, got ", dt);
    p = t->const_data_ptr();
    st = t->dim() ? t->stride(0) : 0;
  }
  __attribute__((always_inline)) inline double operator()(int64_t i) const {
    if (!p) return fill;
    switch (dt) {
      case at::kDouble: return static_cast<const double*>(p)[i * st];
      case at::kFloat: return static_cast<const float*>(p)[i * st];
      case at::kHalf: return static_cast<double>(static_cast<const at::Half*>(p)[i * st]);
      default: return static_cast<double>(static_cast<const at::BFloat16*>(p)[i * st]);
    }
  }
  // out[0..n) = (*this)(0..n): one dispatch, a unit-stride loop the compiler vectorizes
  void read(double* out, int64_t n) const {
    if (!p) {
      std::fill(out, out + n, fill);
      return;
    }
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "bnlab_read_vec", [&] {
      const scalar_t* q = static_cast<const scalar_t*>(p);
      if (st == 1) {
        for (int64_t i = 0; i < n; ++i) out[i] = static_cast<double>(q[i]);
      } else {
        for (int64_t i = 0; i < n; ++i) out[i] = static_cast<double>(q[i * st]);
      }
    });
  }
};

// Readers for the per-channel loops that vectorize: a present (C,) tensor of dtype S with
// unit stride, read directly, and an absent one, read as its fill (no branch per value)
template <typename S>
struct UnitReader {
  const S* p;
  double operator()(int64_t i) const { return static_cast<double>(p[i]); }
  static bool fits(const optional<Tensor>& t) {
    return !has(t) || (t->scalar_type() == c10::CppTypeToScalarType<S>::value && t->dim() == 1 && t->stride(0) == 1);
  }
};

struct FillReader {
  double fill;
  double operator()(int64_t) const { return fill; }
};

// a (C,) tensor for with_readers: ``fill`` is read where it is absent
struct Param {
  const optional<Tensor>& t;
  double fill;
};

template <typename S, typename F, typename... R>
void with_readers_picked(const F& f, const std::tuple<R...>& picked) {
  std::apply(f, picked);
}

template <typename S, typename F, typename... R, typename... P>
void with_readers_picked(const F& f, const std::tuple<R...>& picked, const Param& p, const P&... rest) {
  if (has(p.t)) {
    with_readers_picked<S>(f, std::tuple_cat(picked, std::make_tuple(UnitReader<S>{p.t->template const_data_ptr<S>()})), rest...);
  } else {
    with_readers_picked<S>(f, std::tuple_cat(picked, std::make_tuple(FillReader{p.fill})), rest...);
  }
}

// f(one reader per Param) for a per-channel loop: when every tensor is absent or of dtype S
// with unit stride (the usual case) each gets the reader above, an instantiation per
// combination of present/absent, and the loop vectorizes; otherwise every tensor is read
// through VecReader. Measured per call at C = 4096, N = 2: the loops of out-of-line
// VecReader calls cost ~10 ns per channel.
template <typename S, typename F, typename... P>
void with_readers(const F& f, const P&... p) {
  if ((UnitReader<S>::fits(p.t) && ...)) {
    with_readers_picked<S>(f, std::tuple<>(), p...);
  } else {
    f(VecReader(p.t, p.fill)...);
  }
}

// a (C,) tensor of any floating dtype (or ``fill`` when absent) as double
DVec read_vec(const optional<Tensor>& t, int64_t c, double fill) {
  DVec out;
  out.resize_for_overwrite(c);
  VecReader(t, fill).read(out.data(), c);
  return out;
}

Tensor make_vec(const Tensor& like, at::ScalarType dt, const DVec& vals) {
  Tensor t = at::empty({static_cast<int64_t>(vals.size())}, like.options().dtype(dt));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "bnlab_make_vec", [&] {
    scalar_t* p = t.data_ptr<scalar_t>();
    for (size_t i = 0; i < vals.size(); ++i) p[i] = static_cast<scalar_t>(vals[i]);
  });
  return t;
}

// σ⁻¹ = 1/sqrt(var + ε) as the reference computes it (in the statistics dtype)
DVec invstd_from_var(const Tensor& var_t, double eps, int64_t c, bool f64) {
  DVec v = read_vec(var_t, c, 1.0);
  for (auto& e : v) {
    e = f64 ? 1.0 / std::sqrt(e + eps) : static_cast<double>(1.0f / std::sqrt(static_cast<float>(e) + static_cast<float>(eps)));
  }
  return v;
}

// ----------------------------------------------------------------------------- statistics
template <typename scalar_t>
void channel_stats(const Geometry& g, const scalar_t* x, DVec& mean, DVec& var) {
  using T = opmath_t<scalar_t>;
  using Vec = VecOf<scalar_t>;
  const int64_t C = g.c, m = g.count();
  if (m == 0) {
    mean.assign(C, std::nan(""));
    var.assign(C, std::nan(""));
    return;
  }
  // below, buffers that are written in full before they are read are not zeroed first
  SVec<T> shift;
  shift.resize_for_overwrite(C);
  for (int64_t c = 0; c < C; ++c) shift[c] = static_cast<T>(g.cl ? x[c] : x[c * g.s]);
  DVec s1, s2;
  s1.resize_for_overwrite(C);
  s2.resize_for_overwrite(C);
  mean.resize_for_overwrite(C);
  var.resize_for_overwrite(C);
  reduce2<scalar_t, 1>(g, x, nullptr, {shift.data()},
      [](const Vec& xv, const Vec&, const Vec* p, Vec& v1, Vec& v2) {
        Vec d = xv - p[0];
        v1 = d;
        v2 = d * d;
      }, s1.data(), s2.data());
  for (int64_t c = 0; c < C; ++c) {
    const double d = s1[c] / m;
    mean[c] = static_cast<double>(shift[c]) + d;
    const double v = (s2[c] - s1[c] * d) / m;
    var[c] = v < 0 ? 0.0 : v;  // rounding can make it slightly negative; NaN stays NaN (the guard sees it)
  }
}

// y = g((x − mean)·scale + beta), evaluated as g(x·scale + (beta − mean·scale)) with the
// constant term formed in double (torch's form): two parameter vectors per data vector
// instead of three. Measured at 1 thread, channels-last (32,64,56,56) eval: the three-
// parameter loop ran 0.70x torch's, this one at parity (docs/kernels.md).
// Here α = scale and β′ are given, in opmath; apply_pass forms them.
template <typename scalar_t>
void apply_alpha_beta(const Geometry& g, const scalar_t* x, scalar_t* y, const opmath_t<scalar_t>* al,
                      const opmath_t<scalar_t>* bt, Act act, double slope) {
  using T = opmath_t<scalar_t>;
  using Vec = VecOf<scalar_t>;
  const Vec sl(static_cast<T>(slope));
  with_act(act, [&](auto A) {
    elementwise<scalar_t, 2>(g, x, nullptr, y, {al, bt},
        [sl](const Vec& xv, const Vec&, const Vec* p) {
          return act_fwd<decltype(A)::value>(at::vec::fmadd(xv, p[0], p[1]), sl);
        });
  });
}

template <typename scalar_t>
void apply_pass(const Geometry& g, const scalar_t* x, scalar_t* y, const DVec& mean,
                const DVec& scale, const DVec& beta, Act act, double slope) {
  using T = opmath_t<scalar_t>;
  const int64_t C = static_cast<int64_t>(mean.size());
  SVec<T> al(C), bt(C);
  for (int64_t c = 0; c < C; ++c) {
    al[c] = static_cast<T>(scale[c]);
    bt[c] = static_cast<T>(beta[c] - mean[c] * scale[c]);
  }
  apply_alpha_beta<scalar_t>(g, x, y, al.data(), bt.data(), act, slope);
}

struct Affine {
  DVec scale, beta;  // γ·invstd, β
};

Affine affine(const DVec& invstd, const optional<Tensor>& w, const optional<Tensor>& b) {
  const int64_t C = invstd.size();
  Affine a{read_vec(w, C, 1.0), read_vec(b, C, 0.0)};
  for (int64_t c = 0; c < C; ++c) a.scale[c] *= invstd[c];
  return a;
}

// the output tensor matching ``x`` (empty_like), and the buffer the kernels write:
// itself when its strides are those of the dense input ``xd`` (large ones on huge pages)
Tensor output_for(const Tensor& x, const Tensor& xd, Tensor& target) {
  if (xd.is_same(x)) {
    target = empty_dense_like(xd);
    return target;
  }
  Tensor y = at::empty_like(x);
  target = y.strides() == xd.strides() ? y : empty_dense_like(xd);
  return y;
}

// running ← running + f·(stat − running), in double, cast once to the buffer's dtype
void ema(Tensor& buf, const DVec& stat, double f) {
  TORCH_CHECK(buf.dim() <= 1 && buf.numel() == static_cast<int64_t>(stat.size()),
              "bnlab: a running statistic should be a 1-D tensor of ", stat.size(), " elements, got shape ", buf.sizes());
  const int64_t st = buf.dim() ? buf.stride(0) : 0, n = static_cast<int64_t>(stat.size());
  const double* sv = stat.data();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, buf.scalar_type(), "bnlab_ema", [&] {
    scalar_t* p = buf.data_ptr<scalar_t>();
    auto step = [f](scalar_t& r, double v) {
      const double old = static_cast<double>(r);
      r = static_cast<scalar_t>(old + f * (v - old));
    };
    if (st == 1) {
      for (int64_t i = 0; i < n; ++i) step(p[i], sv[i]);
    } else {
      for (int64_t i = 0; i < n; ++i) step(p[i * st], sv[i]);
    }
  });
}

// the non-finite guard and the running-statistics step of Alg. 2; returns ok
bool update_running(const optional<Tensor>& rm_, const optional<Tensor>& rv_, const optional<Tensor>& nbt_,
                    const DVec& mean, const DVec& var, int64_t m,
                    optional<double> momentum, bool guard) {
  bool ok = true;
  if (guard && m > 0) {
    // every channel finite: |v| <= DBL_MAX is false for ±inf and NaN (a loop without an
    // early exit, which vectorizes)
    bool bad = false;
    for (size_t c = 0; c < mean.size(); ++c) {
      bad |= !(std::abs(mean[c]) <= std::numeric_limits<double>::max()) | !(std::abs(var[c]) <= std::numeric_limits<double>::max());
    }
    ok = !bad;
  }
  if (!ok) return false;
  int64_t count = 0;
  if (has(nbt_)) {
    Tensor nbt = *nbt_;
    if (nbt.scalar_type() == at::kLong) {
      count = ++nbt.data_ptr<int64_t>()[0];
    } else {
      nbt.add_(1);
      count = nbt.item<int64_t>();
    }
  }
  if (!has(rm_) || !has(rv_) || m == 0) return true;
  double f;
  if (momentum.has_value()) {
    f = *momentum;
  } else {
    TORCH_CHECK(has(nbt_), "bnlab: momentum=None (cumulative average) needs num_batches_tracked");
    f = 1.0 / static_cast<double>(std::max<int64_t>(count, 1));
  }
  // the unbiased variance in a loop of its own (not contracted into the update's FMA)
  DVec unbiased(var);
  if (m > 1) {
    const double k = static_cast<double>(m) / (m - 1);
    for (auto& v : unbiased) v *= k;
  }
  Tensor rm = *rm_, rv = *rv_;
  ema(rm, mean, f);
  ema(rv, unbiased, f);
  return true;
}

}  // namespace

// ----------------------------------------------------------------------------- forward ops
std::tuple<Tensor, Tensor> bn_stats_cpu(const Tensor& x) {
  Geometry g;
  Tensor xd = dense_input(x, g);
  DVec mean, var;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bn_stats", [&] {
    channel_stats<scalar_t>(g, xd.const_data_ptr<scalar_t>(), mean, var);
  });
  return {make_vec(x, stats_type(x), mean), make_vec(x, stats_type(x), var)};
}

// shared by bn_train and bn_train_: statistics, update, normalization into ``target``
static std::tuple<Tensor, Tensor, Tensor> train_into(
    const Tensor& xd, const Geometry& g, Tensor& target, const Tensor& x, const optional<Tensor>& w,
    const optional<Tensor>& b, const optional<Tensor>& rm, const optional<Tensor>& rv,
    const optional<Tensor>& nbt, optional<double> momentum, double eps, bool guard, Act act, double slope) {
  DVec mean, var;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bn_train", [&] {
    channel_stats<scalar_t>(g, xd.const_data_ptr<scalar_t>(), mean, var);
  });
  const at::ScalarType sd = stats_type(x);
  // the statistics as returned (rounded to the statistics dtype) normalize, as in the reference
  Tensor mean_t = make_vec(x, sd, mean), var_t = make_vec(x, sd, var);
  const bool ok = update_running(rm, rv, nbt, mean, var, g.count(), momentum, guard);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bn_train_apply", [&] {
    // α = γ·σ⁻¹ and β′ = β − μ·α from the statistics as returned (rounded to the statistics
    // dtype), σ⁻¹ = 1/sqrt(σ² + ε) in double: one loop over the channels
    using T = opmath_t<scalar_t>;
    const bool f64 = sd == at::kDouble;
    SVec<T> al, bt;
    al.resize_for_overwrite(g.c);
    bt.resize_for_overwrite(g.c);
    with_readers<T>([&](const auto& wr, const auto& br) {
      for (int64_t c = 0; c < g.c; ++c) {
        const double mu = f64 ? mean[c] : static_cast<double>(static_cast<float>(mean[c]));
        const double v = f64 ? var[c] : static_cast<double>(static_cast<float>(var[c]));
        const double scale = wr(c) * (1.0 / std::sqrt(v + eps));
        al[c] = static_cast<T>(scale);
        bt[c] = static_cast<T>(br(c) - mu * scale);
      }
    }, Param{w, 1.0}, Param{b, 0.0});
    apply_alpha_beta<scalar_t>(g, xd.const_data_ptr<scalar_t>(), target.data_ptr<scalar_t>(), al.data(), bt.data(), act, slope);
  });
  Tensor ok_t = at::empty({}, x.options().dtype(at::kBool));
  *ok_t.data_ptr<bool>() = ok;
  return {mean_t, var_t, ok_t};
}

static void check_train(const Tensor& x, const optional<Tensor>& w, const optional<Tensor>& b,
                        const optional<Tensor>& rm, const optional<Tensor>& rv) {
  TORCH_CHECK(x.dim() >= 2, "bnlab: expected an input (N, C, *) with at least 2 dimensions, got ", x.dim());
  const int64_t c = x.size(1);
  check_vec(w, c, "weight");
  check_vec(b, c, "bias");
  check_vec(rm, c, "running_mean");
  check_vec(rv, c, "running_var");
}

std::tuple<Tensor, Tensor, Tensor, Tensor> bn_train_cpu(
    const Tensor& x, const optional<Tensor>& w, const optional<Tensor>& b, const optional<Tensor>& rm,
    const optional<Tensor>& rv, const optional<Tensor>& nbt, optional<double> momentum, double eps, bool guard,
    c10::string_view act, double slope) {
  check_train(x, w, b, rm, rv);
  Geometry g;
  Tensor xd = dense_input(x, g), target;
  Tensor y = output_for(x, xd, target);
  auto [mean, var, ok] = train_into(xd, g, target, x, w, b, rm, rv, nbt, momentum, eps, guard, parse_act(act), slope);
  if (!target.is_same(y)) y.copy_(target);
  return {y, mean, var, ok};
}

std::tuple<Tensor, Tensor, Tensor> bn_train_inplace_cpu(
    Tensor& x, const optional<Tensor>& w, const optional<Tensor>& b, const optional<Tensor>& rm,
    const optional<Tensor>& rv, const optional<Tensor>& nbt, optional<double> momentum, double eps, bool guard,
    c10::string_view act, double slope) {
  check_train(x, w, b, rm, rv);
  Geometry g;
  Tensor xd = dense_input(x, g);
  Tensor target = xd;                               // y over x (a dense copy when x is not dense)
  auto out = train_into(xd, g, target, x, w, b, rm, rv, nbt, momentum, eps, guard, parse_act(act), slope);
  if (!xd.is_same(x)) x.copy_(xd);
  return out;
}

Tensor bn_apply_cpu(const Tensor& x, const Tensor& mean, const Tensor& invstd, const optional<Tensor>& w,
                    const optional<Tensor>& b, c10::string_view act, double slope) {
  Geometry g;
  Tensor xd = dense_input(x, g), target;
  check_vec(mean, g.c, "mean");
  check_vec(invstd, g.c, "invstd");
  check_vec(w, g.c, "weight");
  check_vec(b, g.c, "bias");
  Tensor y = output_for(x, xd, target);
  Affine a = affine(read_vec(invstd, g.c, 1.0), w, b);
  DVec mu = read_vec(mean, g.c, 0.0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bn_apply", [&] {
    apply_pass<scalar_t>(g, xd.const_data_ptr<scalar_t>(), target.data_ptr<scalar_t>(), mu, a.scale, a.beta, parse_act(act), slope);
  });
  if (!target.is_same(y)) y.copy_(target);
  return y;
}

Tensor bn_eval_cpu(const Tensor& x, const Tensor& rm, const Tensor& rv, const optional<Tensor>& w,
                   const optional<Tensor>& b, double eps, c10::string_view act, double slope) {
  TORCH_CHECK(x.dim() >= 2, "bnlab: expected an input (N, C, *) with at least 2 dimensions, got ", x.dim());
  const int64_t C = x.size(1);
  check_vec(rm, C, "running_mean");
  check_vec(rv, C, "running_var");
  check_vec(w, C, "weight");
  check_vec(b, C, "bias");
  // every argument check_input refuses is refused here too (before anything is written): a
  // layer's eager eval forward calls this kernel unchecked and takes the checking path only
  // when it raises (_BatchNorm.forward)
  check_vec_dtype(rm, x, "running_mean");
  check_vec_dtype(rv, x, "running_var");
  check_vec_dtype(w, x, "weight");
  check_vec_dtype(b, x, "bias");
  TORCH_CHECK(eps >= 0.0, "bnlab: eps must be non-negative in evaluation, got ", eps);
  const Act a = parse_act(act);
  Geometry g;
  Tensor xd = dense_input(x, g), target;
  Tensor y = output_for(x, xd, target);
  // α = γ·σ⁻¹ and β′ = β − μ·α per channel in one loop, in the operations of the general
  // path (statistics rounded to the statistics dtype, σ⁻¹ computed in it; α, β′ in double,
  // rounded once): nothing but the two (C,) opmath vectors is allocated — at batch 1, after a
  // convolution has flushed the caches, the (C,) double temporaries of the general path cost
  // more than the pass (docs/kernels.md)
  const bool f64 = x.scalar_type() == at::kDouble;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bn_eval", [&] {
    using T = opmath_t<scalar_t>;
    SVec<T> al, bt;
    al.resize_for_overwrite(C);
    bt.resize_for_overwrite(C);
    with_readers<T>([&](const auto& mr, const auto& vr, const auto& wr, const auto& br) {
      for (int64_t c = 0; c < C; ++c) {
        const double mean = f64 ? mr(c) : static_cast<double>(static_cast<float>(mr(c)));
        const double var = vr(c);
        const double invstd = f64 ? 1.0 / std::sqrt(var + eps)
                                  : static_cast<double>(1.0f / std::sqrt(static_cast<float>(var) + static_cast<float>(eps)));
        const double scale = wr(c) * invstd;
        al[c] = static_cast<T>(scale);
        bt[c] = static_cast<T>(br(c) - mean * scale);
      }
    }, Param{rm, 0.0}, Param{rv, 1.0}, Param{w, 1.0}, Param{b, 0.0});
    apply_alpha_beta<scalar_t>(g, xd.const_data_ptr<scalar_t>(), target.data_ptr<scalar_t>(), al.data(), bt.data(), a, slope);
  });
  if (!target.is_same(y)) y.copy_(target);
  return y;
}

// ----------------------------------------------------------------------------- backward ops
namespace {

struct GradSums {
  DVec dz, dz_u;  // Σ dz and Σ dz·u per channel (u = x − μ, or x̂/invstd from y)
};

// dz = dy·g'(z) and u, from the input (u = x − μ, z = u·scale + β) or, FromOutput, from
// the output (z = g⁻¹(y), u = (z − β)/scale); p = {μ, scale, β, 1/scale, ...}
template <Act A, bool FromOutput, typename Vec>
inline Vec grad_terms(const Vec& xv, const Vec& dyv, const Vec* p, const Vec& slope, const Vec& inv_slope, Vec& u) {
  Vec z;
  if constexpr (FromOutput) {
    z = act_inv<A>(xv, inv_slope);
    u = (z - p[2]) * p[3];
  } else {
    u = xv - p[0];
    if constexpr (A != Act::Identity) z = u * p[1] + p[2];
  }
  return act_bwd<A>(dyv, z, slope);
}

// the per-channel vectors of the backward passes, in opmath: μ, scale = γσ⁻¹, β, 1/scale
template <typename T>
struct GradParams {
  SVec<T> mu, sc, be, isc;
  GradParams(const DVec& mean, const Affine& a) {
    const int64_t C = static_cast<int64_t>(mean.size());
    mu.resize_for_overwrite(C);
    sc.resize_for_overwrite(C);
    be.resize_for_overwrite(C);
    isc.resize_for_overwrite(C);
    for (int64_t c = 0; c < C; ++c) {
      mu[c] = static_cast<T>(mean[c]);
      sc[c] = static_cast<T>(a.scale[c]);
      be[c] = static_cast<T>(a.beta[c]);
      isc[c] = T(1) / sc[c];
    }
  }
};

// Σ dz and Σ dz·u; FromOutput: u and z recovered from the output y instead of x
template <typename scalar_t, bool FromOutput>
GradSums grad_sums(const Geometry& g, const scalar_t* xy, const scalar_t* dy,
                   const GradParams<opmath_t<scalar_t>>& gp, Act act, double slope) {
  using T = opmath_t<scalar_t>;
  using Vec = VecOf<scalar_t>;
  GradSums s;
  s.dz.resize_for_overwrite(g.c);  // reduce2 writes every channel
  s.dz_u.resize_for_overwrite(g.c);
  const Vec sl(static_cast<T>(slope)), isl(static_cast<T>(slope != 0 ? 1.0 / slope : 0.0));
  with_act(act, [&](auto A) {
    constexpr Act a_ = decltype(A)::value;
    reduce2<scalar_t, 4>(g, xy, dy, {gp.mu.data(), gp.sc.data(), gp.be.data(), gp.isc.data()},
        [sl, isl](const Vec& xv, const Vec& dyv, const Vec* p, Vec& v1, Vec& v2) {
          Vec u;
          v1 = grad_terms<a_, FromOutput>(xv, dyv, p, sl, isl, u);
          v2 = v1 * u;
        }, s.dz.data(), s.dz_u.data());
  });
  return s;
}

// dx = scale·dz + B·u + C'
template <typename scalar_t, bool FromOutput>
void grad_input(const Geometry& g, const scalar_t* xy, const scalar_t* dy, scalar_t* dx,
                const GradParams<opmath_t<scalar_t>>& gp, const SVec<opmath_t<scalar_t>>& bb,
                const SVec<opmath_t<scalar_t>>& cc, Act act, double slope) {
  using T = opmath_t<scalar_t>;
  using Vec = VecOf<scalar_t>;
  const Vec sl(static_cast<T>(slope)), isl(static_cast<T>(slope != 0 ? 1.0 / slope : 0.0));
  with_act(act, [&](auto A) {
    constexpr Act a_ = decltype(A)::value;
    elementwise<scalar_t, 6>(g, xy, dy, dx, {gp.mu.data(), gp.sc.data(), gp.be.data(), gp.isc.data(), bb.data(), cc.data()},
        [sl, isl](const Vec& xv, const Vec& dyv, const Vec* p) {
          Vec u;
          const Vec dz = grad_terms<a_, FromOutput>(xv, dyv, p, sl, isl, u);
          return at::vec::fmadd(dz, p[1], at::vec::fmadd(u, p[4], p[5]));
        });
  });
}

// dx = scale·dz (statistics constant)
template <typename scalar_t>
void grad_input_const(const Geometry& g, const scalar_t* x, const scalar_t* dy, scalar_t* dx,
                      const GradParams<opmath_t<scalar_t>>& gp, Act act, double slope) {
  using T = opmath_t<scalar_t>;
  using Vec = VecOf<scalar_t>;
  const Vec sl(static_cast<T>(slope));
  with_act(act, [&](auto A) {
    constexpr Act a_ = decltype(A)::value;
    elementwise<scalar_t, 3>(g, x, dy, dx, {gp.mu.data(), gp.sc.data(), gp.be.data()},
        [sl](const Vec& xv, const Vec& dyv, const Vec* p) {
          Vec z;
          if constexpr (a_ != Act::Identity) z = (xv - p[0]) * p[1] + p[2];
          return act_bwd<a_>(dyv, z, sl) * p[1];
        });
  });
}

at::ScalarType grad_type(const optional<Tensor>& p, at::ScalarType fallback) {
  return has(p) ? p->scalar_type() : fallback;
}

// (dγ, dβ) from Σdz·u (with u·invstd = x̂) and Σdz, or empty (0,) tensors
std::tuple<Tensor, Tensor> param_grads(const Tensor& x, const optional<Tensor>& w, const optional<Tensor>& b,
                                       const GradSums& s, const DVec& invstd, std::array<bool, 3> mask) {
  const at::ScalarType sd = stats_type(x);
  Tensor dw, db;
  if (mask[1] && has(w)) {
    // Σ dz·x̂ = invstd·Σ dz·(x − μ); an empty batch (NaN statistics) has a zero gradient
    DVec v(s.dz_u);
    if (x.numel() == 0) {
      std::fill(v.begin(), v.end(), 0.0);
    } else {
      for (size_t c = 0; c < v.size(); ++c) v[c] *= invstd[c];
    }
    dw = make_vec(x, w->scalar_type(), v);
  } else {
    dw = at::empty({0}, x.options().dtype(sd));
  }
  db = mask[2] ? make_vec(x, grad_type(b, grad_type(w, sd)), s.dz) : at::empty({0}, x.options().dtype(sd));
  return {dw, db};
}

// Section 3's coefficients in opmath: B = −γσ⁻¹·σ⁻²·Σdz·u/m, C' = −γσ⁻¹·Σdz/m (formed in double)
template <typename T>
void coefficients(const Affine& a, const DVec& invstd, const DVec& s_dz,
                  const DVec& s_dz_u, int64_t m, SVec<T>& B, SVec<T>& Cc) {
  const int64_t C = invstd.size();
  B.resize_for_overwrite(C);
  Cc.resize_for_overwrite(C);
  const double inv_m = m > 0 ? 1.0 / m : 0.0;
  for (int64_t c = 0; c < C; ++c) {
    B[c] = static_cast<T>(-a.scale[c] * invstd[c] * invstd[c] * s_dz_u[c] * inv_m);
    Cc[c] = static_cast<T>(-a.scale[c] * s_dz[c] * inv_m);
  }
}

}  // namespace

// Section 3 for bn_train (FromOutput = false: x̂ from the input and μ) and for bn_train_
// (FromOutput = true: x̂ recovered from the output y): one reduction pass, one dx pass
template <bool FromOutput>
std::tuple<Tensor, Tensor, Tensor> closed_form_backward(
    const Tensor& dy, const Tensor& xy, const optional<Tensor>& w, const optional<Tensor>& b,
    const DVec& mu, const DVec& invstd, Act act, double slope, std::array<bool, 3> mask) {
  Geometry g;
  Tensor xd = dense_input(xy, g);
  Tensor dyd = same_layout(dy, xd);
  Affine a = affine(invstd, w, b);
  GradSums s;
  Tensor dx = at::empty({0}, xy.options()), target;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xy.scalar_type(), "bn_backward", [&] {
    const scalar_t* xp = xd.const_data_ptr<scalar_t>();
    const scalar_t* dp = dyd.const_data_ptr<scalar_t>();
    const GradParams<opmath_t<scalar_t>> gp(mu, a);
    s = grad_sums<scalar_t, FromOutput>(g, xp, dp, gp, act, slope);
    if (mask[0]) {
      SVec<opmath_t<scalar_t>> B, Cc;
      coefficients(a, invstd, s.dz, s.dz_u, g.count(), B, Cc);
      dx = output_for(xy, xd, target);
      grad_input<scalar_t, FromOutput>(g, xp, dp, target.data_ptr<scalar_t>(), gp, B, Cc, act, slope);
    }
  });
  if (mask[0] && !target.is_same(dx)) dx.copy_(target);
  auto [dw, db] = param_grads(xy, w, b, s, invstd, mask);
  return {dx, dw, db};
}

std::tuple<Tensor, Tensor, Tensor> bn_backward_cpu(
    const Tensor& dy, const Tensor& x, const optional<Tensor>& w, const optional<Tensor>& b, const Tensor& mean,
    const Tensor& var_t, double eps, c10::string_view act_s, double slope, std::array<bool, 3> mask) {
  TORCH_CHECK(x.dim() >= 2, "bnlab: expected an input (N, C, *) with at least 2 dimensions, got ", x.dim());
  const int64_t C = x.size(1);
  return closed_form_backward<false>(dy, x, w, b, read_vec(mean, C, 0.0), invstd_from_var(var_t, eps, C, var_t.scalar_type() == at::kDouble),
                                     parse_act(act_s), slope, mask);
}

std::tuple<Tensor, Tensor, Tensor> bn_apply_backward_cpu(
    const Tensor& dy, const Tensor& x, const Tensor& mean, const Tensor& invstd_t, const optional<Tensor>& w,
    const optional<Tensor>& b, c10::string_view act_s, double slope, std::array<bool, 3> mask) {
  Geometry g;
  Tensor xd = dense_input(x, g);
  Tensor dyd = same_layout(dy, xd);
  const Act act = parse_act(act_s);
  DVec mu = read_vec(mean, g.c, 0.0), invstd = read_vec(invstd_t, g.c, 1.0);
  Affine a = affine(invstd, w, b);
  GradSums s{DVec(g.c), DVec(g.c)};
  Tensor dx = at::empty({0}, x.options()), target;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bn_apply_backward", [&] {
    const scalar_t* xp = xd.const_data_ptr<scalar_t>();
    const scalar_t* dp = dyd.const_data_ptr<scalar_t>();
    const GradParams<opmath_t<scalar_t>> gp(mu, a);
    if (mask[1] || mask[2]) s = grad_sums<scalar_t, false>(g, xp, dp, gp, act, slope);
    if (mask[0]) {
      dx = output_for(x, xd, target);
      grad_input_const<scalar_t>(g, xp, dp, target.data_ptr<scalar_t>(), gp, act, slope);
    }
  });
  if (mask[0] && !target.is_same(dx)) dx.copy_(target);
  auto [dw, db] = param_grads(x, w, b, s, invstd, mask);
  return {dx, dw, db};
}

std::tuple<Tensor, Tensor> bn_backward_reduce_cpu(
    const Tensor& dy, const Tensor& x, const Tensor& mean, const Tensor& invstd_t, const optional<Tensor>& w,
    const optional<Tensor>& b, c10::string_view act_s, double slope) {
  Geometry g;
  Tensor xd = dense_input(x, g);
  Tensor dyd = same_layout(dy, xd);
  DVec mu = read_vec(mean, g.c, 0.0), invstd = read_vec(invstd_t, g.c, 1.0);
  Affine a = affine(invstd, w, b);
  GradSums s;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bn_backward_reduce", [&] {
    const GradParams<opmath_t<scalar_t>> gp(mu, a);
    s = grad_sums<scalar_t, false>(g, xd.const_data_ptr<scalar_t>(), dyd.const_data_ptr<scalar_t>(), gp, parse_act(act_s), slope);
  });
  for (int64_t c = 0; c < g.c; ++c) s.dz_u[c] *= invstd[c];       // Σ dz·x̂
  return {make_vec(x, at::kDouble, s.dz), make_vec(x, at::kDouble, s.dz_u)};
}

Tensor bn_backward_elemt_cpu(
    const Tensor& dy, const Tensor& x, const Tensor& mean, const Tensor& invstd_t, const optional<Tensor>& w,
    const optional<Tensor>& b, const Tensor& sum_dz, const Tensor& sum_dz_xhat, int64_t count,
    c10::string_view act_s, double slope) {
  Geometry g;
  Tensor xd = dense_input(x, g);
  Tensor dyd = same_layout(dy, xd);
  DVec mu = read_vec(mean, g.c, 0.0), invstd = read_vec(invstd_t, g.c, 1.0);
  DVec s_dz = read_vec(sum_dz, g.c, 0.0), s_dz_u = read_vec(sum_dz_xhat, g.c, 0.0);
  for (int64_t c = 0; c < g.c; ++c) s_dz_u[c] /= invstd[c];       // Σ dz·(x − μ)
  Affine a = affine(invstd, w, b);
  Tensor target;
  Tensor dx = output_for(x, xd, target);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bn_backward_elemt", [&] {
    SVec<opmath_t<scalar_t>> B, Cc;
    coefficients(a, invstd, s_dz, s_dz_u, std::max<int64_t>(count, 1), B, Cc);
    grad_input<scalar_t, false>(g, xd.const_data_ptr<scalar_t>(), dyd.const_data_ptr<scalar_t>(), target.data_ptr<scalar_t>(),
                                GradParams<opmath_t<scalar_t>>(mu, a), B, Cc, parse_act(act_s), slope);
  });
  if (!target.is_same(dx)) dx.copy_(target);
  return dx;
}

std::tuple<Tensor, Tensor, Tensor> bn_backward_from_output_cpu(
    const Tensor& dy, const Tensor& y, const optional<Tensor>& w, const optional<Tensor>& b, const Tensor& var_t,
    double eps, c10::string_view act_s, double slope, std::array<bool, 3> mask) {
  const Act act = parse_act(act_s);
  TORCH_CHECK(act == Act::Identity || (act == Act::LeakyReLU && slope > 0),
              "bnlab: the in-place backward needs an invertible activation (identity, or leaky_relu with slope > 0)");
  TORCH_CHECK(y.dim() >= 2, "bnlab: expected an input (N, C, *) with at least 2 dimensions, got ", y.dim());
  const int64_t C = y.size(1);
  return closed_form_backward<true>(dy, y, w, b, DVec(C, 0.0), invstd_from_var(var_t, eps, C, var_t.scalar_type() == at::kDouble),
                                    act, slope, mask);
}

}  // namespace bnlab

TORCH_LIBRARY_IMPL(bnlab, CPU, m) {
  m.impl("bn_train", &bnlab::bn_train_cpu);
  m.impl("bn_train_", &bnlab::bn_train_inplace_cpu);
  m.impl("bn_eval", &bnlab::bn_eval_cpu);
  m.impl("bn_stats", &bnlab::bn_stats_cpu);
  m.impl("bn_apply", &bnlab::bn_apply_cpu);
  m.impl("bn_backward", &bnlab::bn_backward_cpu);
  m.impl("bn_apply_backward", &bnlab::bn_apply_backward_cpu);
  m.impl("bn_backward_reduce", &bnlab::bn_backward_reduce_cpu);
  m.impl("bn_backward_elemt", &bnlab::bn_backward_elemt_cpu);
  m.impl("bn_backward_from_output", &bnlab::bn_backward_from_output_cpu);
}
