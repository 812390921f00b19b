#!/usr/bin/env bash
# Mutation testing (mutmut) of the code a wrong line costs most in: the call core, the playout
# ledger, the stream-token and webhook-signature checks, and the audio codec, each against the
# fast tests that cover it ([tool.mutmut] in pyproject.toml). A periodic run, not CI: minutes per
# module on two cores. Prints killed/total per module and every mutant that survived; see one
# with `python -m mutmut show NAME`.
#
#   scripts/mutation.sh                          # all four modules
#   scripts/mutation.sh telephony.core.playout   # one module (mutmut keeps earlier results)
#   MUTATION_CHILDREN=1 scripts/mutation.sh      # parallel test processes (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
modules=("$@")
if [ ${#modules[@]} -eq 0 ]; then
    modules=(telephony.core.playout telephony.core.call telephony.core.interruptions telephony.serve.security telephony.core.audio)
fi
mkdir -p mutants
for module in "${modules[@]}"; do
    echo "== mutating $module" >&2
    python -m mutmut run --max-children "${MUTATION_CHILDREN:-2}" "$module.*" > "mutants/$module.log" 2>&1 \
        || { tail -20 "mutants/$module.log" >&2; exit 1; }
done
python -m mutmut results --all true > mutants/results.txt
python - "${modules[@]}" <<'PY'
import re
import sys

# mutmut names a mutant "<module>.<function>__mutmut_<n>" ("x_f" or "xǁClassǁmethod").
results = {}
for line in open("mutants/results.txt", encoding="utf-8"):
    name, sep, status = line.strip().rpartition(": ")
    if sep and "__mutmut_" in name:
        results[name] = status
killed_statuses = {"killed", "timeout", "segfault", "caught by type check"}
for module in sys.argv[1:]:
    own = {n: s for n, s in results.items() if re.match(re.escape(module) + r"\.x", n)}
    checked = {n: s for n, s in own.items() if s != "not checked"}
    killed = sum(s in killed_statuses for s in checked.values())
    share = 100 * killed / len(checked) if checked else 0
    print(f"{module}: {killed}/{len(checked)} killed ({share:.1f} %)")
    for name, status in sorted(checked.items()):
        if status not in killed_statuses:
            print(f"    {status}: {name}")
PY
