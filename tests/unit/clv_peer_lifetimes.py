"""Run by test_clv_peer.py with the Python of a separate virtualenv holding ``lifetimes`` (its pins conflict with
the project's): fit BG/NBD and Gamma-Gamma with lifetimes and write the parameters and predictions to an .npz.

Usage: python clv_peer_lifetimes.py SOURCE OUT.npz, SOURCE an .npz with x, t_x, T, m or ``cdnow`` for the CDNOW
summary lifetimes ships (2,357 customers, weeks). The data fitted goes into OUT too, so the caller fits the same.
"""

import sys
import time

import numpy as np
import pandas as pd
from lifetimes import BetaGeoFitter, GammaGammaFitter
from lifetimes.datasets import load_cdnow_summary_data_with_monetary_value


def main(source: str, out: str) -> None:
    if source == "cdnow":
        data = load_cdnow_summary_data_with_monetary_value()
        x, t_x, T, m = (data[c].to_numpy(float) for c in ("frequency", "recency", "T", "monetary_value"))
    else:
        with np.load(source) as data:
            x, t_x, T, m = (data[c].astype(float) for c in ("x", "t_x", "T", "m"))
    m = np.where(x > 0, m, 0.0)
    frequency, recency, age, spend = pd.Series(x), pd.Series(t_x), pd.Series(T), pd.Series(m)
    pos = x > 0
    started = time.perf_counter()
    bg = BetaGeoFitter(penalizer_coef=0.0).fit(frequency, recency, age, tol=1e-8)
    gg = GammaGammaFitter(penalizer_coef=0.0).fit(frequency[pos], spend[pos], tol=1e-8)
    seconds = time.perf_counter() - started
    np.savez(
        out,
        x=x,
        t_x=t_x,
        T=T,
        m=m,
        fit_seconds=seconds,
        **{f"bg_{k}": v for k, v in bg.params_.items()},
        **{f"gg_{k}": v for k, v in gg.params_.items()},
        p_alive=np.asarray(bg.conditional_probability_alive(x, t_x, T), dtype=float),
        expected_39=np.asarray(bg.conditional_expected_number_of_purchases_up_to_time(39, x, t_x, T), dtype=float),
        aov=np.asarray(gg.conditional_expected_average_profit(frequency, spend), dtype=float),
        clv=np.asarray(
            gg.customer_lifetime_value(bg, frequency, recency, age, spend, time=12, discount_rate=0.01, freq="W"),
            dtype=float,
        ),
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
