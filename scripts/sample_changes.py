"""Write the demo's sample changes as JSON Lines: a few hundred, some bad on purpose."""

from __future__ import annotations

import json
import random
import sys

STATUSES = [200, 300, 310, 320, 400, 600]


def main(workspaces: int = 120, seed: int = 42) -> None:
    rng = random.Random(seed)
    out = sys.stdout
    n = 0
    for workspace_id in range(1, workspaces + 1):
        for step in range(rng.randint(1, 4)):
            n += 1
            if rng.random() < 0.35:
                change = {
                    "kind": "status_change",
                    "payload": {"to_status_key": rng.choice(STATUSES)},
                }
            else:
                fields: dict[str, object] = {"title": f"Project {workspace_id} rev {step}"}
                if rng.random() < 0.5:
                    fields["due_date"] = f"2027-0{rng.randint(1, 9)}-{rng.randint(10, 28)}"
                if rng.random() < 0.3:
                    fields["custom_fields"] = [{"custom_field_id": 7, "value": f"crm-{n}"}]
                if rng.random() < 0.2:
                    fields["price"] = rng.randint(1, 500) * 1000
                change = {"kind": "workspace_update", "payload": fields}
            out.write(
                json.dumps({"workspace_id": workspace_id, **change, "source_ref": f"crm-{n}"})
                + "\n"
            )
    # Changes Kantata will refuse: a forbidden project, a missing one, a disabled status.
    out.write(json.dumps({"workspace_id": 13, "kind": "workspace_update",
                          "payload": {"title": "Locked"}}) + "\n")
    out.write(json.dumps({"workspace_id": 99999, "kind": "status_change",
                          "payload": {"to_status_key": 310}}) + "\n")
    out.write(json.dumps({"workspace_id": 21, "kind": "status_change",
                          "payload": {"to_status_key": 699}}) + "\n")
    # Lines enqueue rejects before they reach the table.
    out.write('{"workspace_id": 5, "kind": "rename", "payload": {}}\n')
    out.write('{"workspace_id": -1, "kind": "status_change", "payload": {"to_status_key": 310}}\n')
    out.write("this is not JSON\n")


if __name__ == "__main__":
    main()
