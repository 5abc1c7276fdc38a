#!/usr/bin/env bash
# Installs Debian's chromium (for convkit-viz's headless-browser test) unless it is already
# there. Idempotent; needs root (CI runs as root). Never downloads a browser build of its own.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    echo "chromium present: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
echo "installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
