// fastflow::slogdet_inverse: sign, log|det W| and (optionally) W^-1 of a batch of square matrices,
// all from one LU-with-partial-pivoting factorisation per matrix, computed in float64.
//
// Shared between the CPU implementation (batched_slogdet.cpp, which also defines the operator) and
// the CUDA implementation (batched_slogdet_cuda.cu).
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace fastflow {

// (sign [B], logabsdet [B], inverse [B, n, n] or [0]), all in the dtype of the input.
using SlogdetInverse = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// Raises ValueError/TypeError unless `a` is a float32/float64 tensor of shape [B, n, n].
void check_square_batch(const at::Tensor& a);

// Empty outputs for `a` [B, n, n]: sign [B], logabsdet [B], and inverse [B, n, n] when
// `with_inverse`, else an empty [0] tensor.
SlogdetInverse empty_outputs(const at::Tensor& a, bool with_inverse);

}  // namespace fastflow
