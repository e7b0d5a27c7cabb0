#!/usr/bin/env bash
# What the report's browser test needs: a headless Chromium (Debian's `chromium` package), installed
# when missing (needs root). Prints nothing and exits 0 when it is there; exits 1 saying what is
# missing otherwise (the test then says it skipped).
set -euo pipefail
have() { command -v chromium >/dev/null || command -v chromium-browser >/dev/null; }
have && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "browser-setup: no chromium; install Debian's chromium package (as root)" >&2
  exit 1
fi
apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
have
