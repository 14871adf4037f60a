"""Where tracking goes and under what limits: the store URI, the home folder, the experiment,
the environment variables bnverify reads, timeouts, MLflow's request limits, and URI helpers
(scheme tests, the SQLite file of a URI, redaction of passwords for messages).

Everything here reads the environment at call time, never at import.  mlflow's presence is
checked through package metadata, never ``find_spec``: the repository's ``mlflow/`` folder is
an importable namespace package when mlflow is missing.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
from collections.abc import Mapping, Sequence
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


# --------------------------------------------------------------------------- redaction

#: Words that make a name (an environment variable, an option, a query parameter, a tag key)
#: a secret's name.  Matched against the name's words (split on ``_``, ``-``, ``.``, case and
#: digits), so ``MLFLOW_TRACKING_PASSWORD``, ``AWS_SECRET_ACCESS_KEY``, ``--api-key``,
#: ``GITHUB_TOKEN`` and ``sslpassword`` are secrets, and ``PWD`` or ``KEYBOARD`` are not.
_SECRET_WORDS = frozenset({
    "password", "passwd", "passphrase", "secret", "secrets", "token", "tokens", "credential",
    "credentials", "creds", "auth", "authorization", "apikey", "sig", "signature", "sas", "cookie",
    "bearer", "privatekey",
})
#: ``KEY`` is a secret only next to one of these (``AWS_SECRET_ACCESS_KEY``, ``API_KEY``, ``X_KEY``).
_KEY_QUALIFIERS = frozenset({"api", "access", "secret", "private", "signing", "account", "master", "client", "encryption"})
#: Names that look like secrets by their words but are not: paths and flags.
_NOT_SECRET = frozenset({"PWD", "OLDPWD", "MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_AUTH"})
#: Shown instead of a secret.
REDACTED = "***"
#: Values shorter than this are not searched for inside other text (``"1"`` or ``"true"``
#: in a secret variable must not blank out every ``1`` of a tag); a secret-named key's value
#: is redacted whatever its length.
_MIN_SECRET_LEN = 6


def _words(name: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    return [w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w]


def is_secret_name(name: str) -> bool:
    """Whether ``name`` (an env var, option, query parameter or tag key) names a secret."""
    if name.strip().upper() in _NOT_SECRET:
        return False
    words = _words(name)
    joined = "".join(words)
    if any(w in _SECRET_WORDS for w in words) or any(
        s in joined for s in ("password", "passwd", "apikey", "secret", "connectionstring")
    ):
        return True
    return any(w == "key" and i > 0 and words[i - 1] in _KEY_QUALIFIERS for i, w in enumerate(words))


def env_secrets(environ: Mapping[str, str] | None = None) -> list[str]:
    """The values of secret-named environment variables, longest first (read now)."""
    env = os.environ if environ is None else environ
    found = {v for k, v in env.items() if v and len(v) >= _MIN_SECRET_LEN and is_secret_name(k)}
    return sorted(found, key=len, reverse=True)


_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/?#@\s]*)(?::(?P<pw>[^/?#@\s]*))?@")
_QUERY_SECRET = re.compile(r"(?P<key>[?&;](?P<name>[^=&;#\s]+)=)(?P<value>[^&;#\s]*)")


def redact(uri: str) -> str:
    """``uri`` (or any text holding URIs) without credentials, for tags, params and messages.

    ``scheme://user:password@host`` keeps the user (``user:***@``); a user part without a
    password is taken as a token (``https://ghp_xxx@host`` -> ``https://***@host``); query
    parameters with secret names (``?password=``, ``&token=``, ``&X-Amz-Signature=``, ``&sig=``)
    keep their name only.
    """

    def userinfo(m: re.Match[str]) -> str:
        if m.group("pw") is not None:
            return f"{m.group('scheme')}{m.group('user')}:{REDACTED}@"
        return f"{m.group('scheme')}{REDACTED}@"

    def query(m: re.Match[str]) -> str:
        return m.group("key") + REDACTED if is_secret_name(m.group("name")) else m.group(0)

    return _QUERY_SECRET.sub(query, _USERINFO.sub(userinfo, uri))


def scrub(text: str, secrets: Sequence[str] | None = None) -> str:
    """``text`` with credentials in URIs redacted and every secret value (by default the
    secret-named environment variables' values) replaced by ``***``."""
    out = redact(text)
    for value in env_secrets() if secrets is None else secrets:
        if value in out:
            out = out.replace(value, REDACTED)
    return out


_OPTION = re.compile(r"^(?P<dashes>--?)(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)(?P<eq>=)?(?P<value>.*)$", re.DOTALL)


def redact_argv(argv: Sequence[str], secrets: Sequence[str] | None = None) -> list[str]:
    """A command line fit to log: secret-named options lose their values
    (``--password X``, ``--api-key=X``, ``-o token=X``), URIs lose credentials, and secret
    environment values are replaced wherever they appear."""
    found = env_secrets() if secrets is None else list(secrets)
    out: list[str] = []
    hide_next = False
    for arg in argv:
        arg = str(arg)
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        m = _OPTION.match(arg)
        if m and is_secret_name(m.group("name")):
            if m.group("eq"):
                out.append(f"{m.group('dashes')}{m.group('name')}={REDACTED}")
            else:
                out.append(arg)
                hide_next = True
            continue
        key, eq, _ = arg.partition("=")
        if eq and not arg.startswith("-") and "://" not in key and is_secret_name(key):
            out.append(f"{key}={REDACTED}")  # -o token=X, KEY=VALUE pairs
            continue
        out.append(scrub(arg, found))
    return out


# --------------------------------------------------------------------------- artifact names

#: Longest artifact path component and whole path that bnverify writes (file systems allow
#: 255 bytes per component; object stores about 1024 per key; mlflow's UI truncates long names).
MAX_ARTIFACT_PART = 100
MAX_ARTIFACT_PATH = 200
_UNSAFE_PART = re.compile(r"[^A-Za-z0-9._+=@-]+")


def safe_artifact_part(text: str) -> str:
    """One path component made from user input (a target spec, a check id, a suite name):
    letters, digits and ``._+=@-`` only, no leading dot, at most :data:`MAX_ARTIFACT_PART`
    characters (a long name keeps its start and gains a short hash, so two long names stay
    distinct)."""
    part = _UNSAFE_PART.sub("_", str(text)).strip("._") or "_"
    if len(part) > MAX_ARTIFACT_PART:
        digest = hashlib.sha256(str(text).encode("utf-8", "surrogatepass")).hexdigest()[:10]
        part = part[: MAX_ARTIFACT_PART - 11].rstrip("._") + "-" + digest
    return part


def safe_artifact_path(name: str) -> str | None:
    """A relative artifact path made safe: each component through :func:`safe_artifact_part`,
    no empty, ``.`` or ``..`` components, no absolute path or drive, at most
    :data:`MAX_ARTIFACT_PATH` characters.  None when nothing is left."""
    raw = str(name).replace("\\", "/")
    parts = [p for p in raw.split("/") if p.strip() not in ("", ".", "..")]
    safe = [safe_artifact_part(p) for p in parts]
    safe = [p for p in safe if p not in ("", "_") or len(safe) == 1]
    if not safe:
        return None
    path = "/".join(safe)
    while len(path) > MAX_ARTIFACT_PATH and len(safe) > 1:
        safe.pop(0)  # keep the file name and the folders nearest to it
        path = "/".join(safe)
    return path[:MAX_ARTIFACT_PATH]


def describe_error(exc: BaseException) -> str:
    """One line for a failure, as messages and ``meta.json`` carry it (credentials and secret
    environment values redacted: a driver's or HTTP library's message may quote the URI)."""
    text = scrub(" ".join(str(exc).split()) or type(exc).__name__)
    return f"{type(exc).__name__}: {text[:400]}"
