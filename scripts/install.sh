#!/usr/bin/env bash
# The one install recipe shared by scripts/serve and scripts/test.
# Idempotent: installs only what is missing, so a second run takes about a second.
#   scripts/install.sh [serve|test]
# What it does, on Debian with Python 3.11 as root (sudo is used when not root):
#   1. apt: redis-server (embedded Redis), ffmpeg (HLS, RTMP outputs), patch (step 5), nginx (the balancer in
#      front of G4L_WEB_PROCESSES > 1 web processes, run by the launcher with its own
#      configuration), fonts-dejavu-core (the RTMP outputs' video card) and, for tests,
#      chromium (hls.js), gstreamer (souphttpsrc ! hlsdemux ! decodebin: the generative HLS
#      daemon's players), tmux (the CLI's progress bar is read from a real terminal) and
#      nginx's RTMP module (the RTMP server the station output tests push to; they run their
#      own nginx, never the system one).
#   2. a virtual environment in ./.venv with torch 2.13.0 (the local CPU wheel; never let
#      pip choose torch: another version pulls GBs of CUDA wheels).
#   3. the project and its dependencies under a torch==2.13.0 constraint.
#   4. AudioCraft 1.3.0 with --no-deps (its metadata pins torch 2.1 and av 11, which has no
#      wheel for Python 3.11; pyproject lists the dependencies its code really imports).
#   4b. stable-audio-tools 0.0.20 (jerry) the same way, with --ignore-requires-python too: its
#      metadata says Python < 3.11 and pins torch 2.7.1; the code runs on 3.11 and torch 2.13.
#   5. the patches in scripts/patches/ to the embedded store (SecantusDB, see below).
set -euo pipefail
mode=${1:-serve}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=${G4L_VENV:-$root/.venv}
py=${PYTHON:-python3}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_pkgs=(redis-server ffmpeg nginx fonts-dejavu-core patch)
[ "$mode" = test ] && apt_pkgs+=(chromium tmux gstreamer1.0-tools gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
                                  gstreamer1.0-libav libnginx-mod-rtmp)
# The device harness (tests/device) is Node's socket.io-client, as the Max4Live device uses.
[ "$mode" = test ] && ! command -v node >/dev/null && apt_pkgs+=(nodejs npm)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install: apt-get install ${missing[*]}" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts a freshly installed nginx as a system service on port 80 (unless a
  # policy-rc.d forbids it); the tests start their own. Stop that one and keep it off.
  if [[ " ${missing[*]} " == *" nginx "* ]] && [ -s /run/nginx.pid ] && kill -0 "$(cat /run/nginx.pid)" 2>/dev/null; then
    as_root kill -QUIT "$(cat /run/nginx.pid)" || true
    command -v update-rc.d >/dev/null && as_root update-rc.d nginx disable >/dev/null 2>&1 || true
  fi
fi

[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip -q --disable-pip-version-check)

extras=embedded
[ "$mode" = test ] && extras=embedded,test
# Re-install the Python side only when its inputs change.
stamp="$venv/.g4l-install-$mode"
want=$(cat pyproject.toml scripts/constraints.txt scripts/install.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "${pip[@]}" install torch==2.13.0
  "${pip[@]}" install -c scripts/constraints.txt -e ".[$extras]"
  "${pip[@]}" install -c scripts/constraints.txt --no-deps audiocraft==1.3.0
  "${pip[@]}" install -c scripts/constraints.txt --no-deps --ignore-requires-python stable-audio-tools==0.0.20
  echo "$want" > "$stamp"
fi

if [ "$mode" = test ] && [ ! -d tests/device/node_modules/socket.io-client ]; then
  (cd tests/device && npm ci --no-audit --no-fund --loglevel=error)
fi

# The embedded MongoDB-compatible store (SecantusDB 0.7.0b3, GPL-2.0, run as a separate
# process, never imported) gets the patches in scripts/patches/, each explained in its own
# header. secantusdb-bounded-memory.patch: a find with a limit and no usable index read the
# whole collection before applying the limit, and pymongo's GridFS runs one such find_one
# on audio.chunks before every upload, so the store held every stored chunk in memory at
# each write (300 MB written: 2.2 GB RSS); and its oplog was pruned only every 1000 writes
# (1 GB of chunk copies). Patched, with g4l/embedded.py's settings: RSS flat at ~110 MB (see
# scripts/bench_store_memory). secantusdb-prompt-stop.patch: SIGTERM reached the daemon's
# Python handler only if the kernel happened to hand it to the main thread, so a stop
# waited out its timeout (15-30 s) and killed the store unflushed; now ~0.5 s. Idempotent: a patch that is already applied (its reverse
# applies) is skipped, so this runs every time (pip reinstalling the package drops it); one
# that applies neither way (another SecantusDB version) stops the install with the reason.
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
for p in scripts/patches/secantusdb-*.patch; do
  if patch -d "$site" -p1 -R -s -f --dry-run < "$p" >/dev/null 2>&1; then
    continue
  fi
  if ! patch -d "$site" -p1 -N -s -f --dry-run < "$p" >/dev/null 2>&1; then
    echo "install: $p does not apply to $site/secantus (another SecantusDB version?)" >&2
    exit 1
  fi
  patch -d "$site" -p1 -N -s -f --no-backup-if-mismatch < "$p"
  echo "install: applied $p" >&2
done
