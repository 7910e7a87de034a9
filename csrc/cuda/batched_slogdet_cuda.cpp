// CUDA implementation of fastflow::slogdet_inverse (the contract is in ../batched_slogdet.cpp).
//
// n <= kMaxBlockN: the one-block-per-matrix Gauss-Jordan kernel of gauss_jordan.cu, in float64.
// Larger n: a hand-off to ATen's batched LU in float64 (cuSOLVER/cuBLAS behind
// at::linalg_lu_factor_ex) and, for the inverse, at::linalg_lu_solve against the identity with
// the same factors. Non-finite input is not checked here: reading the check would stall the GPU on
// every call; the Python wrapper (fastflow/ops/slogdet.py) keeps it as a device flag read later.
#include "../batched_slogdet.h"
#include "gauss_jordan.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/eye.h>
#include <ATen/ops/linalg_lu_factor_ex.h>
#include <ATen/ops/linalg_lu_solve.h>
#include <ATen/ops/where.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

namespace fastflow {
namespace {

SlogdetInverse kernel_slogdet_inverse(const at::Tensor& a, bool with_inverse) {
  SlogdetInverse outputs = empty_outputs(a, with_inverse);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "fastflow_slogdet_inverse_cuda", [&] {
    C10_CUDA_CHECK(launch_gauss_jordan<scalar_t>(
        a.const_data_ptr<scalar_t>(), a.size(0), a.stride(0), a.stride(1), a.stride(2), static_cast<int>(a.size(1)),
        std::get<0>(outputs).mutable_data_ptr<scalar_t>(), std::get<1>(outputs).mutable_data_ptr<scalar_t>(),
        with_inverse ? std::get<2>(outputs).mutable_data_ptr<scalar_t>() : nullptr, stream));
  });
  return outputs;
}

// Zero pivots give log 0 = -inf and sign 0 by themselves; LAPACK-style pivots are 1-based.
SlogdetInverse aten_slogdet_inverse(const at::Tensor& a, bool with_inverse) {
  const int64_t n = a.size(1);
  auto [lu, pivots, info] = at::linalg_lu_factor_ex(a.to(at::kDouble), /*pivot=*/true, /*check_errors=*/false);
  const at::Tensor diagonal = lu.diagonal(0, -2, -1);
  const at::Tensor logabsdet = diagonal.abs().log().sum(-1);
  const at::Tensor swaps = pivots.ne(at::arange(1, n + 1, pivots.options())).sum(-1);
  const at::Tensor sign = diagonal.sign().prod(-1).mul(swaps.remainder(2).mul(-2).add(1));
  at::Tensor inverse = at::empty({0}, a.options());
  if (with_inverse) {
    const at::Tensor identity = at::eye(n, lu.options()).expand_as(lu);
    const at::Tensor solved = at::linalg_lu_solve(lu, pivots, identity);
    inverse = at::where(info.ne(0).view({-1, 1, 1}), std::numeric_limits<double>::quiet_NaN(), solved).to(a.dtype());
  }
  return {sign.to(a.dtype()), logabsdet.to(a.dtype()), inverse};
}

SlogdetInverse slogdet_inverse_cuda(const at::Tensor& a, bool with_inverse) {
  check_square_batch(a);
  const c10::cuda::CUDAGuard guard(a.device());
  if (a.size(1) > kMaxBlockN) return aten_slogdet_inverse(a, with_inverse);
  return kernel_slogdet_inverse(a, with_inverse);
}

}  // namespace
}  // namespace fastflow

TORCH_LIBRARY_IMPL(fastflow, CUDA, m) {
  m.impl("slogdet_inverse", &fastflow::slogdet_inverse_cuda);
}
