"""specdec-train: train speculative drafters (EAGLE-1 and EAGLE-3 heads) on the CPU.

``specdec train eagle`` and :func:`train_eagle` generate the target's own
answers with vLLM, collect its hidden states with transformers, train the head
with torch, save it where vLLM loads it and measure it with specdec's runner.
See ``docs/eagle.md``.  :func:`replay_eagle` predicts a head's acceptance counts
from a greedy baseline run (``docs/prediction.md``, "EAGLE replay").  The
command reaches ``specdec`` through the ``specdec.commands`` entry point
``train`` (:class:`.command.TrainCommand`); specdec itself imports nothing from
this package.

Importing this package is light; torch, transformers and vLLM are imported by
the steps that need them.  A script calling :func:`train_eagle` must guard its
entry with ``if __name__ == "__main__":`` because vLLM starts its workers with
``spawn``.
"""

from __future__ import annotations

from specdec.models import EAGLE3_ALIAS, EAGLE_ALIAS

from specdec_train.options import (
    SUPPORTED_MODEL_TYPES,
    TrainingError,
    TrainOptions,
    check_target,
)
from specdec_train.pipeline import EagleTrainResult, Progress, train_eagle
from specdec_train.replay import replay_eagle

__all__ = [
    "EAGLE3_ALIAS",
    "EAGLE_ALIAS",
    "SUPPORTED_MODEL_TYPES",
    "EagleTrainResult",
    "Progress",
    "TrainOptions",
    "TrainingError",
    "check_target",
    "replay_eagle",
    "train_eagle",
]
