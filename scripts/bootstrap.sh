#!/usr/bin/env bash
# Installs what callcenter needs on Debian 12 (apt packages when missing, a virtualenv in .venv
# with the project, its extras and the dev-only package callcenter-dev from devtools/). Safe to
# run again: it only does what is missing. Python packages come at the versions requirements.lock
# pins (the image installs from it too); after a change to pyproject.toml's dependencies,
# regenerate it with the command in its first lines (`pip install uv` first).
# Usage: scripts/bootstrap.sh [--with-postgres] [--with-mariadb]
# (--with-postgres / --with-mariadb: the SQL servers the tests start privately; CI passes both)
set -euo pipefail
cd "$(dirname "$0")/.."

with_postgres=0
with_mariadb=0
for arg in "$@"; do
  case "$arg" in
    --with-postgres) with_postgres=1 ;;
    --with-mariadb) with_mariadb=1 ;;
    *) echo "bootstrap: unknown option $arg" >&2; exit 2 ;;
  esac
done

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v sipp >/dev/null 2>&1 || missing+=(sip-tester)
# a real softphone for the SIP interop tests (tests/sip/test_sip_edge_baresip.py)
command -v baresip >/dev/null 2>&1 || missing+=(baresip)
# a second softphone (belle-sip/liblinphone) for tests/e2e/test_linphone_agent.py
command -v linphonec >/dev/null 2>&1 || missing+=(linphone-cli)
# the WebRTC softphone of the WebSocket tests (devtools/callcenter_dev/browser.py): headless
# Chromium, and npm to fetch SIP.js at its pinned version into a cache on first use
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v npm >/dev/null 2>&1 || missing+=(npm)
# the throw-away CA of the TLS tests (tests/sip/stream_harness.py)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# promtool checks and unit-tests the Prometheus alert rules (tests/deploy/test_monitoring.py)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
if [ "$with_postgres" = 1 ] && ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi
# the Debian package also ships a system service; the tests never use it (devtools mariadb.py)
if [ "$with_mariadb" = 1 ] && [ ! -x /usr/sbin/mariadbd ] && ! command -v mariadbd >/dev/null 2>&1; then
  missing+=(mariadb-server)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "bootstrap: installing ${missing[*]} with apt-get" >&2
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # the Debian packages may start a system redis-server on 6379 and a prometheus on 9090 (where
  # systemd runs); callcenter's tests start their own servers on free ports and use promtool only
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.callcenter-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ devtools/pyproject.toml -nt "$stamp" ] \
   || [ requirements.lock -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  # the project and, next to it, the dev-only package (devtools/: test harness, callcenter-demo),
  # every dependency at its locked version
  .venv/bin/python -m pip install -q -c requirements.lock -e '.[dev]' -e devtools
  touch "$stamp"
fi
