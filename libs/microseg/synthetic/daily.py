"""One more day of source files for a data set made by ``datagen.generate`` (``microseg datagen --next-day``).

The day after the manifest's end_date gets new files in every source's folder, named ``<day>-NN.<ext>``;
files already there are never rewritten. Each source gets about ``datagen.day_share`` of the rows it was
generated with, from the same customers (and new ones):

- orders: a customer who is not lapsed orders that day with probability day_share x their generated number
  of orders (x the share of orders lapsed customers would have had: ``ORDERS_SCALE``), so the day has about
  day_share of the generated sales; with the items of those orders. Sales of
  a week before, if that was an added day, come back as returns (the generated data holds the returns of its
  own sales, up to a week after its end_date).
- web_events: a session with probability day_share x the customer's generated sessions.
- email_events: the day's campaign, sent to a reachable customer with probability day_share x the campaigns
  they received in the generated data.
- support_tickets: a ticket with probability day_share x the customer's generated tickets (lapsed customers
  none, the others made up for them: ``TICKETS_SCALE``); survey_responses:
  an answer with probability day_share x 0.25 (the share that answered in the generated data).
- crm_customers: a delta of day_share x 0.8 x customers updated (consent to email, country or last name
  changed, updated_at that day) and day_share x 0.2 x customers signing up that day, in the new_customer
  group, with the next customer ids. They are customers like the others on later days.

The planted dirt comes at the same rates and by the same functions as in the generated data (so a few dirty
rows, such as future-dated copies, are not dated the day). Ids carry the day (``O<customer_ref>-D20260101``),
so they never collide with generated ones or another day's. Every draw is a hash of (seed, purpose and day,
row key): the same data set gives the same day, and the generated customers are recomputed from the
manifest's seed, customers and dates, never read back from the files.

Simplifications: an update carries the customer's generated record with one field changed, so a later day's
update of the same customer does not keep an earlier day's change; the day's other rows follow the generated
record too (a customer whose consent to email an update withdrew can still be in a later day's campaign).

The manifest gets the new end_date, customers, rows and dirt (counting all files) and one entry in ``days`` per
added day; ``base`` keeps what the generated data was drawn from (customers, end_date, rows).
"""

from __future__ import annotations

import datetime as dt
import json
import posixpath
from collections.abc import Callable

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from microseg.runtime import storage
from microseg.runtime.config import Config, DatagenConfig
from microseg.synthetic.commerce import dirty_orders, items_frame, return_rows, sale_rows
from microseg.synthetic.datagen import FORMATS, SOURCES, write_source
from microseg.synthetic.events import campaign_events, session_events, survey_rows, ticket_rows
from microseg.synthetic.groups import COUNTRIES, GROUPS, LAST_NAMES, Group, int_between, pick, ts, uniform
from microseg.synthetic.people import (
    crm_records,
    customer_rows,
    customers_frame,
    email_address,
    with_crm_duplicates,
)

CAMPAIGNS = 24  # campaigns in the generated data, evenly spread (events.email_events_frame)
SURVEYED = 0.25  # share of customers who answered the survey in the generated data (events.survey_frame)
RETURN_DAYS = 7  # a returned order comes back this many days after it was placed (commerce.return_rows)
NEW_SHARE = 0.2  # of the day's CRM rows, new sign-ups; the rest updates


def _not_lapsed(mean: Callable[[Group], float]) -> float:
    """1 / the share of a per-customer count (``mean``: its mean in a group) held by customers who are not
    lapsed: lapsed customers neither order nor open tickets on an added day, the others make up for them."""
    total = sum(g.weight * mean(g) for g in GROUPS)
    return total / sum(g.weight * mean(g) for g in GROUPS if g.name != "lapsed")


ORDERS_SCALE = _not_lapsed(lambda g: sum(g.orders) / 2)
TICKETS_SCALE = _not_lapsed(lambda g: 1.5)  # tickets: 0 to 3 for everyone


def next_day(spark: SparkSession, cfg: DatagenConfig, out: str, store: Config | None = None) -> dict:
    """Add the day after the end_date of ``out/_manifest.json`` to the data set in ``out``; return the manifest.

    ``cfg`` gives the dirt rates, ``day_share`` and the partitions; seed, customers and dates come from the
    manifest. ``store``: the config whose storage settings reach ``out`` (runtime/storage.py).

    Raises:
        FileExistsError: files of that day are already in a source's folder (left by an interrupted earlier
            attempt: the message says to remove them).
    """
    manifest = json.loads(storage.read_text(store, storage.join(out, "_manifest.json")))
    base = manifest.setdefault(
        "base", {"customers": manifest["customers"], "end_date": manifest["end_date"], "rows": dict(manifest["rows"])}
    )
    day = dt.date.fromisoformat(manifest["end_date"]) + dt.timedelta(days=1)
    left = [f.path for s in [*SOURCES, "_ground_truth"] for f in storage.list_files(store, f"{out}/{s}/{day}-*")]
    if left:
        raise FileExistsError(
            f"{len(left)} file(s) of {day} are in {out} (e.g. {left[0]}) but its manifest ends on "
            f"{manifest['end_date']}: an earlier --next-day was interrupted; remove the files named {day}-* from "
            "the source folders and run again"
        )
    days = manifest.setdefault("days", [])
    new_customers = round(cfg.day_share * NEW_SHARE * base["customers"])
    entry = {"date": day.isoformat(), "first_id": manifest["customers"], "new_customers": new_customers}
    cfg = cfg.model_copy(
        update={
            "seed": manifest["seed"],
            "customers": base["customers"],
            "start_date": dt.date.fromisoformat(manifest["start_date"]),
            "end_date": dt.date.fromisoformat(base["end_date"]),
        }
    )
    people = population(spark, cfg, [*days, entry], day).cache()
    frames = day_frames(spark, cfg, people, days, day)
    staging = storage.join(out, "_staging", day.isoformat())
    storage.remove(store, staging)
    entry.update(rows={}, dirt={}, files=[])
    tag = f"D{day:%Y%m%d}-"
    for source in SOURCES:
        entry["rows"][source], entry["dirt"][source] = write_source(
            spark,
            cfg,
            frames[source],
            FORMATS[source],
            storage.join(staging, source),
            store,
            partitions=lambda _: 1,
            tag=tag,
            write_empty=False,
        )
    folders = [s for s in SOURCES if entry["rows"][s]]
    if new_customers:  # the new customers' planted group, beside the generated ones'
        truth = people.where(F.col("id") >= entry["first_id"]).select("customer_ref", "group", "mover")
        truth.coalesce(1).write.parquet(storage.join(staging, "_ground_truth"))
        folders.append("_ground_truth")
    people.unpersist()
    for folder in folders:
        moved = storage.move_files(store, storage.join(staging, folder), storage.join(out, folder), f"{day}-")
        entry["files"] += [f"{folder}/{posixpath.basename(f)}" for f in moved]
    storage.remove(store, storage.join(out, "_staging"))
    days.append(entry)
    manifest["end_date"] = day.isoformat()
    manifest["customers"] += new_customers
    for source in SOURCES:
        manifest["rows"][source] += entry["rows"][source]
        totals = manifest["dirt"].setdefault(source, {})
        for kind, count in entry["dirt"][source].items():
            totals[kind] = totals.get(kind, 0) + count
        manifest["dirt"][source] = dict(sorted(totals.items()))
    storage.write_text(store, storage.join(out, "_manifest.json"), json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def population(spark: SparkSession, cfg: DatagenConfig, days: list[dict], day: dt.date) -> DataFrame:
    """The generated customers and those who signed up on an added day up to ``day`` (``days``: the manifest's
    entries), with the columns of ``people.customers_frame``."""
    people = customers_frame(spark, cfg)
    for added in days:
        signup = dt.date.fromisoformat(added["date"])
        if signup > day or not added["new_customers"]:
            continue
        offset = F.lit((signup - cfg.start_date).days)
        ids = spark.range(added["first_id"], added["first_id"] + added["new_customers"], numPartitions=1)
        people = people.unionByName(customer_rows(ids.withColumn("group", F.lit("new_customer")), cfg, offset, offset))
    return people


def day_frames(
    spark: SparkSession, cfg: DatagenConfig, people: DataFrame, days: list[dict], day: dt.date
) -> dict[str, DataFrame]:
    """Every source's rows of ``day`` (with ``_dirt``), from ``people`` (``population`` up to that day)."""
    share, offset, tag = cfg.day_share, F.lit((day - cfg.start_date).days), f"{day:%Y%m%d}"
    sales = _sales(people, cfg, day)
    week_before = day - dt.timedelta(days=RETURN_DAYS)
    returns = None
    if any(d["date"] == week_before.isoformat() for d in days):
        returns = return_rows(_sales(population(spark, cfg, days, week_before), cfg, week_before), cfg)
    sales, returns = sales.drop("return_rate"), returns.drop("return_rate") if returns is not None else None
    orders = sales.unionByName(dirty_orders(sales, cfg))
    if returns is not None:
        orders = orders.unionByName(returns)
    return {
        "crm_customers": _crm_delta(people, cfg, day),
        "orders": orders,
        "order_items": items_frame(sales, cfg),
        "web_events": session_events(
            _drawn(people, cfg, f"session:{tag}", share * F.col("n_sessions"), "session_id", f"S%s-D{tag}"), offset, cfg
        ),
        "email_events": campaign_events(_campaign(people, cfg, tag, offset), cfg),
        "support_tickets": ticket_rows(_tickets(people, cfg, tag), offset, cfg),
        "survey_responses": survey_rows(
            _drawn(people, cfg, f"survey:{tag}", F.lit(share * SURVEYED), "response_id", f"R%s-D{tag}"),
            offset,
            "response_id",
            cfg,
        ),
    }


def _drawn(people: DataFrame, cfg: DatagenConfig, purpose: str, chance: Column, key: str, pattern: str) -> DataFrame:
    """The customers of ``people`` drawn for ``purpose`` with probability ``chance``, each with the id
    ``pattern`` % customer_ref in column ``key``."""
    drawn = people.where(uniform(cfg.seed, f"day_{purpose}", "id") < chance)
    return drawn.withColumn(key, F.format_string(pattern, F.col("customer_ref")))


def _sales(people: DataFrame, cfg: DatagenConfig, day: dt.date) -> DataFrame:
    """The day's sales: one order for a customer who is not lapsed, with probability day_share x orders."""
    active = people.where(F.col("group") != "lapsed")
    tag = f"{day:%Y%m%d}"
    chance = cfg.day_share * ORDERS_SCALE * F.col("n_orders")
    buyers = _drawn(active, cfg, f"order:{tag}", chance, "order_id", f"O%s-D{tag}")
    return sale_rows(buyers, F.lit((day - cfg.start_date).days), cfg)


def _campaign(people: DataFrame, cfg: DatagenConfig, tag: str, offset: Column) -> DataFrame:
    """The sends of the day's campaign ``CMP-D<tag>`` (the columns ``events.campaign_events`` reads): to a
    reachable customer with probability day_share x the campaigns they received in the generated data (at
    least one: customers who signed up on an added day received none)."""
    horizon = (cfg.end_date - cfg.start_date).days
    received = F.size(  # as events.email_events_frame sends them: those after signing up
        F.filter(
            F.sequence(F.lit(1), F.lit(CAMPAIGNS)),
            lambda n: F.floor(n * F.lit(horizon / 24.5)).cast("int") >= F.col("signup_offset"),
        )
    )
    reachable = people.where(F.col("consent_email") & ~F.col("dirty_email"))
    chance = cfg.day_share * F.greatest(received, F.lit(1))
    chosen = reachable.where(uniform(cfg.seed, f"day_campaign:{tag}", "id") < chance)
    return chosen.select(
        "customer_ref",
        "email_open",
        "email_click",
        email_address(F.col("first_name"), F.col("last_name"), F.col("id")).alias("email"),
        offset.alias("campaign_day"),
        F.concat_ws("-", F.col("customer_ref"), F.lit(tag)).alias("send_key"),
        F.format_string(f"M%s-D{tag}", F.col("customer_ref")).alias("send_id"),
        F.lit(f"CMP-D{tag}").alias("campaign_id"),
    )


def _tickets(people: DataFrame, cfg: DatagenConfig, tag: str) -> DataFrame:
    """The day's tickets: one for a customer who is not lapsed, with probability day_share x their tickets."""
    generated = int_between(uniform(cfg.seed, "n_tickets", "id"), 0, 3)  # as events.support_tickets_frame draws
    active = people.where(F.col("group") != "lapsed")
    return _drawn(active, cfg, f"ticket:{tag}", cfg.day_share * TICKETS_SCALE * generated, "ticket_id", f"T%s-D{tag}")


def _crm_delta(people: DataFrame, cfg: DatagenConfig, day: dt.date) -> DataFrame:
    """The CRM rows of the day: customers updated (one field changed) and customers who signed up that day,
    updated_at that day; duplicates planted as in the generated data."""
    seed, tag, offset = cfg.seed, f"{day:%Y%m%d}", F.lit((day - cfg.start_date).days)
    new = F.col("signup_offset") == offset
    updated = people.where(~new & (uniform(seed, f"day_update:{tag}", "id") < cfg.day_share * (1 - NEW_SHARE)))
    change = uniform(seed, f"day_change:{tag}", "id")
    updates = crm_records(updated, cfg).withColumns(
        {
            "consent_email": F.when(change < 1 / 3, ~F.col("consent_email")).otherwise(F.col("consent_email")),
            "country": F.when(
                (change >= 1 / 3) & (change < 2 / 3), pick(uniform(seed, f"day_country:{tag}", "id"), COUNTRIES)
            ).otherwise(F.col("country")),
            "last_name": F.when(change >= 2 / 3, pick(uniform(seed, f"day_name:{tag}", "id"), LAST_NAMES)).otherwise(
                F.col("last_name")
            ),
        }
    )
    signups = crm_records(people.where(new), cfg)
    records = updates.unionByName(signups).withColumn(
        "updated_at", ts(offset, cfg.start_date, uniform(seed, f"day_updated:{tag}", "id"))
    )
    return with_crm_duplicates(records, cfg).drop("id")
