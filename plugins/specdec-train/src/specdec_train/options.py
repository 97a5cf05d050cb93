"""What ``specdec train eagle`` takes, and which targets it can train a head for.

Two kinds of head: EAGLE-1 (``head="eagle"``, vLLM's ``method: eagle``) reads the
target's final hidden state; EAGLE-3 (``head="eagle3"``, ``method: eagle3``) reads
three of its layers' hidden states (:func:`aux_layers`).

:class:`TrainOptions` is the one declaration of every setting: the command line
takes its flags, help (the attribute docstrings) and defaults from it, and the
pipeline takes from it which step each setting belongs to (:func:`option_stages`).

Light on purpose: attrs records and checks only, so the command line can be
built without importing torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import attrs
from attrs import field, frozen
from cyclopts import Group, Parameter
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

STEPS = ("generate", "features", "train", "evaluate")
"""The resumable steps whose outputs depend on options, in order (see :func:`option_stages`)."""
_STEPS_KEY = "specdec_train.steps"


class TrainingError(SpecdecError):
    """Training cannot start or go on; the message says why and what to do."""


def _positive(_instance: Any, attribute: Any, value: float | None) -> None:
    if value is not None and value <= 0:
        raise InvalidOptionError(f"{attribute.name} must be positive, got {value}")


def _non_negative(_instance: Any, attribute: Any, value: float) -> None:
    if value < 0:
        raise InvalidOptionError(f"{attribute.name} must be at least 0, got {value}")


def _fraction(_instance: Any, attribute: Any, value: float) -> None:
    if not 0 <= value < 1:
        raise InvalidOptionError(f"{attribute.name} must be in [0, 1), got {value}")


def _head_kind(_instance: Any, attribute: Any, value: str) -> None:
    if value not in HEAD_KINDS:
        msg = f"{attribute.name} must be one of {', '.join(HEAD_KINDS)}, got {value!r}"
        raise InvalidOptionError(msg)


def _commas(_type: Any, tokens: Any) -> tuple[str, ...]:
    # Each value may list several names ("ngram,eagle"), as the flag always took them.
    return tuple(name.strip() for token in tokens for name in token.value.split(",")
                 if name.strip())


def _steps(*steps: str) -> dict[str, tuple[str, ...]]:
    """Field metadata: the steps (of :data:`STEPS`) whose output this option changes."""
    return {_STEPS_KEY: steps}


def option_stages() -> dict[str, tuple[str, ...]]:
    """Which options each step depends on, from the fields' metadata, in :data:`STEPS` order.

    A step also depends on every step before it (the pipeline chains their
    digests), so an option is listed under the first step it changes, and again
    under a later one only when that step reads it itself.
    """
    fields = attrs.fields(TrainOptions)
    return {step: tuple(f.name for f in fields if step in f.metadata.get(_STEPS_KEY, ()))
            for step in STEPS}


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


# The help page's sections, in this order; a field's annotation puts its flag in one.
_DATA = Parameter(group=Group("data", sort_key=1))
_TRAINING = Parameter(group=Group("training", sort_key=2))
_OUTPUT = Parameter(group=Group("output and evaluation", sort_key=3))


@frozen(kw_only=True)
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

    Each attribute's docstring is its flag's help; the flag is the attribute's
    name (``--max-steps``) unless its annotation names another one.
    """

    head: HeadKind = field(default="eagle", validator=_head_kind,
                           metadata=_steps("features", "train", "evaluate"))
    """kind of head: eagle (EAGLE-1, vLLM `method: eagle`) or eagle3 (EAGLE-3, `method: eagle3`)"""

    target: Annotated[str, Parameter(name="--model"), _DATA] = field(
        default=BASE_ALIAS, metadata=_steps("generate"))
    """target model folder or bundled alias"""
    prompts: Annotated[tuple[Path, ...], Parameter(metavar="FILE|NAME"), _DATA] = field(
        default=(), metadata=_steps("generate"))
    """benchmark to train on, besides the sample benchmark: a file (prompts, questions or
    chat JSONL) or a named benchmark such as spec-bench (`specdec benchmarks list`);
    repeatable"""
    include_sample: Annotated[bool, Parameter(negative="--no-sample"), _DATA] = field(
        default=True, metadata=_steps("generate"))
    """train on the bundled sample benchmark too (--no-sample: do not)"""
    eval_prompts: Annotated[Path | None, Parameter(metavar="FILE|NAME"), _DATA] = field(
        default=None, metadata=_steps("generate"))
    """held-out benchmark for the evaluation (a file or a named benchmark; removed from
    training); default: a --holdout share of the prompts"""
    holdout_fraction: Annotated[float, Parameter(name="--holdout", metavar="FRACTION"), _DATA] = (
        field(default=0.1, validator=_fraction, metadata=_steps("generate")))
    """share of conversations held out when --eval-prompts is not given"""
    max_tokens: Annotated[int, _DATA] = field(default=192, validator=_positive,
                                              metadata=_steps("generate"))
    """answer length (new tokens) the target generates per prompt"""
    engine_overrides: Annotated[tuple[str, ...],
                                Parameter(name="--set", metavar="KEY.PATH=VALUE"), _DATA] = field(
        default=(), metadata=_steps("generate"))
    """experiment override for the generation and evaluation runs, e.g.
    engine.enforce_eager=true (repeatable)"""
    max_length: Annotated[int, _DATA] = field(default=512, validator=_positive,
                                              metadata=_steps("features"))
    """longest sequence (prompt + answer) whose hidden states are kept; longer prompts
    lose their beginning, the answer is always kept"""
    collect_dtype: Annotated[FeatureDtype, _DATA] = field(default="bfloat16",
                                                          metadata=_steps("features"))
    """precision of the transformers pass that collects hidden states: bfloat16 is what
    vLLM runs the bundled model in (`dtype: auto`), and several times faster on CPUs
    with AVX-512 BF16"""
    feature_dtype: Annotated[FeatureDtype, _DATA] = field(default="bfloat16",
                                                          metadata=_steps("features"))
    """precision the hidden states are stored in"""
    shard_tokens: Annotated[int, _DATA] = field(default=32768, validator=_positive,
                                                metadata=_steps("features"))
    """tokens of hidden states per shard file"""

    batch_tokens: Annotated[int, _TRAINING] = field(default=2048, validator=_positive,
                                                    metadata=_steps("features"))
    """padded tokens per batch (of the hidden-state pass and of training)"""
    val_fraction: Annotated[float, _TRAINING] = field(default=0.05, validator=_fraction,
                                                      metadata=_steps("features"))
    """share of training conversations for the held-out loss"""
    epochs: Annotated[int, _TRAINING] = field(default=8, validator=_positive,
                                              metadata=_steps("train"))
    """passes over the data"""
    max_steps: Annotated[int | None, _TRAINING] = field(default=None, validator=_positive,
                                                        metadata=_steps("train"))
    """stop after this many steps"""
    lr: Annotated[float, _TRAINING] = field(default=1e-3, validator=_positive,
                                            metadata=_steps("train"))
    """peak learning rate"""
    warmup_steps: Annotated[int, _TRAINING] = field(default=20, metadata=_steps("train"))
    """steps of linear learning-rate warm-up"""
    weight_decay: Annotated[float, _TRAINING] = field(default=0.0, metadata=_steps("train"))
    """AdamW weight decay"""
    ce_weight: Annotated[float, _TRAINING] = field(default=0.5, validator=_positive,
                                                   metadata=_steps("train"))
    """cross-entropy weight beside the feature regression (EAGLE-1 only)"""
    unroll: Annotated[int, _TRAINING] = field(default=3, validator=_positive,
                                              metadata=_steps("train"))
    """drafting steps trained per position (1: teacher forcing only)"""
    teacher_epochs: Annotated[int, _TRAINING] = field(default=6, metadata=_steps("train"))
    """first epochs with teacher forcing only (cheap, fast to learn the first draft)
    before the --unroll steps are trained"""
    step_decay: Annotated[float, _TRAINING] = field(default=0.8, validator=_positive,
                                                    metadata=_steps("train"))
    """loss weight of each drafting step relative to the one before it"""
    soft_labels: Annotated[bool, _TRAINING] = field(default=False, metadata=_steps("train"))
    """cross-entropy against the target's full distribution (over --ce-vocab) rather
    than its greedy token alone: more signal per position (EAGLE-1 only)"""
    detach_steps: Annotated[bool, Parameter(negative="--no-detach-steps"), _TRAINING] = field(
        default=True, metadata=_steps("train"))
    """drafting steps after the first see the previous step's prediction without
    back-propagating into it (stabler on small batches)"""
    feature_noise: Annotated[float, Parameter(metavar="WIDTH"), _TRAINING] = field(
        default=0.0, validator=_non_negative, metadata=_steps("train"))
    """uniform noise of this width on the input hidden states while training (EAGLE's
    augmentation against over-fitting; targets stay clean); 0: none"""
    ce_vocab: Annotated[int, _TRAINING] = field(default=8192, metadata=_steps("train"))
    """cross-entropy over the N most frequent target tokens of the data (0: the whole
    vocabulary)"""
    grad_clip: Annotated[float, _TRAINING] = field(default=1.0, metadata=_steps("train"))
    """largest gradient norm (clipped above it)"""
    autocast: Annotated[bool, Parameter(negative="--no-autocast"), _TRAINING] = field(
        default=True, metadata=_steps("train"))
    """run the head's matrix products in bfloat16 (weights stay float32)"""
    patience: Annotated[int, _TRAINING] = field(default=3, validator=_positive,
                                                metadata=_steps("train"))
    """held-out evaluations without improvement before stopping"""
    eval_every: Annotated[int, Parameter(metavar="STEPS"), _TRAINING] = field(
        default=200, validator=_positive, metadata=_steps("train"))
    """held-out loss every N steps"""
    checkpoint_every: Annotated[int, Parameter(metavar="STEPS"), _TRAINING] = field(
        default=100, validator=_positive)
    """checkpoint every N steps (an interrupted training resumes from the last)"""
    val_tokens: Annotated[int, _TRAINING] = field(default=16384, validator=_positive,
                                                  metadata=_steps("train"))
    """held-out positions scored at each evaluation during training (a prefix)"""
    seed: Annotated[int, _TRAINING] = field(default=0, metadata=_steps("generate"))
    """seed of the held-out splits, the initialisation and the batch order"""
    threads: Annotated[int, _TRAINING] = field(default=2, validator=_positive,
                                               metadata=_steps("train"))
    """torch threads"""

    output: Annotated[Path | None, Parameter(metavar="DIR"), _OUTPUT] = None
    """head folder; default for the bundled target: the bundled alias folder
    ($SPECDEC_HOME/models/smollm2-135m-eagle, or -eagle3); required otherwise"""
    work_dir: Annotated[Path | None, Parameter(metavar="DIR"), _OUTPUT] = None
    """generation, features, checkpoints; default: the output folder's name + .partial"""
    evaluate: Annotated[bool, Parameter(negative="--skip-eval"), _OUTPUT] = field(
        default=True, metadata=_steps("evaluate"))
    """measure the head with vLLM (step 5; --skip-eval: do not)"""
    eval_strategies: Annotated[tuple[str, ...], Parameter(converter=_commas, metavar="NAMES"),
                               _OUTPUT] = field(default=EVAL_STRATEGIES,
                                                metadata=_steps("evaluate"))
    """compared with the baseline, comma-separated; eagle is the trained head (run as
    eagle3 for an EAGLE-3 head)"""
    eval_k: Annotated[int, _OUTPUT] = field(default=3, validator=_positive,
                                            metadata=_steps("evaluate"))
    """speculative tokens of the compared strategies"""
    eval_max_tokens: Annotated[int, _OUTPUT] = field(default=128, validator=_positive,
                                                     metadata=_steps("evaluate"))
    """answer length (new tokens) of the evaluation runs"""
    eval_draft: Annotated[str | None, Parameter(metavar="MODEL"), _OUTPUT] = field(
        default=None, metadata=_steps("evaluate"))
    """draft model for draft_model; default: the bundled truncated draft for the bundled
    target, else that comparison is skipped"""
    eval_overrides: Annotated[tuple[str, ...],
                              Parameter(name="--eval-set", metavar="KEY.PATH=VALUE"),
                              _OUTPUT] = field(default=(), metadata=_steps("evaluate"))
    """override for the evaluation runs only, e.g. benchmark.limit=8 (repeatable)"""
    overwrite: Annotated[bool, _OUTPUT] = False
    """replace a finished head"""
    restart: Annotated[bool, _OUTPUT] = False
    """discard the work folder and start from step 1"""
    keep_work: Annotated[bool, _OUTPUT] = False
    """keep features and checkpoints after success"""

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
