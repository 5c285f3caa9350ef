// Autograd kernels of the bnlab operators on CPU (AutogradCPU).
//
// Each forward calls the operator below autograd (whichever CPU kernel is registered:
// the C++ one, or the reference when bnlab.set_backend("reference") put it in front)
// and saves the input (or, in place, the output) and (C,) vectors. Backward is
// Section 3's closed form through bnlab::bn_backward / bn_apply_backward /
// bn_backward_from_output; when autograd records the backward (create_graph=True)
// the differentiable bnlab::bn_backward_graph / bn_apply_backward_graph run instead.
// Without any input requiring grad (eval under no_grad, say) no graph node is built.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/VariableTypeUtils.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <ATen/FuncTorchTLS.h>
#include <torch/library.h>

#include <string>

namespace bnlab {

using at::Tensor;
using std::optional;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

namespace {

using Tensor3 = std::tuple<Tensor, Tensor, Tensor>;
using Tensor4 = std::tuple<Tensor, Tensor, Tensor, Tensor>;
using Mask = std::array<bool, 3>;

using TrainSig = Tensor4(const Tensor&, const optional<Tensor>&, const optional<Tensor>&, const optional<Tensor>&,
                         const optional<Tensor>&, const optional<Tensor>&, optional<double>, double, bool,
                         c10::string_view, double);
using TrainInplaceSig = Tensor3(Tensor&, const optional<Tensor>&, const optional<Tensor>&, const optional<Tensor>&,
                                const optional<Tensor>&, const optional<Tensor>&, optional<double>, double, bool,
                                c10::string_view, double);
using EvalSig = Tensor(const Tensor&, const Tensor&, const Tensor&, const optional<Tensor>&, const optional<Tensor>&,
                       double, c10::string_view, double);
using ApplySig = Tensor(const Tensor&, const Tensor&, const Tensor&, const optional<Tensor>&, const optional<Tensor>&,
                        c10::string_view, double);
using StatsSig = std::tuple<Tensor, Tensor>(const Tensor&);
using BackwardSig = Tensor3(const Tensor&, const Tensor&, const optional<Tensor>&, const optional<Tensor>&,
                            const Tensor&, const Tensor&, double, c10::string_view, double, Mask);
using ApplyBackwardSig = Tensor3(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const optional<Tensor>&,
                                 const optional<Tensor>&, c10::string_view, double, Mask);
using FromOutputSig = Tensor3(const Tensor&, const Tensor&, const optional<Tensor>&, const optional<Tensor>&,
                              const Tensor&, double, c10::string_view, double, Mask);
using BackwardGraphSig = Tensor3(const Tensor&, const Tensor&, const optional<Tensor>&, const optional<Tensor>&,
                                 double, c10::string_view, double, Mask);

template <typename Sig>
c10::TypedOperatorHandle<Sig> handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

#define BNLAB_OP(fn, Sig, name)                            \
  const c10::TypedOperatorHandle<Sig>& fn() {              \
    static const auto h = handle<Sig>(name);               \
    return h;                                              \
  }
BNLAB_OP(op_train, TrainSig, "bnlab::bn_train")
BNLAB_OP(op_train_, TrainInplaceSig, "bnlab::bn_train_")
BNLAB_OP(op_eval, EvalSig, "bnlab::bn_eval")
BNLAB_OP(op_apply, ApplySig, "bnlab::bn_apply")
BNLAB_OP(op_stats, StatsSig, "bnlab::bn_stats")
BNLAB_OP(op_backward, BackwardSig, "bnlab::bn_backward")
BNLAB_OP(op_apply_backward, ApplyBackwardSig, "bnlab::bn_apply_backward")
BNLAB_OP(op_from_output, FromOutputSig, "bnlab::bn_backward_from_output")
BNLAB_OP(op_backward_graph, BackwardGraphSig, "bnlab::bn_backward_graph")
BNLAB_OP(op_apply_backward_graph, ApplyBackwardSig, "bnlab::bn_apply_backward_graph")
#undef BNLAB_OP

bool requires(const optional<Tensor>& t) { return t.has_value() && t->defined() && t->requires_grad(); }
Tensor value(const optional<Tensor>& t) { return t.has_value() ? *t : Tensor(); }
optional<Tensor> opt(const Tensor& t) { return t.defined() ? optional<Tensor>(t) : std::nullopt; }

void bump(const optional<Tensor>& t) {
  if (t.has_value() && t->defined()) torch::autograd::increment_version(*t);
}

void save_config(AutogradContext* ctx, double eps, c10::string_view act, double slope, Mask mask) {
  ctx->saved_data["eps"] = eps;
  ctx->saved_data["act"] = std::string(act);
  ctx->saved_data["slope"] = slope;
  ctx->saved_data["m0"] = mask[0];
  ctx->saved_data["m1"] = mask[1];
  ctx->saved_data["m2"] = mask[2];
}

Mask load_mask(AutogradContext* ctx) {
  return {ctx->saved_data["m0"].toBool(), ctx->saved_data["m1"].toBool(), ctx->saved_data["m2"].toBool()};
}

variable_list grads(const Tensor3& g, Mask mask, size_t n_inputs, size_t first = 0) {
  variable_list out(n_inputs);
  out[first] = mask[0] ? std::get<0>(g) : Tensor();
  return out;
}

Tensor invstd_of(const Tensor& var, double eps) { return at::rsqrt(var.add(eps)); }

// ----------------------------------------------------------------------------- bn_train
// The backward node of bn_train, written as torch's generated nodes are (a plain autograd
// Node with SavedVariables): the custom-Function machinery (CppNode, its saved_data map,
// _wrap_outputs of four outputs) cost a tiny training call more than its kernels.
struct TrainBackward final : public torch::autograd::Node {
  torch::autograd::SavedVariable x_, w_, b_, mean_, var_;
  bool has_w_ = false, has_b_ = false;
  double eps_ = 0.0, slope_ = 0.0;
  std::string act_;

  std::string name() const override { return "BnlabBnTrainBackward"; }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    x_.reset_data();
    w_.reset_data();
    b_.reset_data();
    mean_.reset_data();
    var_.reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    variable_list out(3);
    if (grads.empty() || !grads[0].defined()) return out;
    const Mask mask{task_should_compute_output(0), has_w_ && task_should_compute_output(1),
                    has_b_ && task_should_compute_output(2)};
    if (!(mask[0] || mask[1] || mask[2])) return out;
    const Tensor x = x_.unpack();
    const optional<Tensor> w = has_w_ ? optional<Tensor>(w_.unpack()) : std::nullopt;
    const optional<Tensor> b = has_b_ ? optional<Tensor>(b_.unpack()) : std::nullopt;
    Tensor3 r;
    if (at::GradMode::is_enabled()) {                 // create_graph: the differentiable rendering
      r = op_backward_graph().call(grads[0], x, w, b, eps_, act_, slope_, mask);
    } else {
      at::AutoDispatchBelowADInplaceOrView below;
      r = op_backward().call(grads[0], x, w, b, mean_.unpack(), var_.unpack(), eps_, act_, slope_, mask);
    }
    if (mask[0]) out[0] = std::get<0>(r);
    if (mask[1]) out[1] = std::get<1>(r);
    if (mask[2]) out[2] = std::get<2>(r);
    return out;
  }
};

Tensor4 bn_train_autograd(const Tensor& x, const optional<Tensor>& w, const optional<Tensor>& b,
                          const optional<Tensor>& rm, const optional<Tensor>& rv, const optional<Tensor>& nbt,
                          optional<double> momentum, double eps, bool guard, c10::string_view act, double slope) {
  Tensor4 out;
  {
    at::AutoDispatchBelowADInplaceOrView below;
    out = op_train().call(x, w, b, rm, rv, nbt, momentum, eps, guard, act, slope);
  }
  bump(rm); bump(rv); bump(nbt);
  if (!(at::GradMode::is_enabled() && (x.requires_grad() || requires(w) || requires(b)))) return out;
  const auto& functorch_tls = at::functorch::functorchTLSAccessor();
  if (functorch_tls) functorch_tls->checkSupportsCppAutogradFunction();
  auto node = c10::make_intrusive<TrainBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(x, value(w), value(b)));
  node->x_ = torch::autograd::SavedVariable(x, false);
  node->has_w_ = w.has_value() && w->defined();
  node->has_b_ = b.has_value() && b->defined();
  if (node->has_w_) node->w_ = torch::autograd::SavedVariable(*w, false);
  if (node->has_b_) node->b_ = torch::autograd::SavedVariable(*b, false);
  // μ_B, σ²_B: outputs of the operator but not differentiable ones (no history of their own)
  node->mean_ = torch::autograd::SavedVariable(std::get<1>(out), false);
  node->var_ = torch::autograd::SavedVariable(std::get<2>(out), false);
  node->eps_ = eps;
  node->slope_ = slope;
  node->act_ = std::string(act);
  torch::autograd::set_history(std::get<0>(out), node);
  return out;
}

// ----------------------------------------------------------------------------- bn_train_ (in place)
struct TrainInplaceFn : public torch::autograd::Function<TrainInplaceFn> {
  static variable_list forward(AutogradContext* ctx, Tensor x, const optional<Tensor>& w, const optional<Tensor>& b,
                               const optional<Tensor>& rm, const optional<Tensor>& rv, const optional<Tensor>& nbt,
                               optional<double> momentum, double eps, bool guard, c10::string_view act, double slope) {
    Tensor mean, var, ok;
    {
      at::AutoDispatchBelowADInplaceOrView below;
      std::tie(mean, var, ok) = op_train_().call(x, w, b, rm, rv, nbt, momentum, eps, guard, act, slope);
    }
    bump(rm); bump(rv); bump(nbt);
    Mask mask{x.requires_grad(), requires(w), requires(b)};
    ctx->mark_dirty({x});
    ctx->save_for_backward({x, value(w), value(b), var});
    save_config(ctx, eps, act, slope, mask);
    ctx->mark_non_differentiable({mean, var, ok});
    ctx->set_materialize_grads(false);
    return {x, mean, var, ok};
  }

  static variable_list backward(AutogradContext* ctx, variable_list g) {
    auto s = ctx->get_saved_variables();
    const Mask mask = load_mask(ctx);
    variable_list out(11);
    if (!g[0].defined()) return out;
    Tensor3 r;
    {
      at::AutoDispatchBelowADInplaceOrView below;
      r = op_from_output().call(g[0], s[0], opt(s[1]), opt(s[2]), s[3], ctx->saved_data["eps"].toDouble(),
                                ctx->saved_data["act"].toStringRef(), ctx->saved_data["slope"].toDouble(), mask);
    }
    out[0] = mask[0] ? std::get<0>(r) : Tensor();
    out[1] = mask[1] ? std::get<1>(r) : Tensor();
    out[2] = mask[2] ? std::get<2>(r) : Tensor();
    return out;
  }
};

Tensor3 bn_train_inplace_autograd(Tensor& x, const optional<Tensor>& w, const optional<Tensor>& b,
                                  const optional<Tensor>& rm, const optional<Tensor>& rv, const optional<Tensor>& nbt,
                                  optional<double> momentum, double eps, bool guard, c10::string_view act,
                                  double slope) {
  if (!(at::GradMode::is_enabled() && (x.requires_grad() || requires(w) || requires(b)))) {
    Tensor3 out;
    {
      at::AutoDispatchBelowADInplaceOrView below;
      out = op_train_().call(x, w, b, rm, rv, nbt, momentum, eps, guard, act, slope);
    }
    torch::autograd::increment_version(x);
    bump(rm); bump(rv); bump(nbt);
    return out;
  }
  auto o = TrainInplaceFn::apply(x, w, b, rm, rv, nbt, momentum, eps, guard, act, slope);
  return {o[1], o[2], o[3]};
}

// ----------------------------------------------------------------------------- bn_eval / bn_apply
// gradient of y = g(γ·(x − mean)·invstd + β) with constant statistics
variable_list const_stats_backward(AutogradContext* ctx, const variable_list& g, size_t n_inputs) {
  auto s = ctx->get_saved_variables();                              // x, w, b, mean, invstd
  const Mask mask = load_mask(ctx);
  variable_list out(n_inputs);
  if (!g[0].defined()) return out;
  const std::string act = ctx->saved_data["act"].toStringRef();
  const double slope = ctx->saved_data["slope"].toDouble();
  Tensor3 r;
  if (at::GradMode::is_enabled()) {
    r = op_apply_backward_graph().call(g[0], s[0], s[3], s[4], opt(s[1]), opt(s[2]), act, slope, mask);
  } else {
    at::AutoDispatchBelowADInplaceOrView below;
    r = op_apply_backward().call(g[0], s[0], s[3], s[4], opt(s[1]), opt(s[2]), act, slope, mask);
  }
  out[0] = mask[0] ? std::get<0>(r) : Tensor();
  out[3] = mask[1] ? std::get<1>(r) : Tensor();
  out[4] = mask[2] ? std::get<2>(r) : Tensor();
  return out;
}

at::ScalarType stats_type(const Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

struct EvalFn : public torch::autograd::Function<EvalFn> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& rm, const Tensor& rv,
                               const optional<Tensor>& w, const optional<Tensor>& b, double eps,
                               c10::string_view act, double slope) {
    Tensor y;
    {
      at::AutoDispatchBelowADInplaceOrView below;
      y = op_eval().call(x, rm, rv, w, b, eps, act, slope);
    }
    const auto sd = stats_type(x);
    Tensor mean = rm.detach().to(sd), invstd = invstd_of(rv.detach().to(sd), eps);
    ctx->save_for_backward({x, value(w), value(b), mean, invstd});
    save_config(ctx, eps, act, slope, {x.requires_grad(), requires(w), requires(b)});
    return {y};
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) { return const_stats_backward(ctx, g, 8); }
};

Tensor bn_eval_autograd(const Tensor& x, const Tensor& rm, const Tensor& rv, const optional<Tensor>& w,
                        const optional<Tensor>& b, double eps, c10::string_view act, double slope) {
  if (!(at::GradMode::is_enabled() && (x.requires_grad() || requires(w) || requires(b)))) {
    at::AutoDispatchBelowADInplaceOrView below;
    return op_eval().call(x, rm, rv, w, b, eps, act, slope);
  }
  return EvalFn::apply(x, rm, rv, w, b, eps, act, slope)[0];
}

struct ApplyFn : public torch::autograd::Function<ApplyFn> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& mean, const Tensor& invstd,
                               const optional<Tensor>& w, const optional<Tensor>& b, c10::string_view act,
                               double slope) {
    Tensor y;
    {
      at::AutoDispatchBelowADInplaceOrView below;
      y = op_apply().call(x, mean, invstd, w, b, act, slope);
    }
    ctx->save_for_backward({x, value(w), value(b), mean.detach(), invstd.detach()});
    save_config(ctx, 0.0, act, slope, {x.requires_grad(), requires(w), requires(b)});
    return {y};
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) { return const_stats_backward(ctx, g, 7); }
};

Tensor bn_apply_autograd(const Tensor& x, const Tensor& mean, const Tensor& invstd, const optional<Tensor>& w,
                         const optional<Tensor>& b, c10::string_view act, double slope) {
  if (!(at::GradMode::is_enabled() && (x.requires_grad() || requires(w) || requires(b)))) {
    at::AutoDispatchBelowADInplaceOrView below;
    return op_apply().call(x, mean, invstd, w, b, act, slope);
  }
  return ApplyFn::apply(x, mean, invstd, w, b, act, slope)[0];
}

std::tuple<Tensor, Tensor> bn_stats_autograd(const Tensor& x) {
  at::AutoDispatchBelowADInplaceOrView below;
  return op_stats().call(x);
}

}  // namespace
}  // namespace bnlab

TORCH_LIBRARY_IMPL(bnlab, AutogradCPU, m) {
  m.impl("bn_train", &bnlab::bn_train_autograd);
  m.impl("bn_train_", &bnlab::bn_train_inplace_autograd);
  m.impl("bn_eval", &bnlab::bn_eval_autograd);
  m.impl("bn_apply", &bnlab::bn_apply_autograd);
  m.impl("bn_stats", &bnlab::bn_stats_autograd);
}
