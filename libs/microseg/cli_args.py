"""The ``microseg`` command line: its commands, arguments and the settings they turn into (``cli`` runs them)."""

from __future__ import annotations

import argparse
import datetime as dt

from microseg.runtime.logs import LEVELS


def _log_level(parser: argparse.ArgumentParser, default: str = argparse.SUPPRESS) -> None:
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LEVELS,
        default=default,
        help="console log level (default INFO); third-party libraries log warnings and errors only",
    )


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--conf", default="conf/local.yaml", help="environment config file (base.yaml beside it)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    parser.add_argument(
        "--remote", metavar="sc://HOST:PORT", help="run through this Spark Connect server (sets spark.remote)"
    )
    # Before or after the subcommand; here it must not reset the value given before.
    _log_level(parser)


def _as_of(text: str) -> dt.date | None:
    if not text.strip():
        return None  # a scheduler's empty parameter: as if --as-of were not given (run.as_of, else yesterday)
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--as-of {text!r} is not a date like 2025-12-31") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="microseg", description="Customer micro-segmentation on Spark")
    _log_level(parser, default="INFO")
    parser.add_argument("--version", action=_Version, nargs=0, help="print the version and the code's commit")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the pipeline's stages for one as_of")
    _common(run)
    run.add_argument("--as-of", type=_as_of, help="snapshot date (default: run.as_of in config, else yesterday in UTC)")
    run.add_argument(
        "--stage", action="append", help="run only this stage (repeatable); an unknown name lists the known ones"
    )
    run.add_argument("--rerun", action="store_true", help="run even if these stages already completed for the as_of")
    run.add_argument(
        "--full-refresh",
        action="store_true",
        help="clean rebuilds every silver table from all of bronze (default: only the batches not yet published)",
    )
    run.add_argument(
        "--retrain",
        action="store_true",
        help="train even if the champions were trained on the same feature rows, config and code (implies --rerun)",
    )

    train = commands.add_parser("train", help="train, choose and register the segmentation models for one as_of")
    _common(train)
    train.add_argument(
        "--as-of", type=_as_of, help="snapshot date (default: run.as_of in config, else yesterday in UTC)"
    )
    train.add_argument("--rerun", action="store_true", help="train even if train already completed for the as_of")
    train.add_argument(
        "--retrain",
        action="store_true",
        help="train even if the champions were trained on the same feature rows, config and code (implies --rerun)",
    )
    train.add_argument(
        "--force", action="store_true", help="make the new models champions whatever their metrics (implies --rerun)"
    )

    check = commands.add_parser(
        "validate", help="check the config, source mapping, quality rules and layer features; report every problem"
    )
    _common(check)

    gen = commands.add_parser("datagen", help="generate synthetic multi-source data")
    _common(gen)
    gen.add_argument("--customers", type=int, help="number of customers (default: datagen.customers)")
    gen.add_argument("--seed", type=int, help="random seed (default: datagen.seed)")
    gen.add_argument("--out", help="output folder (default: datagen.out)")
    gen.add_argument(
        "--next-day",
        action="store_true",
        help="add the day after the data set's end_date to the data set in --out: new files in every source's "
        "folder with about datagen.day_share of its rows, the manifest updated (seed and customers from it)",
    )
    gen.add_argument("--days", type=int, default=1, help="with --next-day: add this many days, one after another")

    bench = commands.add_parser("bench", help="generate N customers, run every stage, print timings")
    _common(bench)
    bench.add_argument("--customers", type=int, default=100_000)
    bench.add_argument("--workdir", default="./bench", help="where the data and lake go (wiped first)")
    bench.add_argument(
        "--compare-sklearn",
        action="store_true",
        help="also time a plain scikit-learn KMeans sweep on the same preprocessed samples and print the ratio",
    )
    bench.add_argument(
        "--daily",
        action="store_true",
        help="time a daily refresh: a first run, one more day of files (datagen --next-day) and its run, and a "
        "rerun with no new files; seconds and Spark jobs per stage side by side, with ratios to the first run",
    )
    bench.add_argument(
        "--stage",
        action="append",
        help="with --daily: run only this stage (repeatable), e.g. --stage ingest --stage clean --stage quality",
    )
    bench.add_argument(
        "--clv",
        action="store_true",
        help="time the value models instead: N customers drawn from the BG/NBD and Gamma-Gamma processes in Spark, "
        "aggregated to distinct tuples, and the fits on the driver; prints seconds, peak RSS and the parameters",
    )

    migrate = commands.add_parser(
        "migrate", help="bring the lake's tables to the registry (columns, partitioning, comments, names); recorded"
    )
    _common(migrate)
    migrate.add_argument("--dry-run", action="store_true", help="only print what would change")
    retract = commands.add_parser(
        "retract",
        help="take a delivered batch back: its rows leave bronze, silver and quarantine, recorded in ops.run_log; "
        "the next run proceeds as if it had never arrived",
    )
    _common(retract)
    retract.add_argument("--source", required=True, help="the source, as named in the source mapping")
    which = retract.add_mutually_exclusive_group(required=True)
    which.add_argument("--file", help="a file of the batch: its path as ops.ingest_log records it, or its name")
    which.add_argument("--batch", help="the batch id (ops.ingest_log / ops.batches batch_id)")
    sql = commands.add_parser(
        "sql", help="spark-sql on the project's tables by name; other arguments go to spark-sql (-e SQL, -f FILE)"
    )
    _common(sql)
    server = commands.add_parser("sql-server", help="the Spark Thrift Server (JDBC/ODBC) on the project's tables")
    _common(server)
    server.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    server.add_argument("--port", type=int, default=10000, help="port (default 10000)")
    registry = commands.add_parser("tables", help="write the table registry as Markdown (docs/TABLES.md)")
    _common(registry)
    registry.add_argument("--out", default="docs/TABLES.md")

    catalog = commands.add_parser("catalog", help="write the feature catalog as Markdown (docs/FEATURES.md)")
    _common(catalog)
    catalog.add_argument("--out", default="docs/FEATURES.md")
    return parser


class _Version(argparse.Action):
    """``--version``: the package version and the commit its runs are tagged with (runtime/provenance.py)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from microseg import __version__
        from microseg.runtime.provenance import git_commit

        print(f"microseg {__version__} (commit {git_commit()})")
        parser.exit()


def datagen_overrides(args: argparse.Namespace) -> list[str]:
    extra = []
    if args.customers is not None:
        extra.append(f"datagen.customers={args.customers}")
    if getattr(args, "seed", None) is not None:
        extra.append(f"datagen.seed={args.seed}")
    if getattr(args, "out", None):
        extra.append(f"datagen.out={args.out}")
    return extra
