"""Conveyor from a notebook or a script: train, promote and audit a project with the Python API.

    .venv/bin/python examples/notebook.py [PROJECT_FOLDER]

Each step returns the typed result the matching command prints (`conveyor train`, `promote`,
`audit`, `lineage`); nothing here but `conveyor.Workspace`.
"""

import sys

import conveyor

ws = conveyor.Workspace.open(sys.argv[1] if len(sys.argv) > 1 else ".")

validation = ws.validate()
print(f"validated: {validation.evaluated} expectations met")

trained = ws.train()
print(f"trained: {trained.name} version {trained.version}, holdout {trained.metrics}")

verified = ws.verify(f"{trained.name}@candidate")
print(f"verified: {verified.ok} ({len(verified.links)} links)")

promotion = ws.promote(f"{trained.name}/{trained.version}", to="champion")
print(f"promoted: {promotion.decision.ok}: {'; '.join(promotion.decision.reasons)}")

audit = ws.audit(f"{trained.name}@champion")
for link in audit.links:
    print(f"  {'PASS' if link.ok else 'FAIL'} {link.name}: {link.detail}")
print(f"audited: {'every link verified' if audit.ok else 'NOT verified'}")

lineage = ws.lineage(f"{trained.name}@champion", up=True)
print(f"lineage: {len(lineage.walks[0].events)} events upstream of {lineage.start.label}")
sys.exit(0 if verified.ok and promotion.decision.ok and audit.ok else 1)
