#!/usr/bin/env bash
# Pack the project's runtime Python environment for Spark executors and print the archive's path:
#   spark-submit --archives "$(scripts/pack_env.sh)#environment" --conf spark.pyspark.python=./environment/bin/python ...
#
# The archive is a venv in the layout venv-pack makes: pyvenv.cfg, bin/python (a symlink to this machine's
# interpreter, which every worker must have at the same path, as with venv-pack) and site-packages holding
# microseg (from a wheel built here: the dev install is editable, which venv-pack refuses) and its runtime
# dependency closure, copied from the dev venv without pip, dev tools, bytecode, test suites, headers or
# MLflow's web UI (fewer files: every application unpacks the archive on the driver and on each executor).
# pyspark and py4j are left out: executors import them from $SPARK_HOME/python/lib. Cached as
# build/env-<hash>.tar.gz, keyed by this script, pyproject.toml, libs/, the interpreter and the venv's installed
# packages; a stale archive is removed when a new one is made.
#
# Usage: scripts/pack_env.sh [VENV]      (VENV default: .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(cd "${1:-.venv}" && pwd)
py="$venv/bin/python"
key=$( { cat scripts/pack_env.sh pyproject.toml; find libs -name '*.py' -not -path '*/__pycache__/*' | LC_ALL=C sort | xargs cat;
         readlink -f "$py"; ls "$venv"/lib/python3*/site-packages | grep -E '\.dist-info$'; } | sha256sum | cut -c1-16)
out="build/env-$key.tar.gz"
if [[ -s "$out" ]]; then echo "$out"; exit 0; fi

mkdir -p build
stage=$(mktemp -d build/env-stage.XXXXXX)
trap 'rm -rf "$stage"' EXIT
# Build the wheel from a copy (so setuptools writes no build/ or egg-info into the work tree), in pip's
# isolated build env: the venv's own setuptools may be older than pyproject.toml's build-system asks.
mkdir "$stage/src" "$stage/wheel"
cp -r pyproject.toml libs "$stage/src/"
[[ -f README.md ]] && cp README.md "$stage/src/"
find "$stage/src" \( -name '__pycache__' -o -name '*.egg-info' \) -prune -exec rm -rf {} +
"$py" -m pip wheel -q --no-deps -w "$stage/wheel" "$stage/src" >"$stage/wheel.log" 2>&1 || { cat "$stage/wheel.log" >&2; exit 1; }
"$py" -m zipfile -e "$stage"/wheel/microseg-*.whl "$stage/microseg"

"$py" - "$venv" "$stage/microseg" "$out.part" <<'EOF'
import importlib.metadata as md, io, os, re, sys, tarfile
from pathlib import Path
from packaging.requirements import Requirement

venv, wheel_dir, out = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
site = next((venv / "lib").glob("python3*/site-packages"))
SKIP = {"pyspark", "py4j"}  # executors get these from $SPARK_HOME/python/lib
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
dists = {norm(d.metadata["Name"]): d for d in md.distributions(path=[str(site)])}
# microseg's requirements as the wheel just built states them, not as the (maybe older) editable install did.
dists["microseg"] = next(md.distributions(path=[str(wheel_dir)]))
seen, todo = set(), [("microseg", frozenset())]
while todo:  # the runtime dependency closure of microseg, honouring extras and markers
    item = todo.pop()
    if item[0] in SKIP or item in seen:
        continue
    seen.add(item)
    if item[0] not in dists:
        sys.exit(f"pack_env: {item[0]} (needed by microseg) is not installed in {venv}: pip install -e '.[dev]'")
    for text in dists[item[0]].requires or []:
        req = Requirement(text)
        if req.marker and not any(req.marker.evaluate({"extra": e}) for e in (item[1] or {""})):
            continue
        todo.append((norm(req.name), frozenset(req.extras)))
need = sorted({name for name, _ in seen} - {"microseg"})

def dropped(rel):
    """Not needed to run: bytecode, packages' own test suites, C headers and Cython sources, type stubs,
    MLflow's web UI; outside site-packages: bin/ scripts, whose shebangs name the dev venv."""
    return (
        "__pycache__" in rel.parts
        or "tests" in rel.parts[1:-1]
        or "include" in rel.parts[1:-1]
        or rel.suffix in {".h", ".hpp", ".pxd", ".pyx", ".pxi", ".pyi"}
        or rel.as_posix().startswith("mlflow/server/js/")
    )

def small(info):
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info

with tarfile.open(out, "w:gz", compresslevel=1) as tar:
    cfg = f"home = {Path(os.path.realpath(venv / 'bin/python')).parent}\ninclude-system-site-packages = false\n"
    cfg += "".join(l for l in (venv / "pyvenv.cfg").read_text().splitlines(True) if l.startswith("version"))
    info = tarfile.TarInfo("pyvenv.cfg")
    info.size = len(cfg.encode())
    tar.addfile(small(info), io.BytesIO(cfg.encode()))
    for link, target in [("python", os.path.realpath(venv / "bin/python")), ("python3", "python")]:
        info = tarfile.TarInfo(f"bin/{link}")
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
        tar.addfile(small(info))
    rel_site = site.relative_to(venv)
    for name in need:
        for f in dists[name].files or []:
            path = (site / f).resolve()
            if not path.is_relative_to(site) or not path.is_file() or dropped(path.relative_to(site)):
                continue
            tar.add(path, str(rel_site / path.relative_to(site)), filter=small)
    for path in sorted(wheel_dir.rglob("*")):
        if path.is_file():
            tar.add(path, str(rel_site / path.relative_to(wheel_dir)), filter=small)
print(f"packed {len(need)} distributions and microseg", file=sys.stderr)
EOF
rm -f build/env-*.tar.gz
mv "$out.part" "$out"
echo "$out"
