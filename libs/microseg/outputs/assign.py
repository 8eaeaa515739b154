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
from microseg.outputs.profiles import PROFILES, build_profiles, snapshot_features, snapshot_value
from microseg.runtime import lake, tables
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
HISTORY_COLUMNS = ("customer_id", "layer", "segment_id", "macro_segment", "valid_from", "valid_to", "is_current")
# What history_changes does to a row of the history.
OPEN, CLOSE, REOPEN, REMOVE = "open", "close", "reopen", "remove"
NO_CHANGE = {"opened": 0, "closed": 0, "reopened": 0, "removed": 0}


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
    """Apply one snapshot's assignments to the type-2 history of (customer_id, layer), in one Delta commit.

    Every application, first or rerun, is one MERGE (no commit at all when nothing changes), so an
    interruption leaves the history either as it was or with the snapshot applied. The MERGE undoes
    and re-applies (``history_changes``): from the state before ``as_of`` and the snapshot, it closes
    the rows of customers who moved or left, opens rows for those who moved or entered, and undoes
    what an earlier application of the same ``as_of`` did that this one would not (reopens a row it
    closed, removes a row it opened). A rerun with the same assignments changes nothing; one with
    other assignments gives the history that applying them directly would; so does a rerun after
    a crash of the earlier, three-commit version of this function, whichever commit it stopped after.

    Returns:
        What the commit did: ``opened`` rows inserted, ``closed`` rows closed, and, undoing an earlier
        application of the same as_of, ``reopened`` rows it had closed and ``removed`` rows it had opened.
        All 0 when nothing changed.

    Raises:
        MicrosegError: as_of is before a snapshot already in gold.segment_history (a valid_from or a valid_to).
    """
    incoming = assigned.select("customer_id", "layer", "segment_id", "macro_segment")
    if not tables.exists(spark, cfg, HISTORY):
        opened = incoming.select(
            "*",
            F.lit(as_of).cast("date").alias("valid_from"),
            F.lit(None).cast("date").alias("valid_to"),
            F.lit(True).alias("is_current"),
        )
        return {**NO_CHANGE, "opened": tables.create(opened, cfg, HISTORY)["numOutputRows"]}
    history = tables.read(spark, cfg, HISTORY)
    # A snapshot that only closed rows leaves its date in valid_to alone: the latest applied is either column's.
    latest = history.agg(F.greatest(F.max("valid_from"), F.max("valid_to"))).first()[0]
    if latest is not None and str(latest) > str(as_of):
        raise MicrosegError(
            f"{HISTORY} already holds snapshots up to {latest}; assigning {as_of} would rewrite later history. "
            f"Run assign for snapshots in date order (or rebuild the history from {ASSIGNMENTS})."
        )
    with cached(history_changes(history, incoming, as_of)) as changes:
        planned = dict(changes.groupBy("_action").count().collect())
        if not planned:
            return dict(NO_CHANGE)
        columns = ", ".join(HISTORY_COLUMNS)
        merged = tables.merge_type2(
            changes,
            cfg,
            HISTORY,
            # The values too: a row as_of opened in another segment is removed, its replacement inserted.
            on=" AND ".join(
                [f"t.{c} = s.{c}" for c in ("customer_id", "layer", "valid_from")]
                + [f"t.{c} <=> s.{c}" for c in ("segment_id", "macro_segment")]
            ),
            clauses=[
                f"WHEN MATCHED AND s._action = '{REMOVE}' THEN DELETE",
                f"WHEN MATCHED AND s._action IN ('{CLOSE}', '{REOPEN}') "
                "THEN UPDATE SET valid_to = s.valid_to, is_current = s.is_current",
                f"WHEN NOT MATCHED AND s._action = '{OPEN}' "
                f"THEN INSERT ({columns}) VALUES ({', '.join('s.' + c for c in HISTORY_COLUMNS)})",
            ],
        )
    # Closes and reopens are both updates to Delta: the plan tells them apart.
    reopened = planned.get(REOPEN, 0)
    return {
        "opened": merged.get("numTargetRowsInserted", 0),
        "closed": merged.get("numTargetRowsUpdated", 0) - reopened,
        "reopened": reopened,
        "removed": merged.get("numTargetRowsDeleted", 0),
    }


def history_changes(history: DataFrame, incoming: DataFrame, as_of: object) -> DataFrame:
    """The rows of gold.segment_history to change for the snapshot ``incoming`` of ``as_of``, as the history's
    columns and ``_action``: open (insert), close, reopen, or remove (delete), only where the row is not so already.

    The state before ``as_of`` (the base) is every current row not opened at ``as_of``, plus the rows
    ``as_of`` closed, taken as open: at most one row per (customer_id, layer). Against it, a customer
    in another segment than its base row's moved (base row closed at as_of, new row opened), one
    without a base row entered (opened), one absent from the snapshot left (closed). Rows opened at
    ``as_of`` earlier that are not wanted any more (moved elsewhere, or not at all) are removed; a
    macro segment change alone opens nothing (the row keeps the macro segment it opened with).
    """
    day = F.lit(as_of).cast("date")
    base = history.where((F.col("is_current") & (F.col("valid_from") != day)) | (F.col("valid_to") == day)).select(
        "customer_id",
        "layer",
        F.col("segment_id").alias("_base"),
        F.col("macro_segment").alias("_base_macro"),
        F.col("valid_from").alias("_since"),
        F.col("valid_to").alias("_until"),
    )
    compared = base.join(incoming.withColumn("_in", F.lit(True)), ["customer_id", "layer"], "full")
    stays = F.col("_in").isNotNull() & F.col("_since").isNotNull() & (F.col("segment_id") == F.col("_base"))
    ends = F.col("_since").isNotNull() & ~stays
    base_rows = compared.where(F.col("_since").isNotNull()).select(
        "customer_id",
        "layer",
        F.col("_base").alias("segment_id"),
        F.col("_base_macro").alias("macro_segment"),
        F.col("_since").alias("valid_from"),
        F.when(ends, day).cast("date").alias("valid_to"),
        (~ends).alias("is_current"),
        F.when(ends & F.col("_until").isNull(), F.lit(CLOSE))
        .when(~ends & F.col("_until").isNotNull(), F.lit(REOPEN))
        .alias("_action"),
    )
    same = ["customer_id", "layer", "segment_id", "macro_segment"]
    wanted = compared.where(F.col("_in").isNotNull() & ~stays).select(*same, F.lit(True).alias("_wanted"))
    there = history.where(F.col("valid_from") == day).select(
        *[F.col(c).alias(f"_there_{c}") for c in same], F.lit(True).alias("_there")
    )
    # Null-safe: a snapshot may lack a macro segment, and an outer join on = would not match the nulls.
    at_day = wanted.join(there, [F.col(c).eqNullSafe(F.col(f"_there_{c}")) for c in same], "full").select(
        *[F.coalesce(c, f"_there_{c}").alias(c) for c in same],
        day.alias("valid_from"),
        F.lit(None).cast("date").alias("valid_to"),
        F.lit(True).alias("is_current"),
        F.when(F.col("_there").isNull(), F.lit(OPEN)).when(F.col("_wanted").isNull(), F.lit(REMOVE)).alias("_action"),
    )
    return base_rows.unionByName(at_day).where(F.col("_action").isNotNull())


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
                features = snapshot_features(spark, cfg, run.as_of, catalog)
                value = snapshot_value(spark, cfg, run.as_of)
                profiles = build_profiles(scored, features, catalog, cfg, run.as_of, value)
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
