#!/usr/bin/env bash
# Install everything regtool needs on a Debian machine: Mesa's headless OpenGL (EGL, OSMesa)
# when missing, a virtual environment in .venv with torch==2.13.0 (CPU wheel) and regtool with
# its test extras. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(libegl1 libegl-mesa0 libgl1-mesa-dri libgles2 libosmesa6)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
# Run apt-get, waiting (bounded: 40 tries 15 s apart, 10 minutes) while another apt/dpkg
# process holds its lock; any other failure ends the set-up at once.
apt_wait() {
  local try err
  for try in $(seq 1 40); do
    if err=$(DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get -o DPkg::Lock::Timeout=15 "$@" \
             2>&1 >/dev/null); then
      return 0
    fi
    if ! grep -qiE "lock|resource temporarily unavailable" <<<"$err"; then
      echo "$err" >&2
      return 1
    fi
    echo "setup: another apt/dpkg process holds the lock; waiting (try $try of 40)" >&2
    sleep 15
  done
  echo "setup: the apt/dpkg lock was still held after 10 minutes; run again later" >&2
  return 1
}

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  apt_wait update -qq
  apt_wait install -y -qq "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.regtool-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip 2>/dev/null || true
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -e '.[test]'
  touch "$stamp"
fi
echo "setup: ok ($(.venv/bin/regtool --version))"
