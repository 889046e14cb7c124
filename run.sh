#!/usr/bin/env bash
# ./run.sh [ARGS]   set up .venv on first use, then run `hostd ARGS` (no ARGS: `hostd calibrate --if-missing`,
#                  then `hostd compare --backend both`)
# ./run.sh test     set up .venv on first use, then run the whole test suite
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
stamp="$venv/.installed"

python=${PYTHON:-python3}
if ! command -v "$python" >/dev/null 2>&1; then
  echo "run.sh: $python not found; install Python >= 3.10" >&2
  exit 2
fi

# Reinstall when pyproject.toml changes, so a pull that adds a dependency just works.
if [ ! -x "$venv/bin/python" ] || [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ]; then
  echo "run.sh: installing into $venv (one time) ..." >&2
  # pip's and setuptools' own lines matter only when the install fails: then all of them are shown.
  log="$(mktemp "${TMPDIR:-/tmp}/haltpoll-emu-install.XXXXXX")"
  if ! { "$python" -m venv "$venv" && "$venv/bin/python" -m pip install --upgrade pip &&
         "$venv/bin/python" -m pip install -e "$here[test]"; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "run.sh: installing into $venv failed (the installer's output is above)" >&2
    exit 1
  fi
  rm -f "$log"
  touch "$stamp"
fi

# Where PYTHONDONTWRITEBYTECODE is set (container images set it) Python never caches what it
# compiles, so every process we start (hostd, each vCPU, the device) compiled our sources anew:
# ~0.2 s of each `hostd run`. compileall writes the cache regardless; when it is current this
# takes ~50 ms. A file that does not compile says so itself when imported.
"$venv/bin/python" -m compileall -q "$here/hostd" "$here/vcpu" "$here/irqsrc" "$here/bench" >/dev/null 2>&1 || true

if [ "${1:-}" = "test" ]; then
  shift
  cd "$here"
  exec "$venv/bin/python" -m pytest "$@"
fi
if [ $# -eq 0 ]; then
  # First time on a machine with /dev/kvm: measure what virtualization costs here (~25 s), so the
  # emulator's figures are this machine's (hostd calibrate); later runs reuse the profile.
  "$venv/bin/hostd" calibrate --if-missing
  set -- compare --backend both  # the kernel's own figures beside the emulator's where /dev/kvm works
fi
exec "$venv/bin/hostd" "$@"
