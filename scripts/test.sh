#!/usr/bin/env bash
# Set up (scripts/setup.sh --tests) and run the whole test suite. This is the README's
# test command and what .ci/run calls.
# Usage: scripts/test.sh [--latest] [PYTEST ARGS...]   (--latest: the newest releases instead
# of requirements/cpu.lock, see scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
SETUP=(--tests)
if [[ "${1:-}" == "--latest" ]]; then SETUP+=(--latest); shift; fi
bash scripts/setup.sh "${SETUP[@]}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
set +e
.venv/bin/python -m pytest tests -q --timeout=1800 "$@"
rc=$?
set -e
if [[ $rc == 5 ]]; then echo "pytest collected no tests: failing" >&2; exit 1; fi
exit $rc
