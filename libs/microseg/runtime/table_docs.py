"""The table registry as Markdown: docs/TABLES.md, written by ``microseg tables``."""

from __future__ import annotations

from microseg.runtime.lake import TABLES, WRITES, bronze, quarantine


def markdown() -> str:
    """The registry as Markdown (docs/TABLES.md)."""
    lines = [
        "# Tables",
        "",
        "Generated from `libs/microseg/runtime/lake.py` by `microseg tables --out docs/TABLES.md`; do not edit.",
        "Each table is stored at `<lake.root>/<layer>/<table>` as a Delta table (any Delta reader can read it by",
        "path) and named in the metastore (`tables.metastore`) as an external table over that path. Its SQL name",
        "follows `tables.catalog` and `tables.schema_prefix` (conf/base.yaml): `[<catalog>.]<prefix>_<layer>.<table>`.",
        "The comments below are the tables' and columns' COMMENTs (`DESCRIBE TABLE EXTENDED`). A table's columns",
        "change only by `microseg migrate` (bronze excepted: it takes a source's new columns as they arrive).",
        "",
        "| table | SQL name (default) | written by | writes | key | partitioned by | change feed | description |",
        "|---|---|---|---|---|---|---|---|",
    ]
    examples = [bronze("<source>"), quarantine("<source>")]
    for t in (*examples, *TABLES):
        lines.append(
            f"| `{t.name}` | `{t.sql_name()}` | {t.written_by} | {', '.join(t.writes)} | {', '.join(t.keys) or '-'} | "
            f"{', '.join(t.partition_by) or '-'} | {'yes' if t.change_data_feed else '-'} | {t.description} |"
        )
    lines += ["", "Writes: " + "; ".join(WRITES.values()) + ".", ""]
    for t in (*examples, *TABLES):
        lines += [f"## `{t.name}`", "", t.description, "", "| column | type | comment |", "|---|---|---|"]
        lines += [f"| `{name}` | {kind} | {t.comment(name)} |" for name, kind in t.columns]
        if t.more_columns:
            lines.append(f"| ... | | {t.more_columns} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
