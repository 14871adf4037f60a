#!/usr/bin/env bash
# Start an MLflow tracking server (UI + REST API) on bnverify's store.
#
# Local mode (the default): the store `bnverify check` writes to when nothing is
# configured, sqlite:///<$BNVERIFY_HOME or ./.bnverify>/mlflow.db, with artifacts in
# <home>/artifacts, bound to 127.0.0.1:5000 (loopback only).
#
#   mlflow/serve.sh                      # then: export MLFLOW_TRACKING_URI=http://127.0.0.1:5000
#   mlflow/serve.sh --port 5001
#
# Team mode: a PostgreSQL backend and a shared artifact root (see mlflow/README.md).
#
#   mlflow/serve.sh --backend-store-uri postgresql://bnverify:PASS@db.internal:5432/bnverify \
#                   --artifacts-destination /shared/bnverify-artifacts   # or s3://bucket/prefix
#   BNVERIFY_SERVER_ALLOW_REMOTE=1 mlflow/serve.sh --host 0.0.0.0 ... -- --allowed-hosts mlflow.internal
#
# Options (each also read from the environment variable in brackets):
#   --port N                    [BNVERIFY_SERVER_PORT]     default 5000
#   --host ADDR                 [BNVERIFY_SERVER_HOST]     default 127.0.0.1; a non-loopback
#                               address also needs BNVERIFY_SERVER_ALLOW_REMOTE=1
#   --backend-store-uri URI     [BNVERIFY_SERVER_BACKEND_URI]  default the local SQLite store
#   --artifacts-destination URI [BNVERIFY_SERVER_ARTIFACTS]    default <home>/artifacts
#   --workers N                 [BNVERIFY_SERVER_WORKERS]  default 1 for SQLite (one writer), else 4
#   -- ARGS...                  passed on to `mlflow server` unchanged
# The mlflow command is $MLFLOW if set, else "$PYTHON -m mlflow" if $PYTHON is set, else
# `mlflow` on PATH, else "python3 -m mlflow".
set -euo pipefail

port="${BNVERIFY_SERVER_PORT:-5000}"
host="${BNVERIFY_SERVER_HOST:-127.0.0.1}"
backend="${BNVERIFY_SERVER_BACKEND_URI:-}"
artifacts="${BNVERIFY_SERVER_ARTIFACTS:-}"
workers="${BNVERIFY_SERVER_WORKERS:-}"
extra=()

while [ $# -gt 0 ]; do
  case "$1" in
    --port) port="$2"; shift 2 ;;
    --host) host="$2"; shift 2 ;;
    --backend-store-uri) backend="$2"; shift 2 ;;
    --artifacts-destination) artifacts="$2"; shift 2 ;;
    --workers) workers="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "serve.sh: unknown option $1 (see mlflow/serve.sh --help)" >&2; exit 2 ;;
  esac
done

case "$host" in
  127.*|localhost|::1) ;;
  *)
    if [ "${BNVERIFY_SERVER_ALLOW_REMOTE:-}" != "1" ]; then
      echo "serve.sh: refusing to bind $host: the server has no authentication of its own." >&2
      echo "serve.sh: put it behind a proxy or a private network, pass --allowed-hosts after --," >&2
      echo "serve.sh: and set BNVERIFY_SERVER_ALLOW_REMOTE=1 (see mlflow/README.md, team mode)." >&2
      exit 2
    fi
    ;;
esac

home="${BNVERIFY_HOME:-.bnverify}"
case "$home" in /*) ;; *) home="$PWD/$home" ;; esac

if [ -z "$backend" ]; then
  mkdir -p "$home"
  backend="sqlite:///$home/mlflow.db"
fi
if [ -z "$artifacts" ]; then
  artifacts="$home/artifacts"
fi
case "$artifacts" in
  *://*) ;;
  /*) mkdir -p "$artifacts" ;;
  *) artifacts="$PWD/$artifacts"; mkdir -p "$artifacts" ;;
esac
if [ -z "$workers" ]; then
  case "$backend" in sqlite:*) workers=1 ;; *) workers=4 ;; esac
fi

if [ -n "${MLFLOW:-}" ]; then
  read -r -a cmd <<< "$MLFLOW"
elif [ -n "${PYTHON:-}" ]; then
  cmd=("$PYTHON" -m mlflow)
elif command -v mlflow >/dev/null 2>&1; then
  cmd=(mlflow)
else
  cmd=(python3 -m mlflow)
fi

export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"  # no GenAI job runner: 6 fewer processes, faster start
shown="$(printf '%s' "$backend" | sed -E 's#(://[^:/@]+):[^@/]*@#\1:***@#')"
echo "serve.sh: MLflow on $shown, artifacts in $artifacts, at http://$host:$port" >&2
exec "${cmd[@]}" server \
  --backend-store-uri "$backend" \
  --serve-artifacts --artifacts-destination "$artifacts" \
  --host "$host" --port "$port" --workers "$workers" \
  ${extra[@]+"${extra[@]}"}
