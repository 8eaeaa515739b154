"""The table registry: every table microseg reads or writes, declared once.

Each entry gives the table's name (``<layer>.<table>``, stored at ``<lake.root>/<layer>/<table>``),
what it holds, its key, partition columns, the writes it allows, whether it records a change data
feed, and its expected columns with their Spark SQL types. ``runtime.tables`` reads and writes
only through these entries, and refuses a write the entry does not allow. Per-source tables
(bronze, quarantine) are made by ``bronze(source)`` and ``quarantine(source)``.
``microseg tables --out docs/TABLES.md`` writes the registry as Markdown.
"""

from __future__ import annotations

from dataclasses import dataclass

from microseg.runtime.column_comments import COMMENTS, CORRUPT

OVERWRITE, REPLACE, APPEND, MERGE, TYPE2 = "overwrite", "replace", "append", "merge", "type2"
WRITES = {
    OVERWRITE: "overwrite: the whole table replaced",
    REPLACE: "replace: the rows of one slice (an as_of, a batch) replaced atomically",
    APPEND: "append",
    MERGE: "merge: upsert on the key",
    TYPE2: "type 2 merge: rows closed and opened, never updated in place",
}
BRONZE_METADATA = (
    (CORRUPT, "string"),
    ("_source_file", "string"),
    ("_ingested_at", "timestamp"),
    ("_batch_id", "string"),
)


@dataclass(frozen=True)
class Table:
    name: str
    description: str
    columns: tuple[tuple[str, str], ...]
    writes: tuple[str, ...]
    keys: tuple[str, ...] = ()
    partition_by: tuple[str, ...] = ()
    change_data_feed: bool = False
    newer_than: str | None = None  # merge: a matched row is replaced only by a row at least this new
    removed_when_null: str | None = None  # merge: a row with this column null removes its key from the table
    more_columns: str | None = None  # columns not known until run time (a source's, the catalog's)
    written_by: str = ""
    comments: tuple[tuple[str, str], ...] = ()  # (column, comment) where COMMENTS' general one does not fit
    drifts: bool = False  # takes a source's new columns as they arrive (bronze); others change by `microseg migrate`

    def comment(self, column: str) -> str:
        """What ``column`` of this table holds (its SQL COMMENT); empty for a column the registry does not know."""
        return dict(self.comments).get(column) or COMMENTS.get(column, "")

    @property
    def layer(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def short_name(self) -> str:
        return self.name.split(".", 1)[1]

    def sql_name(self, catalog: str | None = None, schema_prefix: str = "microseg") -> str:
        """The table's name in a catalog: ``[<catalog>.]<schema_prefix>_<layer>.<table>``."""
        return f"{catalog + '.' if catalog else ''}{schema_prefix}_{self.layer}.{self.short_name}"

    @property
    def ddl(self) -> str:
        """The expected columns as a Spark DDL schema (``"`a` string, `b` date"``)."""
        return ", ".join(f"`{name}` {kind}" for name, kind in self.columns)

    def __str__(self) -> str:
        return self.name


def _columns(spec: str) -> tuple[tuple[str, str], ...]:
    """``"a string, b date"`` -> (("a", "string"), ("b", "date")); commas inside <> belong to the type."""
    parts, depth, current = [], 0, ""
    for char in spec:
        depth += {"<": 1, ">": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return tuple(tuple(p.split(None, 1)) for p in (p.strip() for p in parts) if p)  # type: ignore[misc]


QUARANTINE_COLUMNS = _columns(
    "source string, rule string, reason string, record string, raw_line string, _source_file string, _batch_id string"
)

# -- silver ---------------------------------------------------------------------------------------------
CUSTOMER_CONTACT = Table(
    "silver.customer_contact",
    "Raw name, email and phone per customer: the only table with PII; restricted, never read by analytics.",
    _columns(
        "customer_id string, first_name string, last_name string, email string, phone string, updated_at timestamp"
    ),
    (MERGE,),
    keys=("customer_id",),
    newer_than="updated_at",
    written_by="ingest",
)
CUSTOMERS = Table(
    "silver.customers",
    "One row per customer: CRM key, hashed email and phone, country, signup date, consents.",
    _columns(
        "customer_id string, crm_id string, email_hash string, phone_hash string, email_valid boolean, "
        "phone_valid boolean, country string, signup_date date, updated_at timestamp, consent_email boolean, "
        "consent_sms boolean, consent_profiling boolean, _batch_id string"
    ),
    (OVERWRITE, MERGE),
    keys=("customer_id",),
    written_by="quality (from the batches clean stages)",
)
ORDERS = Table(
    "silver.orders",
    "Orders in the base currency, linked to customers; returns flagged.",
    _columns(
        "order_id string, customer_id string, order_ts timestamp, currency string, amount double, "
        "amount_base double, discount_base double, channel string, is_return boolean, offer_code string, "
        "_batch_id string"
    ),
    (OVERWRITE, REPLACE, APPEND),
    keys=("order_id",),
    written_by="quality (from the batches clean stages)",
)
ORDER_ITEMS = Table(
    "silver.order_items",
    "Order lines with category and amount in the base currency.",
    _columns(
        "order_id string, customer_id string, line_no integer, product_id string, description string, "
        "category string, quantity integer, unit_price double, line_amount_base double, is_return boolean, "
        "is_product boolean, _batch_id string"
    ),
    (OVERWRITE, REPLACE, APPEND),
    keys=("order_id", "line_no"),
    written_by="quality (from the batches clean stages)",
)
WEB_EVENTS = Table(
    "silver.web_events",
    "Clickstream events; anonymous visitors linked to customers where a login ties them.",
    _columns(
        "event_id string, customer_id string, anonymous_id string, session_id string, event_ts timestamp, "
        "event_type string, channel string, _batch_id string"
    ),
    (OVERWRITE, REPLACE, APPEND),
    keys=("event_id",),
    written_by="quality (from the batches clean stages)",
)
EMAIL_EVENTS = Table(
    "silver.email_events",
    "Email sends, opens, clicks and unsubscribes, linked to customers by hashed email.",
    _columns(
        "event_id string, customer_id string, campaign_id string, event_type string, event_ts timestamp, "
        "_batch_id string"
    ),
    (OVERWRITE, REPLACE, APPEND),
    keys=("event_id",),
    written_by="quality (from the batches clean stages)",
)
SUPPORT_TICKETS = Table(
    "silver.support_tickets",
    "Support tickets with channel, topic and satisfaction.",
    _columns(
        "ticket_id string, customer_id string, created_at timestamp, channel string, topic string, "
        "satisfaction integer, _batch_id string"
    ),
    (OVERWRITE, REPLACE, APPEND),
    keys=("ticket_id",),
    written_by="quality (from the batches clean stages)",
)
SURVEY_RESPONSES = Table(
    "silver.survey_responses",
    "Survey answers (NPS).",
    _columns("response_id string, customer_id string, submitted_at timestamp, nps integer, _batch_id string"),
    (OVERWRITE, REPLACE, APPEND),
    keys=("response_id",),
    written_by="quality (from the batches clean stages)",
)
IDENTITY_MAP = Table(
    "silver.identity_map",
    "Every deterministic key (CRM id, email hash, phone hash, web anonymous id) -> its one customer_id.",
    _columns("key_type string, key_value string, customer_id string"),
    (OVERWRITE, MERGE),
    keys=("key_type", "key_value"),
    removed_when_null="customer_id",
    written_by="quality (staged by clean)",
    comments=(("customer_id", "The one customer the key belongs to"),),
)

# -- gold -----------------------------------------------------------------------------------------------
CUSTOMER_FEATURES = Table(
    "gold.customer_features",
    "One row per customer per as_of: the catalog's features, the lifecycle macro segment, why values are null.",
    _columns(
        "customer_id string, as_of date, macro_segment string, null_reasons map<string,string>, feature_version string"
    ),
    (REPLACE,),
    keys=("customer_id", "as_of"),
    partition_by=("as_of",),
    more_columns="one column per catalog feature (conf/features/catalog.yaml), after macro_segment",
    written_by="features",
)
LIFECYCLE_TRANSITIONS = Table(
    "gold.lifecycle_transitions",
    "Customers moving between lifecycle macro segments from the previous as_of to this one.",
    _columns("as_of date, previous_as_of date, from_segment string, to_segment string, customers long, share double"),
    (REPLACE,),
    keys=("as_of", "from_segment", "to_segment"),
    written_by="features",
)
CUSTOMER_VALUE = Table(
    "gold.customer_value",
    "One row per customer per as_of: p_alive, expected purchases, expected order value, CLV, churn probability.",
    _columns(
        "customer_id string, as_of date, repeat_purchases long, first_purchase date, p_alive double, "
        "expected_purchases_90d double, expected_purchases_365d double, expected_order_value double, clv double, "
        "churn_probability double, clv_model_version string, churn_model_version string"
    ),
    (REPLACE,),
    keys=("customer_id", "as_of"),
    partition_by=("as_of",),
    change_data_feed=True,
    written_by="value",
)
SEGMENT_ASSIGNMENTS = Table(
    "gold.segment_assignments",
    "Each customer's segment per layer per as_of, with its distance or membership probabilities and the model.",
    _columns(
        "customer_id string, as_of date, macro_segment string, layer string, segment_id string, "
        "segment_label string, distance_to_centroid double, membership_probability double, "
        "memberships array<struct<segment_id:string,probability:double>>, model_name string, "
        "model_version string, training_run_id string"
    ),
    (MERGE,),
    keys=("customer_id", "as_of", "layer"),
    partition_by=("as_of",),
    change_data_feed=True,
    written_by="assign",
)
SEGMENT_HISTORY = Table(
    "gold.segment_history",
    "Type 2 history of (customer, layer): the segment held from valid_from until valid_to.",
    _columns(
        "customer_id string, layer string, segment_id string, macro_segment string, valid_from date, "
        "valid_to date, is_current boolean"
    ),
    (TYPE2,),
    keys=("customer_id", "layer", "valid_from"),
    written_by="assign",
)
SEGMENT_PROFILES = Table(
    "gold.segment_profiles",
    "Per segment and as_of: size, shares, label, top features, and each feature's mean, median and z-score.",
    _columns(
        "as_of date, layer string, macro_segment string, segment_id string, size long, share double, "
        "share_of_macro double, label string, top_features array<string>"
    ),
    (REPLACE,),
    keys=("as_of", "layer", "segment_id"),
    partition_by=("as_of",),
    more_columns="mean_<feature>, median_<feature>, z_<feature>, z_in_macro_<feature> (double) per catalog feature; "
    "then mean_clv, median_clv, mean_p_alive, mean_churn_probability, value_at_risk (double, from gold.customer_value)",
    written_by="assign, profile",
    comments=(("share", "size / all customers of the layer at as_of"),),
)
SEGMENT_MIGRATIONS = Table(
    "gold.segment_migrations",
    "Customers moving between segments (and macro segments) from the previous as_of to this one.",
    _columns(
        "as_of date, previous_as_of date, layer string, from_segment string, to_segment string, customers long, "
        "share double"
    ),
    (REPLACE,),
    keys=("as_of", "layer", "from_segment", "to_segment"),
    written_by="profile",
)

# -- ops ------------------------------------------------------------------------------------------------
RUN_LOG = Table(
    "ops.run_log",
    "One row per stage and source of every run: rows in, written and quarantined, seconds, status.",
    _columns(
        "run_id string, as_of date, stage string, source string, rows_in long, rows_written long, "
        "rows_quarantined long, seconds double, status string, details string, logged_at timestamp"
    ),
    (APPEND,),
    written_by="every stage",
)
DQ_RESULTS = Table(
    "ops.dq_results",
    "Every data-quality rule's outcome per run.",
    _columns(
        "run_id string, as_of date, table string, rule string, expectation string, column string, "
        "severity string, success boolean, evaluated long, unexpected_count long, unexpected_percent double"
    ),
    (APPEND,),
    written_by="quality",
)
INGEST_LOG = Table(
    "ops.ingest_log",
    "Every source file ingested: size, modification time, rows, batch; a re-delivered file as a duplicate.",
    _columns(
        "source string, path string, size long, modified_ms long, rows long, batch_id string, ingested_at timestamp, "
        "content_hash string, duplicate_of string"
    ),
    (APPEND,),
    written_by="ingest",
    comments=(
        ("size", "The file's size in bytes"),
        ("source", "The source, as named in the source mapping"),
        ("content_hash", "SHA-256 of the file's bytes"),
        ("duplicate_of", "The earlier file with the same content: this one was skipped (no batch, 0 rows)"),
    ),
)
BATCHES = Table(
    "ops.batches",
    "Every bronze batch clean staged and quality published or failed; the latest row per batch is its state.",
    _columns(
        "source string, batch_id string, status string, mode string, rows_in long, rows_written long, "
        "rows_quarantined long, run_id string, reason string, logged_at timestamp"
    ),
    (APPEND,),
    keys=("source", "batch_id", "logged_at"),
    written_by="clean (staged), quality (published, failed)",
    comments=(
        ("status", "staged (cleaned, waiting for the quality gate), published (in silver) or failed (a critical rule)"),
        ("mode", "incremental (the batch added to silver) or rebuild (the source's silver rebuilt from all of bronze)"),
        ("rows_in", "Rows of the batch in bronze"),
        ("rows_written", "Rows of the batch staged (clean) or published to silver (quality)"),
        ("reason", "Why the batch failed: the critical rules that broke"),
    ),
)
IDENTITY_CONFLICTS = Table(
    "ops.identity_conflicts",
    "Keys that point at several customers: reported, never guessed.",
    _columns("key_type string, key_value string, customer_ids array<string>, customers integer"),
    (OVERWRITE, MERGE),
    keys=("key_type", "key_value"),
    removed_when_null="customer_ids",
    written_by="quality (staged by clean)",
    comments=(("customers", "How many customers the key points at"),),
)
RUN_LOCKS = Table(
    "ops.run_locks",
    "One row per as_of a run holds, one run at a time (runtime/run_lock.py): the run, where it runs, its lease; "
    "the row is deleted when the run ends, failed or not.",
    _columns(
        "as_of date, run_id string, host string, pid integer, stages string, started_at timestamp, "
        "renewed_at timestamp, lease_until timestamp"
    ),
    (MERGE,),
    keys=("as_of",),
    written_by="every run",
    comments=(
        ("as_of", "The snapshot date the run is for"),
        ("host", "The host the run's driver program runs on"),
        ("pid", "The process id of the run's driver program on that host"),
        ("stages", "The stages the run takes, in order"),
        ("started_at", "When the run took the lock (UTC)"),
        ("renewed_at", "When the run last renewed its lease (UTC), at a stage's start"),
        ("lease_until", "When the lease ends (UTC): then another run may take the lock"),
    ),
)

TABLES: tuple[Table, ...] = (
    CUSTOMER_CONTACT, CUSTOMERS, ORDERS, ORDER_ITEMS, WEB_EVENTS, EMAIL_EVENTS, SUPPORT_TICKETS,
    SURVEY_RESPONSES, IDENTITY_MAP, CUSTOMER_FEATURES, LIFECYCLE_TRANSITIONS, CUSTOMER_VALUE, SEGMENT_ASSIGNMENTS,
    SEGMENT_HISTORY, SEGMENT_PROFILES, SEGMENT_MIGRATIONS, RUN_LOG, DQ_RESULTS, INGEST_LOG, BATCHES, IDENTITY_CONFLICTS,
    RUN_LOCKS,
)  # fmt: skip
BY_NAME = {t.name: t for t in TABLES}


def bronze(source: str) -> Table:
    """A source's raw rows as ingested, PII hashed; one batch per ingest run (a snapshot source: the whole table)."""
    return Table(
        f"bronze.{source}",
        f"Source {source} as ingested: its mapped columns (emails and phones hashed), then ingest metadata.",
        BRONZE_METADATA,
        (REPLACE, OVERWRITE),
        more_columns="the source's columns (conf/sources/*.yaml), before the metadata",
        written_by="ingest",
        drifts=True,
    )


def quarantine(source: str) -> Table:
    """Rows of a source (or of a silver table) that broke a rule, with the rule and the reason."""
    return Table(
        f"quarantine.{source}",
        f"Rows of {source} that broke a rule: the rule, the reason, the record as JSON, the raw line.",
        QUARANTINE_COLUMNS,
        (OVERWRITE, REPLACE, APPEND),
        written_by="quality: each batch's rows replaced, or appended the first time (a rebuild: the whole table)",
    )


def staging(table: Table) -> Table:
    """Where clean stages a silver table's new rows (or a quarantine table's) until the quality gate publishes them.

    ``<lake.root>/staging/<layer>_<table>``: the batch as it would be published, with its ``_batch_id``;
    replaced by every clean run, left in place after a failed gate for inspection.
    """
    return Table(
        f"staging.{table.layer}_{table.short_name}",
        f"Staged rows of {table.name}, waiting for the quality gate.",
        table.columns,
        (OVERWRITE,),
        keys=table.keys,
        more_columns=table.more_columns,
        written_by="clean",
    )


def silver(name: str) -> Table:
    """A silver table by its short name (orders, web_events...)."""
    return named(f"silver.{name}")


def named(name: str) -> Table:
    """A table by its full name (gold.segment_profiles), per-source tables included.

    Raises:
        KeyError: naming the known tables.
    """
    layer = name.split(".", 1)[0]
    if layer == "bronze":
        return bronze(name.split(".", 1)[1])
    if layer == "quarantine":
        return quarantine(name.split(".", 1)[1])
    if name not in BY_NAME:
        raise KeyError(f"no table {name!r} in the registry; known: {', '.join(BY_NAME)}, bronze.*, quarantine.*")
    return BY_NAME[name]
