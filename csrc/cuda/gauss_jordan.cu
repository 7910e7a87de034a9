// One thread block per matrix: the matrix is loaded into shared memory as float64 and inverted in
// place by Gauss-Jordan elimination with partial pivoting (warp-reduced pivot search); the pivots
// give the determinant. See gauss_jordan.h.
//
// Each elimination step has three phases separated by barriers: (1) warp 0 finds the pivot row and
// thread 0 publishes its index and value in shared memory; (2) rows k and p are swapped, every thread
// having read the pivot from shared memory (not from m, which the swap overwrites); (3) column k is
// saved and row k scaled, then the other rows eliminated. Every thread reads the same published
// pivot, so a zero pivot sends the whole block out of the loop together (no thread is left waiting
// at a barrier). compute-sanitizer --tool racecheck checks this on the GPU (benchmarks/racecheck_gj.py).
#include "gauss_jordan.h"

#include <algorithm>
#include <math_constants.h>

namespace fastflow {
namespace {

constexpr int kMaxThreads = 256;
constexpr unsigned kFullWarp = 0xffffffffu;

// Row stride of the matrix in shared memory: odd, so that a warp reading one column (a stride of ld
// doubles) touches every bank once instead of conflicting when n is even.
__host__ __device__ inline int padded_stride(int n) { return n | 1; }

// Index of the largest |m[i, k]| over rows i >= k (the first one on ties), computed by warp 0.
__device__ int pivot_row(const double* m, int n, int ld, int k) {
  const int lane = threadIdx.x;
  double best = -1.0;
  int row = k;
  for (int i = k + lane; i < n; i += 32) {
    const double v = fabs(m[i * ld + k]);
    if (v > best) {
      best = v;
      row = i;
    }
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    const double other = __shfl_down_sync(kFullWarp, best, offset);
    const int other_row = __shfl_down_sync(kFullWarp, row, offset);
    if (other > best || (other == best && other_row < row)) {
      best = other;
      row = other_row;
    }
  }
  return row;
}

// Block b handles matrix b. Shared memory: n * padded_stride(n) + n doubles.
template <typename scalar_t>
__global__ void gauss_jordan_kernel(const scalar_t* __restrict__ a, int64_t s0, int64_t s1, int64_t s2, int n,
                                    scalar_t* __restrict__ sign_out, scalar_t* __restrict__ logabsdet_out,
                                    scalar_t* __restrict__ inverse) {
  extern __shared__ double shared[];
  const int ld = padded_stride(n);
  double* m = shared;           // the matrix, row-major with row stride ld; becomes (P A)^-1
  double* column = m + n * ld;  // column k before elimination step k
  __shared__ int pivots[kMaxBlockN];
  __shared__ int source_column[kMaxBlockN];
  __shared__ int chosen_row;
  __shared__ double chosen_pivot;

  const int tid = threadIdx.x;
  const int threads = blockDim.x;
  const scalar_t* src = a + blockIdx.x * s0;
  for (int idx = tid; idx < n * n; idx += threads) {
    m[(idx / n) * ld + idx % n] = static_cast<double>(src[(idx / n) * s1 + (idx % n) * s2]);
  }
  __syncthreads();

  double sign = 1.0;
  double logabsdet = 0.0;
  bool singular = false;
  for (int k = 0; k < n; ++k) {
    if (tid < 32) {
      const int row = pivot_row(m, n, ld, k);
      if (tid == 0) {
        chosen_row = row;
        chosen_pivot = m[row * ld + k];
      }
    }
    __syncthreads();
    const int p = chosen_row;
    const double pivot = chosen_pivot;  // not m[p * ld + k]: the swap below may already have moved it
    if (pivot == 0.0) {  // the same value in every thread, so the whole block leaves together
      singular = true;
      break;
    }
    if (tid == 0) {
      pivots[k] = p;
      sign = (pivot < 0.0) != (p != k) ? -sign : sign;
      logabsdet += log(fabs(pivot));
    }
    if (p != k) {
      for (int j = tid; j < n; j += threads) {
        const double t = m[k * ld + j];
        m[k * ld + j] = m[p * ld + j];
        m[p * ld + j] = t;
      }
    }
    __syncthreads();
    for (int i = tid; i < n; i += threads) {
      if (i != k) column[i] = m[i * ld + k];  // m[k, k] is being scaled in this phase; column[k] is unused
    }
    const double inv_pivot = 1.0 / pivot;
    for (int j = tid; j < n; j += threads) m[k * ld + j] = (j == k ? 1.0 : m[k * ld + j]) * inv_pivot;
    __syncthreads();
    for (int idx = tid; idx < n * n; idx += threads) {
      const int i = idx / n;
      const int j = idx % n;
      if (i != k) m[i * ld + j] = (j == k ? 0.0 : m[i * ld + j]) - column[i] * m[k * ld + j];
    }
    __syncthreads();
  }

  if (tid == 0) {
    sign_out[blockIdx.x] = static_cast<scalar_t>(singular ? 0.0 : sign);
    logabsdet_out[blockIdx.x] =
        static_cast<scalar_t>(singular ? -CUDART_INF : logabsdet);
    if (!singular) {  // A^-1 = (P A)^-1 P: the row swaps undone as column swaps, last first
      for (int j = 0; j < n; ++j) source_column[j] = j;
      for (int k = n - 1; k >= 0; --k) {
        const int t = source_column[k];
        source_column[k] = source_column[pivots[k]];
        source_column[pivots[k]] = t;
      }
    }
  }
  if (inverse == nullptr) return;
  __syncthreads();
  scalar_t* out = inverse + blockIdx.x * static_cast<int64_t>(n) * n;
  for (int idx = tid; idx < n * n; idx += threads) {
    const double v = singular ? CUDART_NAN : m[(idx / n) * ld + source_column[idx % n]];
    out[idx] = static_cast<scalar_t>(v);
  }
}

}  // namespace

template <typename scalar_t>
cudaError_t launch_gauss_jordan(const scalar_t* a, int64_t batch, int64_t s0, int64_t s1, int64_t s2, int n,
                                scalar_t* sign, scalar_t* logabsdet, scalar_t* inverse, cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  const int threads = std::min(kMaxThreads, std::max(32, (n * n + 31) / 32 * 32));
  const size_t shared_bytes = static_cast<size_t>(n * padded_stride(n) + n) * sizeof(double);
  gauss_jordan_kernel<scalar_t><<<static_cast<unsigned>(batch), threads, shared_bytes, stream>>>(a, s0, s1, s2, n, sign, logabsdet, inverse);
  return cudaGetLastError();
}

template cudaError_t launch_gauss_jordan<float>(const float*, int64_t, int64_t, int64_t, int64_t, int, float*, float*,
                                                float*, cudaStream_t);
template cudaError_t launch_gauss_jordan<double>(const double*, int64_t, int64_t, int64_t, int64_t, int, double*,
                                                 double*, double*, cudaStream_t);

}  // namespace fastflow
