"""Driver for ``compute-sanitizer --tool racecheck`` over the Gauss-Jordan kernel (csrc/cuda/gauss_jordan.cu).

    compute-sanitizer --tool racecheck python -m benchmarks.device.racecheck_gj        # on a CUDA machine
    python -m benchmarks.device.racecheck_gj --dry-run                                  # CPU kernel, same checks

Runs ``fastflow::slogdet_inverse`` with the inverse on batches of n x n float64 and float32 matrices,
n = 6..64 (the one-block-per-matrix kernel's range, including warp-size edges), whose rows are
reversed so that partial pivoting swaps rows at (almost) every step, plus one singular matrix per
batch (a zero pivot, the path where the whole block must leave the loop together). Checks sign,
log|det| and the inverse against torch.linalg in float64 on the CPU; prints one line per size and
exits 1 if a result is off (a race that corrupts results shows here even where racecheck is blind).
"""

from __future__ import annotations

import argparse
import sys

import torch

from fastflow.ops import _extension

SIZES = (6, 7, 16, 31, 32, 33, 48, 63, 64)
DRY_SIZES = (6, 33)


def swapping_batch(n: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    """``batch`` well-conditioned matrices with their rows reversed (row swaps at nearly every step);
    the last one singular (its first column zero)."""
    dominant = 4.0 * torch.eye(n, dtype=torch.float64) + torch.randn(
        batch, n, n, generator=generator, dtype=torch.float64
    )
    w = dominant.flip(1)
    w[-1, :, 0] = 0.0
    return w


def check(n: int, dtype: torch.dtype, device: str, generator: torch.Generator) -> float:
    """Largest error of one batch against torch.linalg (relative to the inverse's largest entry)."""
    w = swapping_batch(n, 5, generator)
    sign, logabsdet, inverse = torch.ops.fastflow.slogdet_inverse(w.to(device, dtype), True)
    true_sign, true_logabsdet = torch.linalg.slogdet(w[:-1])
    true_inverse = torch.linalg.inv(w[:-1])
    sign, logabsdet, inverse = sign.cpu().double(), logabsdet.cpu().double(), inverse.cpu().double()
    if sign[-1] != 0 or logabsdet[-1] != -float("inf") or not inverse[-1].isnan().all():
        return float("inf")  # the singular matrix must give sign 0, -inf and NaN
    if not torch.equal(sign[:-1], true_sign):
        return float("inf")
    scale = true_inverse.abs().amax()
    errors = [(logabsdet[:-1] - true_logabsdet).abs().max(), ((inverse[:-1] - true_inverse).abs().max() / scale)]
    return max(float(e) for e in errors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.device.racecheck_gj", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--dry-run", action="store_true", help="the CPU kernel, two sizes (checks the plumbing)")
    args = parser.parse_args(argv)
    device = "cpu" if args.dry_run else "cuda"
    if not _extension.load_library() or not _extension.has_kernel("slogdet_inverse", device):
        print(f"racecheck driver: the extension has no {device} kernel of fastflow::slogdet_inverse")
        return 1
    generator = torch.Generator().manual_seed(0)
    failed = False
    for n in DRY_SIZES if args.dry_run else SIZES:
        for dtype, tolerance in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
            error = check(n, dtype, device, generator)
            ok = error <= tolerance
            failed |= not ok
            print(
                f"gauss_jordan n={n:2d} {str(dtype)[6:]:7} max error {error:.1e} {'ok' if ok else 'WRONG'}", flush=True
            )
    print("racecheck driver:", "FAILED" if failed else "all sizes ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
