#!/usr/bin/env bash
# Does a plain (non-editable) install carry the shipped scenarios, profiles and topologies? Installs this
# checkout (its tracked and untracked, non-ignored files) into a fresh venv, then runs p2pfl from a folder
# outside the source tree. Cleans up its venv and folders. Takes a few minutes.
#
#     scripts/check_wheel.sh                        # TORCH=... to pick another torch requirement
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
TORCH=${TORCH:-torch==2.13.0}
WORK=$(mktemp -d /tmp/p2pfl-check-wheel.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
unset PYTHONPATH

mkdir -p "$WORK/src" "$WORK/elsewhere"
(cd "$REPO" && git ls-files -co --exclude-standard -z | xargs -0 tar -cf - --) | tar -xf - -C "$WORK/src"  # no stale build/
python3 -m venv "$WORK/venv"
. "$WORK/venv/bin/activate"
echo "== installing $TORCH and $REPO (non-editable) into $WORK/venv"
pip install -q "$TORCH" 2>&1 | grep -v "is ignored: it is neither" || true
pip install -q "$WORK/src" 2>&1 | grep -v "is ignored: it is neither" || true
cd "$WORK/elsewhere"
python - <<'EOF'
import p2pfl, p2pfl.shipped as s
assert "site-packages" in p2pfl.__file__, p2pfl.__file__
for kind in s.KINDS:
    assert "site-packages" in str(s.folder(kind)) and s.names(kind), (kind, s.folder(kind))
    print(f"{kind}: {', '.join(s.names(kind))}  ({s.folder(kind)})")
EOF

FAST=(--rounds 1 --train.warmup_steps 20 --train.local_steps 10 --runs "$WORK/runs")
failed=0
check() {  # expected exit code, then the p2pfl arguments
    local want=$1; shift
    echo "== p2pfl $*"
    local rc=0
    p2pfl "$@" > "$WORK/out" 2>&1 || rc=$?
    grep -E "nodes, .* rounds|wall time|error" "$WORK/out" | sed 's/^/   /' || true
    if [[ $rc != "$want" ]]; then echo "   FAILED: exit $rc, expected $want"; tail -20 "$WORK/out"; failed=1; fi
}
check 0 sim "${FAST[@]}"
check 0 sim --archs mlp,cnn1d-wide --nodes 6 "${FAST[@]}"
for name in $(cd "$REPO/sim" && ls *.toml | sed 's/\.toml$//'); do
    if grep -qE '^source = "(fsdd|mnist5k)"' "$REPO/sim/$name.toml"; then
        check 2 sim "$name" "${FAST[@]}"  # its dataset's extra is not installed here: one line naming it
    else
        check 0 sim "$name" "${FAST[@]}"
    fi
done
check 0 sim sim/two-widths.toml "${FAST[@]}"
check 0 sim --topology ring-8 --nodes 8 "${FAST[@]}"
check 0 sim --topology topologies/ring-8.toml --nodes 8 "${FAST[@]}"
check 0 sim --topology ring-8 "${FAST[@]}"            # the file brings its node count (8)
check 2 sim no-such-scenario                           # lists the shipped scenarios
check 0 topo ring-8
check 0 topo --help
check 0 node --profile node/cnn1d.toml --state-dir "$WORK/state" --rounds 1 --listen /ip4/127.0.0.1/tcp/0 \
    --set train.warmup_steps=20 --set train.local_steps=10
check 2 node --profile no-such-profile --state-dir "$WORK/state"
if [[ $failed == 0 ]]; then echo "== all checks passed"; else echo "== some checks FAILED"; fi
exit $failed
