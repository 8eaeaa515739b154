"""The ``microseg`` command and the shared entry point of the spark-submit job files."""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from microseg.cli_args import build_parser, datagen_overrides
from microseg.runtime.config import Config
from microseg.runtime.errors import ConfigError, MicrosegError
from microseg.runtime.loader import load_config
from microseg.runtime.logs import configure_logging, spark_error

if TYPE_CHECKING:
    from microseg.runtime.runner import StageFunction

log = logging.getLogger(__name__)

EXIT_FAILURE = 1
EXIT_USAGE = 2


def cmd_run(cfg: Config, args: argparse.Namespace) -> int:
    from microseg.runtime.runlog import completed_stages
    from microseg.runtime.runner import snapshot_date
    from microseg.runtime.session import build_spark
    from microseg.stages import run_pipeline, selected_stages, summary
    from microseg.validate import check

    as_of, names = snapshot_date(cfg, args.as_of), selected_stages(cfg, args.stage)
    check(cfg, args.origins)  # before the session, the lock and any stage
    spark = build_spark(cfg)
    done = completed_stages(spark, cfg, as_of)
    full_refresh = getattr(args, "full_refresh", False)
    if not (args.rerun or args.retrain or full_refresh) and all(name in done for name in names):
        runs = ", ".join(sorted({done[name] for name in names}))
        print(f"as_of {as_of}: {', '.join(names)} already completed (run {runs}); nothing to do (--rerun to run again)")
        return 0
    result = run_pipeline(spark, cfg, as_of=as_of, stages=names, full_refresh=full_refresh, retrain=args.retrain)
    print(summary(result, cfg))
    return 0


def cmd_validate(cfg: Config, args: argparse.Namespace) -> int:
    from microseg.validate import check

    check(cfg, args.origins)
    print(f"{args.conf}: config, source mapping {cfg.sources.mapping}, quality rules and layer features are valid")
    return 0


def cmd_train(cfg: Config, args: argparse.Namespace) -> int:
    args.stage = ["train"]
    args.retrain = args.retrain or args.force  # forcing a promotion asks for a new training
    return cmd_run(cfg, args)


def cmd_datagen(cfg: Config, args: argparse.Namespace) -> int:
    from microseg.runtime.session import build_spark
    from microseg.synthetic.datagen import generate

    if args.next_day:
        return _next_days(cfg, args)
    spark = build_spark(cfg)
    started = time.perf_counter()
    manifest = generate(spark, cfg.datagen, cfg.path(cfg.datagen.out), store=cfg)
    print(json.dumps({"rows": manifest["rows"], "dirt": manifest["dirt"]}, indent=2))
    log.info(
        "generated %s customers in %.1fs to %s",
        f"{cfg.datagen.customers:,}",
        time.perf_counter() - started,
        cfg.path(cfg.datagen.out),
    )
    return 0


def _next_days(cfg: Config, args: argparse.Namespace) -> int:
    from microseg.runtime.session import build_spark
    from microseg.synthetic.daily import next_day

    if args.customers is not None or args.seed is not None:
        log.error("datagen --next-day takes the customers and the seed from the data set's _manifest.json")
        return EXIT_USAGE
    spark, out = build_spark(cfg), cfg.path(cfg.datagen.out)
    for _ in range(args.days):
        started = time.perf_counter()
        day = next_day(spark, cfg.datagen, out, store=cfg)["days"][-1]
        print(json.dumps({k: day[k] for k in ("date", "new_customers", "rows", "dirt")}, indent=2))
        log.info("added %s to %s in %.1fs", day["date"], out, time.perf_counter() - started)
    return 0


def cmd_bench(cfg: Config, args: argparse.Namespace) -> int:
    from microseg.runtime.session import build_spark
    from microseg.synthetic.bench import run_benchmark, run_clv_benchmark, run_daily_benchmark

    if args.clv:
        print(run_clv_benchmark(build_spark(cfg), args.customers))
        return 0
    if args.daily:
        print(run_daily_benchmark(build_spark(cfg), cfg, args.customers, Path(args.workdir), args.stage))
        return 0
    print(run_benchmark(build_spark(cfg), cfg, args.customers, Path(args.workdir), args.compare_sklearn))
    return 0


def cmd_catalog(cfg: Config, args: argparse.Namespace) -> int:
    from microseg.features.catalog import load_catalog, markdown

    catalog = load_catalog(cfg)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(markdown(catalog) + "\n")
    log.info("wrote %d features (catalog version %s) to %s", len(catalog.features), catalog.version, args.out)
    return 0


def cmd_tables(cfg: Config, args: argparse.Namespace) -> int:
    from microseg.runtime import lake, table_docs

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(table_docs.markdown())
    log.info("wrote %d tables (and the per-source bronze and quarantine tables) to %s", len(lake.TABLES), args.out)
    return 0


def cmd_migrate(cfg: Config, args: argparse.Namespace) -> int:
    from microseg.migrate import migrate
    from microseg.runtime.session import build_spark

    report = migrate(build_spark(cfg), cfg, dry_run=args.dry_run)
    verb = "would change" if args.dry_run else "changed or named"
    print(f"migrate: {len(report.entries)} tables {verb}")
    for e in report.entries:
        print(f"  {e.source}: {json.dumps(e.details, sort_keys=True)}")
    return 0


def cmd_retract(cfg: Config, args: argparse.Namespace) -> int:
    from microseg.retract import retract
    from microseg.runtime.session import build_spark

    report = retract(build_spark(cfg), cfg, args.source, batch=args.batch, file=args.file)
    info = report.info
    print(f"retract: batch {info['batch_id']} of source {info['source']} ({len(info['files'])} file(s)) taken back")
    for e in report.entries:
        print(f"  {e.source}: {e.rows_in:,} rows deleted")
    print("The next run rebuilds the source's silver without it; remove or fix the file(s) in the source folder.")
    return 0


def cmd_sql(cfg: Config, args: argparse.Namespace) -> int:
    from microseg.runtime import sql_endpoint

    command = sql_endpoint.spark_sql_command(cfg, args.passthrough)
    return subprocess.run(command, env=sql_endpoint.environment(cfg), check=False).returncode


def cmd_sql_server(cfg: Config, args: argparse.Namespace) -> int:
    from microseg.runtime import sql_endpoint

    command = sql_endpoint.thrift_server_command(cfg, args.host, args.port)
    log.info("Spark Thrift Server on jdbc:hive2://%s:%d (Ctrl-C stops it)", args.host, args.port)
    return subprocess.run(command, env=sql_endpoint.environment(cfg), check=False).returncode


COMMANDS = {
    "run": cmd_run,
    "validate": cmd_validate,
    "train": cmd_train,
    "datagen": cmd_datagen,
    "bench": cmd_bench,
    "catalog": cmd_catalog,
    "tables": cmd_tables,
    "migrate": cmd_migrate,
    "retract": cmd_retract,
    "sql": cmd_sql,
    "sql-server": cmd_sql_server,
}


def main(argv: list[str] | None = None) -> int:
    args, passthrough = build_parser().parse_known_args(argv)
    if passthrough and args.command != "sql":
        build_parser().error(f"unrecognized arguments: {' '.join(passthrough)}")
    args.passthrough = passthrough
    configure_logging(args.log_level, command=args.command)
    overrides = list(args.overrides)
    if args.remote:
        overrides.append(f"spark.remote={args.remote}")
    if args.command == "datagen":
        overrides += datagen_overrides(args)
    if args.command == "train" and args.force:
        overrides.append("train.force_promote=true")
    cfg, args.origins = None, {}
    try:
        cfg = load_config(args.conf, overrides, args.origins)
        return COMMANDS[args.command](cfg, args)
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return EXIT_USAGE
    except MicrosegError as exc:
        log.error("%s: %s", type(exc).__name__, exc)
        return EXIT_FAILURE
    except Exception as exc:
        if cfg is not None and _embedded_metastore_busy(cfg, exc):
            log.error(
                "the embedded metastore (Derby, in %s) could not be opened: another process most likely has it "
                "open, such as another microseg run (of any as_of) or microseg sql on this lake; it admits one "
                "process at a time. Wait for that process to end; to run processes side by side, name the tables "
                "in a shared metastore (tables.metastore: hive) or not at all (tables.metastore: none)",
                cfg.metastore_dir,
            )
            return EXIT_FAILURE
        summary = spark_error(exc)
        if summary is None:
            raise
        # The Java stack trace (often tens of KB) only at DEBUG: the console gets what went wrong.
        log.debug("the full error:", exc_info=exc)
        log.error("%s: %s (--log-level DEBUG shows the stack trace)", type(exc).__name__, summary)
        return EXIT_FAILURE


def _embedded_metastore_busy(cfg: Config, exc: Exception) -> bool:
    """Whether ``exc`` is Hive's failure to open the embedded metastore (Derby lets one process boot it)."""
    return cfg.tables.metastore == "embedded" and "SessionHiveMetaStoreClient" in str(exc)


def run_job(stage: StageFunction | None, argv: list[str] | None = None) -> int:
    """Entry point of the job files: ``jobs/<stage>.py [--conf F] [--as-of D] [--set k=v ...]``.

    ``stage`` is the stage function the job runs (None: the stages of ``run.stages``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if stage is not None:
        from microseg.stages import stage_name

        argv += ["--stage", stage_name(stage)]
    return main(["run", *argv])
