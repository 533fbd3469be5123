"""Four-parameter sine fits (amplitude, phase, offset and frequency; IEEE Std 1057), many blocks
at once.

Runs in the test or benchmark process that analyses a recording. Each block is fitted on its
own, the frequency refined by Gauss–Newton from a first guess, the way an analyser's notch
tracks the fundamental: a tone that comes back a fraction of a ppm off its nominal frequency is
still a pure tone, and only what is not that tone counts (THD+N). The phase at each block's
centre tells where in the source's frame count the block came from (the benchmarks' delay).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CHUNK = 128               # blocks per vectorised step (memory: CHUNK x block length x 8 bytes x 4)
MAX_STEP = 3e-3           # a frequency step larger than this (relative) is a fit gone astray


@dataclass
class Fits:
    """Per block: amplitude, phase at the block's centre (rad; the fitted sine is
    amplitude·sin(w·(i − centre) + phase) + offset), offset, w (rad per sample), residual power
    (mean square of what is not the fitted sine) and whether the fit converged."""
    amplitude: np.ndarray
    phase: np.ndarray
    offset: np.ndarray
    w: np.ndarray
    residual_power: np.ndarray
    ok: np.ndarray

    @property
    def signal_power(self) -> np.ndarray:
        return self.amplitude ** 2 / 2

    def thd_n_db(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return 10 * np.log10(np.maximum(self.residual_power, 1e-30)
                                 / np.maximum(self.signal_power, 1e-30))


def _solve(m: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares for a batch: m (B, N, K), y (B, N) -> (B, K)."""
    mt = m.transpose(0, 2, 1)
    mtm = mt @ m
    # a whisker of regularisation: a silent block (all zeros) has a singular derivative column
    k = m.shape[2]
    ridge = 1e-12 * np.trace(mtm, axis1=1, axis2=2)[:, None, None] / k + 1e-300
    return np.linalg.solve(mtm + ridge * np.eye(k), mt @ y[..., None])[..., 0]


def fit_blocks(blocks: np.ndarray, w0, iterations: int = 6) -> Fits:
    """Fit every row of `blocks` (B, N) starting from w0 (rad per sample, scalar or per block).
    iterations=0 fits amplitude, phase and offset at w0 (three parameters)."""
    y = np.asarray(blocks, np.float64)
    b, n = y.shape
    w_all = np.broadcast_to(np.asarray(w0, np.float64), (b,)).copy()
    out = {k: np.zeros(b) for k in ("amplitude", "phase", "offset", "residual_power")}
    ok = np.ones(b, bool)
    t = np.arange(n) - (n - 1) / 2
    for lo in range(0, b, CHUNK):
        yy = y[lo:lo + CHUNK]
        w = w_all[lo:lo + CHUNK]
        live = np.ones(len(w), bool)
        for _ in range(iterations):
            s, c = np.sin(w[:, None] * t), np.cos(w[:, None] * t)
            one = np.ones_like(s)
            coef = _solve(np.stack([s, c, one], -1), yy)
            a, bb = coef[:, 0:1], coef[:, 1:2]
            deriv = (t / n) * (a * c - bb * s)          # d/dw of a sin + b cos, scaled by 1/n
            coef4 = _solve(np.stack([s, c, one, deriv], -1), yy)
            dw = coef4[:, 3] / n
            bad = ~np.isfinite(dw) | (np.abs(dw) > MAX_STEP * w)
            live &= ~bad
            w = np.where(live, w + dw, w)
            if np.all(~live | (np.abs(dw) < 1e-11 * w)):
                break
        s, c = np.sin(w[:, None] * t), np.cos(w[:, None] * t)
        m = np.stack([s, c, np.ones_like(s)], -1)
        coef = _solve(m, yy)
        resid = yy - (m @ coef[..., None])[..., 0]
        sl = slice(lo, lo + len(w))
        out["amplitude"][sl] = np.hypot(coef[:, 0], coef[:, 1])
        out["phase"][sl] = np.arctan2(coef[:, 1], coef[:, 0])
        out["offset"][sl] = coef[:, 2]
        out["residual_power"][sl] = np.mean(resid ** 2, axis=1)
        w_all[sl] = w
        ok[sl] = live
    return Fits(out["amplitude"], out["phase"], out["offset"], w_all, out["residual_power"], ok)
