#!/usr/bin/env bash
# Build TensorRT engines from exported ONNX graphs with trtexec, cached per GPU architecture.
#
#   tools/jetson/build_engines.sh model.onnx                 # single graph -> engines/<arch>/model.engine
#   tools/jetson/build_engines.sh model_prefix.onnx          # split layout: builds prefix AND step engines
#   MAX_BATCH=4 OPT_BATCH=1 PRECISION=fp16 ENGINE_DIR=engines tools/jetson/build_engines.sh model.onnx
#
# Cache key: engines/sm<compute capability>_trt<TensorRT version>/<onnx sha256 prefix>/<name>.engine.
# An engine only runs on the GPU architecture and TensorRT version it was built with, so building on an
# Orin (sm87) and a Thor keeps both. An engine that is already in the cache is not rebuilt (FORCE=1 rebuilds).
# Each engine gets a sidecar <name>.engine.json (layout, steps, sizes) read by trt_policy.py.
set -euo pipefail

if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
  sed -n '2,11p' "$0"; exit 0
fi
ONNX="$1"
HERE="$(cd "$(dirname "$0")" && pwd)"
ENGINE_DIR="${ENGINE_DIR:-engines}"
MIN_BATCH="${MIN_BATCH:-1}"; OPT_BATCH="${OPT_BATCH:-1}"; MAX_BATCH="${MAX_BATCH:-1}"
PRECISION="${PRECISION:-fp16}"            # fp16 | fp32 (Orin has no FP8 tensor cores)
WORKSPACE_MIB="${WORKSPACE_MIB:-4096}"
TRTEXEC="${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}"
PYTHON="${PYTHON:-python3}"

[[ -f "$ONNX" ]] || { echo "error: $ONNX not found" >&2; exit 2; }
[[ -x "$TRTEXEC" ]] || { echo "error: trtexec not found (JetPack: /usr/src/tensorrt/bin/trtexec; set TRTEXEC=)" >&2; exit 2; }

# GPU architecture: nvidia-smi where it reports it (Thor, dGPU), else the CUDA runtime via torch (Orin).
SM="${SM:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d . || true)}"
if [[ -z "$SM" ]]; then
  SM="$($PYTHON -c 'import torch; a,b=torch.cuda.get_device_capability(); print(f"{a}{b}")')"
fi
TRT_VER="$($PYTHON -c 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null || "$TRTEXEC" --version 2>/dev/null | grep -o '[0-9]\+\.[0-9]\+\.[0-9]\+' | head -1)"
HASH="$(sha256sum "$ONNX" | cut -c1-16)"
OUT="$ENGINE_DIR/sm${SM}_trt${TRT_VER}/$HASH"
mkdir -p "$OUT"

graphs=("$ONNX")
if [[ "$ONNX" == *_prefix.onnx ]]; then graphs+=("${ONNX%_prefix.onnx}_step.onnx"); fi

for g in "${graphs[@]}"; do
  name="$(basename "${g%.onnx}")"
  engine="$OUT/$name.engine"
  if [[ -f "$engine" && "${FORCE:-0}" != 1 ]]; then echo "cached: $engine"; continue; fi
  mapfile -t shapes < <("$PYTHON" "$HERE/trt_policy.py" shapes "$g" --min "$MIN_BATCH" --opt "$OPT_BATCH" --max "$MAX_BATCH")
  flags=(--onnx="$g" --saveEngine="$engine.tmp" --minShapes="${shapes[0]}" --optShapes="${shapes[1]}"
         --maxShapes="${shapes[2]}" --memPoolSize=workspace:"${WORKSPACE_MIB}"M --skipInference)
  [[ "$PRECISION" == fp16 ]] && flags+=(--fp16)
  echo "building $engine (sm$SM, TensorRT $TRT_VER, $PRECISION, batch $MIN_BATCH..$MAX_BATCH)"
  "$TRTEXEC" "${flags[@]}" | tail -n 5
  mv "$engine.tmp" "$engine"
  "$PYTHON" "$HERE/trt_policy.py" meta "$g" "$engine.json"
done
echo "engines in $OUT"
