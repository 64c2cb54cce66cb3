"""Float comparisons that hold on any CPU kernel set (AVX-512, AVX2, the portable `default`), and in bf16.

Two computations of the same logits by different routes (one full forward vs step-by-step decoding with a KV
cache, a folded checkpoint vs the attached handle) differ by ordinary rounding, and how much depends on the
kernels torch picks for this CPU (`ATEN_CPU_CAPABILITY=avx2` or `default` reproduce other machines) and on the
dtype. A bare absolute tolerance tuned on one machine fails on another. So a comparison here is bounded by

  - the rounding floor: the same two routes on the same model with nothing changed (no block skipped, all ones)
    measured on this machine, in this dtype, times a small factor; and
  - a floor of a few units in the last place of the values' own scale (so that a floor that happens to be 0,
    e.g. when both routes use the same kernels, does not demand bit equality).

A real bug (a stale KV cache, a missing fold) moves logits by O(1) of their scale, far above either bound.

    floor = max_abs_diff(steps_plain, full_plain)          # nothing skipped: this machine's rounding
    assert_within_floor(steps, full, floor)                # the skipped model, same two routes
"""

from __future__ import annotations

import torch

# How many times the unchanged model's rounding the changed one may show: a skip set or trained scales change
# the network, so its roundings are comparable but not equal (measured ratios 0.3-3 across AVX2/AVX-512/default).
FLOOR_FACTOR = 8.0
# The least bound, in units of the dtype's machine epsilon times the values' largest magnitude.
SCALE_ULPS = 64


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max())


def bound(want: torch.Tensor, floor: float, factor: float = FLOOR_FACTOR) -> float:
    """The largest |got - want| accepted: `factor` x the measured floor, at least SCALE_ULPS ulps of the scale."""
    eps = torch.finfo(want.dtype).eps if want.is_floating_point() else torch.finfo(torch.float32).eps
    scale = float(want.detach().double().abs().max())
    return max(factor * floor, SCALE_ULPS * eps * scale)


def assert_within_floor(got: torch.Tensor, want: torch.Tensor, floor: float, factor: float = FLOOR_FACTOR,
                        what: str = "values") -> None:
    """Assert max |got - want| <= bound(want, floor, factor), with a message that gives the figures."""
    assert got.shape == want.shape, (got.shape, want.shape)
    diff, limit = max_abs_diff(got, want), bound(want, floor, factor)
    scale = float(want.detach().double().abs().max())
    assert diff <= limit, (f"{what}: max |diff| {diff:.3g} exceeds {limit:.3g} (= max({factor:g} x rounding floor "
                           f"{floor:.3g}, {SCALE_ULPS} ulps of scale {scale:.3g}); cpu capability "
                           f"{torch.backends.cpu.get_cpu_capability()})")
