"""``microseg validate``: everything a run reads from conf/, checked before any stage starts.

The config, the source mapping (with the entities each source needs beside it), every quality rule
file and the features each layer of ``train.layers`` names. Each concern is read by its own loader;
here their errors are collected, so one call reports every problem, each with its file and key.
Pure Python: no SparkSession (expressions in a mapping are analysed by ingest, which needs Spark).
"""

from __future__ import annotations

from microseg.features.catalog import load_catalog
from microseg.ingest.mapping import SourceSpec, load_mapping
from microseg.quality.gx import read_rules, rule_files
from microseg.runtime.config import Config
from microseg.runtime.errors import ConfigError
from microseg.runtime.loader import origin_of
from microseg.segmentation.algorithms import ALGORITHMS

# Entity -> the entities of which the mapping needs one beside it: the customers its rows link to
# (clean derives customers from order lines when there is no CRM feed), or the orders its items belong to.
NEEDS: dict[str, tuple[str, ...]] = {
    "orders": ("customers", "order_lines"),
    "order_items": ("orders", "order_lines"),
    "web_events": ("customers", "order_lines"),
    "email_events": ("customers", "order_lines"),
    "support_tickets": ("customers", "order_lines"),
    "survey_responses": ("customers", "order_lines"),
}


def problems(cfg: Config, origins: dict[str, str] | None = None) -> list[str]:
    """Every problem found in the mapping, the quality rules and the layers' features (empty: all valid).

    ``origins`` (from ``load_config``) lets a config key be named with the file that set it.
    """
    return [*_mapping_problems(cfg), *_rule_problems(cfg), *_layer_problems(cfg, origins or {})]


def check(cfg: Config, origins: dict[str, str] | None = None) -> None:
    """Raise one ConfigError listing every problem ``problems`` finds.

    Raises:
        ConfigError: with one line per problem.
    """
    found = problems(cfg, origins)
    if found:
        raise ConfigError(f"{len(found)} problem(s) in conf/:\n" + "\n".join(f"  {p}" for p in found))


def _mapping_problems(cfg: Config) -> list[str]:
    try:
        specs = load_mapping(cfg)
    except ConfigError as exc:
        return [str(exc)]
    mapping_file = cfg.conf_file("sources", f"{cfg.sources.mapping}.yaml")
    return [f"{mapping_file}: {p}" for spec in specs.values() for p in _needs(spec, specs)]


def _needs(spec: SourceSpec, specs: dict[str, SourceSpec]) -> list[str]:
    needed = NEEDS.get(spec.entity, ())
    present = {s.entity for s in specs.values()}
    if not needed or present & set(needed):
        return []
    if "customers" in needed:
        return [
            f"sources.{spec.name}: entity {spec.entity} needs a customers source (entity: customers) in the "
            f"same mapping to link its customer_ref to customers. Without a CRM feed, map line-level order data "
            f"with entity: order_lines, which derives the customers from the order lines"
        ]
    return [
        f"sources.{spec.name}: entity {spec.entity} needs an orders source (entity: orders) or order lines "
        f"(entity: order_lines) in the same mapping, for the orders its rows belong to"
    ]


def _rule_problems(cfg: Config) -> list[str]:
    files = rule_files(cfg)
    if not files:
        return [f"quality.rules_dir: {cfg.conf_file(cfg.quality.rules_dir)} holds no rule files (*.yaml)"]
    found = []
    for path in files:
        try:
            read_rules(path)
        except ConfigError as exc:
            found.append(str(exc))
    return found


def _layer_problems(cfg: Config, origins: dict[str, str]) -> list[str]:
    found = []
    try:
        known = load_catalog(cfg).names
    except ConfigError as exc:
        found.append(str(exc))
        known = None
    for layer, spec in cfg.train.active_layers.items():
        key = f"train.layers.{layer}"
        unknown = [f for f in spec.features if known is not None and f not in known]
        if unknown:
            found.append(
                f"{origin_of(f'{key}.features', origins)}: {key}.features names feature(s) {unknown} that are not "
                f"in the feature catalog {cfg.conf_file(cfg.features.catalog)}; check the spelling "
                f"(microseg catalog lists them in docs/FEATURES.md)"
            )
        algorithms = [a for a in spec.algorithms if a not in ALGORITHMS]
        if algorithms:
            found.append(
                f"{origin_of(f'{key}.algorithms', origins)}: {key}.algorithms names unknown algorithm(s) "
                f"{algorithms}; known algorithms: {list(ALGORITHMS)}"
            )
    return found
