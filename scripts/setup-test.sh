#!/usr/bin/env bash
# Installs everything the tests need, idempotently: a virtualenv with the package and its
# test references (transformers, tokenizers, torch+torchvision, playwright) and Debian's
# Chromium for the browser tests. Safe to re-run; does nothing that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# torch 2.14.1 + torchvision 0.29.1: the CUDA build pair (runs on CPU); the only torchvision
# pairing that imports on these machines (see README).
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
# chromium: browser tests; nginx, apache2, caddy: tests/test_deploy.py runs them with the emitted configs
# (the tests start their own instances on 127.0.0.1; services the packages may start are left alone).
if ! command -v chromium >/dev/null 2>&1 || ! [ -x /usr/sbin/nginx ] || ! [ -x /usr/sbin/apache2 ] || ! command -v caddy >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium nginx apache2 caddy >/dev/null
fi
# axe-core (accessibility checks in tests/web/test_page_ux.py), pinned, into the ignored .cache/npm.
AXE_VERSION=4.11.0
if [ "$(cat .cache/npm/node_modules/axe-core/package.json 2>/dev/null | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["version"])' 2>/dev/null)" != "$AXE_VERSION" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends npm >/dev/null
  fi
  mkdir -p .cache/npm
  npm install --prefix .cache/npm --no-save --no-audit --no-fund --loglevel=error "axe-core@$AXE_VERSION" >/dev/null
fi
