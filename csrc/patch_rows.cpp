// CPU kernels of the row formulation of the coupling network's 3x3 convolutions
// (fastflow/ops/cpu/conv_rows.py): patches laid out as rows, and their adjoint.
//
//   im2col_rows(Tensor x, int kernel, int padding) -> Tensor rows
//       x [B, C, H, W] (any strides) -> rows [B*H'*W', C*k*k] with H' = H + 2p - k + 1 (W' alike),
//       rows[(b, y, x), (c, i, j)] = x[b, c, y + i - p, x + j - p] (0 outside the image):
//       F.unfold(x, k, padding=p).transpose(1, 2) written straight as rows
//   col2im_rows(Tensor rows, int height, int width, int kernel, int padding) -> Tensor out
//       rows [B*H'*W', C*k*k] (contiguous) -> out [B, C, height, width] contiguous, the adjoint:
//       out[b, c, Y, X] = sum of rows[(b, y, x), (c, i, j)] over y + i - p = Y, x + j - p = X:
//       F.fold(rows as [B, C*k*k, H'*W'], (height, width), k, padding=p)
//
// The reason to exist: F.unfold/F.fold loop over the batch one sample at a time on one thread and
// take [B, C*k*k, L]; the row formulation needs [B*L, C*k*k] (a transposing copy). Here both are one
// parallel pass: im2col over output rows, col2im over output image rows (each written by one task).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace fastflow {
namespace {

constexpr int64_t kGrain = 1 << 14;  // elements per thread chunk at least

void check_geometry(int64_t kernel, int64_t padding, const char* op) {
  TORCH_CHECK_VALUE(kernel >= 1 && padding >= 0, "fastflow::", op, " expects kernel >= 1 and padding >= 0, got ",
                    kernel, " and ", padding);
}

// Calls body(std::integral_constant<int64_t, K>) with K = kernel for the kernel sizes the coupling
// networks use, so that their inner loops unroll (about 3x faster than the run-time kernel loops,
// benchmarks/RESULTS.md), else with K = 0, meaning "read kernel at run time". Rows and pixels whose
// every term lies inside the image skip the per-term bounds checks.
template <typename Body>
void with_static_kernel(int64_t kernel, const Body& body) {
  switch (kernel) {
    case 1:
      return body(std::integral_constant<int64_t, 1>{});
    case 3:
      return body(std::integral_constant<int64_t, 3>{});
    default:
      return body(std::integral_constant<int64_t, 0>{});
  }
}

at::Tensor im2col_rows_cpu(const at::Tensor& x, int64_t kernel, int64_t padding) {
  TORCH_CHECK_VALUE(x.dim() == 4, "fastflow::im2col_rows expects x of shape [B, C, H, W], got ", x.sizes());
  check_geometry(kernel, padding, "im2col_rows");
  const int64_t batch = x.size(0), channels = x.size(1), height = x.size(2), width = x.size(3);
  const int64_t out_h = height + 2 * padding - kernel + 1, out_w = width + 2 * padding - kernel + 1;
  TORCH_CHECK_VALUE(out_h >= 0 && out_w >= 0, "fastflow::im2col_rows: a ", kernel, "x", kernel,
                    " kernel with padding ", padding, " does not fit a ", height, "x", width, " image");
  const int64_t columns = channels * kernel * kernel;
  at::Tensor rows = at::empty({batch * out_h * out_w, columns}, x.options());
  const int64_t sb = x.stride(0), sc = x.stride(1), sh = x.stride(2), sw = x.stride(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "fastflow_im2col_rows", [&] {
    const scalar_t* src = x.const_data_ptr<scalar_t>();
    scalar_t* dst = rows.mutable_data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(columns, 1));
    with_static_kernel(kernel, [&](auto static_kernel) {
      const int64_t k = static_kernel() > 0 ? static_kernel() : kernel;
      at::parallel_for(0, batch * out_h * out_w, grain, [&](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) {
          const int64_t b = row / (out_h * out_w), y0 = (row / out_w) % out_h - padding, x0 = row % out_w - padding;
          const bool inside_x = x0 >= 0 && x0 + k <= width;  // every column j of this row reads inside
          scalar_t* out = dst + row * columns;
          for (int64_t c = 0; c < channels; ++c) {
            const scalar_t* plane = src + b * sb + c * sc;
            for (int64_t i = 0; i < k; ++i, out += k) {
              const int64_t yy = y0 + i;
              if (yy < 0 || yy >= height) {
                for (int64_t j = 0; j < k; ++j) out[j] = scalar_t(0);
              } else if (inside_x) {
                for (int64_t j = 0; j < k; ++j) out[j] = plane[yy * sh + (x0 + j) * sw];
              } else {
                for (int64_t j = 0; j < k; ++j) {
                  const int64_t xx = x0 + j;
                  out[j] = xx >= 0 && xx < width ? plane[yy * sh + xx * sw] : scalar_t(0);
                }
              }
            }
          }
        }
      });
    });
  });
  return rows;
}

at::Tensor col2im_rows_cpu(const at::Tensor& rows, int64_t height, int64_t width, int64_t kernel, int64_t padding) {
  check_geometry(kernel, padding, "col2im_rows");
  const int64_t out_h = height + 2 * padding - kernel + 1, out_w = width + 2 * padding - kernel + 1;
  TORCH_CHECK_VALUE(rows.dim() == 2 && rows.is_contiguous() && rows.size(1) % (kernel * kernel) == 0 && out_h > 0 &&
                        out_w > 0 && rows.size(0) % (out_h * out_w) == 0,
                    "fastflow::col2im_rows expects contiguous rows [B*", out_h, "*", out_w, ", C*", kernel * kernel,
                    "] for a ", height, "x", width, " image, got shape ", rows.sizes());
  const int64_t columns = rows.size(1), channels = columns / (kernel * kernel);
  const int64_t batch = rows.size(0) / (out_h * out_w);
  at::Tensor out = at::empty({batch, channels, height, width}, rows.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, rows.scalar_type(), "fastflow_col2im_rows", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* src = rows.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(width * kernel * kernel, 1));
    with_static_kernel(kernel, [&](auto static_kernel) {
      const int64_t k = static_kernel() > 0 ? static_kernel() : kernel;
      // One task per output image row (b, c, Y): it gathers every (i, j) term that lands on it, the
      // rows term (y, x) = (Y - i + p, X - j + p) at column (c, i, j).
      at::parallel_for(0, batch * channels * height, grain, [&](int64_t begin, int64_t end) {
        for (int64_t task = begin; task < end; ++task) {
          const int64_t b = task / (channels * height), c = (task / height) % channels, Y = task % height;
          const scalar_t* image = src + b * out_h * out_w * columns + c * k * k;
          scalar_t* out_row = dst + task * width;
          for (int64_t X = 0; X < width; ++X) {
            const bool inside_x = X + padding - k + 1 >= 0 && X + padding < out_w;  // every j lands inside
            acc_t sum = 0;
            for (int64_t i = 0; i < k; ++i) {
              const int64_t y = Y - i + padding;
              if (y < 0 || y >= out_h) continue;
              const scalar_t* line = image + y * out_w * columns + i * k;
              if (inside_x) {
                for (int64_t j = 0; j < k; ++j) sum += static_cast<acc_t>(line[(X - j + padding) * columns + j]);
              } else {
                for (int64_t j = 0; j < k; ++j) {
                  const int64_t x = X - j + padding;
                  if (x >= 0 && x < out_w) sum += static_cast<acc_t>(line[x * columns + j]);
                }
              }
            }
            out_row[X] = static_cast<scalar_t>(sum);
          }
        }
      });
    });
  });
  return out;
}

}  // namespace
}  // namespace fastflow

TORCH_LIBRARY_FRAGMENT(fastflow, m) {
  m.def("im2col_rows(Tensor x, int kernel, int padding) -> Tensor");
  m.def("col2im_rows(Tensor rows, int height, int width, int kernel, int padding) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastflow, CPU, m) {
  m.impl("im2col_rows", &fastflow::im2col_rows_cpu);
  m.impl("col2im_rows", &fastflow::col2im_rows_cpu);
}
