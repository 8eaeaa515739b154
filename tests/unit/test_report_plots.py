"""Report and k-selection plots: one colour per algorithm in every panel, readable heatmap text, no null drawn as 0."""

import matplotlib.pyplot as plt

from microseg.outputs.report import heatmap_features, heatmap_plot, text_color
from microseg.segmentation import algorithms
from microseg.segmentation.artifacts import curves_figure
from microseg.segmentation.metrics import Candidate


def _candidate(algorithm, k, wssse=None, bic=None):
    return Candidate(algorithm, k, 0.3, 0.2, 0.9, {0: 5, 1: 5}, wssse=wssse, bic=bic)


def _colours(fig):
    return [{line.get_label(): line.get_color() for line in ax.get_lines()} for ax in fig.axes]


def test_each_algorithm_keeps_its_colour_in_every_panel_and_every_figure():
    # GaussianMixture has no WSSSE, the k-means family no BIC: a panel without an algorithm shifts no colour.
    both = [_candidate("kmeans", 2, wssse=10.0), _candidate("gaussian_mixture", 2, bic=5.0),
            _candidate("bisecting_kmeans", 2, wssse=11.0), _candidate("kmeans", 3, wssse=8.0)]  # fmt: skip
    only_gmm = [_candidate("gaussian_mixture", 2, bic=5.0), _candidate("gaussian_mixture", 3, bic=4.0)]
    panels = _colours(curves_figure(both, "value / active")) + _colours(curves_figure(only_gmm, "value / new"))
    plt.close("all")
    expected = {"kmeans": "tab:blue", "bisecting_kmeans": "tab:orange", "gaussian_mixture": "tab:green"}
    seen = {}
    for panel in panels:
        for name, colour in panel.items():
            seen.setdefault(name, set()).add(colour)
    assert seen == {name: {colour} for name, colour in expected.items()}
    assert panels[3] == {"gaussian_mixture": "tab:green"}  # the BIC panel of the first figure
    assert panels[2] == {"bisecting_kmeans": "tab:orange", "kmeans": "tab:blue"}  # its WSSSE panel


def test_an_algorithm_without_a_colour_gets_a_fixed_one_from_its_name():
    assert algorithms.color("my_algorithm") == algorithms.color("my_algorithm")
    assert algorithms.color("my_algorithm") in algorithms.PALETTE
    assert algorithms.color("kmeans") == "tab:blue"


def test_heatmap_text_is_white_on_dark_cells_and_black_on_light_ones():
    assert text_color((0.02, 0.19, 0.38, 1.0)) == "white"  # RdBu_r at -3: dark blue
    assert text_color((0.4, 0.0, 0.12, 1.0)) == "white"  # RdBu_r at +3: dark red
    assert text_color((0.97, 0.97, 0.97, 1.0)) == "black"  # RdBu_r at 0: near white
    assert text_color((1.0, 1.0, 0.0, 1.0)) == "black"  # yellow is light


def test_a_feature_null_for_every_segment_is_not_drawn():
    profiles = [
        {"segment_id": f"value-churned-{i}", "label": f"l{i}", "z_in_macro_recency_days": z,
         "z_in_macro_discount_share": None}
        for i, z in enumerate([1.2, -1.2])
    ]  # fmt: skip
    assert heatmap_features(profiles, ["recency_days", "discount_share"]) == ["recency_days"]
    assert heatmap_plot(profiles, ["recency_days", "discount_share"], "value / churned")
    assert heatmap_plot(profiles, ["discount_share"], "value / churned") is None
