"""Temperature scaling: fit one temperature T by NLL and apply ``softmax(logits / T)``.

Dividing logits by T > 0 never changes the argmax, so the segmentation stays the
same and only the confidence is recalibrated. The NLL is convex in log T, so a
bounded scalar search on log T finds the optimum; the grid form (NLL sums over a
fixed grid of temperatures) is additive over voxels, images and sites, which is
what federated fitting needs: the server's choice from pooled sums equals the
central choice.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from CalibSegLib.errors import CalibSegError

DEFAULT_BOUNDS = (0.05, 20.0)


def default_temperature_grid(n: int = 241, low: float = DEFAULT_BOUNDS[0],
                             high: float = DEFAULT_BOUNDS[1]) -> np.ndarray:
    """A log-spaced grid of temperatures, array of shape (n,) (default 241 values in [0.05, 20])."""
    return np.geomspace(low, high, int(n))


def _torch(x):
    if type(x).__module__.startswith("torch"):
        return x.detach()
    array = np.ascontiguousarray(x)
    if not array.flags.writeable:  # torch cannot wrap read-only memory
        array = array.copy()
    return torch.from_numpy(array)


def _flat_logits_and_labels(logits, target, mask=None):
    z = _torch(logits)
    if z.ndim < 2:
        raise CalibSegError("Logits must be (C, ...) with one channel per class.")
    c = z.shape[0]
    t = _torch(target)
    if tuple(t.shape) != tuple(z.shape[1:]):
        raise CalibSegError(
            f"The reference has shape {tuple(t.shape)} but the logits have spatial shape "
            f"{tuple(z.shape[1:])}; resample the reference onto the prediction grid.")
    z = z.reshape(c, -1)
    t = t.reshape(-1).long()
    if mask is not None:
        m = _torch(mask).reshape(-1).bool()
        z, t = z[:, m], t[m]
    if t.numel() == 0:
        raise CalibSegError("No voxel to fit the temperature on (empty volume or mask).")
    if int(t.min()) < 0 or int(t.max()) >= c:
        raise CalibSegError(
            f"The reference holds labels outside [0, {c}); it does not match the model's classes.")
    if not bool(z.isfinite().all()):
        raise CalibSegError("The logits hold NaN or Inf; check the model output.")
    return z, t


def _sample(z, t, max_voxels: int, seed: int):
    n = t.numel()
    if max_voxels and n > max_voxels:
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(n, size=int(max_voxels), replace=False))

        idx = torch.from_numpy(chosen).to(z.device)
        return z[:, idx], t[idx]
    return z, t


def _mean_nll(z, t, temperature: float) -> float:
    s = z.double() / temperature
    return float((torch.logsumexp(s, dim=0) - s.gather(0, t[None])[0]).mean())


def fit_temperature(logits, target, *, max_voxels: int = 2_000_000, seed: int = 0, mask=None,
                    bounds: tuple[float, float] = DEFAULT_BOUNDS) -> float:
    """Temperature minimising the mean NLL of ``softmax(logits / T)`` against ``target``.

    Parameters
    ----------
    logits
        ``(C, ...)`` numpy array or torch tensor (any device).
    target
        Labels with the spatial shape of ``logits``.
    max_voxels
        Fit on a deterministic random sample of at most this many voxels (0: all).
    seed
        Seed of that sample.
    mask
        Optional boolean mask of voxels to use.
    bounds
        Search interval for T.
    """
    z, t = _flat_logits_and_labels(logits, target, mask)
    z, t = _sample(z, t, max_voxels, seed)
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    result = minimize_scalar(lambda log_t: _mean_nll(z, t, math.exp(log_t)), bounds=(lo, hi),
                             method="bounded", options={"xatol": 1e-7})
    return float(math.exp(result.x))


def nll_over_temperature_grid(logits, target, grid=None, *, mask=None,
                              chunk_voxels: int = 1 << 20) -> tuple[np.ndarray, int]:
    """Summed NLL at every temperature of ``grid`` and the number of voxels.

    ``logits`` has shape (C, Z, Y, X), ``target`` shape (Z, Y, X); the sums are an
    array of shape (G,) for a grid of G temperatures.

    Sums add up over voxels, images and sites, so pooled sums give the same
    choice as one central computation (:func:`fit_temperature_from_grid`).
    """
    grid = default_temperature_grid() if grid is None else np.asarray(grid, dtype=np.float64)
    if grid.ndim != 1 or grid.size == 0 or np.any(~np.isfinite(grid)) or np.any(grid <= 0):
        raise CalibSegError("The temperature grid must be a 1-D list of positive numbers.")
    z, t = _flat_logits_and_labels(logits, target, mask)
    sums = np.zeros(grid.size, dtype=np.float64)
    on_cpu = z.device.type == "cpu"
    for start in range(0, t.numel(), chunk_voxels):
        zc = z[:, start:start + chunk_voxels].double()
        tc = t[start:start + chunk_voxels]
        if on_cpu:
            # numpy on CPU: many small torch ops per temperature oversubscribe busy
            # machines (measured 50x slower with 2 intra-op threads under load)
            sums += _grid_sums_numpy(zc.numpy(), tc.numpy(), grid)
            continue
        for g, temperature in enumerate(grid):
            s = zc / float(temperature)
            sums[g] += float((torch.logsumexp(s, dim=0) - s.gather(0, tc[None])[0]).sum())
    return sums, int(t.numel())


def _grid_sums_numpy(z: np.ndarray, t: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Summed NLL of ``softmax(z / T)`` for every ``T`` of ``grid`` (float64, numpy)."""
    z_max = z.max(axis=0)
    shifted = z - z_max
    z_true = np.take_along_axis(shifted, t[None].astype(np.int64), axis=0)[0]
    out = np.empty(grid.size, dtype=np.float64)
    for g, temperature in enumerate(grid):
        inv = 1.0 / float(temperature)
        # log-sum-exp with the (temperature-independent) max shift
        lse = np.log(np.exp(shifted * inv).sum(axis=0))
        out[g] = float((lse - z_true * inv).sum())
    return out


def fit_temperature_from_grid(nll_sums, grid=None) -> float:
    """The temperature a central fit would choose from (pooled) grid NLL sums.

    Takes the grid minimum and refines it with a parabola through its two
    neighbours in log T (a deterministic function of the sums).
    """
    grid = default_temperature_grid() if grid is None else np.asarray(grid, dtype=np.float64)
    sums = np.asarray(nll_sums, dtype=np.float64)
    if sums.shape != grid.shape:
        raise ValueError(f"{sums.size} NLL sums for a grid of {grid.size} temperatures")
    if not np.all(np.isfinite(sums)):
        raise CalibSegError("The NLL sums hold NaN or Inf.")
    i = int(np.argmin(sums))
    if i == 0 or i == grid.size - 1:
        return float(grid[i])
    x = np.log(grid[i - 1:i + 2])
    y = sums[i - 1:i + 2]
    denom = (x[0] - x[1]) * (x[0] - x[2]) * (x[1] - x[2])
    a = (x[2] * (y[1] - y[0]) + x[1] * (y[0] - y[2]) + x[0] * (y[2] - y[1])) / denom
    b = (x[2] ** 2 * (y[0] - y[1]) + x[1] ** 2 * (y[2] - y[0]) + x[0] ** 2 * (y[1] - y[2])) / denom
    if a <= 0:
        return float(grid[i])
    vertex = float(np.clip(-b / (2 * a), x[0], x[2]))
    return float(math.exp(vertex))


def apply_temperature_to_logits(logits, temperature: float):
    """``softmax(logits / T)`` over the class axis 0 (numpy in, numpy float32 out)."""
    if not (temperature > 0 and math.isfinite(temperature)):
        raise CalibSegError(f"The temperature must be a positive number, got {temperature!r}.")
    is_torch = type(logits).__module__.startswith("torch")
    z = _torch(logits).float()
    probs = torch.softmax(z / float(temperature), dim=0)
    return probs if is_torch else probs.numpy()
