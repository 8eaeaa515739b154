"""BG/NBD purchase model and Gamma-Gamma spend model (Fader, Hardie and Lee 2005), fitted on sufficient statistics.

Pure NumPy/SciPy; Spark only aggregates the data (``microseg.value.stats``). A customer is summarised by
``x`` (repeat purchases after the first, which is at time 0), ``t_x`` (time of the last repeat purchase, 0 when
x = 0) and ``T`` (time from the first purchase to the end of observation), in units of ``unit_days`` days. The
BG/NBD likelihood depends on a customer only through (x, t_x, T), so the fit takes the *distinct* tuples and
how many customers share each (``weight``): the cost of a fit grows with distinct tuples, not customers.

The Gamma-Gamma likelihood of a customer with x > 0 repeat purchases of mean value m has the term
(gamma + m x)^-(p x + q), which does not separate into a function of x times one of m: the data cannot be
grouped on x alone, so the fit is on per-customer (x, m) pairs, grouped on *identical* pairs (``weight``) so
that repeated values (money rounded to cents) compress.

Both fits are log-parameterised (every parameter is positive) and minimise the weighted negative
log-likelihood with L-BFGS-B and its analytic gradient. Standard errors come from the inverse Hessian of the
negative log-likelihood in the log parameters (a central difference of the analytic gradient), carried to the
natural scale by the delta method: se(theta) = theta * se(log theta).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize
from scipy.special import digamma, gammaln, hyp2f1

BG_NBD_PARAMS = ("r", "alpha", "a", "b")
GAMMA_GAMMA_PARAMS = ("p", "q", "gamma")
DAYS_PER_MONTH = 365.25 / 12


@dataclass(frozen=True)
class Fit:
    """A fitted model: parameters and standard errors on the natural scale, the maximised log-likelihood, how
    many distinct tuples (rows) and customers (sum of weights) the fit saw, and whether the optimiser
    converged."""

    params: dict[str, float]
    std_errors: dict[str, float]
    log_likelihood: float
    n_tuples: int
    n_customers: float
    converged: bool
    iterations: int = 0
    message: str = field(default="", compare=False)


@dataclass(frozen=True)
class BgNbdFit(Fit):
    """A fitted BG/NBD model (r, alpha, a, b)."""


@dataclass(frozen=True)
class GammaGammaFit(Fit):
    """A fitted Gamma-Gamma spend model (p, q, gamma)."""


def _arrays(*values: np.ndarray | float) -> list[np.ndarray]:
    return [np.asarray(v, dtype=float) for v in np.broadcast_arrays(*values)]


def _weights(weight: np.ndarray | float | None, like: np.ndarray) -> np.ndarray:
    return np.ones_like(like) if weight is None else np.broadcast_to(np.asarray(weight, dtype=float), like.shape)


# --- BG/NBD ----------------------------------------------------------------------------------------------------


def _groups(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of x and the weight of each: the terms that depend on x alone (the gamma and digamma
    functions, the costly part) are computed once per distinct x and summed with these weights."""
    values, inverse = np.unique(x, return_inverse=True)
    return values, np.bincount(inverse.ravel(), weights=w, minlength=len(values))


def bg_nbd_negative_log_likelihood(
    log_params: np.ndarray,
    x: np.ndarray,
    t_x: np.ndarray,
    T: np.ndarray,
    weight: np.ndarray | None = None,
    groups: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[float, np.ndarray]:
    """Weighted BG/NBD negative log-likelihood at log(r, alpha, a, b), and its gradient in the log parameters.

    ln L = A1 + A2 + logaddexp(A3, A4) with (eq. 6 of the paper)
    A1 = ln G(r+x) - ln G(r) + r ln alpha, A2 = ln B(a, b+x) - ln B(a, b), A3 = -(r+x) ln(alpha+T),
    A4 = ln(a / (b+x-1)) - (r+x) ln(alpha+t_x) for x > 0 (dropped out right after the x-th repeat purchase) and
    -inf for x = 0 (the indicator term). ``groups``: ``_groups(x, weight)``, computed when not given.
    """
    x, t_x, T = _arrays(x, t_x, T)
    w = _weights(weight, x)
    xs, wx = groups if groups is not None else _groups(x, w)
    r, alpha, a, b = theta = np.exp(np.asarray(log_params, dtype=float))
    # Terms of x alone, once per distinct x.
    psi_abx = digamma(a + b + xs)
    ll = wx @ (gammaln(r + xs) - gammaln(r) + gammaln(a + b) + gammaln(b + xs) - gammaln(b) - gammaln(a + b + xs))
    d_r = wx @ (digamma(r + xs) - digamma(r))
    d_a = wx @ (digamma(a + b) - psi_abx)
    d_b = wx @ (digamma(a + b) + digamma(b + xs) - digamma(b) - psi_abx)
    total = w.sum()
    ll += r * np.log(alpha) * total
    d_r += np.log(alpha) * total
    d_alpha = r / alpha * total
    # Terms of each tuple.
    pos = x > 0
    rx = r + x
    log_at, log_atx = np.log(alpha + T), np.log(alpha + t_x)
    a3 = -rx * log_at
    bx1 = np.where(pos, b + x - 1, 1.0)
    a4 = np.where(pos, np.log(a) - np.log(bx1) - rx * log_atx, -np.inf)
    lse = np.logaddexp(a3, a4)
    w3, w4 = w * np.exp(a3 - lse), w * np.exp(a4 - lse)  # weighted shares of the two terms; w4 = 0 when x = 0
    ll += w @ lse
    d_r -= w3 @ log_at + w4 @ log_atx
    d_alpha -= w3 @ (rx / (alpha + T)) + w4 @ (rx / (alpha + t_x))
    d_a += w4.sum() / a
    d_b -= w4 @ (1 / bx1)
    return -float(ll), -np.array([d_r, d_alpha, d_a, d_b]) * theta


def fit_bg_nbd(
    x: np.ndarray,
    t_x: np.ndarray,
    T: np.ndarray,
    weight: np.ndarray | None = None,
    initial: dict[str, float] | None = None,
    tol: float = 1e-10,
) -> BgNbdFit:
    """Fit BG/NBD to tuples (x, t_x, T), each standing for ``weight`` customers (1 if None)."""
    x, t_x, T = _arrays(x, t_x, T)
    _check_tuples(x, t_x, T)
    w = _weights(weight, x)
    start = initial or {"r": 1.0, "alpha": max(float(np.average(T, weights=w)), 1e-3), "a": 1.0, "b": 1.0}
    x0 = np.log([start[k] for k in BG_NBD_PARAMS])
    groups = _groups(x, w)
    return _fit(
        BgNbdFit,
        BG_NBD_PARAMS,
        lambda u: bg_nbd_negative_log_likelihood(u, x, t_x, T, w, groups),
        x0,
        len(x),
        float(w.sum()),
        tol,
    )


def _check_tuples(x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> None:
    if len(x) == 0:
        raise ValueError("no customers to fit")
    if np.any(x < 0) or np.any(t_x < 0) or np.any(t_x > T) or np.any((x == 0) & (t_x != 0)):
        raise ValueError("expected x >= 0, 0 <= t_x <= T, and t_x = 0 where x = 0")


# --- Gamma-Gamma -----------------------------------------------------------------------------------------------


def gamma_gamma_negative_log_likelihood(
    log_params: np.ndarray,
    x: np.ndarray,
    m: np.ndarray,
    weight: np.ndarray | None = None,
    groups: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[float, np.ndarray]:
    """Weighted Gamma-Gamma negative log-likelihood of mean repeat spend ``m`` over ``x`` > 0 repeat purchases at
    log(p, q, gamma), and its gradient in the log parameters.

    ln f(m | x) = ln G(px+q) - ln G(px) - ln G(q) + q ln gamma + (px-1) ln m + px ln x - (px+q) ln(gamma + m x).
    ``groups``: ``_groups(x, weight)``, computed when not given.
    """
    x, m = _arrays(x, m)
    w = _weights(weight, x)
    xs, wx = groups if groups is not None else _groups(x, w)
    p, q, g = np.exp(np.asarray(log_params, dtype=float))
    # Terms of x alone, once per distinct x.
    pxs = p * xs
    psi = digamma(pxs + q)
    ll = wx @ (gammaln(pxs + q) - gammaln(pxs) - gammaln(q) + q * np.log(g) + pxs * np.log(xs))
    d_p = wx @ (xs * (psi - digamma(pxs) + np.log(xs)))
    d_q = wx @ (psi - digamma(q) + np.log(g))
    d_g = q / g * wx.sum()
    # Terms of each pair.
    px = p * x
    log_m, log_gmx = np.log(m), np.log(g + m * x)
    ll += w @ ((px - 1) * log_m - (px + q) * log_gmx)
    d_p += w @ (x * (log_m - log_gmx))
    d_q -= w @ log_gmx
    d_g -= w @ ((px + q) / (g + m * x))
    return -float(ll), -np.array([d_p, d_q, d_g]) * np.array([p, q, g])


def fit_gamma_gamma(
    x: np.ndarray,
    m: np.ndarray,
    weight: np.ndarray | None = None,
    initial: dict[str, float] | None = None,
    tol: float = 1e-10,
) -> GammaGammaFit:
    """Fit Gamma-Gamma to customers with x > 0 repeat purchases of mean value m > 0 (rows with x = 0 are
    dropped: they carry no spend information); each (x, m) pair stands for ``weight`` customers."""
    x, m = _arrays(x, m)
    w = _weights(weight, x)
    keep = x > 0
    x, m, w = x[keep], m[keep], w[keep]
    if len(x) == 0:
        raise ValueError("no customers with repeat purchases to fit")
    if np.any(m <= 0):
        raise ValueError("mean repeat spend must be positive where x > 0")
    start = initial or {"p": 1.0, "q": 1.0, "gamma": 1.0}
    x0 = np.log([start[k] for k in GAMMA_GAMMA_PARAMS])
    groups = _groups(x, w)
    return _fit(
        GammaGammaFit,
        GAMMA_GAMMA_PARAMS,
        lambda u: gamma_gamma_negative_log_likelihood(u, x, m, w, groups),
        x0,
        len(x),
        float(w.sum()),
        tol,
    )


# --- fitting ---------------------------------------------------------------------------------------------------


def _fit(
    kind: type[Fit],
    names: tuple[str, ...],
    objective: Callable[[np.ndarray], tuple[float, np.ndarray]],
    x0: np.ndarray,
    n_tuples: int,
    n_customers: float,
    tol: float,
) -> Fit:
    """Minimise ``objective`` (scaled per customer, so tolerances do not depend on the data size), then take
    standard errors from its Hessian at the optimum."""

    def scaled(u: np.ndarray) -> tuple[float, np.ndarray]:
        value, gradient = objective(u)
        if not np.isfinite(value):
            return np.inf, np.zeros_like(u)
        return value / n_customers, gradient / n_customers

    def run(start: np.ndarray) -> object:
        return minimize(
            scaled,
            start,
            jac=True,
            method="L-BFGS-B",
            bounds=[(-30.0, 30.0)] * len(x0),
            options={"maxiter": 2000, "ftol": tol, "gtol": 1e-9, "maxcor": 20},
        )

    result = run(x0)
    converged, message = bool(result.success), str(result.message)
    if not converged and message.startswith("ABNORMAL"):
        # The line search stalls where the objective is flat to rounding: at an optimum, or far along a ridge
        # whose limit is the optimum (Gamma-Gamma with p -> infinity and p gamma fixed, when each customer's
        # repeat purchases have the same value: the limit model's expected order value is the customer's own
        # mean). A restart from there that cannot lower the objective, with a gradient near zero, confirms it.
        again = run(result.x)
        gain = float(result.fun - again.fun)
        if again.fun < result.fun:
            result = again
        flat = gain <= 1e-9 * max(1.0, abs(float(result.fun))) and float(np.max(np.abs(result.jac))) <= 1e-4
        if again.success or flat:
            converged = True
            message = f"{message.strip()} then a restart gained {gain:.1e} per customer: a flat optimum"
    theta = np.exp(result.x)
    value, _ = objective(result.x)
    se_log = _log_std_errors(objective, result.x)
    return kind(
        params=dict(zip(names, map(float, theta), strict=True)),
        std_errors=dict(zip(names, map(float, theta * se_log), strict=True)),
        log_likelihood=-value,
        n_tuples=n_tuples,
        n_customers=n_customers,
        converged=converged,
        iterations=int(result.nit),
        message=message,
    )


def _log_std_errors(objective: Callable[[np.ndarray], tuple[float, np.ndarray]], u: np.ndarray) -> np.ndarray:
    """Standard errors of the log parameters: sqrt of the diagonal of the inverse Hessian of the negative
    log-likelihood, the Hessian a central difference of the analytic gradient (symmetrised); NaN where the
    Hessian is not positive definite."""
    k = len(u)
    hessian = np.empty((k, k))
    for i in range(k):
        h = 1e-5 * max(1.0, abs(u[i]))
        step = np.zeros(k)
        step[i] = h
        hessian[:, i] = (objective(u + step)[1] - objective(u - step)[1]) / (2 * h)
    hessian = (hessian + hessian.T) / 2
    try:
        np.linalg.cholesky(hessian)
    except np.linalg.LinAlgError:
        return np.full(k, np.nan)
    return np.sqrt(np.diag(np.linalg.inv(hessian)))


# --- predictions -----------------------------------------------------------------------------------------------


def _bg(fit: BgNbdFit | dict[str, float]) -> tuple[float, float, float, float]:
    params = fit.params if isinstance(fit, Fit) else fit
    return params["r"], params["alpha"], params["a"], params["b"]


def _alive_odds_term(fit: BgNbdFit | dict[str, float], x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
    """delta(x>0) a/(b+x-1) ((alpha+T)/(alpha+t_x))^(r+x): P(dead)/P(alive) given (x, t_x, T)."""
    r, alpha, a, b = _bg(fit)
    pos = x > 0
    log_term = np.log(a) - np.log(np.where(pos, b + x - 1, 1.0)) + (r + x) * (np.log(alpha + T) - np.log(alpha + t_x))
    return np.where(pos, np.exp(np.minimum(log_term, 700.0)), 0.0)


def p_alive(
    fit: BgNbdFit | dict[str, float], x: np.ndarray | float, t_x: np.ndarray | float, T: np.ndarray | float
) -> np.ndarray:
    """P(alive at T | x, t_x, T): 1 / (1 + delta(x>0) a/(b+x-1) ((alpha+T)/(alpha+t_x))^(r+x)); 1 when x = 0."""
    x, t_x, T = _arrays(x, t_x, T)
    return 1.0 / (1.0 + _alive_odds_term(fit, x, t_x, T))


def expected_purchases(
    fit: BgNbdFit | dict[str, float],
    t: np.ndarray | float,
    x: np.ndarray | float,
    t_x: np.ndarray | float,
    T: np.ndarray | float,
) -> np.ndarray:
    """E[purchases in (T, T+t] | x, t_x, T] (eq. 10 of the paper).

    Eq. 10 has (1-z)^(r+x) 2F1(r+x, b+x; a+b+x-1; z) with z = t / (alpha+T+t); for many purchases and a long
    horizon the 2F1 overflows while the power underflows (NaN). Euler's transformation,
    2F1(A, B; C; z) = (1-z)^(C-A-B) 2F1(C-A, C-B; C; z), turns the product into
    (1-z)^(a-1) 2F1(a+b-1-r, a-1; a+b+x-1; z), whose parameters do not grow with x.
    """
    t, x, t_x, T = _arrays(t, x, t_x, T)
    head = _purchases_head(fit, t, x, T)
    return head / (1.0 + _alive_odds_term(fit, x, t_x, T))


def _purchases_head(fit: BgNbdFit | dict[str, float], t: np.ndarray, x: np.ndarray, T: np.ndarray) -> np.ndarray:
    """(a+b+x-1)/(a-1) [1 - ((alpha+T)/(alpha+T+t))^(r+x) 2F1(r+x, b+x; a+b+x-1; t/(alpha+T+t))], Euler-transformed
    (see ``expected_purchases``)."""
    r, alpha, a, b = _bg(fit)
    z = t / (alpha + T + t)
    power = np.exp((a - 1) * (np.log(alpha + T) - np.log(alpha + T + t)))  # (1-z)^(a-1)
    return (a + b + x - 1) / (a - 1) * (1 - power * hyp2f1(a + b - 1 - r, a - 1, a + b + x - 1, z))


def expected_purchases_unconditional(fit: BgNbdFit | dict[str, float], t: np.ndarray | float) -> np.ndarray:
    """E[X(t)]: expected repeat purchases in (0, t] of a customer who made a first purchase at 0 (eq. 9)."""
    t = np.asarray(t, dtype=float)
    return _purchases_head(fit, t, np.zeros_like(t), np.zeros_like(t))


def expected_average_order_value(
    fit: GammaGammaFit | dict[str, float], x: np.ndarray | float, m: np.ndarray | float
) -> np.ndarray:
    """E[spend per purchase | x, m] = p (gamma + m x) / (p x + q - 1): a weighted mean of the population mean
    p gamma / (q - 1) and the customer's own mean m (for x = 0, the population mean). Needs q > 1."""
    params = fit.params if isinstance(fit, Fit) else fit
    p, q, g = params["p"], params["q"], params["gamma"]
    x, m = _arrays(x, m)
    m = np.where(x > 0, m, 0.0)
    return p * (g + m * x) / (p * x + q - 1)


def clv(
    bg_nbd: BgNbdFit | dict[str, float],
    gamma_gamma: GammaGammaFit | dict[str, float],
    x: np.ndarray | float,
    t_x: np.ndarray | float,
    T: np.ndarray | float,
    m: np.ndarray | float,
    horizon_months: int = 12,
    monthly_discount_rate: float = 0.01,
    unit_days: float = 7.0,
    days_per_month: float = DAYS_PER_MONTH,
) -> np.ndarray:
    """Discounted expected value of the purchases of the next ``horizon_months`` months:
    sum over i = 1..horizon of (E[purchases by month i] - E[by month i-1]) * E[order value] / (1 + d)^i,
    as lifetimes' ``customer_lifetime_value`` defines it. A month is ``days_per_month`` days (365.25/12; lifetimes
    takes 4.345 weeks); t_x and T are in units of ``unit_days`` days (7: weeks)."""
    x, t_x, T, m = _arrays(x, t_x, T, m)
    value = expected_average_order_value(gamma_gamma, x, m)
    return value * discounted_purchases(
        bg_nbd, x, t_x, T, horizon_months, monthly_discount_rate, unit_days, days_per_month
    )


def discounted_purchases(
    bg_nbd: BgNbdFit | dict[str, float],
    x: np.ndarray | float,
    t_x: np.ndarray | float,
    T: np.ndarray | float,
    horizon_months: int = 12,
    monthly_discount_rate: float = 0.01,
    unit_days: float = 7.0,
    days_per_month: float = DAYS_PER_MONTH,
) -> np.ndarray:
    """sum over i = 1..horizon of (E[purchases by month i] - E[by month i-1]) / (1 + d)^i: the CLV per unit of
    order value. It depends on (x, t_x, T) only, so it is computed once per distinct tuple and the CLV of a
    customer is this times their expected order value."""
    x, t_x, T = _arrays(x, t_x, T)
    total = np.zeros_like(x)
    previous = np.zeros_like(x)
    for month in range(1, horizon_months + 1):
        current = expected_purchases(bg_nbd, month * days_per_month / unit_days, x, t_x, T)
        total += (current - previous) / (1 + monthly_discount_rate) ** month
        previous = current
    return total
