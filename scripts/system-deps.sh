#!/bin/sh
# Install the Debian packages the project needs, only when something is missing (fast when all is there).
#   system-deps.sh python   -> a Python with venv
#   system-deps.sh test     -> everything the test suite starts: nftables, Prometheus, Samba, Chromium...
set -eu

need_python="python3 python3-venv python3-pip"
# command:package pairs for the test suite
need_test="nft:nftables ip:iproute2 unshare:util-linux mount:mount openssl:openssl \
  promtool:prometheus prometheus:prometheus amtool:prometheus-alertmanager \
  prometheus-alertmanager:prometheus-alertmanager prometheus-blackbox-exporter:prometheus-blackbox-exporter \
  chromium:chromium samba-tool:samba samba:samba-ad-dc smbclient:smbclient ldapsearch:ldap-utils \
  chronyd:chrony systemd-analyze:systemd faketime:faketime"
# packages without a command of their own, found by a file they install (path:package)
need_files="/usr/share/samba/setup/ad-schema:samba-ad-provision \
  /usr/lib/python3/dist-packages/samba:python3-samba /usr/sbin/winbindd:winbind \
  /usr/share/fonts/truetype/dejavu:fonts-dejavu-core"

missing=""
case "${1:-test}" in
  python)
    missing="$need_python" ;;
  test)
    for pair in $need_test; do
      cmd=${pair%%:*}; pkg=${pair#*:}
      command -v "$cmd" >/dev/null 2>&1 || missing="$missing $pkg"
    done
    for pair in $need_files; do
      file=${pair%%:*}; pkg=${pair#*:}
      [ -e "$file" ] || missing="$missing $pkg"
    done ;;
esac

[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "system-deps: missing Debian packages:$missing (run as root, or install them)" >&2
  exit 1
fi
echo "system-deps: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
# Packages such as samba, chrony and prometheus start their services on install where they can; the
# tests start their own instances on loopback, so nothing may start here (and chrony must not go and
# ask the Internet's NTP pool). policy-rc.d exit 101 = "do not start"; an existing one is kept.
policy=/usr/sbin/policy-rc.d
made_policy=""
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && made_policy=1
fi
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
[ -n "$made_policy" ] && rm -f "$policy"
exit 0
