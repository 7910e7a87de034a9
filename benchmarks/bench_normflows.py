"""normflows' multi-scale Glow against the same model after ``fastflow.integrations.normflows.fuse``:
training-step images/s side by side in one process (CPU: fastflow's cpu backend; CUDA: Triton).

The two models start from the same parameters; each takes one forward + backward + Adam step per
round, the order reversed every other round, and the speed-up is the median of the paired per-round
ratios, so that load from other processes falls on both alike.

    python -m benchmarks normflows --size 32 --levels 3 --steps 8 --hidden 256 --batch 16 --rounds 6
"""

from __future__ import annotations

import argparse
import copy
import os

import torch

from benchmarks._common import machine_info, median, paired_ratio, synchronizer, time_interleaved


def normflows_glow(size: int, levels: int, steps: int, hidden: int, use_lu: bool) -> torch.nn.Module:
    """normflows' Glow example: ``levels`` levels of ``steps`` GlowBlocks (sigmoid coupling), 3 channels."""
    import normflows as nf

    q0, merges, flows = [], [], []
    for i in range(levels):
        level = [nf.flows.GlowBlock(3 * 2 ** (levels + 1 - i), hidden, use_lu=use_lu) for _ in range(steps)]
        flows.append(level + [nf.flows.Squeeze()])
        if i > 0:
            merges.append(nf.flows.Merge())
            latent = (3 * 2 ** (levels - i), size // 2 ** (levels - i), size // 2 ** (levels - i))
        else:
            latent = (3 * 2 ** (levels + 1), size // 2**levels, size // 2**levels)
        q0.append(nf.distributions.DiagGaussian(latent))
    return nf.MultiscaleFlow(q0, flows, merges, class_cond=False)


def main() -> None:
    from fastflow.integrations.normflows import fuse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--dense", action="store_true", help="dense 1x1 conv weights instead of LU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    plain = normflows_glow(args.size, args.levels, args.steps, args.hidden, not args.dense).to(args.device)
    x = torch.rand(args.batch, 3, args.size, args.size, device=args.device)
    with torch.no_grad():
        plain.log_prob(x, None)  # ActNorm's data-dependent init
    fused = fuse(copy.deepcopy(plain))
    models = {"normflows": plain, "fused": fused}
    optims = {name: torch.optim.Adam(m.parameters(), lr=1e-5) for name, m in models.items()}

    def step(name: str):
        def run() -> None:
            optims[name].zero_grad(set_to_none=True)
            (-models[name].log_prob(x, None).mean()).backward()
            optims[name].step()

        return run

    fns = {name: step(name) for name in models}
    sync = synchronizer(args.device)
    time_interleaved(fns, 1, sync)  # warm-up
    load_before = os.getloadavg()
    times = time_interleaved(fns, args.rounds, sync)
    info = machine_info(args.device)
    rate = {name: args.batch / median(t) for name, t in times.items()}
    print(
        f"{info['date']}, {info['cpu']} ({info['cores']} cores, {info['threads']} threads), torch {info['torch']}, "
        f"load {[round(v, 2) for v in load_before]} before, {info['load_average']} after"
    )
    print(
        f"normflows Glow {args.size}x{args.size}, L={args.levels}, K={args.steps}, hidden {args.hidden}, "
        f"{'dense' if args.dense else 'LU'} 1x1, batch {args.batch}, {args.rounds} rounds on {args.device}: "
        f"normflows {rate['normflows']:.2f} img/s, fused {rate['fused']:.2f} img/s; speed-up "
        f"{paired_ratio(times['normflows'], times['fused']):.2f}x (median of paired ratios)"
    )


if __name__ == "__main__":
    main()
