"""Our BG/NBD and Gamma-Gamma fits against an established implementation, lifetimes 0.11.3, on the same data.

lifetimes pins what the project cannot take (numpy < 2 era pandas and scipy, autograd), so it lives in its own
virtualenv, created here once and reused (``~/.cache/microseg-peer-venv``, or ``MICROSEG_PEER_VENV``), and runs
as a subprocess (``clv_peer_lifetimes.py``) on the same data: the CDNOW summary lifetimes ships (2,357 real
customers) and 10,000 customers simulated at the paper's parameters, by day. lifetimes fits with no penalizer
(``penalizer_coef=0``) and BFGS to ``tol=1e-8`` (on the gradient of the mean negative log-likelihood; at 1e-10
its BFGS can stop on "precision loss" and lifetimes raises); we fit with ``ftol`` 1e-10. Parameters and
per-customer p_alive, expected purchases, order value and CLV must agree within 1e-3 relative (they agree
within about 1e-5). The test skips only when PyPI cannot be reached to create the virtualenv.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from microseg.value import clv
from microseg.value.simulate import simulate_customers

HERE = Path(__file__).resolve().parent
VENV = Path(os.environ.get("MICROSEG_PEER_VENV", Path.home() / ".cache" / "microseg-peer-venv"))
# lifetimes 0.11.3 (the last release) imports and fits on Python 3.11 with these; newer pandas/scipy break it.
REQUIREMENTS = ["lifetimes==0.11.3", "numpy<2", "pandas<2.2", "scipy<1.12"]
TOLERANCE = 1e-3


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _works(venv: Path) -> bool:
    python = _python(venv)
    return python.exists() and subprocess.run([python, "-c", "import lifetimes"], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def peer_python() -> Path:
    """The Python of a virtualenv with lifetimes; created on first use (about 10-40 s with a warm pip cache)."""
    if _works(VENV):
        return _python(VENV)
    try:
        urllib.request.urlopen("https://pypi.org/simple/lifetimes/", timeout=20).close()
    except OSError as error:
        pytest.skip(f"PyPI unreachable ({error}), so the lifetimes virtualenv cannot be created")
    started = time.perf_counter()
    base = "python3.11" if sys.version_info[:2] != (3, 11) else sys.executable
    subprocess.run([base, "-m", "venv", "--clear", VENV], check=True)
    subprocess.run([_python(VENV), "-m", "pip", "install", "-q", *REQUIREMENTS], check=True)
    assert _works(VENV)
    print(f"created the lifetimes virtualenv {VENV} in {time.perf_counter() - started:.1f}s")
    return _python(VENV)


def run_peer(python: Path, source: str, out: Path) -> dict[str, np.ndarray]:
    subprocess.run([python, HERE / "clv_peer_lifetimes.py", source, out], check=True, timeout=600)
    with np.load(out) as data:
        return {k: data[k] for k in data.files}


def relative(ours: np.ndarray | float, theirs: np.ndarray | float) -> float:
    return float(np.max(np.abs(np.asarray(ours) - np.asarray(theirs)) / np.abs(np.asarray(theirs))))


def compare(peer: dict[str, np.ndarray]) -> dict[str, float]:
    """Fit ours on the peer's data; return the relative differences (printed: the report quotes them)."""
    x, t_x, T, m = peer["x"], peer["t_x"], peer["T"], peer["m"]
    bg = clv.fit_bg_nbd(x, t_x, T)
    gg = clv.fit_gamma_gamma(x, np.where(x > 0, m, np.nan))
    assert bg.converged and gg.converged
    theirs = {"r": peer["bg_r"], "alpha": peer["bg_alpha"], "a": peer["bg_a"], "b": peer["bg_b"]}
    theirs |= {"p": peer["gg_p"], "q": peer["gg_q"], "gamma": peer["gg_v"]}
    ours = bg.params | gg.params
    diffs = {name: relative(ours[name], theirs[name]) for name in theirs}
    diffs["p_alive"] = relative(clv.p_alive(bg, x, t_x, T), peer["p_alive"])
    diffs["expected_39"] = relative(clv.expected_purchases(bg, 39.0, x, t_x, T), peer["expected_39"])
    diffs["aov"] = relative(clv.expected_average_order_value(gg, x, m), peer["aov"])
    value = clv.clv(bg, gg, x, t_x, T, m, 12, 0.01, unit_days=7, days_per_month=4.345 * 7)  # lifetimes' month
    diffs["clv"] = relative(value, peer["clv"])
    print({k: float(v) for k, v in ours.items()}, {k: float(v) for k, v in theirs.items()}, diffs)
    return diffs


def test_cdnow_summary_matches_lifetimes(peer_python, tmp_path):
    diffs = compare(run_peer(peer_python, "cdnow", tmp_path / "cdnow.npz"))
    assert max(diffs.values()) <= TOLERANCE, diffs


def test_simulated_customers_match_lifetimes(peer_python, tmp_path):
    data = simulate_customers(10_000, np.random.default_rng(42), resolution=1 / 7)
    data["m"] = np.round(np.nan_to_num(data["m"]), 2)
    np.savez(tmp_path / "in.npz", **data)
    diffs = compare(run_peer(peer_python, str(tmp_path / "in.npz"), tmp_path / "out.npz"))
    assert max(diffs.values()) <= TOLERANCE, diffs
