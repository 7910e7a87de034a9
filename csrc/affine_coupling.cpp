// CPU kernels of the conditional affine coupling (fastflow/ops/cpu/affine_coupling.py, the cpu backend on
// CPU tensors). They compute the formulas of the Triton kernels (kernels/affine_coupling.py, whose
// docstring defines them) one (sample, channel) plane at a time:
//
//   coupling_apply(Tensor x, Tensor mu, Tensor? u, int start, int stride, int scale, float param,
//                  bool special, bool reciprocal, bool shift_first, bool inverse, Tensor? affine=None)
//                  -> (Tensor out, Tensor logdet)
//       density direction (inverse false): out_b = s x_b + mu (shift_first: s (x_b + mu)), out_a = x_a,
//       logdet[b] = sum log s; generation direction (inverse true, x holds y): out_b = (x_b - mu) / s
//       (shift_first: x_b / s - mu), logdet = -sum log s. Additive (u None): out_b = x_b +- mu, logdet 0.
//       affine [2, C] folds a following per-channel affine (an ActNorm) into the store: with it, every
//       channel c of out, the conditioning ones too and in either direction, is affine[0, c] z + affine[1, c]
//       with z the output above; logdet is unchanged (the affine's own log-determinant is the caller's).
//   coupling_apply_(Tensor(a!) x, <the same>) -> Tensor logdet
//       the same written over x, transformed channels only (the conditioning ones are unchanged); with
//       affine every channel.
//   coupling_backward(Tensor x, Tensor mu, Tensor? u, Tensor grad_out, Tensor grad_logdet, <start ...
//                     inverse>, int layout, Tensor? affine=None) -> (Tensor grad_in, Tensor grad_params,
//                     Tensor grad_affine)
//       the gradients of coupling_apply with respect to x and to (mu, u), the latter as one buffer
//       [B, 2 Cb, P] laid out as a conditioning network's output is: layout 0 "shift_scale" (mu then u),
//       1 "scale_shift" (u then mu), 2 "interleaved" (mu even, u odd channels); [B, Cb, P] (mu) without u.
//       With affine, grad_out is the gradient of the affine's output: those of x, mu and u are taken from
//       affine[0, c] grad_out (the gradient of z), and grad_affine [2, C] holds the sums over b and p of
//       grad_out z (row 0) and of grad_out (row 1), z recomputed. Without affine grad_affine is empty, [0].
//
// x [B, C, P] and mu, u [B, Cb, P] may have any strides; the transformed channels are start + j * stride,
// j < Cb. (scale, param, special, reciprocal) pick s = f(u) (CouplingScale.kernel_form): 0 tanh,
// s = 1 + param tanh(u / 2) (special: param == 1); 1 sigmoid, s = sigmoid(u + param); 2 exp, s = exp(u)
// (special) or exp(param tanh(u / param)); reciprocal: 1 / f(u). log s and d(log s)/du are formed without
// the log of an underflowed s, as in the Triton kernels. x, mu and u share one dtype: float32 and
// bfloat16 are computed in float32 (with cpu_math.h's vectorisable exp and log), float64 in float64
// (std::exp, std::log); outputs are in the input dtype, logdet in float32 (float64 for float64), and so
// are affine (any strides) and grad_affine. Each plane's sum of log s (and of grad_out z and grad_out)
// is taken in double and the planes' sums added in a fixed order: deterministic for any thread count.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "cpu_math.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

namespace fastflow {
namespace {

constexpr int64_t kGrain = 1 << 14;  // elements per thread chunk at least
constexpr int kLanes = 8;            // independent partial sums of those

// The scale functions, with the special cases of the Triton kernels as kinds of their own.
enum class Kind { kTanh, kTanhOne, kSigmoid, kExpClamped, kExp };

struct Form {
  Kind kind;
  double param;
  bool reciprocal, shift_first, inverse;
};

Form make_form(int64_t scale, double param, bool special, bool reciprocal, bool shift_first, bool inverse) {
  TORCH_CHECK_VALUE(scale >= 0 && scale <= 2, "fastflow::coupling expects scale 0 (tanh), 1 (sigmoid) or 2 (exp), got ",
                    scale);
  const Kind kinds[3][2] = {{Kind::kTanh, Kind::kTanhOne}, {Kind::kSigmoid, Kind::kSigmoid}, {Kind::kExpClamped, Kind::kExp}};
  return {kinds[scale][special ? 1 : 0], param, reciprocal, shift_first, inverse};
}

FASTFLOW_INLINE float exp_acc(float x) { return exp_float(x); }
FASTFLOW_INLINE double exp_acc(double x) { return std::exp(x); }
// x here is at most 2; NaN stays NaN (log_normal would read its bits as a number)
FASTFLOW_INLINE float log_acc(float x) { return x == x ? log_normal(std::max(x, FLT_MIN)) : x; }
FASTFLOW_INLINE double log_acc(double x) { return std::log(x); }

template <typename T>
struct Terms {
  T factor;  // s, or 1 / s when the caller asked for the inverse factor
  T log_s;   // log s
  T dlog_s;  // d(log s) / du
};

// s (1 / s with `want_inverse`), log s and d(log s)/du of the scale function at u. The runtime flags
// only select between values computed either way, so the pixel loops stay free of branches and vectorise.
template <Kind K, typename T>
FASTFLOW_INLINE Terms<T> scale_terms(T u, T param, bool reciprocal, bool want_inverse) {
  const bool flip = want_inverse != reciprocal;  // the factor asked for is 1 / f(u)
  T factor, log_s, dlog_s;
  if constexpr (K == Kind::kTanh || K == Kind::kTanhOne || K == Kind::kSigmoid) {
    const T v = K == Kind::kSigmoid ? u + param : u;
    const T e = exp_acc(-std::abs(v));  // in [0, 1]
    const T pos = v >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);  // sigmoid(v)
    const T neg = v >= T(0) ? e / (T(1) + e) : T(1) / (T(1) + e);  // sigmoid(-v)
    if constexpr (K == Kind::kTanhOne) {
      const T s = T(2) * pos;
      log_s = std::min(v, T(0)) + log_acc(T(2) / (T(1) + e));
      dlog_s = neg;
      factor = flip ? T(1) / s : s;
    } else if constexpr (K == Kind::kTanh) {
      const T s = (T(1) - param) + T(2) * param * pos;
      log_s = log_acc(s);
      dlog_s = T(2) * param * pos * neg / s;
      factor = flip ? T(1) / s : s;
    } else {
      log_s = std::min(v, T(0)) - log_acc(T(1) + e);
      dlog_s = neg;
      factor = flip ? exp_acc(-log_s) : pos;
    }
  } else {
    if constexpr (K == Kind::kExp) {
      log_s = u;
      dlog_s = T(1);
    } else {
      const T w = u / param;
      const T e2 = exp_acc(T(-2) * std::abs(w));  // tanh |w| = (1 - e2) / (1 + e2), no overflow
      const T th = (T(1) - e2) / (T(1) + e2);
      log_s = param * (w >= T(0) ? th : -th);
      dlog_s = T(4) * e2 / ((T(1) + e2) * (T(1) + e2));
    }
    factor = exp_acc(flip ? -log_s : log_s);
  }
  const T sign = reciprocal ? T(-1) : T(1);
  return {factor, sign * log_s, sign * dlog_s};
}

// sum of values[0:n] in double, in kLanes interleaved partial sums (a fixed order).
template <typename T>
FASTFLOW_INLINE double sum_in_double(const T* values, int64_t n) {
  double lanes[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes) {
    for (int l = 0; l < kLanes; ++l) lanes[l] += values[k + l];
  }
  double sum = 0.0;
  for (; k < n; ++k) sum += values[k];
  for (int l = 0; l < kLanes; ++l) sum += lanes[l];
  return sum;
}

// A [B, C, P] tensor's data and strides, for one dtype.
template <typename scalar_t>
struct View {
  scalar_t* data;
  int64_t sb, sc, sp;
  scalar_t* plane(int64_t b, int64_t c) const { return data + b * sb + c * sc; }
};

template <typename scalar_t>
View<scalar_t> view_of(const at::Tensor& t) {
  return {const_cast<scalar_t*>(t.const_data_ptr<scalar_t>()), t.stride(0), t.stride(1), t.stride(2)};
}

// The coupling's output at one pixel of a transformed plane from x, mu and the factor f: f x + mu
// (shift_first: f (x + mu)); generating (x holds y, f = 1 / s): (y - mu) f (shift_first: y f - mu).
template <typename T>
FASTFLOW_INLINE T coupled(T xi, T mi, T f, bool shift_first, bool inverse) {
  const T generated = shift_first ? xi * f - mi : (xi - mi) * f;
  const T density = shift_first ? f * (xi + mi) : f * xi + mi;
  return inverse ? generated : density;
}

// One transformed plane forward: out = s x + mu (or the other orders and directions, see the top);
// returns sum log s over its n pixels (0 without u). factor and log_s are scratch space for n values
// each (the sum is taken after the loop: a reduction inside would keep it from vectorising). kUnit:
// every pixel stride is 1 (the loops vectorise). kAffine: out = gain z + bias, z the coupling's output
// (gain and bias are unused without). In place x and out are one plane: each pixel is read, then written.
template <Kind K, bool kUnit, bool kAffine, typename scalar_t, typename T = at::opmath_type<scalar_t>>
FASTFLOW_VECTOR_CLONES double apply_plane(const scalar_t* __restrict x, int64_t sx, const scalar_t* __restrict mu,
                                          int64_t sm, const scalar_t* __restrict u, int64_t su,
                                          scalar_t* __restrict out, int64_t so, int64_t n, const Form& form,
                                          T gain, T bias, T* __restrict factor, T* __restrict log_s) {
  if constexpr (kUnit) sx = sm = su = so = 1;
  const T param = static_cast<T>(form.param);
  const bool inverse = form.inverse, shift_first = form.shift_first, reciprocal = form.reciprocal;
  if (u == nullptr) {
    const T sign = inverse ? T(-1) : T(1);
    for (int64_t i = 0; i < n; ++i) {
      const T z = T(x[i * sx]) + sign * T(mu[i * sm]);
      out[i * so] = static_cast<scalar_t>(kAffine ? gain * z + bias : z);
    }
    return 0.0;
  }
  for (int64_t i = 0; i < n; ++i) {  // two loops: GCC 12 vectorises neither half joined with the other
    const Terms<T> t = scale_terms<K, T>(T(u[i * su]), param, reciprocal, inverse);
    factor[i] = t.factor;
    log_s[i] = t.log_s;
  }
  for (int64_t i = 0; i < n; ++i) {
    const T z = coupled(T(x[i * sx]), T(mu[i * sm]), factor[i], shift_first, inverse);
    out[i * so] = static_cast<scalar_t>(kAffine ? gain * z + bias : z);
  }
  return sum_in_double(log_s, n);
}

// One conditioning plane forward with the folded affine: out = gain x + bias (x and out may be one plane).
template <bool kUnit, typename scalar_t, typename T = at::opmath_type<scalar_t>>
FASTFLOW_VECTOR_CLONES void affine_plane(const scalar_t* __restrict x, int64_t sx, scalar_t* __restrict out,
                                         int64_t so, int64_t n, T gain, T bias) {
  if constexpr (kUnit) sx = so = 1;
  for (int64_t i = 0; i < n; ++i) out[i * so] = static_cast<scalar_t>(gain * T(x[i * sx]) + bias);
}

// A plane's sums, in double, of grad_out z and of grad_out: its share of the affine's gradient.
struct AffineSums {
  double grad_z = 0.0, grad = 0.0;
};

// One transformed plane backward. Density direction (x is the input x): dx = s dy, dmu = dy (shift_first:
// s dy), du = d(log s)/du (dy s x + g) (shift_first: s (x + mu)). Generation direction (x holds y):
// dy = dx / s, dmu = -dx / s (shift_first: -dx), du = -d(log s)/du (dx x_b + g) with x_b the recomputed
// output. g is the sample's logdet gradient; d_in, dmu and du have unit pixel stride (new buffers);
// factor and dlog_s are scratch space for n values each. kAffine: grad is the gradient of gain z + bias,
// dy above is gain grad, and the plane's AffineSums are returned (zeros without), with grad_z and
// grad_raw scratch space for n values each (unused without).
template <Kind K, bool kUnit, bool kAffine, typename scalar_t, typename T = at::opmath_type<scalar_t>>
FASTFLOW_VECTOR_CLONES AffineSums backward_plane(const scalar_t* __restrict x, int64_t sx,
                                                 const scalar_t* __restrict mu, int64_t sm,
                                                 const scalar_t* __restrict u, int64_t su,
                                                 const scalar_t* __restrict grad, int64_t sg, T g, T gain,
                                                 scalar_t* __restrict d_in, scalar_t* __restrict d_mu,
                                                 scalar_t* __restrict d_u, int64_t n, const Form& form,
                                                 T* __restrict factor, T* __restrict dlog_s, T* __restrict grad_z,
                                                 T* __restrict grad_raw) {
  if constexpr (kUnit) sx = sm = su = sg = 1;
  const T param = static_cast<T>(form.param);
  const bool inverse = form.inverse, shift_first = form.shift_first, reciprocal = form.reciprocal;
  if (u == nullptr) {
    const T sign = inverse ? T(-1) : T(1);
    for (int64_t i = 0; i < n; ++i) {
      const T go = T(grad[i * sg]), gi = kAffine ? gain * go : go;
      d_in[i] = static_cast<scalar_t>(gi);
      d_mu[i] = static_cast<scalar_t>(sign * gi);
      if constexpr (kAffine) {
        grad_z[i] = go * (T(x[i * sx]) + sign * T(mu[i * sm]));
        grad_raw[i] = go;
      }
    }
    if constexpr (kAffine) return {sum_in_double(grad_z, n), sum_in_double(grad_raw, n)};
    return {};
  }
  for (int64_t i = 0; i < n; ++i) {  // two loops: GCC 12 vectorises neither half joined with the other
    const Terms<T> t = scale_terms<K, T>(T(u[i * su]), param, reciprocal, inverse);
    factor[i] = t.factor;
    dlog_s[i] = t.dlog_s;
  }
  for (int64_t i = 0; i < n; ++i) {
    const T xi = T(x[i * sx]), mi = T(mu[i * sm]), go = T(grad[i * sg]), f = factor[i];
    const T gi = kAffine ? gain * go : go;
    const T din = f * gi;  // dx = s dy (density), dy = dx / s (generation)
    // generation: x_b recomputed from y (y / s shift_first); density: s x_b (s (x_b + mu) shift_first)
    const T x_b = shift_first ? xi * f : (xi - mi) * f;
    const T sx_b = shift_first ? f * (xi + mi) : f * xi;
    const T dmu = inverse ? (shift_first ? -gi : -din) : (shift_first ? din : gi);
    const T du = inverse ? -dlog_s[i] * (gi * x_b + g) : dlog_s[i] * (gi * sx_b + g);
    d_in[i] = static_cast<scalar_t>(din);
    d_mu[i] = static_cast<scalar_t>(dmu);
    d_u[i] = static_cast<scalar_t>(du);
  }
  if constexpr (kAffine) {  // z as the forward has it, in a third loop: GCC 12 vectorises neither form
    // of z tried within the second
    for (int64_t i = 0; i < n; ++i) {
      const T go = T(grad[i * sg]);
      grad_z[i] = go * coupled(T(x[i * sx]), T(mu[i * sm]), factor[i], shift_first, inverse);
      grad_raw[i] = go;
    }
    return {sum_in_double(grad_z, n), sum_in_double(grad_raw, n)};
  }
  return {};
}

// One conditioning plane backward with the folded affine: d_in = gain grad (unit pixel stride); returns
// the plane's AffineSums (z = x), with grad_z and grad_raw scratch space for n values each.
template <bool kUnit, typename scalar_t, typename T = at::opmath_type<scalar_t>>
FASTFLOW_VECTOR_CLONES AffineSums affine_backward_plane(const scalar_t* __restrict x, int64_t sx,
                                                        const scalar_t* __restrict grad, int64_t sg, T gain,
                                                        scalar_t* __restrict d_in, int64_t n, T* __restrict grad_z,
                                                        T* __restrict grad_raw) {
  if constexpr (kUnit) sx = sg = 1;
  for (int64_t i = 0; i < n; ++i) {
    const T go = T(grad[i * sg]);
    d_in[i] = static_cast<scalar_t>(gain * go);
    grad_z[i] = go * T(x[i * sx]);
    grad_raw[i] = go;
  }
  return {sum_in_double(grad_z, n), sum_in_double(grad_raw, n)};
}

template <typename scalar_t>
void copy_plane(const scalar_t* __restrict src, int64_t ss, scalar_t* __restrict dst, int64_t sd, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i * sd] = src[i * ss];
}

// Calls f.template operator()<K, kUnit>() for the form's kind and the unit-stride flag.
template <typename F>
void dispatch_kind(Kind kind, bool unit, F&& f) {
  const auto with_kind = [&]<bool kUnit>() {
    switch (kind) {
      case Kind::kTanh: return f.template operator()<Kind::kTanh, kUnit>();
      case Kind::kTanhOne: return f.template operator()<Kind::kTanhOne, kUnit>();
      case Kind::kSigmoid: return f.template operator()<Kind::kSigmoid, kUnit>();
      case Kind::kExpClamped: return f.template operator()<Kind::kExpClamped, kUnit>();
      case Kind::kExp: return f.template operator()<Kind::kExp, kUnit>();
    }
  };
  if (unit) {
    with_kind.template operator()<true>();
  } else {
    with_kind.template operator()<false>();
  }
}

struct Geometry {
  int64_t batch, channels, cb, pixels, start, stride;
  // j >= 0 for the transformed channel start + j * stride, -1 for a conditioning channel.
  int64_t transformed(int64_t c) const {
    const int64_t d = c - start;
    return d >= 0 && d % stride == 0 && d / stride < cb ? d / stride : -1;
  }
  int64_t planes_per_chunk() const { return std::max<int64_t>(1, kGrain / std::max<int64_t>(pixels, 1)); }
};

void check_dtype(const at::Tensor& t, const at::Tensor& x, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), "fastflow::coupling expects ", name, " of x's dtype ",
                   x.scalar_type(), ", got ", t.scalar_type());
}

Geometry check_inputs(const at::Tensor& x, const at::Tensor& mu, const std::optional<at::Tensor>& u, int64_t start,
                      int64_t stride) {
  TORCH_CHECK_VALUE(x.dim() == 3, "fastflow::coupling expects x of shape [B, C, P], got ", x.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble || x.scalar_type() == at::kBFloat16,
                   "fastflow::coupling expects float32, float64 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK_VALUE(mu.dim() == 3 && mu.size(0) == x.size(0) && mu.size(2) == x.size(2),
                    "fastflow::coupling expects mu of shape [B, Cb, P] with B, P of x ", x.sizes(), ", got ",
                    mu.sizes());
  check_dtype(mu, x, "mu");
  if (u.has_value()) {
    TORCH_CHECK_VALUE(u->sizes() == mu.sizes(), "fastflow::coupling expects u of mu's shape ", mu.sizes(), ", got ",
                      u->sizes());
    check_dtype(*u, x, "u");
  }
  const int64_t cb = mu.size(1);
  TORCH_CHECK_VALUE(stride >= 1 && start >= 0 && (cb == 0 || start + (cb - 1) * stride < x.size(1)),
                    "fastflow::coupling: channels start + j * stride for j < ", cb, " (start ", start, ", stride ",
                    stride, ") must lie in x's ", x.size(1), " channels");
  return {x.size(0), x.size(1), cb, x.size(2), start, stride};
}

// The dtype of logdet, affine and grad_affine: float32, float64 for float64 x.
at::ScalarType acc_type_of(const at::Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// affine, checked against x and made contiguous (row 0 the channels' gains, row 1 their biases).
std::optional<at::Tensor> check_affine(const std::optional<at::Tensor>& affine, const at::Tensor& x) {
  if (!affine.has_value()) return std::nullopt;
  TORCH_CHECK_VALUE(affine->dim() == 2 && affine->size(0) == 2 && affine->size(1) == x.size(1),
                    "fastflow::coupling expects affine of shape [2, C] with x's C = ", x.size(1), ", got ",
                    affine->sizes());
  TORCH_CHECK_TYPE(affine->scalar_type() == acc_type_of(x),
                   "fastflow::coupling expects affine in x's accumulation dtype ", acc_type_of(x), " (x is ",
                   x.scalar_type(), "), got ", affine->scalar_type());
  TORCH_CHECK_VALUE(affine->device().is_cpu(), "fastflow::coupling expects affine on the CPU with x, got ",
                    affine->device());
  return affine->contiguous();
}

// Writes the coupling of x into out (a new [B, C, P] tensor, or x itself with b_only: transformed
// channels only), with the folded affine (checked, contiguous) when given; returns logdet [B].
at::Tensor apply_into(const at::Tensor& x, const at::Tensor& mu, const std::optional<at::Tensor>& u,
                      const std::optional<at::Tensor>& affine, const Geometry& geo, const Form& form,
                      const at::Tensor& out, bool b_only) {
  const bool has_u = u.has_value(), has_affine = affine.has_value();
  std::vector<double> plane_sums(has_u ? geo.batch * geo.cb : 0, 0.0);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "fastflow_coupling_apply_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const View<scalar_t> xv = view_of<scalar_t>(x), mv = view_of<scalar_t>(mu), ov = view_of<scalar_t>(out);
    const View<scalar_t> uv = has_u ? view_of<scalar_t>(*u) : View<scalar_t>{nullptr, 0, 0, 0};
    const T* gains = has_affine ? affine->const_data_ptr<T>() : nullptr;  // then the biases
    const bool unit = xv.sp == 1 && mv.sp == 1 && (!has_u || uv.sp == 1) && ov.sp == 1;
    dispatch_kind(form.kind, unit, [&]<Kind K, bool kUnit>() {
      at::parallel_for(0, geo.batch * geo.channels, geo.planes_per_chunk(), [&](int64_t begin, int64_t end) {
        std::vector<T> scratch(2 * geo.pixels);
        for (int64_t plane = begin; plane < end; ++plane) {
          const int64_t b = plane / geo.channels, c = plane % geo.channels, j = geo.transformed(c);
          if (j < 0) {
            if (has_affine) {
              affine_plane<kUnit, scalar_t>(xv.plane(b, c), xv.sp, ov.plane(b, c), ov.sp, geo.pixels, gains[c],
                                            gains[geo.channels + c]);
            } else if (!b_only) {
              copy_plane(xv.plane(b, c), xv.sp, ov.plane(b, c), ov.sp, geo.pixels);
            }
            continue;
          }
          const auto apply = [&]<bool kAffine>() {
            return apply_plane<K, kUnit, kAffine, scalar_t>(
                xv.plane(b, c), xv.sp, mv.plane(b, j), mv.sp, has_u ? uv.plane(b, j) : nullptr, uv.sp,
                ov.plane(b, c), ov.sp, geo.pixels, form, kAffine ? gains[c] : T(1),
                kAffine ? gains[geo.channels + c] : T(0), scratch.data(), scratch.data() + geo.pixels);
          };
          const double sum = has_affine ? apply.template operator()<true>() : apply.template operator()<false>();
          if (has_u) plane_sums[b * geo.cb + j] = sum;
        }
      });
    });
  });
  const auto acc_type = acc_type_of(x);
  std::vector<double> logdet(geo.batch, 0.0);
  for (int64_t b = 0; b < geo.batch && has_u; ++b) {
    for (int64_t j = 0; j < geo.cb; ++j) logdet[b] += plane_sums[b * geo.cb + j];
    if (form.inverse) logdet[b] = -logdet[b];
  }
  at::Tensor result = at::empty({geo.batch}, x.options().dtype(at::kDouble));
  std::copy(logdet.begin(), logdet.end(), result.mutable_data_ptr<double>());
  return result.to(acc_type);
}

std::tuple<at::Tensor, at::Tensor> coupling_apply_cpu(const at::Tensor& x, const at::Tensor& mu,
                                                      const std::optional<at::Tensor>& u, int64_t start, int64_t stride,
                                                      int64_t scale, double param, bool special, bool reciprocal,
                                                      bool shift_first, bool inverse,
                                                      const std::optional<at::Tensor>& affine) {
  const Geometry geo = check_inputs(x, mu, u, start, stride);
  const Form form = make_form(scale, param, special, reciprocal, shift_first, inverse);
  const std::optional<at::Tensor> affine_c = check_affine(affine, x);
  at::Tensor out = at::empty({geo.batch, geo.channels, geo.pixels}, x.options());
  at::Tensor logdet = apply_into(x, mu, u, affine_c, geo, form, out, false);
  return {out, logdet};
}

// With affine every channel is written over x (each pixel read, then written).
at::Tensor coupling_apply_inplace_cpu(const at::Tensor& x, const at::Tensor& mu, const std::optional<at::Tensor>& u,
                                      int64_t start, int64_t stride, int64_t scale, double param, bool special,
                                      bool reciprocal, bool shift_first, bool inverse,
                                      const std::optional<at::Tensor>& affine) {
  const Geometry geo = check_inputs(x, mu, u, start, stride);
  const Form form = make_form(scale, param, special, reciprocal, shift_first, inverse);
  const std::optional<at::Tensor> affine_c = check_affine(affine, x);
  return apply_into(x, mu, u, affine_c, geo, form, x, !affine_c.has_value());
}

// The channel of grad_params that holds mu's (or u's) channel j, for the layout code.
int64_t param_channel(int64_t layout, bool is_u, int64_t j, int64_t cb) {
  if (layout == 2) return 2 * j + (is_u ? 1 : 0);
  return (layout == 1) != is_u ? cb + j : j;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> coupling_backward_cpu(
    const at::Tensor& x, const at::Tensor& mu, const std::optional<at::Tensor>& u, const at::Tensor& grad_out,
    const at::Tensor& grad_logdet, int64_t start, int64_t stride, int64_t scale, double param, bool special,
    bool reciprocal, bool shift_first, bool inverse, int64_t layout, const std::optional<at::Tensor>& affine) {
  const Geometry geo = check_inputs(x, mu, u, start, stride);
  const Form form = make_form(scale, param, special, reciprocal, shift_first, inverse);
  const std::optional<at::Tensor> affine_c = check_affine(affine, x);
  TORCH_CHECK_VALUE(grad_out.sizes() == x.sizes(), "fastflow::coupling_backward expects grad_out of x's shape ",
                    x.sizes(), ", got ", grad_out.sizes());
  check_dtype(grad_out, x, "grad_out");
  TORCH_CHECK_VALUE(grad_logdet.dim() == 1 && grad_logdet.size(0) == geo.batch,
                    "fastflow::coupling_backward expects grad_logdet of shape [", geo.batch, "], got ",
                    grad_logdet.sizes());
  TORCH_CHECK_VALUE(layout >= 0 && layout <= 2,
                    "fastflow::coupling_backward expects layout 0 (shift_scale), 1 (scale_shift) or 2 (interleaved), "
                    "got ",
                    layout);
  const bool has_u = u.has_value(), has_affine = affine_c.has_value();
  at::Tensor d_in = at::empty({geo.batch, geo.channels, geo.pixels}, x.options());
  at::Tensor d_params = at::empty({geo.batch, (has_u ? 2 : 1) * geo.cb, geo.pixels}, x.options());
  const at::Tensor g_logdet = grad_logdet.to(at::kDouble).contiguous();
  const double* g = g_logdet.const_data_ptr<double>();
  std::vector<AffineSums> affine_sums(has_affine ? geo.batch * geo.channels : 0);  // per plane
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "fastflow_coupling_backward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const View<scalar_t> xv = view_of<scalar_t>(x), mv = view_of<scalar_t>(mu), gv = view_of<scalar_t>(grad_out);
    const View<scalar_t> uv = has_u ? view_of<scalar_t>(*u) : View<scalar_t>{nullptr, 0, 0, 0};
    const View<scalar_t> dv = view_of<scalar_t>(d_in), pv = view_of<scalar_t>(d_params);
    const T* gains = has_affine ? affine_c->const_data_ptr<T>() : nullptr;
    const bool unit = xv.sp == 1 && mv.sp == 1 && (!has_u || uv.sp == 1) && gv.sp == 1;
    dispatch_kind(form.kind, unit, [&]<Kind K, bool kUnit>() {
      at::parallel_for(0, geo.batch * geo.channels, geo.planes_per_chunk(), [&](int64_t begin, int64_t end) {
        const int64_t n = geo.pixels;
        std::vector<T> scratch((has_affine ? 4 : 2) * n);  // factor, dlog_s (, grad_z, grad_raw)
        T* const grad_z = has_affine ? scratch.data() + 2 * n : nullptr;
        T* const grad_raw = has_affine ? scratch.data() + 3 * n : nullptr;
        for (int64_t plane = begin; plane < end; ++plane) {
          const int64_t b = plane / geo.channels, c = plane % geo.channels, j = geo.transformed(c);
          if (j < 0) {
            if (has_affine) {
              affine_sums[plane] = affine_backward_plane<kUnit, scalar_t>(
                  xv.plane(b, c), xv.sp, gv.plane(b, c), gv.sp, gains[c], dv.plane(b, c), n, grad_z, grad_raw);
            } else {
              copy_plane(gv.plane(b, c), gv.sp, dv.plane(b, c), dv.sp, n);
            }
            continue;
          }
          scalar_t* d_mu = pv.plane(b, has_u ? param_channel(layout, false, j, geo.cb) : j);
          scalar_t* d_u = has_u ? pv.plane(b, param_channel(layout, true, j, geo.cb)) : nullptr;
          const auto backward = [&]<bool kAffine>() {
            return backward_plane<K, kUnit, kAffine, scalar_t>(
                xv.plane(b, c), xv.sp, mv.plane(b, j), mv.sp, has_u ? uv.plane(b, j) : nullptr, uv.sp, gv.plane(b, c),
                gv.sp, static_cast<T>(g[b]), kAffine ? gains[c] : T(1), dv.plane(b, c), d_mu, d_u, n, form,
                scratch.data(), scratch.data() + n, grad_z, grad_raw);
          };
          if (has_affine) {
            affine_sums[plane] = backward.template operator()<true>();
          } else {
            backward.template operator()<false>();
          }
        }
      });
    });
  });
  const auto acc_type = acc_type_of(x);
  if (!has_affine) return {d_in, d_params, at::empty({0}, x.options().dtype(acc_type))};
  // each channel's planes added in the order of b: the same sums for any thread count
  std::vector<double> sums(2 * geo.channels, 0.0);
  for (int64_t c = 0; c < geo.channels; ++c) {
    for (int64_t b = 0; b < geo.batch; ++b) {
      sums[c] += affine_sums[b * geo.channels + c].grad_z;
      sums[geo.channels + c] += affine_sums[b * geo.channels + c].grad;
    }
  }
  at::Tensor d_affine = at::empty({2, geo.channels}, x.options().dtype(at::kDouble));
  std::copy(sums.begin(), sums.end(), d_affine.mutable_data_ptr<double>());
  return {d_in, d_params, d_affine.to(acc_type)};
}

}  // namespace
}  // namespace fastflow

TORCH_LIBRARY_FRAGMENT(fastflow, m) {
  m.def(
      "coupling_apply(Tensor x, Tensor mu, Tensor? u, int start, int stride, int scale, float param, bool special, "
      "bool reciprocal, bool shift_first, bool inverse, Tensor? affine=None) -> (Tensor out, Tensor logdet)");
  m.def(
      "coupling_apply_(Tensor(a!) x, Tensor mu, Tensor? u, int start, int stride, int scale, float param, "
      "bool special, bool reciprocal, bool shift_first, bool inverse, Tensor? affine=None) -> Tensor logdet");
  m.def(
      "coupling_backward(Tensor x, Tensor mu, Tensor? u, Tensor grad_out, Tensor grad_logdet, int start, int stride, "
      "int scale, float param, bool special, bool reciprocal, bool shift_first, bool inverse, int layout, "
      "Tensor? affine=None) -> (Tensor grad_in, Tensor grad_params, Tensor grad_affine)");
}

TORCH_LIBRARY_IMPL(fastflow, CPU, m) {
  m.impl("coupling_apply", &fastflow::coupling_apply_cpu);
  m.impl("coupling_apply_", &fastflow::coupling_apply_inplace_cpu);
  m.impl("coupling_backward", &fastflow::coupling_backward_cpu);
}
