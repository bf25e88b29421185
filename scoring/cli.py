"""The ``scoring`` command.

Exit codes are those of :class:`scoring.errors.ExitCode`. Errors print one line on
stderr (``scoring: error: ...``); ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from scoring import __version__, progress
from scoring.errors import ConfigError, ExitCode, JobInterrupted, ScoringError, UsageError
from scoring.redact import redact
from scoring.settings import Settings, load_settings

if TYPE_CHECKING:
    from scoring.job import JobSpec

log = logging.getLogger("scoring")


def _pairs(values: list[str] | None, flag: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for value in values or []:
        name, sep, target = value.partition("=")
        if not sep or not name or not target:
            raise UsageError(f"{flag} expects NAME=VALUE, got '{value}'")
        if name in pairs:
            raise UsageError(f"{flag} binds '{name}' twice")
        same = next((bound for bound in pairs if bound.lower() == name.lower()), None)
        if same is not None:  # SQL names are case-insensitive: both would be one name
            raise UsageError(f"{flag} binds '{same}' and '{name}', which SQL reads as one name")
        pairs[name] = target
    return pairs


def _help(field: str) -> str:
    """A setting's description, with its default and variable (the flag's own default is None,
    so that a flag given wins over the job file and the environment, and one not given does not)."""
    info = Settings.model_fields[field]
    text = str(info.description)
    if info.default is not None and "default:" not in text:
        text += f" (default: {info.default})"
    return f"{text} [SCORING_{field.upper()}]"


_RUN_EXAMPLES = """\
examples:
  # what `make run` does: a T-SQL PREDICT query from a file
  scoring run --dialect tsql --model bc=models:/bc@champion --table patients=data/patients.parquet \\
    --sql sql/examples/breast_cancer.sql --output out/scored.parquet
  # BigQuery's form, on Spark (the output is then a folder)
  scoring run --engine spark --dialect bigquery --model bc=models:/bc/1 --table patients=data/patients.parquet \\
    --query "SELECT * FROM ML.PREDICT(MODEL bc, TABLE patients)" --output out/scored/
  # a plain call: arguments by position
  scoring run --model churn=models:/churn/1 --table customers=data/customers.parquet \\
    --query "SELECT customer_id, churn(plan, region, tenure, monthly_spend).label AS churned FROM customers" \\
    --output out/churn.parquet
  # a job file, with a flag over it
  scoring run --job job.toml --model bc=models:/bc/2

'scoring models inspect URI' prints a model's columns and a ready query for each SQL form.
"""

_INSPECT_EXAMPLES = """\
examples:
  scoring models inspect models:/bc@champion
  scoring models inspect models:/bc/1 --name bc --table patients --json
  scoring models inspect model.onnx
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Help with the examples laid out as written and a wider column for the flags."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line on stderr (as every other error), exit 2;
    a JSON object when JSON logs are asked for (:class:`_JsonParser`)."""

    json_errors = False

    def error(self, message: str) -> NoReturn:
        text = f"{message} (see '{self.prog} --help')"
        if self.json_errors:
            _final_error(text, ExitCode.USAGE, "UsageError", True, prog=self.prog)
            self.exit(ExitCode.USAGE)
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {text}\n")


class _JsonParser(_Parser):
    json_errors = True


def build_parser(json_errors: bool = False) -> argparse.ArgumentParser:
    """The argument parser (also used to document the CLI); ``json_errors``: a bad command line
    is reported as a JSON line."""
    parser_class = _JsonParser if json_errors else _Parser
    parser = parser_class(prog="scoring", description="Score tables with registered ONNX models in SQL.")
    parser.add_argument("--version", action="version", version=f"scoring {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=parser_class)

    run = sub.add_parser(
        "run",
        help="run a scoring query and write Parquet",
        description="Run one scoring query and publish its result atomically as Parquet. Flags win over "
        "SCORING_* variables, which win over a --job file.",
        epilog=_RUN_EXAMPLES,
        formatter_class=_Formatter,
    )
    run.add_argument("--engine", choices=["duckdb", "spark"], help=_help("engine"))
    run.add_argument(
        "--dialect",
        help="dialect the query is written in: duckdb, tsql, bigquery, spark, ... (default: the engine's own) "
        "[SCORING_DIALECT]",
    )
    run.add_argument("--model", action="append", metavar="NAME=URI", help="bind a SQL model name to a registry URI")
    run.add_argument(
        "--table", action="append", metavar="NAME=PATH", help="bind a table name to Parquet (file, folder, glob)"
    )
    run.add_argument(
        "--job",
        type=Path,
        metavar="FILE",
        help="TOML job file (models, tables, query, output); flags and SCORING_* variables win over it. "
        "Without it, SCORING_MODELS, SCORING_QUERY, SCORING_OUTPUT, ... alone can describe the job",
    )
    # Required unless --job gives them: main() checks, with argparse's own messages.
    query = run.add_mutually_exclusive_group()
    query.add_argument("--query", help="the SQL query")
    query.add_argument("--sql", type=Path, metavar="FILE", help="a file holding the SQL query")
    run.add_argument(
        "--output",
        metavar="PATH",
        help="where to publish the result atomically (a path or a URI): a Parquet file on DuckDB, "
        "a folder of Parquet files on Spark",
    )
    run.add_argument("--mode", choices=["overwrite", "error"], help=_help("mode"))
    run.add_argument("--null", choices=["null", "nan", "error"], help=_help("null"))
    run.add_argument("--threads", type=int, help=_help("threads"))
    run.add_argument("--ort-threads", type=int, help=_help("ort_threads"))
    run.add_argument("--progress", choices=["auto", "off"], help=_help("progress"))
    _common(run)
    run.set_defaults(run_parser=run)

    models = sub.add_parser("models", help="inspect models")
    models_sub = models.add_subparsers(dest="models_command", required=True, parser_class=parser_class)
    inspect = models_sub.add_parser(
        "inspect",
        help="show a model's columns, outputs and a ready query for each SQL form",
        description="Show a model's input columns, its outputs (declared shapes, and the shapes it returns on "
        "a few rows of zeros), and for each SQL form the columns it produces and a query to copy. Each "
        "example query is compiled and run on those rows before it is printed.",
        epilog=_INSPECT_EXAMPLES,
        formatter_class=_Formatter,
    )
    inspect.add_argument("uri", help="models:/name/version, models:/name@alias, runs:/..., or a .onnx path")
    inspect.add_argument(
        "--name", metavar="NAME", help="SQL name the examples bind the model to (default: its registered name)"
    )
    inspect.add_argument(
        "--table", metavar="NAME", default="my_table", help="table name the examples read (default: my_table)"
    )
    inspect.add_argument("--json", action="store_true", help="print the whole description as JSON")
    _common(inspect)
    return parser


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", help=_help("tracking_uri"))
    parser.add_argument("--log-format", choices=["text", "json"], help=_help("log_format"))
    parser.add_argument("--debug", action="store_true", default=None, help=_help("debug"))


class _RedactingFormatter(logging.Formatter):
    """Every log line redacted (a URI's password, a token), traceback included."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        # A progress record's event name and figures (numbers and a model name), never over a key above.
        entry.update({k: v for k, v in progress.event_fields(record).items() if k not in entry})
        if record.exc_info:
            entry["traceback"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry)


def _old_spark(settings: Settings) -> bool:
    """Whether this is a Spark job on pyspark before 4.0.

    Known gap: there a terminal's in-place progress line swallowed every log line of the job
    (seen on pyspark 3.5.0, not traced yet), so such a job logs as it does to a file: a line
    per stage and a progress line every 10 s.
    """
    if settings.engine != "spark":
        return False
    try:
        from importlib.metadata import PackageNotFoundError, version

        return int(version("pyspark").split(".")[0]) < 4
    except (PackageNotFoundError, ValueError):
        return False


def _setup_logging(settings: Settings) -> None:
    # On a terminal the Spark stages share one line rewritten in place; elsewhere (a file, a pipe,
    # JSON) a line per stage and a progress line every 10 s, never a carriage return.
    terminal = settings.log_format == "text" and sys.stderr.isatty() and not _old_spark(settings)
    handler = progress.TerminalHandler(sys.stderr) if terminal else logging.StreamHandler(sys.stderr)
    if not terminal:
        handler.addFilter(progress.LinesOnly())
    if settings.progress == "off":
        progress.log.setLevel(logging.WARNING)
    else:  # the in-place updates are DEBUG records: only a terminal's handler shows them
        progress.log.setLevel(logging.DEBUG if terminal else logging.NOTSET)
    if settings.log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_RedactingFormatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("scoring")
    for previous in root.handlers:  # an earlier main() in this process (a terminal's handler owns a descriptor)
        previous.close()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if settings.debug else logging.INFO)
    root.propagate = False
    # MLflow and py4j chatter is not the job's output.
    for noisy in ("mlflow", "alembic", "urllib3", "pyspark", "py4j"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # Libraries that log through the root logger (py4j logs a stopped job's broken gateway call
    # there, traceback included) print only under --debug: the job reports its outcome itself.
    # A root handler also keeps logging.exception() from installing its own stderr handler.
    quiet = logging.StreamHandler(sys.stderr)
    quiet.set_name("scoring-root")
    quiet.setLevel(logging.DEBUG if settings.debug else logging.CRITICAL + 1)
    quiet.setFormatter(_RedactingFormatter())
    top = logging.getLogger()
    top.handlers[:] = [h for h in top.handlers if h.get_name() != "scoring-root"] + [quiet]
    # A log record that fails to format (its exception interrupted by a signal) is not worth a
    # traceback on stderr either.
    logging.raiseExceptions = settings.debug
    # A library's warnings.warn() (numpy, urllib3, MLflow) becomes a log record of the root
    # logger, shown only under --debug: never a raw line that breaks --log-format json.
    logging.captureWarnings(True)


class _StdoutClosed(Exception):
    """stdout's reader has gone (a pipe into `head`)."""


def _emit(text: str) -> None:
    """Print a result line, flushed, so that a closed pipe shows here and nowhere else."""
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise _StdoutClosed from None


def _raise_on_signal(signum: int, frame: Any) -> None:
    raise JobInterrupted.request(signum)


def _job_from_environment() -> bool:
    """Whether ``SCORING_*`` variables describe the job (a scheduler configuring the image)."""
    from scoring.jobfile import job_variables

    return bool(job_variables(os.environ))


def _require_without_job(args: argparse.Namespace) -> None:
    """Without --job or job variables, --output and one of --query/--sql are required."""
    if args.job is not None or _job_from_environment():
        return
    if args.output is None:
        args.run_parser.error("the following arguments are required: --output")
    if args.query is None and args.sql is None:
        args.run_parser.error("one of the arguments --query --sql is required")


def _load_job(args: argparse.Namespace) -> tuple[JobSpec | None, dict[str, Any]]:
    """The --job file (or the job variables alone) with the flags over it, and the settings it
    supplies; (None, {}) when neither describes the job."""
    if getattr(args, "job", None) is None and (args.command != "run" or not _job_from_environment()):
        return None, {}
    from scoring.jobfile import load_job

    flags: dict[str, Any] = {}
    for key, values, flag in (("models", args.model, "--model"), ("tables", args.table, "--table")):
        if values:  # an empty map would hide a malformed one in the file
            flags[key] = _pairs(values, flag)
    if args.query is not None or args.sql is not None:
        flags["query"] = _query(args)
    if args.output is not None:
        flags["output"] = {"path": str(args.output)}
    return load_job(args.job, flags)


def _query(args: argparse.Namespace) -> str:
    if args.sql is not None:
        try:
            return args.sql.read_text()  # type: ignore[no-any-return]
        except OSError as exc:
            raise ConfigError(f"--sql file '{args.sql}' cannot be read: {exc.strerror}") from None
    return args.query  # type: ignore[no-any-return]


class _Progress:
    """A one-line progress display on a terminal: rows written and rows/s, refreshed twice a second."""

    def __init__(self) -> None:
        self.rows = 0
        self.started = time.perf_counter()
        self.shown = 0.0

    def __call__(self, rows: int) -> None:
        self.rows += rows
        now = time.perf_counter()
        if now - self.shown >= 0.5:
            self.shown = now
            rate = self.rows / max(now - self.started, 1e-9)
            sys.stderr.write(f"\r{self.rows:>14,} rows written  {rate:>12,.0f} rows/s")
            sys.stderr.flush()

    def close(self) -> None:
        if self.shown:
            sys.stderr.write("\n")


def _cmd_run(args: argparse.Namespace, settings: Settings, job: JobSpec | None = None) -> int:
    from scoring.job import JobSpec, run_job

    if job is not None:
        spec = dataclasses.replace(job, dialect=args.dialect)
    else:
        spec = JobSpec(
            models=_pairs(args.model, "--model"),
            tables=_pairs(args.table, "--table"),
            query=_query(args),
            output=args.output,
            dialect=args.dialect,
        )
    progress = _Progress() if settings.log_format == "text" and sys.stderr.isatty() else None
    try:
        result = run_job(spec, settings, on_batch=progress)
    finally:
        if progress is not None:
            progress.close()
    models: dict[str, dict[str, Any]] = {
        name: {"pinned_uri": ref.pinned_uri, "sha256": ref.sha256, "rows_scored": result.rows_scored.get(name, 0)}
        for name, ref in result.models.items()
    }
    summary = {
        "output": str(result.output),
        "rows": result.rows,
        "seconds": round(result.seconds, 3),
        "rows_per_second": round(result.rows_per_second),
        "models": models,
    }
    if settings.log_format == "json":
        _emit(json.dumps(summary))
    else:
        for name, info in models.items():
            # None: the engine cannot count them (Spark Connect has no accumulators).
            scored = (
                "rows scored not counted" if info["rows_scored"] is None else f"{info['rows_scored']:,} rows scored"
            )
            _emit(f"model {name}: {info['pinned_uri']} sha256 {info['sha256'][:12]}, {scored}")
        _emit(
            f"wrote {result.rows:,} rows to {result.output} in {result.seconds:.2f} s "
            f"({result.rows_per_second:,.0f} rows/s)"
        )
    return ExitCode.OK


def _cmd_inspect(args: argparse.Namespace, settings: Settings) -> int:
    from scoring.describe import describe_model, format_description

    description = describe_model(args.uri, settings, name=args.name, table=args.table)
    _emit(json.dumps(description, indent=2) if args.json else format_description(description))
    return ExitCode.OK


def _mlflow_environment(settings: Settings) -> None:
    """MLflow's process-wide HTTP and logging variables, set here, in the CLI's own process only.

    MLflow reads its timeouts and retries only from these variables (its defaults retry for
    minutes, which turns an unreachable registry into a hung job instead of exit 5), and logs
    through its own stderr handler unless told not to (its lines would bypass redaction and the
    JSON log format). A library embedded in a host program leaves both to its host.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(settings.registry_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(settings.registry_timeout))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")


def _print_traceback() -> None:
    """The current exception's traceback on stderr, redacted (--debug)."""
    sys.stderr.write(redact(traceback.format_exc()))


def _json_requested(argv: Sequence[str]) -> bool:
    """JSON logs asked for by ``--log-format`` or the environment, read before the command line
    and the settings are parsed, so that an error in either is reported on a JSON line too."""
    chosen = os.environ.get("SCORING_LOG_FORMAT", "")
    for i, arg in enumerate(argv):
        if arg == "--log-format" and i + 1 < len(argv):
            chosen = argv[i + 1]
        elif arg.startswith("--log-format="):
            chosen = arg.partition("=")[2]
    return chosen.strip().lower() == "json"


def _final_error(
    message: str, code: int, kind: str, as_json: bool, prefix: str = "error", prog: str = "scoring"
) -> None:
    """The one line on stderr that ends a failed command: text, or with JSON logs a JSON object
    shaped like the log lines (log collectors that parse JSON lines would drop a text line).
    Redacted like every log line: a bad --model value may carry a registry password."""
    message = redact(message)
    for handler in logging.getLogger("scoring").handlers:  # a progress line left open ends first
        if isinstance(handler, progress.TerminalHandler):
            handler.finish()
    if as_json:
        record = {
            "time": logging.Formatter().formatTime(logging.makeLogRecord({})),
            "level": "error",
            "logger": "scoring",
            "message": f"{prog}: {prefix}: {message}",
            "error": kind,
            "exit_code": int(code),
        }
        print(json.dumps(record), file=sys.stderr)
    else:
        print(f"{prog}: {prefix}: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``scoring`` command; returns the exit code."""
    as_json = _json_requested(sys.argv[1:] if argv is None else argv)
    parser = build_parser(json_errors=as_json)
    args = parser.parse_args(argv)
    if args.command == "run":
        _require_without_job(args)
    debug = bool(getattr(args, "debug", False))
    try:
        from scoring.jobfile import check_environment

        check_environment(os.environ)
        job, job_settings = _load_job(args)
        flags = dict(
            engine=getattr(args, "engine", None),
            mode=getattr(args, "mode", None),
            null=getattr(args, "null", None),
            threads=getattr(args, "threads", None),
            ort_threads=getattr(args, "ort_threads", None),
            progress=getattr(args, "progress", None),
            tracking_uri=args.tracking_uri,
            log_format=args.log_format,
            debug=args.debug,
        )
        # Flags over the job file's settings (load_settings puts both over the environment).
        settings = load_settings(**{**job_settings, **{k: v for k, v in flags.items() if v is not None}})
        debug = settings.debug
        as_json = settings.log_format == "json"
        _setup_logging(settings)
        _mlflow_environment(settings)
        signal.signal(signal.SIGTERM, _raise_on_signal)
        signal.signal(signal.SIGINT, _raise_on_signal)
        if args.command == "run":
            return _cmd_run(args, settings, job)
        return _cmd_inspect(args, settings)
    except ScoringError as exc:
        if debug:
            _print_traceback()
        _final_error(str(exc), exc.exit_code, type(exc).__name__, as_json)
        return exc.exit_code
    except _StdoutClosed:  # the reader went away (`| head`): nothing more to say to anyone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.PIPE_CLOSED
    except Exception as exc:  # anything unplanned is a bug: say so, keep the trace for --debug
        if debug:
            _print_traceback()
        first = redact((str(exc).strip().splitlines() or [""])[0])
        _final_error(
            f"{type(exc).__name__}: {first} (rerun with --debug for details)",
            ExitCode.INTERNAL,
            "InternalError",
            as_json,
            prefix="internal error",
        )
        return ExitCode.INTERNAL


def entry() -> None:
    """Console-script wrapper."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
