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

OVERWRITE, REPLACE, APPEND, MERGE, TYPE2 = "overwrite", "replace", "append", "merge", "type2"
WRITES = {
    OVERWRITE: "overwrite: the whole table replaced",
    REPLACE: "replace: the rows of one slice (an as_of, a batch) replaced atomically",
    APPEND: "append",
    MERGE: "merge: upsert on the key",
    TYPE2: "type 2 merge: rows closed and opened, never updated in place",
}
CORRUPT = "_corrupt_record"  # bronze: the raw line a source row came from when it could not be parsed
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


# What each column holds: its COMMENT in the catalog (DESCRIBE TABLE EXTENDED) and in docs/TABLES.md.
# One meaning per name across tables; a table whose column means something else says so in its ``comments``.
COMMENTS = {
    # lineage
    CORRUPT: "The raw line when the source row could not be parsed; null otherwise",
    "_source_file": "The file (or JDBC URL) the row was read from",
    "_ingested_at": "When ingest read the row (UTC)",
    "_batch_id": "The ingest batch that read the row",
    "source": "The source (or silver table) the row is about, as named in the source mapping",
    "rule": "The data-quality rule (conf/quality) the row broke or the result is for",
    "reason": "Why the row broke the rule, in words",
    "record": "The row as JSON, as it was when it broke the rule",
    "raw_line": "The raw source line, when the row could not be parsed",
    # keys and identity
    "customer_id": "The resolved customer: cu_ + a SHA-256 prefix of the CRM key, stable across runs; the join key",
    "crm_id": "The CRM's own customer key",
    "email_hash": "HMAC-SHA256 of the normalised email address; no raw email outside silver.customer_contact",
    "phone_hash": "HMAC-SHA256 of the E.164 phone number; no raw phone outside silver.customer_contact",
    "first_name": "First name (PII: restricted table)",
    "last_name": "Last name (PII: restricted table)",
    "email": "Email address as given (PII: restricted table)",
    "phone": "Phone number as given (PII: restricted table)",
    "email_valid": "Whether the email address is well-formed",
    "phone_valid": "Whether the phone number parses to E.164",
    "country": "ISO 3166-1 alpha-2 country code",
    "signup_date": "The day the customer signed up",
    "updated_at": "When the CRM last changed the customer (UTC)",
    "consent_email": "Consents to email marketing",
    "consent_sms": "Consents to SMS marketing",
    "consent_profiling": "Consents to profiling (segmentation)",
    "key_type": "The kind of key: crm_id, email_hash, phone_hash or anonymous_id",
    "key_value": "The key's value (hashed for email and phone)",
    "customer_ids": "Every customer the key points at",
    # commerce
    "order_id": "The order's key in the source",
    "order_ts": "When the order was placed (UTC)",
    "currency": "ISO 4217 currency of the amounts as ordered",
    "amount": "The order's total in its own currency",
    "amount_base": "The order's total in the base currency (conf: currency.base)",
    "discount_base": "The discount granted, in the base currency",
    "channel": "The channel (web, app, store, email...)",
    "is_return": "True for a return or a cancelled line (negative quantity or amount)",
    "offer_code": "The offer (coupon) code used, if any",
    "line_no": "The line's number within its order",
    "product_id": "The product's key (stock code) in the source",
    "description": "The product's description as the source gives it",
    "category": "The product category, lower case",
    "quantity": "Units on the line",
    "unit_price": "Price per unit in the order's currency",
    "line_amount_base": "quantity x unit_price in the base currency",
    "is_product": "False for postage, fees and adjustments, which are not merchandise",
    # engagement
    "event_id": "The event's key in the source",
    "anonymous_id": "The web visitor's cookie id before login",
    "session_id": "The web session",
    "event_ts": "When the event happened (UTC)",
    "event_type": "What happened (page_view, add_to_cart, purchase; send, open, click, unsubscribe)",
    "campaign_id": "The email campaign",
    "ticket_id": "The ticket's key in the source",
    "created_at": "When the ticket was opened (UTC)",
    "topic": "What the ticket is about",
    "satisfaction": "Satisfaction score given on closing (1-5)",
    "response_id": "The survey response's key in the source",
    "submitted_at": "When the response was submitted (UTC)",
    "nps": "Net promoter score answer (0-10)",
    # features and segments
    "as_of": "The snapshot date the row describes (features computed from data up to this day)",
    "previous_as_of": "The snapshot the movement is measured from",
    "macro_segment": "Lifecycle macro segment: new, active, at_risk, churned or reactivated",
    "null_reasons": "Feature -> why it is null for this customer (no data from that source, not applicable)",
    "feature_version": "Version of the feature catalog (conf/features/catalog.yaml) that computed the row",
    "layer": "The segmentation layer (conf/segmentation.yaml), or macro_segment for lifecycle moves",
    "segment_id": "Stable segment id <layer>-<macro_segment>-<n>, kept across retrains",
    "segment_label": "A readable label from the segment's distinctive features",
    "label": "A readable label from the segment's distinctive features",
    "distance_to_centroid": "Euclidean distance to the segment's centre in the model's scaled space (KMeans kinds)",
    "membership_probability": "Probability of the assigned segment (GaussianMixture); 1.0 for hard clustering",
    "memberships": "Every segment with probability above the soft threshold, most likely first (GaussianMixture)",
    "model_name": "The registered MLflow model that assigned the segment",
    "model_version": "Its version in the MLflow model registry (the champion at the time)",
    "training_run_id": "The MLflow run that trained that model version",
    "valid_from": "First snapshot the customer held the segment",
    "valid_to": "Day the customer left it (null while current)",
    "is_current": "Whether this is the customer's current segment in the layer",
    "from_segment": "Segment (or macro segment) at previous_as_of; 'none' for customers new since then",
    "to_segment": "Segment (or macro segment) at as_of; 'none' for customers gone since then",
    "customers": "Number of customers",
    "share": "customers / all customers in from_segment at previous_as_of",
    "size": "Customers in the segment",
    "share_of_macro": "size / customers of the layer in the same macro segment",
    "top_features": "The features that set the segment apart most (largest |z|)",
    # operations
    "run_id": "The pipeline run (one per microseg run)",
    "stage": "The stage (ingest, clean, quality, features, train, assign, profile, migrate)",
    "rows_in": "Rows the stage read",
    "rows_written": "Rows the stage wrote (inserted or updated)",
    "rows_quarantined": "Rows the stage set aside in quarantine.*",
    "seconds": "Wall-clock seconds",
    "status": "ok, failed or skipped",
    "details": "What else the stage reported, as JSON",
    "logged_at": "When the row was logged (UTC)",
    "table": "The table checked",
    "expectation": "The Great Expectations expectation behind the rule",
    "column": "The column checked, if the rule has one",
    "severity": "critical (stops the run), quarantine (rows set aside) or warn",
    "success": "Whether the rule passed",
    "evaluated": "Rows checked",
    "unexpected_count": "Rows that broke the rule",
    "unexpected_percent": "Rows that broke the rule, in percent of rows checked",
    "path": "The file's path",
    "modified_ms": "The file's modification time (ms since the epoch)",
    "rows": "Rows read from the file",
    "batch_id": "The ingest batch that read the file",
    "ingested_at": "When the file was ingested (UTC)",
}

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
        "consent_sms boolean, consent_profiling boolean"
    ),
    (OVERWRITE,),
    keys=("customer_id",),
    written_by="clean, quality",
)
ORDERS = Table(
    "silver.orders",
    "Orders in the base currency, linked to customers; returns flagged.",
    _columns(
        "order_id string, customer_id string, order_ts timestamp, currency string, amount double, "
        "amount_base double, discount_base double, channel string, is_return boolean, offer_code string"
    ),
    (OVERWRITE,),
    keys=("order_id",),
    written_by="clean, quality",
)
ORDER_ITEMS = Table(
    "silver.order_items",
    "Order lines with category and amount in the base currency.",
    _columns(
        "order_id string, customer_id string, line_no integer, product_id string, description string, "
        "category string, quantity integer, unit_price double, line_amount_base double, is_return boolean, "
        "is_product boolean"
    ),
    (OVERWRITE,),
    keys=("order_id", "line_no"),
    written_by="clean, quality",
)
WEB_EVENTS = Table(
    "silver.web_events",
    "Clickstream events; anonymous visitors linked to customers where a login ties them.",
    _columns(
        "event_id string, customer_id string, anonymous_id string, session_id string, event_ts timestamp, "
        "event_type string, channel string"
    ),
    (OVERWRITE,),
    keys=("event_id",),
    written_by="clean, quality",
)
EMAIL_EVENTS = Table(
    "silver.email_events",
    "Email sends, opens, clicks and unsubscribes, linked to customers by hashed email.",
    _columns("event_id string, customer_id string, campaign_id string, event_type string, event_ts timestamp"),
    (OVERWRITE,),
    keys=("event_id",),
    written_by="clean, quality",
)
SUPPORT_TICKETS = Table(
    "silver.support_tickets",
    "Support tickets with channel, topic and satisfaction.",
    _columns(
        "ticket_id string, customer_id string, created_at timestamp, channel string, topic string, satisfaction integer"
    ),
    (OVERWRITE,),
    keys=("ticket_id",),
    written_by="clean, quality",
)
SURVEY_RESPONSES = Table(
    "silver.survey_responses",
    "Survey answers (NPS).",
    _columns("response_id string, customer_id string, submitted_at timestamp, nps integer"),
    (OVERWRITE,),
    keys=("response_id",),
    written_by="clean, quality",
)
IDENTITY_MAP = Table(
    "silver.identity_map",
    "Every deterministic key (CRM id, email hash, phone hash, web anonymous id) -> its one customer_id.",
    _columns("key_type string, key_value string, customer_id string"),
    (OVERWRITE,),
    keys=("key_type", "key_value"),
    written_by="clean",
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
    more_columns="mean_<feature>, median_<feature>, z_<feature> (double) per catalog feature",
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
    "Every source file ingested: size, modification time, rows, batch.",
    _columns(
        "source string, path string, size long, modified_ms long, rows long, batch_id string, ingested_at timestamp"
    ),
    (APPEND,),
    written_by="ingest",
    comments=(("size", "The file's size in bytes"), ("source", "The source, as named in the source mapping")),
)
IDENTITY_CONFLICTS = Table(
    "ops.identity_conflicts",
    "Keys that point at several customers: reported, never guessed.",
    _columns("key_type string, key_value string, customer_ids array<string>, customers integer"),
    (OVERWRITE,),
    keys=("key_type", "key_value"),
    written_by="clean",
    comments=(("customers", "How many customers the key points at"),),
)

TABLES: tuple[Table, ...] = (
    CUSTOMER_CONTACT, CUSTOMERS, ORDERS, ORDER_ITEMS, WEB_EVENTS, EMAIL_EVENTS, SUPPORT_TICKETS,
    SURVEY_RESPONSES, IDENTITY_MAP, CUSTOMER_FEATURES, LIFECYCLE_TRANSITIONS, SEGMENT_ASSIGNMENTS,
    SEGMENT_HISTORY, SEGMENT_PROFILES, SEGMENT_MIGRATIONS, RUN_LOG, DQ_RESULTS, INGEST_LOG, IDENTITY_CONFLICTS,
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
        (OVERWRITE, APPEND),
        written_by="clean (overwrite), quality (append)",
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
