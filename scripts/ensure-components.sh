#!/usr/bin/env bash
# Installs the system components the test suite drives that pip cannot provide: Debian's chromium (HTML report
# rendering test). Run by `make test`, so the README's test command and CI (.ci/run) are the same thing.
# PostgreSQL, Redis and RabbitMQ are expected at 127.0.0.1 (they run on every machine here); MLflow comes from the
# dev extras and the tests start its server themselves.
# Under CI (CI=true) a component that cannot be installed fails the run; locally it warns and those tests skip.
set -uo pipefail

fail_or_warn() {
    if [ "${CI:-}" = "true" ] || [ "${CI:-}" = "1" ]; then
        echo "error: $1" >&2
        exit 1
    fi
    echo "warning: $1 (the tests that need it will be skipped)" >&2
}

if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        echo "installing chromium (Debian package, about 1 minute) for the report rendering test ..."
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; then
            fail_or_warn "apt-get install chromium failed"
        fi
    else
        fail_or_warn "chromium is missing and installing it needs root (sudo apt-get install -y chromium)"
    fi
fi
exit 0
