// The operator fastflow::slogdet_inverse and its CPU implementation.
//
//   slogdet_inverse(Tensor A, bool with_inverse) -> (Tensor sign, Tensor logabsdet, Tensor inverse)
//
// A [B, n, n] float32/float64 (any strides) -> sign [B], log|det A| [B] and, with `with_inverse`,
// A^-1 [B, n, n] (contiguous), else an empty [0] tensor; all in A's dtype. Singular matrices give
// sign 0, logabsdet -inf and an all-NaN inverse; NaN or infinite entries raise ValueError on the CPU
// (the CUDA kernel does not check: its Python wrapper keeps the check on the device, read later).
//
// CPU algorithm, per matrix, in float64 whatever the input dtype: Gauss-Jordan elimination with
// partial (row) pivoting, which computes (P A)^-1 in place in 2 n^3 flops (as LU followed by an
// LAPACK-style inverse); the pivots are the diagonal of U, so they give the determinant, and column
// swaps at the end turn (P A)^-1 into A^-1. Without `with_inverse` only the rows below each pivot
// are eliminated: plain LU, 2/3 n^3 flops.
// - Small n: one pivot at a time on rows padded to whole vectors (the matrix stays in L1/L2).
// - Larger n, blocked: kPanel columns at a time. The tall panel is LU-factorised with partial
//   pivoting to choose the pivot rows, the rows are swapped, and every other row loses its panel
//   components in one rank-kPanel update A[O, :] -= A[O, K] (A[K, K]^-1 A[K, :]), the block form
//   of Gauss-Jordan (the "sweep"), computed in register tiles.
// The batch is spread over threads by at::parallel_for, whole matrices per thread. (Splitting one
// large matrix's row updates over the threads, a parallel_for per panel, was 1.5x to 4.5x slower than
// one thread on the 2-core development machine once OpenMP was really on, so it is not done.) Hot
// loops use GCC/Clang vector extensions and are compiled for AVX-512, AVX2+FMA and baseline x86-64,
// picked at load time.
#include "batched_slogdet.h"
#include "cpu_math.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace fastflow {

void check_square_batch(const at::Tensor& a) {
  TORCH_CHECK_VALUE(a.dim() == 3 && a.size(1) == a.size(2),
                    "fastflow::slogdet_inverse expects a batch of square matrices of shape [B, n, n], got shape ",
                    a.sizes());
  TORCH_CHECK_TYPE(a.scalar_type() == at::kFloat || a.scalar_type() == at::kDouble,
                   "fastflow::slogdet_inverse expects float32 or float64 matrices, got ", a.scalar_type());
}

SlogdetInverse empty_outputs(const at::Tensor& a, bool with_inverse) {
  at::Tensor sign = at::empty({a.size(0)}, a.options());
  at::Tensor logabsdet = at::empty({a.size(0)}, a.options());
  at::Tensor inverse = with_inverse ? at::empty(a.sizes(), a.options()) : at::empty({0}, a.options());
  return {sign, logabsdet, inverse};
}

namespace {

// Block sizes, measured best on an AMD EPYC (Zen 4) core: rank-8 bulk updates, whose 8 x n right
// factor stays in L1, in register tiles of 4 rows x 16 columns.
constexpr int64_t kPanel = 8;  // columns eliminated per pass: the bulk update has rank kPanel
constexpr int64_t kRows = 4;   // register block of the bulk update: kRows x kCols accumulators
constexpr int64_t kCols = 16;
constexpr int64_t kVec = 8;  // doubles per vector
static_assert(kPanel % kVec == 0 && kCols % kVec == 0, "panels and tiles are whole vectors");
// Up to these n the unblocked elimination on whole padded rows beats the blocked one (measured).
constexpr int64_t kSmallInverseN = 56;
constexpr int64_t kSmallLuN = 80;

struct Determinant {
  double sign = 1.0;
  double logabsdet = 0.0;
};

bool unblocked(int64_t n, bool inverse) {
  return n <= (inverse ? kSmallInverseN : kSmallLuN);
}

// Leading dimension of the matrix in the workspace: unblocked rows are padded to whole vectors.
int64_t leading_dimension(int64_t n, bool inverse) {
  return unblocked(n, inverse) ? (n + kVec - 1) / kVec * kVec : n;
}

// Scratch space for one n x n matrix, reused for all the matrices one thread handles. Buffers with
// kPanel columns or rows are zero-padded past a narrower last panel.
struct Workspace {
  Workspace(int64_t n, bool inverse)
      : ld(leading_dimension(n, inverse)), a(n * ld), panel(n * kPanel), block(kPanel * kPanel), y(kPanel * n),
        c(n * kPanel), pivots(n), columns(n) {}
  int64_t ld;                   // leading dimension of a
  std::vector<double> a;        // the matrix, row-major (zero-padded rows); becomes the inverse
  std::vector<double> panel;    // LU of the panel columns of rows k0.. (leading dimension kPanel)
  std::vector<double> block;    // T = inverse of the pivot block A[K, K] (kPanel x kPanel)
  std::vector<double> y;        // T A[K, :] (kPanel rows, leading dimension n)
  std::vector<double> c;        // A[O, K] of the rows being updated (leading dimension kPanel)
  std::vector<int64_t> pivots;   // pivots[k]: the row swapped with row k at step k
  std::vector<int64_t> columns;  // column order of the inverse, see order_columns
};

// Eight doubles in one (AVX-512), two (AVX2) or four (SSE2) registers, by GCC/Clang vector extensions.
using Vec = double __attribute__((vector_size(kVec * sizeof(double))));

FASTFLOW_INLINE Vec load(const double* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(Vec));
  return v;
}

FASTFLOW_INLINE void store(double* p, const Vec& v) {
  std::memcpy(p, &v, sizeof(Vec));
}

// a[0:R, 0:kCols] -= c[0:R, :] y[:, 0:kCols], accumulated in registers: each load of y serves R
// rows and each c value kCols columns.
template <int64_t R>
FASTFLOW_INLINE void subtract_product_block(double* __restrict a, int64_t lda, const double* __restrict c,
                                            const double* __restrict y, int64_t ldy) {
  constexpr int64_t V = kCols / kVec;
  Vec acc[R][V];
#pragma GCC unroll 8
  for (int64_t r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int64_t v = 0; v < V; ++v) acc[r][v] = load(a + r * lda + v * kVec);
  }
#pragma GCC unroll 16
  for (int64_t t = 0; t < kPanel; ++t) {
    Vec yt[V];
#pragma GCC unroll 8
    for (int64_t v = 0; v < V; ++v) yt[v] = load(y + t * ldy + v * kVec);
#pragma GCC unroll 8
    for (int64_t r = 0; r < R; ++r) {
      const double f = c[r * kPanel + t];
#pragma GCC unroll 8
      for (int64_t v = 0; v < V; ++v) acc[r][v] -= f * yt[v];
    }
  }
#pragma GCC unroll 8
  for (int64_t r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int64_t v = 0; v < V; ++v) store(a + r * lda + v * kVec, acc[r][v]);
  }
}

// One in-place Gauss-Jordan step on the pivot a[k, k] of the rows a[0:rows] (leading dimension ld,
// a multiple of kVec): row k becomes row k / pivot with 1 / pivot in column k, and every other row
// i becomes row i - a[i, k] * (new row k) with 0 in column k first. Column k is replaced through a
// mask rather than a scalar store, which would stall the vector load that follows it.
FASTFLOW_INLINE void sweep(double* a, int64_t ld, int64_t rows, int64_t k) {
  const int64_t kv = k / kVec * kVec;  // the vector holding column k
  Vec keep;                            // 1 except 0 in column k
  for (int64_t j = 0; j < kVec; ++j) keep[j] = kv + j == k ? 0.0 : 1.0;
  double* rk = a + k * ld;
  const double scale = 1.0 / rk[k];
  for (int64_t v = 0; v < ld; v += kVec) {
    store(rk + v, (v == kv ? load(rk + v) * keep + (1.0 - keep) : load(rk + v)) * scale);
  }
  for (int64_t i = 0; i < rows; ++i) {
    if (i == k) continue;
    double* ri = a + i * ld;
    const double f = ri[k];
    for (int64_t v = 0; v < ld; v += kVec) {
      store(ri + v, (v == kv ? load(ri + v) * keep : load(ri + v)) - f * load(rk + v));
    }
  }
}

// One LU step on the pivot a[k, k] of the rows a[0:rows] (leading dimension ld, a multiple of
// kVec): the rows below k lose their column-k component. Columns left of k's vector are finished.
FASTFLOW_INLINE void eliminate_below(double* a, int64_t ld, int64_t rows, int64_t k) {
  const double* rk = a + k * ld;
  const double scale = 1.0 / rk[k];
  for (int64_t i = k + 1; i < rows; ++i) {
    double* ri = a + i * ld;
    const double f = ri[k] * scale;
    for (int64_t v = k / kVec * kVec; v < ld; v += kVec) store(ri + v, load(ri + v) - f * load(rk + v));
  }
}

// Whether x[0:count] are all finite (an inf or NaN times 0 is NaN).
FASTFLOW_INLINE bool all_finite(const double* x, int64_t count) {
  Vec probe = {};
  int64_t i = 0;
  for (; i + kVec <= count; i += kVec) probe += load(x + i) * 0.0;
  double sum = 0.0;
  for (; i < count; ++i) sum += x[i] * 0.0;
  for (int64_t j = 0; j < kVec; ++j) sum += probe[j];
  return sum == 0.0;
}

// a[r, j] -= sum_t c[r, t] y[t, j] for r < rows, j < cols; c has kPanel columns, y kPanel rows.
FASTFLOW_VECTOR_CLONES
void subtract_product(double* __restrict a, int64_t lda, const double* __restrict c, const double* __restrict y,
                      int64_t ldy, int64_t rows, int64_t cols) {
  const int64_t full_cols = cols - cols % kCols;
  int64_t r = 0;
  for (; r + kRows <= rows; r += kRows) {
    for (int64_t j = 0; j < full_cols; j += kCols) {
      subtract_product_block<kRows>(a + r * lda + j, lda, c + r * kPanel, y + j, ldy);
    }
  }
  for (; r < rows; ++r) {
    for (int64_t j = 0; j < full_cols; j += kCols) {
      subtract_product_block<1>(a + r * lda + j, lda, c + r * kPanel, y + j, ldy);
    }
  }
  for (r = 0; r < rows; ++r) {  // the last cols % kCols columns
    for (int64_t j = full_cols; j < cols; ++j) {
      double s = a[r * lda + j];
      for (int64_t t = 0; t < kPanel; ++t) s -= c[r * kPanel + t] * y[t * ldy + j];
      a[r * lda + j] = s;
    }
  }
}

// y[t, j] = sum_s block[t, s] a[s, j] for t, s < b and j < cols (a, y with leading dimension ld).
FASTFLOW_VECTOR_CLONES
void multiply_block(const double* __restrict block, const double* __restrict a, double* __restrict y, int64_t ld,
                    int64_t b, int64_t cols) {
  for (int64_t t = 0; t < b; ++t) {
    double* yt = y + t * ld;
    std::fill(yt, yt + cols, 0.0);
    for (int64_t s = 0; s < b; ++s) {
      const double f = block[t * kPanel + s];
      const double* as = a + s * ld;
      for (int64_t j = 0; j < cols; ++j) yt[j] += f * as[j];
    }
  }
}

// LU with partial pivoting of the tall panel A[k0:n, k0:k0+b] (a zero-padded copy in ws.panel):
// records the pivot rows and accumulates the sign and log|pivot| of the determinant. Only the
// columns right of the current one matter for the next pivot, so whole panel rows are updated
// and the multipliers are not kept. Returns false when a column has no nonzero pivot left (A is
// singular).
FASTFLOW_VECTOR_CLONES
bool factor_panel(Workspace& ws, int64_t n, int64_t k0, int64_t b, Determinant& det) {
  const int64_t m = n - k0;
  double* p = ws.panel.data();
  for (int64_t i = 0; i < m; ++i) {
    std::copy_n(&ws.a[(k0 + i) * n + k0], b, p + i * kPanel);
    std::fill(p + i * kPanel + b, p + (i + 1) * kPanel, 0.0);
  }
  for (int64_t t = 0; t < b; ++t) {
    int64_t best = t;
    for (int64_t i = t + 1; i < m; ++i) {
      if (std::abs(p[i * kPanel + t]) > std::abs(p[best * kPanel + t])) best = i;
    }
    const double pivot = p[best * kPanel + t];
    if (pivot == 0.0) return false;
    if (best != t) {
      std::swap_ranges(p + t * kPanel, p + (t + 1) * kPanel, p + best * kPanel);
      det.sign = -det.sign;
    }
    ws.pivots[k0 + t] = k0 + best;
    det.sign = pivot < 0.0 ? -det.sign : det.sign;
    det.logabsdet += std::log(std::abs(pivot));
    const double scale = 1.0 / pivot;
    const double* pt = p + t * kPanel;
    for (int64_t i = t + 1; i < m; ++i) {
      double* pi = p + i * kPanel;
      const double l = pi[t] * scale;
      for (int64_t v = 0; v < kPanel; v += kVec) store(pi + v, load(pi + v) - l * load(pt + v));
    }
  }
  return true;
}

// Applies the panel's row swaps to columns col_begin.. of ws.a.
void swap_rows(Workspace& ws, int64_t n, int64_t k0, int64_t b, int64_t col_begin) {
  for (int64_t t = 0; t < b; ++t) {
    const int64_t other = ws.pivots[k0 + t];
    if (other != k0 + t) {
      double* row = &ws.a[(k0 + t) * n];
      std::swap_ranges(row + col_begin, row + n, &ws.a[other * n] + col_begin);
    }
  }
}

// ws.block = A[K, K]^-1 for K = [k0, k0 + b), by Gauss-Jordan without pivoting: the rows are
// already in pivot order, so its pivots are the (nonzero) pivots the panel LU chose.
FASTFLOW_VECTOR_CLONES
void invert_pivot_block(Workspace& ws, int64_t n, int64_t k0, int64_t b) {
  double* t = ws.block.data();
  std::fill(t, t + kPanel * kPanel, 0.0);
  for (int64_t i = 0; i < b; ++i) std::copy_n(&ws.a[(k0 + i) * n + k0], b, t + i * kPanel);
  for (int64_t k = 0; k < b; ++k) sweep(t, kPanel, b, k);
}

// Copies A[r0:r1, K] into rows offset.. of ws.c, zero-padded to kPanel columns.
void gather_panel_columns(Workspace& ws, int64_t n, int64_t k0, int64_t b, int64_t r0, int64_t r1, int64_t offset) {
  for (int64_t r = r0; r < r1; ++r) {
    double* c = &ws.c[(offset + r - r0) * kPanel];
    std::copy_n(&ws.a[r * n + k0], b, c);
    std::fill(c + b, c + kPanel, 0.0);
  }
}

// A[r0:r1, K] = -A[r0:r1, K] T, from the copy in ws.c (inverse only).
FASTFLOW_VECTOR_CLONES
void store_panel_columns(Workspace& ws, int64_t n, int64_t k0, int64_t b, int64_t r0, int64_t r1, int64_t offset) {
  const double* t = ws.block.data();
  for (int64_t r = r0; r < r1; ++r) {
    const double* c = &ws.c[(offset + r - r0) * kPanel];
    double row[kPanel] = {};
    for (int64_t v = 0; v < kPanel; v += kVec) {
      Vec sum = {};
      for (int64_t i = 0; i < b; ++i) sum -= c[i] * load(t + i * kPanel + v);
      store(row + v, sum);
    }
    std::copy_n(row, b, &ws.a[r * n + k0]);
  }
}

// Rows [r0, r1) of ws.a, none of them in K: their panel columns go to ws.c from row c_row on, they
// lose C Y over the columns col_begin.., and with `inverse` their panel columns become -C T.
void update_rows(Workspace& ws, int64_t n, int64_t k0, int64_t b, int64_t r0, int64_t r1, int64_t c_row,
                 int64_t col_begin, bool inverse) {
  gather_panel_columns(ws, n, k0, b, r0, r1, c_row);
  subtract_product(&ws.a[r0 * n + col_begin], n, &ws.c[c_row * kPanel], ws.y.data() + col_begin, n, r1 - r0,
                   n - col_begin);
  if (inverse) store_panel_columns(ws, n, k0, b, r0, r1, c_row);
}

// One block step on the pivot rows and columns K = [k0, k0 + b), after the rows were swapped and T
// was formed. With `inverse`, all rows but K and all columns are updated and the block row K is
// replaced by T A[K, :] (with T itself in A[K, K]); otherwise only the trailing rows and columns.
void eliminate_panel(Workspace& ws, int64_t n, int64_t k0, int64_t b, bool inverse) {
  const int64_t k1 = k0 + b;
  const int64_t col_begin = inverse ? 0 : k1;
  const int64_t above = inverse ? k0 : 0;  // rows 0..k0 are updated only for the inverse
  const int64_t count = above + (n - k1);  // rows updated: [0, above), then [k1, n)
  double* y = ws.y.data();
  if (count > 0) {
    multiply_block(ws.block.data(), &ws.a[k0 * n + col_begin], y + col_begin, n, b, n - col_begin);
    std::fill(y + b * n, y + kPanel * n, 0.0);
  }
  if (above > 0) update_rows(ws, n, k0, b, 0, above, 0, col_begin, inverse);  // rows [0, above)
  if (count > above) update_rows(ws, n, k0, b, k1, n, above, col_begin, inverse);  // rows [k1, n)
  if (!inverse) return;
  for (int64_t t = 0; t < b; ++t) {
    if (count > 0) std::copy_n(y + t * n, n, &ws.a[(k0 + t) * n]);
    std::copy_n(&ws.block[t * kPanel], b, &ws.a[(k0 + t) * n + k0]);
  }
}

// ws.a holds X = (P A)^-1 = A^-1 P^T, so A^-1 = X P: the row swaps, undone last first as column
// swaps. Sets ws.columns so that column j of A^-1 is column ws.columns[j] of X.
void order_columns(Workspace& ws, int64_t n) {
  for (int64_t j = 0; j < n; ++j) ws.columns[j] = j;
  for (int64_t k = n - 1; k >= 0; --k) std::swap(ws.columns[k], ws.columns[ws.pivots[k]]);
}

// Result for a singular matrix: sign 0, log|det| -inf and an all-NaN inverse (ws.columns always
// holds valid column indices, so any order reads NaN).
Determinant singular(Workspace& ws) {
  std::fill(ws.a.begin(), ws.a.end(), std::numeric_limits<double>::quiet_NaN());
  return {0.0, -std::numeric_limits<double>::infinity()};
}

// Blocked Gauss-Jordan (ws.ld == n): sign and log|det| of the matrix in ws.a; with
// `inverse`, ws.a and ws.columns then hold its inverse (see order_columns).
Determinant gauss_jordan_blocked(Workspace& ws, int64_t n, bool inverse) {
  Determinant det;
  for (int64_t k0 = 0; k0 < n; k0 += kPanel) {
    const int64_t b = std::min(kPanel, n - k0);
    if (!factor_panel(ws, n, k0, b, det)) return singular(ws);
    swap_rows(ws, n, k0, b, inverse ? 0 : k0);
    invert_pivot_block(ws, n, k0, b);
    eliminate_panel(ws, n, k0, b, inverse);
  }
  if (inverse) order_columns(ws, n);
  return det;
}

// Unblocked Gauss-Jordan with partial pivoting for small n, on rows padded to ws.ld (whole
// vectors; the zero padding stays zero): the same contract as gauss_jordan_blocked. Without
// `inverse` only the rows below the pivot are eliminated (plain LU).
FASTFLOW_VECTOR_CLONES
Determinant gauss_jordan_small(Workspace& ws, int64_t n, bool inverse) {
  const int64_t ld = ws.ld;
  double* a = ws.a.data();
  Determinant det;
  for (int64_t k = 0; k < n; ++k) {
    int64_t best = k;
    for (int64_t i = k + 1; i < n; ++i) {
      if (std::abs(a[i * ld + k]) > std::abs(a[best * ld + k])) best = i;
    }
    const double pivot = a[best * ld + k];
    if (pivot == 0.0) return singular(ws);
    double* rk = a + k * ld;
    if (best != k) {
      std::swap_ranges(rk, rk + ld, a + best * ld);
      det.sign = -det.sign;
    }
    ws.pivots[k] = best;
    det.sign = pivot < 0.0 ? -det.sign : det.sign;
    det.logabsdet += std::log(std::abs(pivot));
    if (inverse) {
      sweep(a, ld, n, k);
    } else {
      eliminate_below(a, ld, n, k);
    }
  }
  if (inverse) order_columns(ws, n);
  return det;
}

// Sign and log|det| of the n x n matrix in ws.a; with `inverse`, ws.a and ws.columns then hold its
// inverse (see order_columns; all NaN when the matrix is singular).
Determinant gauss_jordan(Workspace& ws, int64_t n, bool inverse) {
  return unblocked(n, inverse) ? gauss_jordan_small(ws, n, inverse) : gauss_jordan_blocked(ws, n, inverse);
}

// Copies the strided matrix src into the row-major float64 dst (leading dimension ld, zero-padded);
// false if an entry is not finite.
template <typename scalar_t>
bool load_matrix(const scalar_t* src, int64_t row_stride, int64_t col_stride, int64_t n, int64_t ld, double* dst) {
  for (int64_t i = 0; i < n; ++i) {
    const scalar_t* row = src + i * row_stride;
    double* out = dst + i * ld;
    if (col_stride == 1) {
      for (int64_t j = 0; j < n; ++j) out[j] = static_cast<double>(row[j]);
    } else {
      for (int64_t j = 0; j < n; ++j) out[j] = static_cast<double>(row[j * col_stride]);
    }
    std::fill(out + n, out + ld, 0.0);
  }
  return all_finite(dst, n * ld);
}

// Writes A^-1 = X P (see order_columns) into the row-major dst.
template <typename scalar_t>
void store_inverse(const Workspace& ws, int64_t n, scalar_t* dst) {
  for (int64_t i = 0; i < n; ++i) {
    const double* row = &ws.a[i * ws.ld];
    for (int64_t j = 0; j < n; ++j) dst[i * n + j] = static_cast<scalar_t>(row[ws.columns[j]]);
  }
}

// Matrices per parallel_for chunk: enough work (~n^3 multiply-adds) to outweigh a thread hand-off.
int64_t grain_size(int64_t n) {
  return std::max<int64_t>(1, 65536 / (n * n * n + 1024));
}

SlogdetInverse slogdet_inverse_cpu(const at::Tensor& a, bool with_inverse) {
  check_square_batch(a);
  auto outputs = empty_outputs(a, with_inverse);
  const int64_t batch = a.size(0);
  const int64_t n = a.size(1);
  std::atomic<int64_t> first_nonfinite{batch};
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "fastflow_slogdet_inverse_cpu", [&] {
    const scalar_t* src = a.const_data_ptr<scalar_t>();
    scalar_t* sign = std::get<0>(outputs).mutable_data_ptr<scalar_t>();
    scalar_t* logabsdet = std::get<1>(outputs).mutable_data_ptr<scalar_t>();
    scalar_t* inverse = with_inverse ? std::get<2>(outputs).mutable_data_ptr<scalar_t>() : nullptr;
    const auto run = [&](int64_t begin, int64_t end) {  // matrices begin..end with one workspace
      Workspace ws(n, with_inverse);
      for (int64_t i = begin; i < end; ++i) {
        if (!load_matrix(src + i * a.stride(0), a.stride(1), a.stride(2), n, ws.ld, ws.a.data())) {
          int64_t seen = first_nonfinite.load();
          while (i < seen && !first_nonfinite.compare_exchange_weak(seen, i)) {
          }
          continue;
        }
        const Determinant det = gauss_jordan(ws, n, with_inverse);
        sign[i] = static_cast<scalar_t>(det.sign);
        logabsdet[i] = static_cast<scalar_t>(det.logabsdet);
        if (with_inverse) store_inverse(ws, n, inverse + i * n * n);
      }
    };
    at::parallel_for(0, batch, grain_size(n), run);
  });
  TORCH_CHECK_VALUE(first_nonfinite.load() == batch, "fastflow::slogdet_inverse: matrix ", first_nonfinite.load(),
                    " of the batch has NaN or infinite entries; expected finite values");
  return outputs;
}

}  // namespace
}  // namespace fastflow

TORCH_LIBRARY(fastflow, m) {
  m.set_python_module("fastflow.ops.slogdet");
  m.def("slogdet_inverse(Tensor A, bool with_inverse) -> (Tensor sign, Tensor logabsdet, Tensor inverse)",
        {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(fastflow, CPU, m) {
  m.impl("slogdet_inverse", &fastflow::slogdet_inverse_cpu);
}
