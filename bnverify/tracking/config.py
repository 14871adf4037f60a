"""Where tracking goes and under what limits: the store URI, the home folder, the experiment,
the environment variables bnverify reads, timeouts, MLflow's request limits, and URI helpers
(scheme tests, the SQLite file of a URI, redaction of passwords for messages).

Everything here reads the environment at call time, never at import.  mlflow's presence is
checked through package metadata, never ``find_spec``: the repository's ``mlflow/`` folder is
an importable namespace package when mlflow is missing.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from pathlib import Path
from urllib.parse import unquote

ENV_HOME = "BNVERIFY_HOME"
ENV_EXPERIMENT = "BNVERIFY_EXPERIMENT"
ENV_ARTIFACT_ROOT = "BNVERIFY_ARTIFACT_ROOT"
ENV_LOCK_TIMEOUT = "BNVERIFY_TRACKING_LOCK_TIMEOUT"
ENV_TIMEOUT = "BNVERIFY_TRACKING_TIMEOUT"

DEFAULT_EXPERIMENT = "bnverify"

#: Short HTTP settings applied while bnverify talks to a tracking server, unless the
#: user set the variable.  mlflow's own defaults (120 s timeout, 7 retries with a
#: backoff factor of 2) can block a finished check for minutes.  With these, a dead
#: server is given up on in about 2-3 s (three refused connections and one 2 s
#: backoff) and a hung one in about 17 s (three 5 s read timeouts plus the backoff).
HTTP_DEFAULTS: dict[str, str] = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",  # seconds, per attempt (an int for mlflow)
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",  # urllib3: 0 s, then 2 s (an int for mlflow)
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
}

#: How long to wait for another bnverify process that is writing to the same SQLite
#: store (writes are serialised: SQLite has one writer) before spooling instead.
DEFAULT_LOCK_TIMEOUT_S = 30.0

#: Overall limit for one write handed to the store warm-up worker (``$BNVERIFY_TRACKING_TIMEOUT``).
DEFAULT_TIMEOUT_S = 60.0

# mlflow's request limits (mlflow.utils.validation): per log_batch call, and value sizes.
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000
MAX_BATCH_BYTES = 900_000  # the REST limit is 1 MB; keep a margin for JSON framing
MAX_PARAM_VAL_LENGTH = 6000
MAX_TAG_VAL_LENGTH = 8000
MAX_KEY_LENGTH = 250


def home() -> Path:
    """The bnverify home folder (absolute): ``$BNVERIFY_HOME`` or ``./.bnverify``, read now."""
    return Path(os.environ.get(ENV_HOME) or ".bnverify").expanduser().absolute()


def spool_dir() -> Path:
    """Where results wait when the store is unreachable: ``<home>/spool``."""
    return home() / "spool"


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<home>/mlflow.db`` (absolute path)."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    return "sqlite:///" + (home() / "mlflow.db").as_posix()


def resolve_tracking_uri(cli_uri: str | None) -> str:
    """Precedence: ``--tracking-uri`` > ``$MLFLOW_TRACKING_URI`` > the local SQLite default.

    A bare path ending in ``.db`` or ``.sqlite`` is taken as a SQLite file.
    """
    uri = (cli_uri or "").strip()
    if not uri:
        return default_tracking_uri()
    if "://" not in uri and uri.endswith((".db", ".sqlite", ".sqlite3")):
        return "sqlite:///" + Path(uri).expanduser().absolute().as_posix()
    return uri


def resolve_experiment(experiment: str | None) -> str:
    """The experiment name: the argument, else ``$BNVERIFY_EXPERIMENT``, else ``bnverify``."""
    return (experiment or os.environ.get(ENV_EXPERIMENT) or DEFAULT_EXPERIMENT).strip()


def _seconds(var: str, default: float) -> float:
    try:
        return float(os.environ.get(var, default))
    except ValueError:
        return default


def lock_timeout() -> float:
    """``$BNVERIFY_TRACKING_LOCK_TIMEOUT`` seconds (default 30)."""
    return _seconds(ENV_LOCK_TIMEOUT, DEFAULT_LOCK_TIMEOUT_S)


def write_timeout() -> float:
    """``$BNVERIFY_TRACKING_TIMEOUT`` seconds (default 60)."""
    return _seconds(ENV_TIMEOUT, DEFAULT_TIMEOUT_S)


def mlflow_available() -> bool:
    """Whether an mlflow distribution is installed (package metadata, not ``find_spec``)."""
    for dist in ("mlflow", "mlflow-skinny"):
        try:
            importlib.metadata.version(dist)
            return True
        except importlib.metadata.PackageNotFoundError:
            continue
    return False


def version(dist: str) -> str:
    """The installed version of a distribution, or ``not installed``."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def mlflow_version() -> str:
    found = version("mlflow")
    return found if found != "not installed" else version("mlflow-skinny")


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for in-memory and other schemes)."""
    if not uri.startswith("sqlite:"):
        return None
    rest = uri[len("sqlite:") :]
    if not rest.startswith("///"):
        return None
    path = unquote(rest[3:].split("?", 1)[0])
    if path in ("", ":memory:"):
        return None
    return Path(path).absolute()


def is_database_uri(uri: str) -> bool:
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    return scheme in ("sqlite", "postgresql", "mysql", "mssql")


def is_http_uri(uri: str) -> bool:
    return uri.lower().startswith(("http://", "https://"))


def redact(uri: str) -> str:
    """The URI without a password, for messages and spool metadata."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", uri)


def describe_error(exc: BaseException) -> str:
    """One line for a failure, as messages and ``meta.json`` carry it."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:400]}"
