"""The identity map's staging in a clean run: after the customers (their keys), and once the web events are
staged (their anonymous ids); merged by the keys the run touches, or rebuilt (``clean.identity``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from pyspark.sql import DataFrame, SparkSession

from microseg.clean import staging
from microseg.clean.identity import identity_keys, stage_identity_changes, stage_identity_map
from microseg.clean.staging import INCREMENTAL, REBUILD, Manifest, Plan
from microseg.runtime import lake, tables
from microseg.runtime.config import Config
from microseg.runtime.lake import Table


def stage_identity(
    spark: SparkSession, cfg: Config, manifest: Manifest, anonymous_ids: bool, customers_pass: dict | None = None
) -> dict:
    """Stage the identity map and conflicts for what this run staged: the keys its customers and (with
    ``anonymous_ids``) web events touch (``stage_identity_changes``), or all of them when the map is new,
    silver.customers is not published, or the customers or web events are rebuilt (``stage_identity_map``).
    Returns counts for the report: the keys restaged (with those of the ``customers_pass``), and the
    conflicts once the web events' ids are in."""

    def current(table: Table) -> DataFrame | None:
        return staging.current(spark, cfg, table, manifest)

    fed = [manifest.plan_of(lake.CUSTOMERS), manifest.plan_of(lake.WEB_EVENTS) if anonymous_ids else None]
    # The map is merged against the published customers it was made from. A publication killed midway can
    # leave the map published and silver.customers not yet created: then the map is rebuilt.
    published = all(tables.exists(spark, cfg, t) for t in (lake.IDENTITY_MAP, lake.IDENTITY_CONFLICTS, lake.CUSTOMERS))
    if not published or any(plan is not None and plan.mode == REBUILD for plan in fed):
        manifest.plans[staging.IDENTITY] = Plan(staging.IDENTITY, [], REBUILD)
        web = current(lake.WEB_EVENTS) if anonymous_ids else None
        return {"mode": REBUILD, **stage_identity_map(current(lake.CUSTOMERS), web, _staging(cfg, manifest))}
    # The customers' keys, staged right after the customers, stay; the web events' anonymous ids join them.
    earlier = manifest.plans.get(staging.IDENTITY)
    customers_done = anonymous_ids and earlier is not None and earlier.mode == INCREMENTAL
    manifest.plans[staging.IDENTITY] = Plan(staging.IDENTITY, [], INCREMENTAL)
    customers, web = (staging.staged(spark, cfg, table) if plan else None for table, plan in zip(
        (lake.CUSTOMERS, lake.WEB_EVENTS), fed, strict=True
    ))  # fmt: skip
    write = _staging(cfg, manifest, append=customers_done)
    customers = None if customers_done else customers
    restaged = stage_identity_changes(
        current(lake.CUSTOMERS),
        tables.read(spark, cfg, lake.CUSTOMERS),
        customers,
        web,
        identity_keys(lambda table: tables.read(spark, cfg, table)),
        write,
    )
    if customers_done and customers_pass:
        restaged = dict(sorted((Counter(customers_pass.get("keys_restaged", {})) + Counter(restaged)).items()))
    if not anonymous_ids:
        return {"mode": INCREMENTAL, "keys_restaged": restaged}
    conflicts = current(lake.IDENTITY_CONFLICTS).groupBy("key_type").count().collect()
    return {"mode": INCREMENTAL, "keys_restaged": restaged, "conflicts": {r[0]: r[1] for r in conflicts}}


def _staging(cfg: Config, manifest: Manifest, append: bool = False) -> Callable[[DataFrame, Table], None]:
    def write(df: DataFrame, table: Table) -> None:
        staging.stage(df, cfg, table, manifest, staging.IDENTITY, append)

    return write
