"""A test hook (loaded through custom_imports): after training each rank writes a digest of its weights and the
objective's privacy history, so a 2-rank run can show its replicas stayed identical."""

from __future__ import annotations

import json
from typing import Any

from vfm.engine.hooks import Hook
from vfm.registry import HOOKS
from vfm.weights import fingerprint


@HOOKS.register("privacy_test_replica_digest")
class ReplicaDigest(Hook):
    """Writes work_dir/replica_<rank>.json: {"weights": digest, "history": [...]}."""

    def after_train(self, trainer: Any) -> None:
        if trainer.exit == "completed":
            record = {"weights": fingerprint(trainer.objective.state_dict()), "history": trainer.objective.history}
            (trainer.work_dir / f"replica_{trainer.rank}.json").write_text(json.dumps(record))
