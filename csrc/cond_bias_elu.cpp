// CPU kernels of the coupling network's bias + ELU (fastflow/ops/cpu/cond_bias_elu.py; the GPU kernels are
// Triton, kernels/cond_bias_elu.py):
//
//   cond_bias_elu(Tensor h, Tensor? bias) -> Tensor out
//       out[b, c, p] = elu(h[b, c, p] + bias[b, c]) for h [B, C, P], bias [B, C] or None
//   cond_bias_elu_(Tensor(a!) h, Tensor? bias) -> ()
//       the same, written over h (for an h nobody needs afterwards: a GEMM's fresh output); it returns
//       nothing, as torch.compile's functionalisation wants of a custom op that mutates its input
//   cond_bias_elu_backward(Tensor out, Tensor grad_out, bool bias_grad) -> (Tensor grad_h, Tensor grad_bias)
//       grad_h = grad_out * elu'(.), with elu' = 1 where out > 0 and out + 1 (= e^v) elsewhere;
//       grad_bias[b, c] = sum_p grad_h[b, c, p] (an empty [0] tensor without bias_grad)
//   cond_bias_elu_backward_(Tensor out, Tensor(a!) grad, bool bias_grad) -> Tensor grad_bias
//       the same, grad_h written over grad (for a gradient nobody needs afterwards: a GEMM's fresh
//       output), which saves a buffer of h's size and the pass that fills its fresh pages
//
// h [B, C, P] is stored either as planes (contiguous: p fastest) or as rows (channels last: the
// memory of a contiguous [B, P, C], which is what a channels_last [B, C, H, W] viewed as [B, C, H*W]
// is); outputs keep the input's layout, and grad_out must have out's. One pass each way: over (b, c)
// planes spread over threads, or over rows with the channel loop innermost. The reason to exist: torch's CPU ELU
// evaluates expm1 one element at a time (about 10 ns a float here, four times exp). float32 and
// bfloat16 (computed in float32, rounded once) use the vectorisable expm1 of cpu_math.h (within two
// float32 ulps of the float64 result); float64 calls std::expm1.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "cpu_math.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace fastflow {
namespace {

constexpr int64_t kPlaneGrain = 1 << 15;  // elements per thread chunk at least
constexpr int kLanes = 16;               // independent partial sums of the bias gradient

// Branch-free so that the loop vectorises: for v > 0 the expm1 term is expm1(0) = 0 exactly.
inline float elu(float v) { return std::max(v, 0.0f) + expm1_nonpositive(std::min(v, 0.0f)); }
inline double elu(double v) { return v > 0.0 ? v : std::expm1(v); }

// acc_t: float for float32 and bfloat16 (computed in float32, rounded once), double for float64.
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
FASTFLOW_VECTOR_CLONES void elu_plane(const scalar_t* __restrict h, acc_t beta, int64_t n, scalar_t* __restrict out) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<scalar_t>(elu(static_cast<acc_t>(h[i]) + beta));
}

// elu_plane in place: data[i] = elu(data[i] + beta) (one pointer, so nothing aliases).
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
FASTFLOW_VECTOR_CLONES void elu_plane_inplace(scalar_t* __restrict data, acc_t beta, int64_t n) {
  for (int64_t i = 0; i < n; ++i) data[i] = static_cast<scalar_t>(elu(static_cast<acc_t>(data[i]) + beta));
}

// grad_h of one plane; returns its sum (in double). InPlace: grad_h holds the incoming gradient and
// is overwritten (grad is unused; every access goes through grad_h, so __restrict still holds).
template <bool InPlace, typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
FASTFLOW_VECTOR_CLONES double elu_backward_plane(const scalar_t* __restrict out, const scalar_t* __restrict grad,
                                                 int64_t n, scalar_t* __restrict grad_h) {
  const auto grad_of = [&](int64_t i) {
    const acc_t o = static_cast<acc_t>(out[i]);
    return static_cast<acc_t>(InPlace ? grad_h[i] : grad[i]) * (o > acc_t(0) ? acc_t(1) : o + acc_t(1));
  };
  acc_t lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const acc_t g = grad_of(i + l);
      grad_h[i + l] = static_cast<scalar_t>(g);
      lanes[l] += g;
    }
  }
  double sum = 0.0;
  for (; i < n; ++i) {
    const acc_t g = grad_of(i);
    grad_h[i] = static_cast<scalar_t>(g);
    sum += g;
  }
  for (int l = 0; l < kLanes; ++l) sum += lanes[l];
  return sum;
}

// out[c] = elu(h[c] + bias[c]) over one row of n channels (bias: n values, zeros without a bias).
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
FASTFLOW_VECTOR_CLONES void elu_row(const scalar_t* __restrict h, const acc_t* __restrict bias, int64_t n,
                                    scalar_t* __restrict out) {
  for (int64_t c = 0; c < n; ++c) out[c] = static_cast<scalar_t>(elu(static_cast<acc_t>(h[c]) + bias[c]));
}

// elu_row in place: data[c] = elu(data[c] + bias[c]).
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
FASTFLOW_VECTOR_CLONES void elu_row_inplace(scalar_t* __restrict data, const acc_t* __restrict bias, int64_t n) {
  for (int64_t c = 0; c < n; ++c) data[c] = static_cast<scalar_t>(elu(static_cast<acc_t>(data[c]) + bias[c]));
}

// grad_h of one row of n channels; adds it into sums[0:n] (in double, as the planes' sums) when sums is not null.
// InPlace as elu_backward_plane's.
template <bool InPlace, typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
FASTFLOW_VECTOR_CLONES void elu_backward_row(const scalar_t* __restrict out, const scalar_t* __restrict grad, int64_t n,
                                             scalar_t* __restrict grad_h, double* __restrict sums) {
  const auto grad_of = [&](int64_t c) {
    const acc_t o = static_cast<acc_t>(out[c]);
    return static_cast<acc_t>(InPlace ? grad_h[c] : grad[c]) * (o > acc_t(0) ? acc_t(1) : o + acc_t(1));
  };
  if (sums == nullptr) {
    for (int64_t c = 0; c < n; ++c) grad_h[c] = static_cast<scalar_t>(grad_of(c));
    return;
  }
  for (int64_t c = 0; c < n; ++c) {
    const acc_t g = grad_of(c);
    grad_h[c] = static_cast<scalar_t>(g);
    sums[c] += g;
  }
}

// Whether t [B, C, P] is stored as rows (the memory of a contiguous [B, P, C]) rather than planes.
bool stored_as_rows(const at::Tensor& t) { return !t.is_contiguous() && t.transpose(1, 2).is_contiguous(); }

void check_planes(const at::Tensor& t, const char* name) {
  const bool dense = t.dim() == 3 && (t.is_contiguous() || t.transpose(1, 2).is_contiguous());
  TORCH_CHECK_VALUE(dense, "fastflow::cond_bias_elu expects ", name,
                    " of shape [B, C, P] stored as planes (contiguous) or rows (channels last), got shape ", t.sizes(),
                    " and strides ", t.strides());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble || t.scalar_type() == at::kBFloat16,
                   "fastflow::cond_bias_elu expects float32, float64 or bfloat16, got ", t.scalar_type());
}

int64_t planes_per_chunk(int64_t pixels) { return std::max<int64_t>(1, kPlaneGrain / std::max<int64_t>(pixels, 1)); }

constexpr int64_t kRowBlock = 64;  // channels per bias-gradient task of the rows layout when samples are few

void check_bias(const at::Tensor& h, const std::optional<at::Tensor>& bias) {
  if (!bias.has_value()) return;
  TORCH_CHECK_VALUE(bias->sizes() == at::IntArrayRef({h.size(0), h.size(1)}) && bias->is_contiguous() &&
                        bias->scalar_type() == h.scalar_type(),
                    "fastflow::cond_bias_elu expects a contiguous bias [B, C] = [", h.size(0), ", ", h.size(1),
                    "] of h's dtype, got shape ", bias->sizes(), " and ", bias->scalar_type());
}

// out = elu(h + bias) where out is a new tensor of h's layout or h itself (then the in-place loops,
// which read and write through one pointer, run).
void cond_bias_elu_into(const at::Tensor& h, const std::optional<at::Tensor>& bias, const at::Tensor& out) {
  const int64_t batch = h.size(0), channels = h.size(1), pixels = h.size(2);
  const bool in_place = out.is_same(h);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, h.scalar_type(), "fastflow_cond_bias_elu_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* src = h.const_data_ptr<scalar_t>();
    const scalar_t* b = bias.has_value() ? bias->const_data_ptr<scalar_t>() : nullptr;
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    if (stored_as_rows(h)) {
      // The bias in acc_t, one row per sample (zeros without a bias), so the channel loop is one stream.
      const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
      const at::Tensor bias_acc =
          b != nullptr ? bias->to(acc_type) : at::zeros({batch, channels}, h.options().dtype(acc_type));
      const acc_t* beta = bias_acc.const_data_ptr<acc_t>();
      at::parallel_for(0, batch * pixels, planes_per_chunk(channels), [&](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) {
          const acc_t* row_bias = beta + (row / pixels) * channels;
          if (in_place) {
            elu_row_inplace<scalar_t>(dst + row * channels, row_bias, channels);
          } else {
            elu_row<scalar_t>(src + row * channels, row_bias, channels, dst + row * channels);
          }
        }
      });
      return;
    }
    at::parallel_for(0, batch * channels, planes_per_chunk(pixels), [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const acc_t beta = b != nullptr ? static_cast<acc_t>(b[plane]) : acc_t(0);
        if (in_place) {
          elu_plane_inplace<scalar_t>(dst + plane * pixels, beta, pixels);
        } else {
          elu_plane<scalar_t>(src + plane * pixels, beta, pixels, dst + plane * pixels);
        }
      }
    });
  });
}

at::Tensor cond_bias_elu_cpu(const at::Tensor& h, const std::optional<at::Tensor>& bias) {
  check_planes(h, "h");
  check_bias(h, bias);
  at::Tensor out = at::empty_like(h);  // keeps h's layout
  cond_bias_elu_into(h, bias, out);
  return out;
}

void cond_bias_elu_inplace_cpu(const at::Tensor& h, const std::optional<at::Tensor>& bias) {
  check_planes(h, "h");
  check_bias(h, bias);
  cond_bias_elu_into(h, bias, h);
}

// grad_h = grad_out * elu'(out) into grad_h, a new tensor of out's layout or grad_out itself (then the
// in-place loops run); returns grad_bias ([B, C], or [0] without bias_grad).
at::Tensor cond_bias_elu_backward_into(const at::Tensor& out, const at::Tensor& grad_out, bool bias_grad,
                                       const at::Tensor& grad_h) {
  check_planes(out, "out");
  check_planes(grad_out, "grad_out");
  TORCH_CHECK_VALUE(out.sizes() == grad_out.sizes() && out.scalar_type() == grad_out.scalar_type(),
                    "fastflow::cond_bias_elu_backward expects out and grad_out of one shape and dtype, got ",
                    out.sizes(), " ", out.scalar_type(), " and ", grad_out.sizes(), " ", grad_out.scalar_type());
  const int64_t batch = out.size(0), channels = out.size(1), pixels = out.size(2);
  TORCH_CHECK_VALUE(stored_as_rows(out) == stored_as_rows(grad_out),
                    "fastflow::cond_bias_elu_backward expects grad_out stored like out (both planes or both rows)");
  const bool in_place = grad_h.is_same(grad_out);
  at::Tensor grad_bias = at::empty(bias_grad ? at::IntArrayRef({batch, channels}) : at::IntArrayRef({0}), out.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, out.scalar_type(), "fastflow_cond_bias_elu_backward_cpu", [&] {
    const scalar_t* o = out.const_data_ptr<scalar_t>();
    const scalar_t* g = grad_out.const_data_ptr<scalar_t>();
    scalar_t* dh = grad_h.mutable_data_ptr<scalar_t>();
    scalar_t* db = bias_grad ? grad_bias.mutable_data_ptr<scalar_t>() : nullptr;
    // grad_h over n values of one row (sums added into, when not null) at element offset `offset`
    const auto row = [&](int64_t offset, int64_t n, double* sums) {
      if (in_place) {
        elu_backward_row<true, scalar_t>(o + offset, nullptr, n, dh + offset, sums);
      } else {
        elu_backward_row<false, scalar_t>(o + offset, g + offset, n, dh + offset, sums);
      }
    };
    if (stored_as_rows(out)) {
      if (db == nullptr) {  // no sums: rows in contiguous chunks, as forward
        at::parallel_for(0, batch * pixels, planes_per_chunk(channels), [&](int64_t begin, int64_t end) {
          row(begin * channels, (end - begin) * channels, nullptr);
        });
        return;
      }
      // One task per (sample, block of channels) walks the sample's P rows and sums its channels'
      // gradients, so no two tasks write one grad_bias entry. Whole rows per task when there are at
      // least as many samples as threads (contiguous reads), blocks of kRowBlock channels otherwise.
      const int64_t width = batch >= at::get_num_threads() ? channels : std::min(kRowBlock, channels);
      const int64_t blocks = (channels + width - 1) / width;
      at::parallel_for(0, batch * blocks, 1, [&](int64_t begin, int64_t end) {
        std::vector<double> sums(width);
        for (int64_t task = begin; task < end; ++task) {
          const int64_t sample = task / blocks, c0 = (task % blocks) * width;
          const int64_t n = std::min(width, channels - c0);
          std::fill(sums.begin(), sums.end(), 0.0);
          for (int64_t p = 0; p < pixels; ++p) row((sample * pixels + p) * channels + c0, n, sums.data());
          for (int64_t c = 0; c < n; ++c) db[sample * channels + c0 + c] = static_cast<scalar_t>(sums[c]);
        }
      });
      return;
    }
    at::parallel_for(0, batch * channels, planes_per_chunk(pixels), [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t offset = plane * pixels;
        const double sum = in_place ? elu_backward_plane<true, scalar_t>(o + offset, nullptr, pixels, dh + offset)
                                    : elu_backward_plane<false, scalar_t>(o + offset, g + offset, pixels, dh + offset);
        if (db != nullptr) db[plane] = static_cast<scalar_t>(sum);
      }
    });
  });
  return grad_bias;
}

std::tuple<at::Tensor, at::Tensor> cond_bias_elu_backward_cpu(const at::Tensor& out, const at::Tensor& grad_out,
                                                              bool bias_grad) {
  at::Tensor grad_h = at::empty_like(out);  // keeps out's layout
  at::Tensor grad_bias = cond_bias_elu_backward_into(out, grad_out, bias_grad, grad_h);
  return {grad_h, grad_bias};
}

at::Tensor cond_bias_elu_backward_inplace_cpu(const at::Tensor& out, const at::Tensor& grad, bool bias_grad) {
  return cond_bias_elu_backward_into(out, grad, bias_grad, grad);
}

}  // namespace
}  // namespace fastflow

TORCH_LIBRARY_FRAGMENT(fastflow, m) {
  m.def("cond_bias_elu(Tensor h, Tensor? bias) -> Tensor");
  m.def("cond_bias_elu_(Tensor(a!) h, Tensor? bias) -> ()");
  m.def("cond_bias_elu_backward(Tensor out, Tensor grad_out, bool bias_grad) -> (Tensor grad_h, Tensor grad_bias)");
  m.def("cond_bias_elu_backward_(Tensor out, Tensor(a!) grad, bool bias_grad) -> Tensor grad_bias");
}

TORCH_LIBRARY_IMPL(fastflow, CPU, m) {
  m.impl("cond_bias_elu", &fastflow::cond_bias_elu_cpu);
  m.impl("cond_bias_elu_", &fastflow::cond_bias_elu_inplace_cpu);
  m.impl("cond_bias_elu_backward", &fastflow::cond_bias_elu_backward_cpu);
  m.impl("cond_bias_elu_backward_", &fastflow::cond_bias_elu_backward_inplace_cpu);
}
