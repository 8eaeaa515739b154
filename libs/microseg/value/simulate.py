"""Draw customers' sufficient statistics straight from the BG/NBD and Gamma-Gamma processes, vectorised, without
materialising their transactions.

The BG/NBD convention (Fader, Hardie and Lee 2005), matched to the likelihood of ``clv.fit_bg_nbd``: a customer's
first purchase is at time 0 and is not counted; x counts the *repeat* purchases in (0, T]. While alive, purchases
arrive as a Poisson process of rate lambda ~ Gamma(r, rate alpha). Right after each repeat purchase the customer
drops out with probability p ~ Beta(a, b) (never right after the first purchase), so the number of repeat
purchases before dropout is N ~ Geometric(p) on {1, 2, ...}. With K ~ Poisson(lambda T) arrivals of the
would-be process in (0, T], x = min(K, N), and the x-th arrival time is the x-th order statistic of K uniforms
on (0, T]: t_x = T * Beta(x, K - x + 1) when x > 0, else 0.

Spend (Gamma-Gamma): the value of each repeat purchase is Gamma(p, rate nu) with nu ~ Gamma(q, rate gamma), so
the mean of x of them is Gamma(p x, rate nu x).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

BG_NBD_CDNOW = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}  # weeks; the paper's CDNOW estimates
GAMMA_GAMMA_CDNOW = {"p": 6.25, "q": 3.74, "gamma": 15.44}


def simulate_customers(
    n: int,
    rng: np.random.Generator,
    bg_nbd: dict[str, float] = BG_NBD_CDNOW,
    gamma_gamma: dict[str, float] | None = GAMMA_GAMMA_CDNOW,
    T_range: tuple[float, float] = (27.0, 39.0),
    resolution: float | None = None,
) -> dict[str, np.ndarray]:
    """``n`` customers' (x, t_x, T) and, with ``gamma_gamma``, mean repeat spend m (NaN where x = 0).

    T is uniform over ``T_range``. With ``resolution`` (e.g. 1/7 for days when the unit is weeks) the statistics are
    what data counted in whole days gives: T a whole number of days within the range, and t_x the number of
    day boundaries between the first purchase and the last, floor(t_x + phase) days, the phase (the first
    purchase's time of day) uniform on [0, 1). Rounding t_x down instead (phase 0) biases the continuous-time fit:
    at 1,000,000 customers alpha came out 2.3% low (5.6 standard errors); with the phase it is unbiased.
    (Repeat purchases on the first purchase's day would merge with it in real data; that is not modelled.)
    """
    r, alpha, a, b = (bg_nbd[k] for k in ("r", "alpha", "a", "b"))
    low, high = T_range
    if resolution:
        T = rng.integers(round(low / resolution), round(high / resolution), endpoint=True, size=n) * resolution
    else:
        T = rng.uniform(low, high, size=n)
    lam = rng.gamma(r, 1.0 / alpha, size=n)
    p = np.clip(rng.beta(a, b, size=n), 1e-15, 1.0)  # the floor keeps the geometric draw within int64
    dropout = rng.geometric(p)  # repeat purchases before dropping out, on {1, 2, ...}
    arrivals = rng.poisson(lam * T)
    x = np.minimum(arrivals, dropout)
    pos = x > 0
    t_x = np.zeros(n)
    t_x[pos] = T[pos] * rng.beta(x[pos], arrivals[pos] - x[pos] + 1)
    if resolution:
        t_x = np.where(pos, np.minimum(np.floor(t_x / resolution + rng.uniform(size=n)) * resolution, T), 0.0)
    out = {"x": x.astype(np.int64), "t_x": t_x, "T": T}
    if gamma_gamma is not None:
        gp, gq, gg = (gamma_gamma[k] for k in ("p", "q", "gamma"))
        nu = rng.gamma(gq, 1.0 / gg, size=n)
        m = np.full(n, np.nan)
        m[pos] = rng.gamma(gp * x[pos], 1.0 / (nu[pos] * x[pos]))
        out["m"] = m
    return out


def simulate_chunks(
    n: int,
    seed: int,
    chunk: int = 1_000_000,
    **kwargs: object,
) -> Iterator[dict[str, np.ndarray]]:
    """``n`` customers in chunks of at most ``chunk`` (memory bounded by the chunk), each chunk from its own
    stream spawned from ``seed``: the same ``seed`` and ``chunk`` give the same customers."""
    streams = np.random.SeedSequence(seed).spawn(-(-n // chunk))
    for i, stream in enumerate(streams):
        size = min(chunk, n - i * chunk)
        yield simulate_customers(size, np.random.default_rng(stream), **kwargs)
