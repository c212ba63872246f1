# Sourced by scripts/run and scripts/test: make .venv (Python >= 3.11) and install ticketmx into it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "ticketmx needs Python >= 3.11 ($PY is $("$PY" -V 2>&1))" >&2; exit 1
fi
if [ ! -x .venv/bin/python ]; then
  if ! "$PY" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    # Debian ships venv separately.
    as_root apt-get install -y -q python3-venv >/dev/null
    "$PY" -m venv .venv
  fi
fi
.venv/bin/python -m pip install -q --upgrade pip
