#!/usr/bin/env bash
# The test command (README.md, .ci/run): installs, once, the S3-compatible
# server the S3 tests run against (s3s-fs, a real SigV4-checking server on a
# loopback port), then runs every test. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

tools="${FHIRLAKE_TOOLS:-$HOME/.cache/fhirlake/tools}"
s3s_fs="${FHIRLAKE_S3S_FS:-}"
if [ -z "$s3s_fs" ]; then
    if command -v s3s-fs >/dev/null 2>&1; then
        s3s_fs="$(command -v s3s-fs)"
    else
        s3s_fs="$tools/bin/s3s-fs"
    fi
fi
if [ ! -x "$s3s_fs" ]; then
    echo "installing s3s-fs 0.14.1 into $tools (once; about 2 minutes on 2 cores)"
    # 0.14.1: later releases need a newer rustc than this toolchain.
    cargo install --locked s3s-fs@0.14.1 --features binary --root "$tools"
    s3s_fs="$tools/bin/s3s-fs"
fi
export FHIRLAKE_S3S_FS="$s3s_fs"
# The Postgres front's tests drive it with real clients: psql (from the
# system, .ci/run installs Debian's postgresql-client) and psycopg and
# SQLAlchemy in a virtualenv made here once.
venv="$tools/pg-venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import psycopg, sqlalchemy" 2>/dev/null; then
    echo "installing psycopg and SQLAlchemy into $venv (once)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "psycopg[binary]==3.3.9" "SQLAlchemy==2.1.9"
fi
export FHIRLAKE_PYTHON="$venv/bin/python"
export FHIRLAKE_REQUIRE_PG_CLIENTS=1
# With the server installed, an S3 test that cannot start it fails instead
# of skipping.
export FHIRLAKE_REQUIRE_S3=1
# Where the larger datasets are laid out (CI puts them in ../shared/data),
# a test that cannot find its dataset fails instead of skipping.
if [ -d ../shared/data ]; then
    export FHIRLAKE_REQUIRE_SHARED_DATA=1
fi
exec cargo test --workspace --locked "$@"
