#!/bin/sh
# The Containerfile's build stage: check the base and the wheelhouse, install aimass into
# /opt/aimass/venv offline, drop pip from it, and write the CycloneDX SBOM.
set -eu
W=/build/wheelhouse
VARIANT="${VARIANT:-cpu}"
say() { echo "aimass image build: $*" >&2; }
say "$(date -u +%T) start"

# 1. Python 3.11 from the base (official image: /usr/local/bin; Debian's package: /usr/bin).
PY=""
for p in /usr/local/bin/python3.11 /usr/bin/python3.11; do
  if [ -x "$p" ]; then PY="$p"; break; fi
done
if [ -z "$PY" ] || ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
  found="$(ls /usr/local/bin/python3* /usr/bin/python3* 2>/dev/null | tr '\n' ' ')"
  say "ERROR: the BASE image has no Python 3.11 (looked for /usr/local/bin/python3.11 and /usr/bin/python3.11; found: ${found:-no python3 at all})."
  say "Fix: build with the default BASE (docker.io/library/python:3.11-slim-bookworm) or --build-arg BASE=<a bookworm image with python3.11 and python3.11-venv>."
  exit 1
fi
if ! "$PY" -c 'import venv, ensurepip' 2>/dev/null; then
  say "ERROR: $PY has no venv/ensurepip module (Debian: the python3.11-venv package is missing from the BASE image)."
  say "Fix: add python3.11-venv to the base, or use the default BASE (docker.io/library/python:3.11-slim-bookworm)."
  exit 1
fi

# 2. The wheelhouse: present, complete and of the requested variant.
if ! ls "$W"/aimass-*.whl >/dev/null 2>&1 || ! ls "$W"/torch-*.whl >/dev/null 2>&1; then
  say "ERROR: the wheelhouse (wheelhouse/ in the build context) has no aimass or torch wheel."
  say "Fix: run   docker/build-wheelhouse.sh --variant $VARIANT   in the repository root, then build again."
  exit 1
fi
have="$(cat "$W/VARIANT" 2>/dev/null || echo unknown)"
if [ "$have" != "$VARIANT" ]; then
  say "ERROR: the wheelhouse was built for variant '$have', the build asks for VARIANT=$VARIANT."
  say "Fix: rm -r wheelhouse/*.whl && docker/build-wheelhouse.sh --variant $VARIANT (or pass --build-arg VARIANT=$have)."
  exit 1
fi
if ! (cd "$W" && sha256sum --quiet -c SHA256SUMS); then
  say "ERROR: wheelhouse/SHA256SUMS does not match its wheels (partial copy or edited wheelhouse)."
  say "Fix: docker/build-wheelhouse.sh --variant $VARIANT"
  exit 1
fi

# 3. The environment, offline: only the wheelhouse is visible to pip.
export PIP_NO_INDEX=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CONFIG_FILE=/dev/null
"$PY" -m venv /opt/aimass/venv
/opt/aimass/venv/bin/python -m pip install -q --no-compile --no-index --find-links "$W" "$(ls "$W"/aimass-*.whl)" "mlflow[auth]"
/opt/aimass/venv/bin/python -m pip check
say "$(date -u +%T) installed; trimming"

# 3b. Trim what no run needs (~400 MB): packages' test suites, C/C++ headers, torch's C++ test
# binaries and protoc, Ray's Java jars, type stubs. No compiler is in the image to use headers.
SP=/opt/aimass/venv/lib/python3.11/site-packages
find "$SP" -depth -type d -name tests -prune -exec rm -rf {} +
find "$SP" -type f \( -name '*.pyi' -o -name '*.pxd' -o -name '*.pyx' \) -delete
rm -rf "$SP/torch/test" "$SP/torch/include" "$SP/pyarrow/include" "$SP/ray/jars"
find "$SP/torch/bin" -type f ! -name torch_shm_manager -delete
# Bytecode once, in parallel (the root filesystem is read-only at run time: nothing is compiled later).
/opt/aimass/venv/bin/python -m compileall -q -j 0 "$SP" >/dev/null || say "some files did not byte-compile (as with pip)"
/opt/aimass/venv/bin/python - "$VARIANT" <<'PY'
import sys, torch
variant = sys.argv[1]
cuda = torch.version.cuda
if (variant == "cpu") != (cuda is None):
    sys.exit(f"aimass image build: ERROR: VARIANT={variant} but torch {torch.__version__} has CUDA={cuda}")
print(f"aimass image build: torch {torch.__version__} (CUDA {cuda}) for the {variant} variant")
PY
/opt/aimass/venv/bin/python -m pip uninstall -q -y pip
rm -f /opt/aimass/venv/bin/pip /opt/aimass/venv/bin/pip3 /opt/aimass/venv/bin/pip3.11

say "$(date -u +%T) environment installed"
# 4. The SBOM (CycloneDX JSON, every package with version, licence and hashes) from its own venv.
"$PY" -m venv /build/sbom
/build/sbom/bin/python -m pip install -q --no-index --find-links "$W/sbom-tool" -r /build/docker/sbom-requirements.txt
/build/sbom/bin/cyclonedx-py environment --output-format JSON --output-file /opt/aimass/sbom.cdx.json \
  --output-reproducible --pyproject /build/pyproject.toml /opt/aimass/venv/bin/python
/build/sbom/bin/python - <<'PY'
import json
bom = json.load(open("/opt/aimass/sbom.cdx.json"))
names = {c["name"].lower() for c in bom.get("components", [])}
names.add(bom["metadata"]["component"]["name"].lower())
missing = {"aimass", "ray", "mlflow", "torch", "boto3", "psycopg2-binary", "kubernetes"} - names
if missing:
    raise SystemExit(f"aimass image build: ERROR: the SBOM lacks {sorted(missing)}")
print(f"aimass image build: SBOM with {len(names)} components")
PY

say "$(date -u +%T) SBOM written"
# 5. The entrypoint, and a site-packages listing next to the SBOM for people.
mkdir -p /opt/aimass/bin
install -m 0755 /build/docker/entrypoint.py /opt/aimass/bin/aimass-entrypoint
sed -i "1s|.*|#!/opt/aimass/venv/bin/python|" /opt/aimass/bin/aimass-entrypoint
/opt/aimass/venv/bin/python -c "import importlib.metadata as m; print('\n'.join(sorted(f'{d.metadata[\"Name\"]}=={d.version}' for d in m.distributions())))" > /opt/aimass/requirements.lock
chmod -R a+rX,go-w /opt/aimass
