"""The ``sqlite`` sink: every run and every answered turn in one SQLite database.

Many runs collect in one file, so comparisons are a ``SELECT`` away::

    SELECT strategy, throughput_tokens_per_s, mean_acceptance_length
    FROM runs WHERE status = 'finished' ORDER BY started_at;

The database is ``$SPECDEC_SQLITE_PATH`` when that is set, otherwise
``specdec.sqlite`` beside the run's output folder (``results/specdec.sqlite`` for
the default ``results/<time>-<strategy>`` folders).  Each turn is committed as
its request finishes, so a crash loses nothing already finished.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from specdec.interfaces import RunInfo
from specdec.records import RequestRecord, RunSummary, SpecMetrics
from specdec.serialization import dumps

PLUGIN_API_VERSION = 1
"""The specdec plugin API this package was written for (a literal, on purpose:
specdec refuses the plugin if it offers another version)."""

ENV_PATH = "SPECDEC_SQLITE_PATH"
DEFAULT_FILE_NAME = "specdec.sqlite"

DATABASE_VERSION = 1
"""Version of the tables below, kept in ``meta``; bumped when a column changes meaning."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    output_dir TEXT NOT NULL,
    name TEXT,
    strategy TEXT NOT NULL,
    strategy_options TEXT NOT NULL,
    speculative_config TEXT,
    model TEXT NOT NULL,
    mode TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed')),
    started_at TEXT NOT NULL,
    finished_at TEXT,
    specdec_version TEXT,
    vllm_version TEXT,
    git_revision TEXT,
    config TEXT NOT NULL,
    provenance TEXT NOT NULL,
    summary TEXT,
    requests INTEGER,
    output_tokens INTEGER,
    elapsed_s REAL,
    throughput_tokens_per_s REAL,
    tokens_per_s_mean REAL,
    num_drafts INTEGER,
    num_draft_tokens INTEGER,
    num_accepted_tokens INTEGER,
    acceptance_rate REAL,
    mean_acceptance_length REAL
);
CREATE INDEX IF NOT EXISTS runs_output_dir ON runs (output_dir);
CREATE TABLE IF NOT EXISTS requests (
    run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    request_id TEXT NOT NULL,
    category TEXT NOT NULL,
    turn_index INTEGER NOT NULL,
    prompt TEXT NOT NULL,
    output TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    ttft_s REAL NOT NULL,
    decode_s REAL NOT NULL,
    walltime_s REAL NOT NULL,
    finish_reason TEXT,
    num_drafts INTEGER,
    num_draft_tokens INTEGER,
    num_accepted_tokens INTEGER,
    output_token_ids TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (run_id, request_id, turn_index)
);
CREATE VIEW IF NOT EXISTS request_totals AS
SELECT run_id, request_id, category,
       COUNT(*) AS turns,
       SUM(output_tokens) AS output_tokens,
       SUM(walltime_s) AS walltime_s,
       SUM(num_drafts) AS num_drafts,
       SUM(num_draft_tokens) AS num_draft_tokens,
       SUM(num_accepted_tokens) AS num_accepted_tokens
FROM requests GROUP BY run_id, request_id, category;
"""

_INSERT_TURN = """
INSERT OR REPLACE INTO requests (
    run_id, request_id, category, turn_index, prompt, output, prompt_tokens, output_tokens,
    ttft_s, decode_s, walltime_s, finish_reason, num_drafts, num_draft_tokens,
    num_accepted_tokens, output_token_ids, recorded_at
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

_FINISH_RUN = """
UPDATE runs SET status = 'finished', finished_at = ?, summary = ?, requests = ?,
    output_tokens = ?, elapsed_s = ?, throughput_tokens_per_s = ?, tokens_per_s_mean = ?,
    num_drafts = ?, num_draft_tokens = ?, num_accepted_tokens = ?, acceptance_rate = ?,
    mean_acceptance_length = ?
WHERE run_id = ?
"""


def database_path(output_dir: Path) -> Path:
    """Where a run in ``output_dir`` is recorded: ``$SPECDEC_SQLITE_PATH`` or a shared file."""
    configured = os.environ.get(ENV_PATH)
    if configured:
        return Path(configured).expanduser()
    return output_dir.resolve().parent / DEFAULT_FILE_NAME


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) a specdec database and check its version.

    Raises:
        RuntimeError: the file was written by another version of this sink.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # Several runs may write one file at once: wait for a lock rather than fail.
    db = sqlite3.connect(path, timeout=60)
    db.execute("PRAGMA foreign_keys = ON")
    with db:
        db.executescript(SCHEMA)
        db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('database_version', ?)",
                   (str(DATABASE_VERSION),))
    (found,) = db.execute("SELECT value FROM meta WHERE key = 'database_version'").fetchone()
    if found != str(DATABASE_VERSION):
        db.close()
        msg = (
            f"{path} holds a specdec database of version {found}, but this specdec-sqlite-sink "
            f"writes version {DATABASE_VERSION}: point {ENV_PATH} at another file, or install "
            f"the specdec-sqlite-sink release that writes version {found}"
        )
        raise RuntimeError(msg)
    return db


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _json(value: Any) -> str:
    # specdec's own converter: the same JSON as metrics.json (NaN and infinity as null).
    return dumps(value).decode()


class SqliteSink:
    """Record runs and requests in a SQLite database (tables ``runs`` and ``requests``).

    ``runs`` has one row per run, written when it opens (status ``running``) and
    completed when it closes (``finished`` with the summary, or ``failed``).
    ``requests`` has one row per answered turn, committed as each request
    finishes.  A resumed run continues its earlier row.
    """

    name = "sqlite"
    plugin_api_version = PLUGIN_API_VERSION

    def __init__(self) -> None:
        """Start with no database open."""
        self._db: sqlite3.Connection | None = None
        self.run_id: str | None = None
        self.path: Path | None = None

    def open(self, run: RunInfo) -> None:
        """Open the database and add (or, when resuming, reopen) the run's row."""
        self.path = database_path(run.output_dir)
        self._db = connect(self.path)
        output_dir = str(run.output_dir.resolve())
        earlier = None
        if run.resumed:
            earlier = self._db.execute(
                "SELECT run_id FROM runs WHERE output_dir = ? AND status != 'finished' "
                "ORDER BY started_at DESC LIMIT 1",
                (output_dir,),
            ).fetchone()
        db = self._db
        with db:
            if earlier is not None:
                self.run_id = str(earlier[0])
                db.execute(
                    "UPDATE runs SET status = 'running', finished_at = NULL, provenance = ? "
                    "WHERE run_id = ?",
                    (_json(dict(run.provenance)), self.run_id),
                )
            else:
                self.run_id = uuid.uuid4().hex
                self._insert_run(db, run, output_dir)
            for record in run.resumed:
                self._insert_turns(db, record)

    def _insert_run(self, db: sqlite3.Connection, run: RunInfo, output_dir: str) -> None:
        config = run.config
        provenance = dict(run.provenance)
        db.execute(
            "INSERT INTO runs (run_id, output_dir, name, strategy, strategy_options, "
            "speculative_config, model, mode, status, started_at, specdec_version, "
            "vllm_version, git_revision, config, provenance) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?)",
            (
                self.run_id, output_dir, config.name, config.strategy.name,
                _json(dict(config.strategy.options)),
                _json(provenance.get("speculative_config")), config.model, config.mode,
                str(provenance.get("started_at") or _now()), provenance.get("specdec"),
                provenance.get("vllm"), provenance.get("git_revision"),
                _json(config), _json(provenance),
            ),
        )

    def _insert_turns(self, db: sqlite3.Connection, record: RequestRecord) -> None:
        recorded_at = _now()
        for index, turn in enumerate(record.turns):
            spec = turn.spec
            db.execute(
                _INSERT_TURN,
                (
                    self.run_id, record.id, record.category, index, turn.prompt, turn.output,
                    turn.prompt_tokens, turn.output_tokens, turn.ttft_s, turn.decode_s,
                    turn.walltime_s, turn.finish_reason,
                    None if spec is None else spec.num_drafts,
                    None if spec is None else spec.num_draft_tokens,
                    None if spec is None else spec.num_accepted_tokens,
                    _json(turn.output_token_ids), recorded_at,
                ),
            )

    def record(self, record: RequestRecord) -> None:
        """Insert the request's turns and commit before returning."""
        if self._db is None:
            msg = "the sqlite sink was not opened: the runner calls open() before record()"
            raise RuntimeError(msg)
        with self._db:
            self._insert_turns(self._db, record)

    def close(self, summary: RunSummary | None) -> None:
        """Complete the run's row (``finished`` with its figures, or ``failed``) and close."""
        if self._db is None:
            return
        try:
            with self._db:
                if summary is None:
                    self._db.execute(
                        "UPDATE runs SET status = 'failed', finished_at = ? WHERE run_id = ?",
                        (_now(), self.run_id),
                    )
                else:
                    self._db.execute(_FINISH_RUN, (_now(), *_summary_columns(summary),
                                                   self.run_id))
        finally:
            self._db.close()
            self._db = None


def _summary_columns(summary: RunSummary) -> tuple[Any, ...]:
    """The summary's JSON and its headline figures, in ``_FINISH_RUN`` order.

    Acceptance comes from the engine's counters when present, else from the
    per-request counts summed over the run.
    """
    overall = summary.overall
    spec: SpecMetrics | None = summary.engine_spec or overall.spec
    return (
        _json(summary),
        overall.requests,
        overall.output_tokens,
        summary.elapsed_s,
        summary.throughput_tokens_per_s,
        overall.tokens_per_s_mean,
        None if spec is None else spec.num_drafts,
        None if spec is None else spec.num_draft_tokens,
        None if spec is None else spec.num_accepted_tokens,
        None if spec is None else spec.acceptance_rate,
        None if spec is None else spec.mean_acceptance_length,
    )
