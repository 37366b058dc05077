#!/bin/sh
# Install the Debian packages the project needs, only when something is missing (fast when all is there).
#   system-deps.sh python   -> a Python with venv
#   system-deps.sh test     -> everything the test suite starts: nftables, iproute2, promtool...
set -eu

need_python="python3 python3-venv python3-pip"
# command:package pairs for the test suite
need_test="nft:nftables ip:iproute2 promtool:prometheus prometheus-blackbox-exporter:prometheus-blackbox-exporter"

missing=""
case "${1:-test}" in
  python)
    missing="$need_python" ;;
  test)
    for pair in $need_test; do
      cmd=${pair%%:*}; pkg=${pair#*:}
      command -v "$cmd" >/dev/null 2>&1 || missing="$missing $pkg"
    done ;;
esac

[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "system-deps: missing Debian packages:$missing (run as root, or install them)" >&2
  exit 1
fi
echo "system-deps: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
