"""What ``specdec train eagle`` takes, and which targets it can train a head for.

Two kinds of head: EAGLE-1 (``head="eagle"``, vLLM's ``method: eagle``) reads the
target's final hidden state; EAGLE-3 (``head="eagle3"``, ``method: eagle3``) reads
three of its layers' hidden states (:func:`aux_layers`).

Light on purpose: attrs records and checks only, so the command line can build
its parser without importing torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from attrs import field, frozen, validators

from specdec.errors import InvalidOptionError, ModelError, SpecdecError
from specdec.models import BASE_ALIAS, DRAFT_ALIAS, EAGLE3_ALIAS, EAGLE_ALIAS

SUPPORTED_MODEL_TYPES = frozenset({"llama"})
"""Target ``model_type`` values whose heads vLLM loads (as ``EagleLlamaForCausalLM`` for
EAGLE-1, ``Eagle3LlamaForCausalLM`` for EAGLE-3)."""

HeadKind = Literal["eagle", "eagle3"]
HEAD_KINDS: tuple[HeadKind, ...] = ("eagle", "eagle3")
HEAD_ALIASES: dict[str, str] = {"eagle": EAGLE_ALIAS, "eagle3": EAGLE3_ALIAS}
"""The bundled alias under which the bundled target's trained head of each kind is registered."""
HEAD_TITLES: dict[str, str] = {"eagle": "EAGLE-1", "eagle3": "EAGLE-3"}

EVAL_STRATEGIES = ("ngram", "draft_model", "eagle")
"""What the evaluation compares with the baseline, by default."""

FeatureDtype = Literal["bfloat16", "float32"]


class TrainingError(SpecdecError):
    """Training cannot start or go on; the message says why and what to do."""


def _positive(_instance: Any, attribute: Any, value: float | None) -> None:
    if value is not None and value <= 0:
        raise InvalidOptionError(f"{attribute.name} must be positive, got {value}")


def _fraction(_instance: Any, attribute: Any, value: float) -> None:
    if not 0 <= value < 1:
        raise InvalidOptionError(f"{attribute.name} must be in [0, 1), got {value}")


def _head_kind(_instance: Any, attribute: Any, value: str) -> None:
    if value not in HEAD_KINDS:
        msg = f"{attribute.name} must be one of {', '.join(HEAD_KINDS)}, got {value!r}"
        raise InvalidOptionError(msg)


def aux_layers(num_layers: int) -> tuple[int, int, int]:
    """The target layers an EAGLE-3 head reads: vLLM's default ``(2, n // 2, n - 3)``.

    Index ``k`` is the residual stream after ``k`` decoder layers, before the final
    norm (vLLM adds ``hidden + residual`` there), which is Hugging Face's
    ``hidden_states[k]`` for ``k < n``.  The ids are written into the head's
    ``config.json`` (``eagle_config.eagle_aux_hidden_state_layer_ids``), so vLLM
    collects exactly these.

    Raises:
        ModelError: the target has too few layers for three distinct ids.
    """
    ids = (2, num_layers // 2, num_layers - 3)
    if not ids[0] < ids[1] < ids[2] < num_layers:
        msg = (
            f"an EAGLE-3 head reads layers (2, n // 2, n - 3) of its target, which needs "
            f"at least 7 layers; this target has {num_layers}: train an EAGLE-1 head "
            "(--head eagle) instead"
        )
        raise ModelError(msg)
    return ids


@frozen
class TrainOptions:
    """Every setting of one EAGLE head training, with defaults sized for a 2-core CPU.

    ``head`` chooses the kind: ``"eagle"`` (EAGLE-1, the default) or ``"eagle3"``.
    EAGLE-3 trains on token cross-entropy alone (its drafts' states have no
    counterpart in the target to regress on), so ``ce_weight`` and
    ``soft_labels`` apply to EAGLE-1 only.

    Data: ``prompts`` are read in addition to the bundled sample benchmark
    (unless ``include_sample`` is off).  ``eval_prompts`` are held out for the
    evaluation and removed from training; without them a seeded
    ``holdout_fraction`` of the conversations is held out instead.
    ``val_fraction`` of the training conversations is kept aside for the
    held-out loss that drives early stopping.

    ``engine_overrides`` (``key.path=value``) apply to the generation and the
    evaluation runs; ``eval_overrides`` to the evaluation runs only.
    """

    target: str = BASE_ALIAS
    head: HeadKind = field(default="eagle", validator=_head_kind)
    """``"eagle"`` (EAGLE-1, vLLM ``method: eagle``) or ``"eagle3"`` (``method: eagle3``)."""
    output: Path | None = None
    """Where the head is written; default: the bundled alias folder for the bundled
    target (``$SPECDEC_HOME/models/smollm2-135m-eagle``, or ``-eagle3``), required
    otherwise."""
    work_dir: Path | None = None
    """Generation, features and checkpoints; default ``<output>.partial``."""
    prompts: tuple[Path, ...] = ()
    include_sample: bool = True
    eval_prompts: Path | None = None
    holdout_fraction: float = field(default=0.1, validator=_fraction)
    val_fraction: float = field(default=0.05, validator=_fraction)
    max_tokens: int = field(default=192, validator=_positive)
    """New tokens per answer when the target generates its training answers."""
    engine_overrides: tuple[str, ...] = ()
    max_length: int = field(default=512, validator=_positive)
    """Longest sequence (prompt + answer) whose hidden states are collected; longer
    prompts lose their beginning, the answer is always kept."""
    collect_dtype: FeatureDtype = "bfloat16"
    """Precision of the transformers pass: bfloat16 is what vLLM runs the bundled
    model in (``dtype: auto``), and several times faster on CPUs with AVX-512 BF16."""
    feature_dtype: FeatureDtype = "bfloat16"
    batch_tokens: int = field(default=2048, validator=_positive)
    shard_tokens: int = field(default=32768, validator=_positive)
    epochs: int = field(default=8, validator=_positive)
    max_steps: int | None = field(default=None, validator=_positive)
    lr: float = field(default=1e-3, validator=_positive)
    warmup_steps: int = 20
    weight_decay: float = 0.0
    ce_weight: float = field(default=0.5, validator=_positive)
    """Weight of the token cross-entropy beside the feature regression."""
    unroll: int = field(default=3, validator=_positive)
    """Drafting steps trained per position (1: teacher forcing only)."""
    teacher_epochs: int = 6
    """Epochs trained with teacher forcing only (cheap, fast to learn the first
    draft) before the ``unroll`` steps are trained."""
    step_decay: float = field(default=0.8, validator=_positive)
    soft_labels: bool = False
    """Cross-entropy against the target's full distribution (over ``ce_vocab``) rather
    than its greedy token alone: more signal per position."""
    detach_steps: bool = True
    """Drafting steps after the first see the previous step's prediction without
    back-propagating into it (stabler on small batches)."""
    feature_noise: float = field(default=0.0, validator=validators.ge(0.0))
    """Width of uniform noise added to the input hidden states while training
    (EAGLE's augmentation against over-fitting; targets stay clean). 0: none."""
    ce_vocab: int = 8192
    """Cross-entropy over the most frequent target tokens of the data (0: all)."""
    grad_clip: float = 1.0
    autocast: bool = True
    """Run the head's matrix products in bfloat16 (weights stay float32)."""
    patience: int = field(default=3, validator=_positive)
    eval_every: int = field(default=200, validator=_positive)
    checkpoint_every: int = field(default=100, validator=_positive)
    val_tokens: int = field(default=16384, validator=_positive)
    """Held-out positions scored at each evaluation during training (a prefix)."""
    seed: int = 0
    threads: int = field(default=2, validator=_positive)
    evaluate: bool = True
    eval_strategies: tuple[str, ...] = EVAL_STRATEGIES
    eval_k: int = field(default=3, validator=_positive)
    eval_draft: str | None = None
    """Draft model for the ``draft_model`` comparison; default: the bundled truncated
    draft when the target is the bundled model, else that comparison is skipped."""
    eval_max_tokens: int = field(default=128, validator=_positive)
    eval_overrides: tuple[str, ...] = ()
    overwrite: bool = False
    restart: bool = False
    keep_work: bool = False

    def __attrs_post_init__(self) -> None:
        """Refuse settings that do not apply to the chosen head."""
        if self.head == "eagle3" and self.soft_labels:
            msg = (
                "soft_labels needs the target's final hidden state, which an EAGLE-3 "
                "training does not collect: leave soft_labels off with head eagle3"
            )
            raise InvalidOptionError(msg)

    @property
    def alias(self) -> str:
        """The bundled alias of this kind of head for the bundled target."""
        return HEAD_ALIASES[self.head]

    def output_path(self) -> Path:
        """The head's folder."""
        if self.output is not None:
            return self.output.expanduser().resolve()
        if self.target == BASE_ALIAS:
            from specdec.models import bundled  # noqa: PLC0415

            return bundled(self.alias).path
        msg = (
            f"no --output given for target {self.target!r}: only the bundled target "
            f"({BASE_ALIAS}) has a default head folder; name one with --output DIR"
        )
        raise TrainingError(msg)

    def work_path(self) -> Path:
        """The folder holding generation, features and checkpoints."""
        if self.work_dir is not None:
            return self.work_dir.expanduser().resolve()
        out = self.output_path()
        return out.with_name(out.name + ".partial")

    def draft_for_eval(self) -> str | None:
        """The draft model the evaluation compares with, if any."""
        if self.eval_draft is not None:
            return self.eval_draft
        return DRAFT_ALIAS if self.target == BASE_ALIAS else None


def check_target(config: dict[str, Any], where: str, head: HeadKind = "eagle") -> None:
    """Refuse a target whose ``head`` this trainer cannot build or vLLM cannot load.

    Raises:
        ModelError: naming the target's architecture and what is supported.
    """
    model_type = config.get("model_type")
    architectures = ", ".join(config.get("architectures") or []) or "no architectures listed"
    if model_type not in SUPPORTED_MODEL_TYPES:
        msg = (
            f"{where}: target architecture {model_type!r} ({architectures}) is not supported: "
            f"train eagle builds EAGLE heads for {', '.join(sorted(SUPPORTED_MODEL_TYPES))} "
            "targets only (vLLM loads them as EagleLlamaForCausalLM or Eagle3LlamaForCausalLM); "
            "choose a Llama-architecture target, or train a head for this one with vLLM's "
            "speculators project"
        )
        raise ModelError(msg)
    problems = [
        f"no integer {key}"
        for key in ("hidden_size", "num_attention_heads", "intermediate_size", "vocab_size",
                    "num_hidden_layers")
        if not isinstance(config.get(key), int)
    ]
    if config.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {config.get('hidden_act')!r} (vLLM's Llama layer is silu)")
    if config.get("attention_bias") or config.get("mlp_bias"):
        problems.append("biases in attention or MLP")
    if problems:
        msg = (
            f"{where}: this Llama target cannot take an {HEAD_TITLES[head]} head from train "
            "eagle: " + "; ".join(problems)
        )
        raise ModelError(msg)
    if head == "eagle3":
        try:
            aux_layers(config["num_hidden_layers"])
        except ModelError as exc:
            raise ModelError(f"{where}: {exc}") from None
