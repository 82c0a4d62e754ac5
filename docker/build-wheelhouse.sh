#!/usr/bin/env bash
# Build the wheelhouse the Containerfile installs from (offline, reproducible).
#
#   docker/build-wheelhouse.sh [--variant cpu|gpu] [--out DIR] [--torch-index URL]
#
# Resolves aimass's runtime dependencies (plus mlflow's `auth` extra) against constraints.txt and
# docker/constraints-image.txt as binary wheels for CPython 3.11 on x86_64 glibc Linux (Debian
# bookworm), builds the aimass wheel from this checkout, and fetches the SBOM tool
# (docker/image/sbom-requirements.txt) into DIR/sbom-tool. Default DIR: ./wheelhouse (the Containerfile's
# build context expects it there).
#
# The torch wheel decides the variant and is checked after the download:
#   cpu  torch must be a `+cpu` build and no nvidia-*/triton wheel may be present. On a machine
#        whose pip does not already see the CPU wheel, pass
#        --torch-index https://download.pytorch.org/whl/cpu
#   gpu  torch must be a CUDA build (PyPI's Linux torch is one; or --torch-index
#        https://download.pytorch.org/whl/cu126). pip's configured find-links are ignored so that a
#        local CPU wheel cannot win.
# A wheelhouse already complete for the same inputs is reused (delete DIR to start over).
set -euo pipefail

variant=cpu
out=""
torch_index="${AIMASS_TORCH_INDEX:-}"
python="${PYTHON:-python3}"

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --variant) variant="${2:?--variant needs cpu or gpu}"; shift 2 ;;
    --out) out="${2:?--out needs a directory}"; shift 2 ;;
    --torch-index) torch_index="${2:?--torch-index needs a URL}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "build-wheelhouse: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$variant" in cpu|gpu) ;; *) echo "build-wheelhouse: --variant must be cpu or gpu, got '$variant'" >&2; exit 2 ;; esac

repo="$(cd "$(dirname "$0")/.." && pwd)"
out="${out:-$repo/wheelhouse}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

if ! "$python" -m pip --version >/dev/null 2>&1; then
  echo "build-wheelhouse: '$python -m pip' does not work; set PYTHON to a Python with pip" >&2; exit 2
fi

# Inputs that decide the wheelhouse's content: reuse it when they did not change.
stamp_in="$(cat "$repo/pyproject.toml" "$repo/constraints.txt" "$repo/docker/constraints-image.txt" \
  "$repo/docker/image/sbom-requirements.txt" | sha256sum | cut -c1-16)-$variant-${torch_index}"
src_digest="$(cd "$repo" && find aimass -name '*.py' -o -name '*.json' -o -name '*.yaml' -o -name py.typed \
  | LC_ALL=C sort | xargs cat | sha256sum | cut -c1-16)"

pip_env=()
if [ "$variant" = gpu ]; then
  # Ignore pip's configuration (find-links, constraints) so that a local CPU wheel cannot be chosen.
  pip_env=(env -u PIP_FIND_LINKS -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null)
fi
index_args=()
if [ -n "$torch_index" ]; then index_args=(--extra-index-url "$torch_index"); fi
platform_args=(--only-binary=:all: --implementation cp --python-version 3.11 --abi cp311 --abi abi3 --abi none)
for m in 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36; do
  platform_args+=(--platform "manylinux_2_${m}_x86_64")
done
platform_args+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)

# The aimass wheel follows the source on every call (cheap: pure Python).
if [ ! -f "$out/aimass.digest" ] || [ "$(cat "$out/aimass.digest")" != "$src_digest" ] || ! ls "$out"/aimass-*.whl >/dev/null 2>&1; then
  rm -f "$out"/aimass-*.whl
  "$python" -m pip wheel -q --no-deps --wheel-dir "$out" "$repo"
  printf '%s\n' "$src_digest" > "$out/aimass.digest"
fi

if [ -f "$out/STAMP" ] && [ "$(sed -n 1p "$out/STAMP")" = "$stamp_in" ]; then
  echo "build-wheelhouse: dependencies up to date in $out ($variant)"
else
  echo "build-wheelhouse: resolving dependencies into $out ($variant)"
  find "$out" -maxdepth 1 -name '*.whl' ! -name 'aimass-*.whl' -delete
  rm -rf "$out/sbom-tool" "$out/STAMP" "$out/SHA256SUMS"
  "${pip_env[@]}" "$python" -m pip download -q --dest "$out" "${platform_args[@]}" "${index_args[@]}" \
    -c "$repo/constraints.txt" -c "$repo/docker/constraints-image.txt" \
    "$(ls "$out"/aimass-*.whl)" "mlflow[auth]"
  "${pip_env[@]}" "$python" -m pip download -q --dest "$out/sbom-tool" "${platform_args[@]}" \
    --no-deps -r "$repo/docker/image/sbom-requirements.txt"
  printf '%s\n' "$stamp_in" > "$out/STAMP.new"
fi

# The variant check: never ship the CUDA torch in the CPU image (or the reverse).
torch_whl=( "$out"/torch-*.whl )
if [ "${#torch_whl[@]}" -ne 1 ] || [ ! -f "${torch_whl[0]}" ]; then
  echo "build-wheelhouse: expected exactly one torch wheel in $out, found: ${torch_whl[*]}" >&2; exit 1
fi
torch_name="$(basename "${torch_whl[0]}")"
cuda_wheels="$(cd "$out" && ls | grep -E '^(nvidia_|triton-)' || true)"
if [ "$variant" = cpu ]; then
  if [[ "$torch_name" != *+cpu* ]] || [ -n "$cuda_wheels" ]; then
    echo "build-wheelhouse: the CPU variant got a CUDA torch ($torch_name${cuda_wheels:+ and $(echo $cuda_wheels | wc -w) nvidia/triton wheels})." >&2
    echo "  Fix: rm -r $out && $0 --variant cpu --torch-index https://download.pytorch.org/whl/cpu" >&2
    rm -f "$out/STAMP.new"; exit 1
  fi
else
  if [[ "$torch_name" == *+cpu* ]]; then
    echo "build-wheelhouse: the GPU variant got the CPU torch ($torch_name)." >&2
    echo "  Fix: rm -r $out && $0 --variant gpu --torch-index https://download.pytorch.org/whl/cu126" >&2
    rm -f "$out/STAMP.new"; exit 1
  fi
fi
[ -f "$out/STAMP.new" ] && mv "$out/STAMP.new" "$out/STAMP"
printf '%s\n' "$variant" > "$out/VARIANT"
(cd "$out" && sha256sum ./*.whl sbom-tool/*.whl > SHA256SUMS)
echo "build-wheelhouse: $(ls "$out"/*.whl | wc -l) wheels, $(du -sh "$out" | cut -f1), torch $torch_name ($variant)"
