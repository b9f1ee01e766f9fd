#!/usr/bin/env bash
# Install the Debian packages the integration tests use, when they are missing:
# PostgreSQL server binaries (initdb, pg_ctl) for the team tracking-server tests.
set -euo pipefail

have_postgres() {
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null
}

if have_postgres; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then SUDO="sudo"; else
        echo "PostgreSQL is not installed and this user cannot install it: run 'apt-get install postgresql' as root" >&2
        exit 1
    fi
fi
echo "installing PostgreSQL from Debian's packages (for the team tracking-server tests)…"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
# Debian starts a default cluster on install; the tests run their own throwaway clusters instead.
if command -v pg_ctlcluster >/dev/null; then
    for cluster in $(pg_lsclusters -h 2>/dev/null | awk '{print $1"/"$2}'); do
        $SUDO pg_ctlcluster "${cluster%/*}" "${cluster#*/}" stop 2>/dev/null || true
    done
fi
have_postgres
