#!/usr/bin/env bash
# Turns a fresh Debian machine into a tested one: installs what the tests need (Debian and npm
# packages, a Python venv with the project and its test extras), then runs every check.
# Extra arguments go to pytest, e.g. scripts/test.sh -k contract
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian: PostgreSQL 15 (server and client tools), Alertmanager and Prometheus (with promtool),
# started by the tests; docker-compose, which checks docker-compose.yml (no engine needed).
apt_packages=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || apt_packages+=(postgresql-15 postgresql-client-15)
command -v prometheus-alertmanager >/dev/null || apt_packages+=(prometheus-alertmanager)
command -v prometheus >/dev/null && command -v promtool >/dev/null || apt_packages+=(prometheus)
command -v docker-compose >/dev/null || apt_packages+=(docker-compose)
if [ ${#apt_packages[@]} -gt 0 ]; then
  echo "installing Debian packages: ${apt_packages[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
    "${apt_packages[@]}" >/dev/null
fi

# Kubernetes 1.20 for tests/integration/kubernetes: kube-apiserver and kube-controller-manager
# built from Debian's source package (~8 min the first time, cached outside the repository),
# kubectl and etcd; built in the background while the rest installs and lints.
# Kubernetes 1.20 built from Debian's source (about 9 minutes on 2 cores; cached outside the
# repository, so only when missing): in the background, niced, while the checks and most of
# pytest run; the tests that need the API server run last and wait for it (tests/conftest.py).
kube_log=$(mktemp)
kube_status=$(mktemp)
( nice -n 19 scripts/kube-build.sh >"$kube_log" 2>&1; echo $? >"$kube_status" ) &
kube_build=$!
export AZ_AGENT_KUBE_BUILD_LOG="$kube_log" AZ_AGENT_KUBE_BUILD_STATUS="$kube_status"

# npm: Azurite, the Azure Blob emulator (3.35.0: later releases need node >= 21).
if [ ! -x .emu/node_modules/.bin/azurite-blob ]; then
  echo "installing azurite@3.35.0 into .emu/"
  npm install --silent --no-audit --no-fund --prefix .emu azurite@3.35.0
fi

# Python: the project and its test extras in .venv.
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -U pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

echo "== ruff";          .venv/bin/ruff check . && .venv/bin/ruff format --check .
echo "== mypy --strict"; .venv/bin/mypy
echo "== import layers"; .venv/bin/lint-imports
echo "== promtool";      promtool check rules deploy/prometheus/rules.yml \
  && promtool test rules deploy/prometheus/rules.test.yml
echo "== pytest";        .venv/bin/python -m pytest "$@"
echo "== kubernetes";    wait "$kube_build"; [ "$(cat "$kube_status")" = 0 ] \
  || { cat "$kube_log"; exit 1; }; tail -n 1 "$kube_log"
