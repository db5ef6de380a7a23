#!/usr/bin/env bash
# Create the Python reference environment used to (re)generate golden fixtures and CPU baselines:
# a venv at $REPO/.venv-ref (git-ignored) with pinned torch, transformers, peft, safetensors, numpy,
# ctranslate2 and sentencepiece. Not needed to build or test the Rust engine.
#
#   tools/setup-pyref.sh            # create or update .venv-ref (idempotent: a no-op when pins match)
#   PYTHON=python3.11 tools/setup-pyref.sh
#   PYREF_PIP_ARGS="--index-url ..." tools/setup-pyref.sh   # extra pip arguments (mirror etc.)
#
# The pins are the versions the committed fixtures were generated with (tests/fixtures/README.md).
# The default PyPI torch wheel is the CUDA build (about 5.6 GB installed, ~5 minutes); CPU use works.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv-ref"
PYTHON="${PYTHON:-python3}"

PINS=(
  "torch==2.15.0"
  "transformers==5.24.0"
  "peft==0.21.2"
  "safetensors==0.8.0"
  "numpy==2.4.6"
  "ctranslate2==4.8.5"
  "sentencepiece==0.2.3"
  # Pulled in by transformers; pinned too because they affect loading and tokenization.
  "tokenizers==0.23.3"
  "huggingface_hub==2.4.0"
)

# transformers 5.x needs Python >= 3.10.
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
  echo "setup-pyref: $PYTHON is older than 3.10; set PYTHON=... to a newer interpreter" >&2
  exit 1
fi

# Returns 0 when every pin is installed at exactly the pinned version.
pins_satisfied() {
  [ -x "$VENV/bin/python" ] || return 1
  local frozen
  frozen="$("$VENV/bin/python" -m pip freeze 2>/dev/null | tr '[:upper:]' '[:lower:]' | tr '-' '_')" || return 1
  local pin
  for pin in "${PINS[@]}"; do
    # pip freeze normalises names (case, '-' vs '_'); compare normalised forms.
    pin="$(printf '%s' "$pin" | tr '[:upper:]' '[:lower:]' | tr '-' '_')"
    grep -qxF "$pin" <<<"$frozen" || return 1
  done
}

if pins_satisfied; then
  echo "setup-pyref: $VENV already has the pinned versions"
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup-pyref: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi

# shellcheck disable=SC2086  # PYREF_PIP_ARGS is intentionally word-split
"$VENV/bin/python" -m pip install --upgrade pip ${PYREF_PIP_ARGS:-}
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install ${PYREF_PIP_ARGS:-} "${PINS[@]}"

if ! pins_satisfied; then
  echo "setup-pyref: installed, but pip freeze does not show every pin:" >&2
  "$VENV/bin/python" -m pip freeze >&2
  exit 1
fi
"$VENV/bin/python" -c 'import torch, transformers, peft, safetensors, numpy, ctranslate2, sentencepiece; print("setup-pyref: ok: torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)'
