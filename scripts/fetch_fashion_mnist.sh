#!/usr/bin/env bash
# fashion-mnist (images for dinov2-small): Debian's dataset-fashion-mnist package.
# Without asking, nothing is installed system-wide: the .deb is fetched with
# `apt-get download` (no root) and unpacked under $SOFTPROMPT_HOME/datasets/deb. A
# system-wide `apt-get install` (as root) runs only when SOFTPROMPT_APT_INSTALL=1;
# otherwise the command is printed for you to run. Never fatal: without the data only
# the tests and runs that need fashion-mnist say so.
set -uo pipefail
HOME_DIR=${SOFTPROMPT_HOME:-$HOME/.cache/softprompt}
# where the Debian package puts it (overridable so the tests can pretend it is absent)
FMNIST=${FASHION_MNIST_SYSTEM_FILE:-/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz}
FMNIST_USER="$HOME_DIR/datasets/deb/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
INSTALL="apt-get install dataset-fashion-mnist"
[ -f "$FMNIST" ] || [ -f "$FMNIST_USER" ] && exit 0
command -v apt-get >/dev/null || {
  echo "setup: fashion-mnist not installed (no apt-get here); the fashion-mnist tests will say so" >&2
  exit 0
}
if [ "${SOFTPROMPT_APT_INSTALL:-0}" = 1 ] && [ "$(id -u)" = 0 ]; then
  echo "setup: SOFTPROMPT_APT_INSTALL=1: running '$INSTALL' as root (system-wide)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } \
    || true
fi
if [ ! -f "$FMNIST" ] && command -v dpkg >/dev/null; then
  echo "setup: fetching dataset-fashion-mnist's .deb into $HOME_DIR/datasets (apt-get download, no root, nothing installed system-wide)" >&2
  mkdir -p "$HOME_DIR/datasets"
  ( cd "$HOME_DIR/datasets" && apt-get download -q dataset-fashion-mnist >/dev/null 2>&1 \
    && dpkg -x dataset-fashion-mnist_*.deb deb && rm -f dataset-fashion-mnist_*.deb ) || true
fi
if [ ! -f "$FMNIST" ] && [ ! -f "$FMNIST_USER" ]; then
  echo "setup: fashion-mnist not installed; as root run: $INSTALL" \
       "(or SOFTPROMPT_APT_INSTALL=1 bash scripts/setup.sh); the fashion-mnist tests will say so" >&2
fi
exit 0
