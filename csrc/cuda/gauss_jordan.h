// Interface between the CUDA kernel (gauss_jordan.cu, compiled by nvcc without torch headers, so
// that it builds in seconds) and its ATen glue (batched_slogdet_cuda.cpp).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace fastflow {

constexpr int kMaxBlockN = 64;  // largest n for the one-block-per-matrix kernel (33 KiB of shared memory with padded rows)

// sign[b], logabsdet[b] and, when `inverse` is not null, inverse[b] (contiguous n x n) of the
// matrices a[b] (strides s0, s1, s2), b < batch, n <= kMaxBlockN, computed in float64 on `stream`.
// Singular matrices give sign 0, logabsdet -inf and an all-NaN inverse. Returns the launch status.
template <typename scalar_t>
cudaError_t launch_gauss_jordan(const scalar_t* a, int64_t batch, int64_t s0, int64_t s1, int64_t s2, int n,
                                scalar_t* sign, scalar_t* logabsdet, scalar_t* inverse, cudaStream_t stream);

}  // namespace fastflow
