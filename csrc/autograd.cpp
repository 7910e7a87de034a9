// Autograd of fastflow::slogdet_inverse, registered for the Autograd dispatch key in C++ so that an
// eager forward + backward pays no Python around the kernel (a Python-registered formula cost about
// 30 us per call in the backward alone, more than the kernel for the small matrices of a flow).
//
//   d log|det A| = tr(A^-1 dA)      ->  dL/dA += g_logabsdet * A^-T
//   d A^-1 = -A^-1 dA A^-1          ->  dL/dA -= A^-T G_inverse A^-T
//
// The forward keeps A^-1 when it computed it (with_inverse) and otherwise A, from which the backward
// recomputes A^-1 through the dispatcher. The backward is written with differentiable ATen ops on
// those saved tensors, so double backward works, and torch.compile (AOTAutograd) traces it like any
// other C++ autograd kernel; the fake implementation for tracing is registered from Python
// (fastflow/ops/slogdet.py).
#include "batched_slogdet.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

namespace fastflow {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

SlogdetInverse call_operator(const at::Tensor& a, bool with_inverse) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastflow::slogdet_inverse", "")
                             .typed<SlogdetInverse(const at::Tensor&, bool)>();
  return op.call(a, with_inverse);
}

class SlogdetInverseFunction : public torch::autograd::Function<SlogdetInverseFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& a, bool with_inverse) {
    SlogdetInverse outputs;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      outputs = call_operator(a, with_inverse);
    }
    auto& [sign, logabsdet, inverse] = outputs;
    ctx->saved_data["with_inverse"] = with_inverse;
    ctx->save_for_backward({with_inverse ? inverse : a});
    ctx->set_materialize_grads(false);  // an unused output costs nothing in the backward
    if (with_inverse) {
      ctx->mark_non_differentiable({sign});
    } else {
      ctx->mark_non_differentiable({sign, inverse});
    }
    return {sign, logabsdet, inverse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor& grad_logabsdet = grads[1];
    const at::Tensor& grad_inverse = grads[2];
    const at::Tensor saved = ctx->get_saved_variables()[0];
    const at::Tensor inverse =
        ctx->saved_data["with_inverse"].toBool() ? saved : std::get<2>(call_operator(saved, true));
    const at::Tensor inverse_t = inverse.mT();
    at::Tensor grad;
    if (grad_logabsdet.defined()) grad = inverse_t.mul(grad_logabsdet.view({-1, 1, 1}));
    if (grad_inverse.defined() && grad_inverse.numel() > 0) {
      const at::Tensor term = inverse_t.matmul(grad_inverse).matmul(inverse_t).neg();
      grad = grad.defined() ? grad.add(term) : term;
    }
    return {grad, at::Tensor()};
  }
};

SlogdetInverse slogdet_inverse_autograd(const at::Tensor& a, bool with_inverse) {
  const variable_list outputs = SlogdetInverseFunction::apply(a, with_inverse);
  return {outputs[0], outputs[1], outputs[2]};
}

}  // namespace
}  // namespace fastflow

TORCH_LIBRARY_IMPL(fastflow, Autograd, m) {
  m.impl("slogdet_inverse", &fastflow::slogdet_inverse_autograd);
}
