#!/usr/bin/env bash
# Entrypoint of the harmgate service image (runs the same way outside Docker; see tests/test_serve_deploy.py).
#
#   serve [GUNICORN ARGS]  (default) exec gunicorn with serve/gunicorn.conf.py: the master verifies the approved
#                          version first and exits 2 with one "refusing to start" line if it cannot be trusted
#   check                  preflight: config, keys, registry, every sha256 and the signature, scorer, model
#                          load; exit 0 ("ok: would serve NAME:VERSION") or 2
#   init-bucket            create the registry bucket named in the config if missing (compose runs it once)
#   anything else          exec'd as is, e.g. `harmgate registry list NAME -c "$HARMGATE_CONFIG"`
#
# Secrets may be files (Docker/Kubernetes secrets): for HARMGATE_API_KEYS, HARMGATE_S3_ACCESS_KEY and
# HARMGATE_S3_SECRET_KEY, VAR_FILE=/run/secrets/x sets VAR from that file. Approvals are verified with the trust
# file of public keys (HARMGATE_TRUST_FILE=/run/secrets/trust.json); `serve` and `check` refuse to run with a
# private signing key in the environment: a serving node never holds one (docs/SERVICE.md, threat model).
set -euo pipefail

refuse() {
  echo "harmgate.serve: refusing to start: $*" >&2
  exit 2
}

load_secret_files() {
  local var file_var file
  for var in HARMGATE_API_KEYS HARMGATE_S3_ACCESS_KEY HARMGATE_S3_SECRET_KEY; do
    file_var="${var}_FILE"
    file="${!file_var:-}"
    [ -n "$file" ] || continue
    [ -z "${!var:-}" ] || refuse "both $var and $file_var are set; set one"
    [ -f "$file" ] && [ -r "$file" ] || refuse "$file_var=$file is not a readable file"
    # $(...) drops the trailing newline that editors and `echo` leave in secret files.
    export "$var=$(cat -- "$file")"
    unset "$file_var"
  done
}

no_signing_key() {
  local var
  for var in HARMGATE_SIGNING_KEY HARMGATE_SIGNING_KEY_FILE HARMGATE_SIGNING_KEY_COMMAND; do
    [ -z "${!var:-}" ] || refuse "$var is set: a serving node holds only the trust file (public keys, HARMGATE_TRUST_FILE); keep the private key with the publisher"
  done
}

require_config() {
  [ -n "${HARMGATE_CONFIG:-}" ] || refuse "HARMGATE_CONFIG is not set (path of the run config YAML)"
  [ -f "$HARMGATE_CONFIG" ] && [ -r "$HARMGATE_CONFIG" ] || refuse "HARMGATE_CONFIG=$HARMGATE_CONFIG is not a readable file"
}

gunicorn_conf() {
  # In the image the config sits in /etc/harmgate; in a checkout, beside this script's folder.
  local here
  here="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
  if [ -n "${HARMGATE_GUNICORN_CONF:-}" ]; then
    echo "$HARMGATE_GUNICORN_CONF"
  elif [ -f "$here/../serve/gunicorn.conf.py" ]; then
    echo "$here/../serve/gunicorn.conf.py"
  else
    echo /etc/harmgate/gunicorn.conf.py
  fi
}

command="${1:-serve}"
[ $# -eq 0 ] || shift
load_secret_files
case "$command" in
  serve)
    no_signing_key
    require_config
    conf="$(gunicorn_conf)"
    [ -f "$conf" ] || refuse "gunicorn config $conf not found (set HARMGATE_GUNICORN_CONF)"
    # A fresh folder for the workers' metrics on every start: counts from a previous run must not leak in.
    PROMETHEUS_MULTIPROC_DIR="$(mktemp -d -t harmgate-metrics.XXXXXX)"
    export PROMETHEUS_MULTIPROC_DIR
    exec gunicorn --config "$conf" "$@"
    ;;
  check)
    no_signing_key
    require_config
    exec python -m serve.runner --config "$HARMGATE_CONFIG" --host "${HARMGATE_BIND_HOST:-127.0.0.1}" --check
    ;;
  init-bucket)
    require_config
    exec python -c 'import os, sys
from harmgate.objectstore import ObjectStore, RegistryError
from harmgate.config import load_config
store = load_config(os.environ["HARMGATE_CONFIG"]).store
try:
    ObjectStore(store).ensure_bucket()
except RegistryError as err:
    sys.exit(f"init-bucket: {err}")
print(f"bucket {store.bucket} ready on {store.endpoint_url}")'
    ;;
  *)
    exec "$command" "$@"
    ;;
esac
