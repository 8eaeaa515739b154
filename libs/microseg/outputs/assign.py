"""Assign stage: score each customer with its (layer, macro) champion, write assignments and their history.

gold.segment_assignments: one row per (customer_id, as_of, layer) with the stable segment id, its
label, the distance to the centroid or the membership probability and every membership above
``assign.membership_threshold`` (as the champion's algorithm says: ``Algorithm.scores_by``, KMeans
and BisectingKMeans by distance, GaussianMixture by probability), and the model version and
training run. MERGEd on its key, with Delta's change data feed on. gold.segment_history is a
type-2 slowly changing dimension of (customer_id, layer): a change of segment closes the current
row and opens a new one (the row keeps the macro segment the customer had when it opened).
"""

from __future__ import annotations

from functools import reduce

from pyspark.ml.functions import vector_to_array
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from microseg.features.catalog import load_catalog
from microseg.outputs.profiles import PROFILES, build_profiles, snapshot_features
from microseg.runtime import delta_ops, lake, tables
from microseg.runtime.config import Config
from microseg.runtime.errors import MicrosegError
from microseg.runtime.runlog import Entry, RunContext, StageReport
from microseg.runtime.sparkops import cached, described
from microseg.segmentation import algorithms
from microseg.segmentation.algorithms import SINGLE_SEGMENT
from microseg.segmentation.pipeline import CLUSTER, PROBABILITY, clustering_column, segment_id
from microseg.segmentation.registry import load_champion
from microseg.segmentation.stage import macros_of, rows_of, snapshot

ASSIGNMENTS, HISTORY = lake.SEGMENT_ASSIGNMENTS, lake.SEGMENT_HISTORY
MEMBERSHIP = "array<struct<segment_id:string,probability:double>>"


def _literal_map(pairs: dict) -> Column:
    return F.create_map(*[x for key, value in sorted(pairs.items()) for x in (F.lit(key), F.lit(value))])


def score_layer(model: object, rows: DataFrame, layer: str, macro: str, info: dict, threshold: float) -> DataFrame:
    """The champion's clusters as stable segment ids, with distance or membership probabilities.

    Which of the two, the registry entry of the champion's algorithm (``info["algorithm"]``) says; the
    one-segment model has neither.
    """
    ids = {c: segment_id(layer, macro, i) for c, i in info["cluster_to_id"].items()}
    scored = model.transform(rows)
    scores_by = None if info["algorithm"] == SINGLE_SEGMENT else algorithms.get(info["algorithm"]).scores_by
    distance = F.lit(None).cast("double")
    probability = F.lit(None).cast("double")
    memberships = F.lit(None).cast(MEMBERSHIP)
    if scores_by == "distance":
        centers = F.create_map(
            *[
                x
                for i, c in enumerate(model.stages[-1].clusterCenters())
                for x in (F.lit(i), F.array(*[F.lit(float(v)) for v in c]))
            ]
        )
        vector, center = vector_to_array(F.col(clustering_column(model))), centers[F.col(CLUSTER)]
        squares = F.zip_with(vector, center, lambda a, b: (a - b) * (a - b))
        distance = F.sqrt(F.aggregate(squares, F.lit(0.0), lambda acc, x: acc + x))
    elif scores_by == "probability":
        p = vector_to_array(F.col(PROBABILITY))
        probability = F.array_max(p)
        all_memberships = F.transform(
            p, lambda v, i: F.struct(_literal_map(ids)[i].alias("segment_id"), v.alias("probability"))
        )
        memberships = F.array_sort(
            F.filter(all_memberships, lambda m: m["probability"] >= threshold),
            lambda a, b: (
                F.when(a["probability"] > b["probability"], -1)
                .when(a["probability"] < b["probability"], 1)
                .otherwise(0)
            ),
        )
    return scored.select(
        "customer_id",
        "macro_segment",
        F.lit(layer).alias("layer"),
        _literal_map(ids)[F.col(CLUSTER)].alias("segment_id"),
        F.round(distance, 6).alias("distance_to_centroid"),
        F.round(probability, 6).alias("membership_probability"),
        memberships.alias("memberships"),
        F.lit(info["model"]).alias("model_name"),
        F.lit(info["version"]).alias("model_version"),
        F.lit(info["run_id"]).alias("training_run_id"),
    )


def score(features: DataFrame, cfg: Config) -> tuple[DataFrame, list[dict]]:
    """Every customer's segment per layer, from the champion of its macro segment."""
    present = sorted(r[0] for r in features.select("macro_segment").distinct().collect())
    parts, facts = [], []
    for layer in cfg.train.active_layers:
        for macro in macros_of(layer, cfg, present):
            model, info = load_champion(cfg, layer, macro)
            parts.append(
                score_layer(model, rows_of(features, macro), layer, macro, info, cfg.assign.membership_threshold)
            )
            facts.append({k: v for k, v in info.items() if k not in ("cluster_to_id", "algorithm")})
    return reduce(DataFrame.unionByName, parts), facts


def update_history(spark: SparkSession, cfg: Config, assigned: DataFrame, as_of: object) -> dict:
    """Apply one snapshot's assignments to the type-2 history of (customer_id, layer).

    Rerunning the latest snapshot first undoes it (its opened rows deleted, the rows it closed
    reopened), so a rerun gives the same history. A snapshot older than the history's latest is refused.

    Raises:
        MicrosegError: as_of is before the latest valid_from in gold.segment_history.
    """
    incoming = assigned.select("customer_id", "layer", "segment_id", "macro_segment")
    if not tables.exists(spark, cfg, HISTORY):
        opened = incoming.select(
            "*",
            F.lit(as_of).alias("valid_from"),
            F.lit(None).cast("date").alias("valid_to"),
            F.lit(True).alias("is_current"),
        )
        return {"opened": tables.create(opened, cfg, HISTORY)["numOutputRows"], "closed": 0}
    latest = tables.read(spark, cfg, HISTORY).agg(F.max("valid_from")).first()[0]
    if latest is not None and str(latest) > str(as_of):
        raise MicrosegError(
            f"{HISTORY} already holds snapshots up to {latest}; assigning {as_of} would rewrite later history. "
            f"Run assign for snapshots in date order (or rebuild the history from {ASSIGNMENTS})."
        )
    day = delta_ops.literal(as_of)
    if latest is not None and str(latest) == str(as_of):
        tables.delete(spark, cfg, HISTORY, f"valid_from = {day}")
        reopened = {"valid_to": "CAST(NULL AS DATE)", "is_current": "true"}
        tables.update(spark, cfg, HISTORY, reopened, f"valid_to = {day}")
    current = tables.read(spark, cfg, HISTORY).where("is_current")
    current = current.select("customer_id", "layer", F.col("segment_id").alias("_old"))
    joined = incoming.join(current, ["customer_id", "layer"], "left")
    moved = F.col("_old").isNull() | (F.col("_old") != F.col("segment_id"))
    opened = joined.where(moved).drop("_old")
    # Customers no longer in the snapshot (consent withdrawn, say) leave their segment: close only.
    left = current.join(incoming, ["customer_id", "layer"], "left_anti").select(
        "customer_id",
        "layer",
        F.lit(None).cast("string").alias("segment_id"),
        F.lit(None).cast("string").alias("macro_segment"),
    )
    # A changed row goes in twice: keyed, to close the current row; unkeyed, to insert the new one.
    staged = (
        opened.select(F.col("customer_id").alias("_key"), "*")
        .unionByName(left.select(F.col("customer_id").alias("_key"), "*"))
        .unionByName(opened.select(F.lit(None).cast("string").alias("_key"), "*"))
    )
    merged = tables.merge_type2(
        staged,
        cfg,
        HISTORY,
        on="t.customer_id = s._key AND t.layer = s.layer AND t.is_current",
        clauses=[
            f"WHEN MATCHED THEN UPDATE SET is_current = false, valid_to = {day}",
            "WHEN NOT MATCHED AND s._key IS NULL THEN INSERT "
            "(customer_id, layer, segment_id, macro_segment, valid_from, valid_to, is_current) "
            f"VALUES (s.customer_id, s.layer, s.segment_id, s.macro_segment, {day}, CAST(NULL AS DATE), true)",
        ],
    )
    return {"opened": merged["numTargetRowsInserted"], "closed": merged["numTargetRowsUpdated"]}


def run_assign(spark: SparkSession, cfg: Config, run: RunContext) -> StageReport:
    """MERGE one row per (customer_id, as_of, layer), write the snapshot's segment profiles, update the history.

    The profiles are computed once, here, because the labels come from them; the profile stage
    reuses them for the report.
    """
    catalog = load_catalog(cfg)
    # Cached: every (layer, macro) champion scores its share of the same snapshot.
    with cached(snapshot(spark, cfg, run.as_of)) as features:
        scored, facts = score(features, cfg)
        with cached(scored) as scored:
            with described(spark, "assign: segment profiles and labels"):
                profiles = build_profiles(
                    scored, snapshot_features(spark, cfg, run.as_of, catalog), catalog, cfg, run.as_of
                )
            labels = profiles.select("layer", "segment_id", F.col("label").alias("segment_label"))
            assigned = scored.join(F.broadcast(labels), ["layer", "segment_id"], "left").select(
                "customer_id", F.lit(run.as_of).alias("as_of"), "macro_segment", "layer", "segment_id",
                "segment_label", "distance_to_centroid", "membership_probability", "memberships",
                "model_name", "model_version", "training_run_id",
            )  # fmt: skip
            with described(spark, f"assign: MERGE into {ASSIGNMENTS}"):
                merged = tables.merge(assigned, cfg, ASSIGNMENTS, within={"as_of": run.as_of})
                # A rerun of the same snapshot commits nothing: its rows in are then counted here.
                rows_in = merged.get("numSourceRows", merged.get("numOutputRows")) if merged.committed else None
                rows_in = assigned.count() if rows_in is None else rows_in
                written = merged.rows_written
    with described(spark, "assign: segment profiles"):
        tables.replace_where(profiles, cfg, PROFILES, f"as_of = '{run.as_of}'")
    with described(spark, f"assign: {HISTORY}"):
        current = tables.read(spark, cfg, ASSIGNMENTS).where(F.col("as_of") == F.lit(run.as_of))
        history = update_history(spark, cfg, current, run.as_of)
    sizes = {
        r["segment_id"]: {"customers": r["size"], "label": r["label"]}
        for r in profiles.select("segment_id", "size", "label").collect()
    }
    report = StageReport(
        "assign", info={"segments": dict(sorted(sizes.items(), key=str)), "models": facts, "history": history}
    )
    report.entries.append(Entry(ASSIGNMENTS.name, rows_in=rows_in, rows_written=written, details={"history": history}))
    return report
