"""Step 4: write the head in the folder layout vLLM loads for ``method: eagle`` or ``eagle3``.

An EAGLE-1 folder holds ``config.json`` (the target's Llama config with one
layer) and ``model.safetensors`` with ``fc.weight`` [hidden, 2 * hidden] and the
``layers.0.*`` tensors (no ``input_layernorm``, no embedding and no LM head:
vLLM shares the target's).

An EAGLE-3 folder holds ``config.json`` (the target's Llama config with
``architectures: [LlamaForCausalLMEagle3]``, one layer, ``draft_vocab_size`` =
the full vocabulary, ``target_hidden_size`` and ``eagle_config`` naming the
auxiliary layers) and ``model.safetensors`` with ``fc.weight``
[hidden, 3 * hidden], ``midlayer.*`` (``q/k/v_proj`` read 2 * hidden) and
``norm.weight``.  Without ``lm_head.weight``, and with the draft vocabulary
equal to the target's, vLLM shares the target's LM head (and embedding), and
no ``d2t`` vocabulary map is needed.

Both also hold the model card (``README.md`` and ``training.json``) and
specdec's marker, written last.  The folder is built beside its final
place and renamed into it, so a finished head is never half-written; a card
update after the evaluation replaces its files atomically too.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from specdec.files import atomic_folder, atomic_write_text, file_lock
from specdec.models import MARKER
from specdec.provenance import now
from specdec.serialization import write_json

from specdec_train.options import HEAD_TITLES, TrainingError, aux_layers

CARD_JSON = "training.json"
CARD_MD = "README.md"
WEIGHTS = "model.safetensors"
HEAD_TENSORS = (
    "fc.weight",
    "layers.0.self_attn.q_proj.weight",
    "layers.0.self_attn.k_proj.weight",
    "layers.0.self_attn.v_proj.weight",
    "layers.0.self_attn.o_proj.weight",
    "layers.0.mlp.gate_proj.weight",
    "layers.0.mlp.up_proj.weight",
    "layers.0.mlp.down_proj.weight",
    "layers.0.post_attention_layernorm.weight",
)
"""Exactly the tensors of an EAGLE-1 head in vLLM's layout."""
EAGLE3_TENSORS = (
    "fc.weight",
    "midlayer.hidden_norm.weight",
    "midlayer.input_layernorm.weight",
    "midlayer.post_attention_layernorm.weight",
    "midlayer.self_attn.q_proj.weight",
    "midlayer.self_attn.k_proj.weight",
    "midlayer.self_attn.v_proj.weight",
    "midlayer.self_attn.o_proj.weight",
    "midlayer.mlp.gate_proj.weight",
    "midlayer.mlp.up_proj.weight",
    "midlayer.mlp.down_proj.weight",
    "norm.weight",
)
"""Exactly the tensors of an EAGLE-3 head in vLLM's layout (LM head and embedding shared)."""
TENSORS = {"eagle": HEAD_TENSORS, "eagle3": EAGLE3_TENSORS}
EAGLE3_ARCHITECTURE = "LlamaForCausalLMEagle3"
"""The architecture name vLLM maps to ``Eagle3LlamaForCausalLM``."""


def is_finished(folder: Path) -> bool:
    """Whether ``folder`` holds a finished head (its marker is written last)."""
    return (folder / MARKER).is_file()


def head_config(target_config: Mapping[str, Any], head: str = "eagle") -> dict[str, Any]:
    """The head's ``config.json``: the target's Llama config with one hidden layer.

    An EAGLE-3 head's also names its architecture, its untied, full-vocabulary
    LM head (shared with the target) and the target layers it reads.
    """
    config = dict(target_config)
    config["num_hidden_layers"] = 1
    for key in ("_name_or_path", "quantization_config", "layer_types"):
        config.pop(key, None)
    if head == "eagle3":
        layers = aux_layers(int(target_config["num_hidden_layers"]))
        config.update({
            "architectures": [EAGLE3_ARCHITECTURE],
            "tie_word_embeddings": False,
            "draft_vocab_size": target_config["vocab_size"],
            "target_hidden_size": target_config["hidden_size"],
            "eagle_config": {"eagle_aux_hidden_state_layer_ids": list(layers),
                             "use_aux_hidden_state": True},
        })
    return config


def save_head(out: Path, state: Mapping[str, Any], target_config: Mapping[str, Any],
              card: Mapping[str, Any], *, name: str, overwrite: bool,
              head: str = "eagle") -> Path:
    """Write a finished head of kind ``head`` (``eagle``, ``eagle3``) at ``out`` in one rename.

    Raises:
        TrainingError: if ``out`` already holds a finished head and ``overwrite``
            is off, or ``state`` lacks a tensor of the layout.
    """
    import torch  # noqa: PLC0415
    from safetensors.torch import save_file  # noqa: PLC0415

    names = TENSORS[head]
    missing = [k for k in names if k not in state]
    if missing:
        raise TrainingError(f"the trained head lacks {', '.join(missing)}")
    dtype = getattr(torch, str(target_config.get("dtype") or target_config.get("torch_dtype")
                               or "float32"), torch.float32)
    # The lock of the folder itself: the one specdec.models.prepare takes for a bundled alias.
    with file_lock(out):
        if out.exists() and is_finished(out) and not overwrite:
            msg = (
                f"{out} already holds a finished EAGLE head: pass --overwrite to replace it, "
                "or choose another --output"
            )
            raise TrainingError(msg)
        if out.exists() and not is_finished(out) and any(out.iterdir()):
            msg = (
                f"{out} exists and is not a head specdec wrote (no {MARKER}): remove it or "
                "choose another --output"
            )
            raise TrainingError(msg)
        with atomic_folder(out) as work:
            tensors = {k: state[k].detach().to(dtype).contiguous() for k in names}
            save_file(tensors, str(work / WEIGHTS), metadata={"format": "pt"})
            write_json(work / "config.json", head_config(target_config, head))
            write_json(work / CARD_JSON, dict(card))
            atomic_write_text(work / CARD_MD, render_card(card))
            write_json(work / MARKER, {
                "name": name,
                "description": f"{HEAD_TITLES[head]} head trained by `specdec train eagle`",
                "source": "specdec train eagle",
                # specdec.models trusts a bundled folder whose marker names its layer count.
                "layers": 1,
                "target": card.get("target", {}).get("model"),
                "written_at": now(),
            })
    return out


def update_card(out: Path, card: Mapping[str, Any]) -> None:
    """Replace a finished head's model card (after its evaluation), file by file atomically."""
    if not is_finished(out):
        raise TrainingError(f"{out} holds no finished head; its card cannot be updated")
    write_json(out / CARD_JSON, dict(card))
    atomic_write_text(out / CARD_MD, render_card(card))


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, list | tuple):
        return ", ".join(_fmt(v, digits) for v in value)
    return "-" if value is None else str(value)


def _curve(history: list[dict[str, Any]], points: int = 12) -> list[str]:
    train = [h for h in history if "loss" in h]
    val = [h for h in history if "val_loss" in h]
    lines = ["| step | train loss | train top-1 per step | held-out loss | held-out top-1 |",
             "| --- | --- | --- | --- | --- |"]
    stride = max(1, len(train) // points)
    shown = train[::stride]
    if train and shown[-1] is not train[-1]:
        shown.append(train[-1])
    by_step = {v["step"]: v for v in val}
    for entry in shown:
        v = by_step.get(entry["step"], {})
        lines.append(f"| {entry['step']} | {_fmt(entry['loss'])} | {_fmt(entry['acc'])} | "
                     f"{_fmt(v.get('val_loss'))} | {_fmt(v.get('val_acc'))} |")
    lines += ["", "Held-out evaluations:", "",
              "| step | held-out loss | top-1 per step | all first s+1 right |",
              "| --- | --- | --- | --- |"]
    lines += [f"| {v['step']} | {_fmt(v['val_loss'])} | {_fmt(v['val_acc'])} | "
              f"{_fmt(v['val_chain'])} |" for v in val]
    return lines


def render_card(card: Mapping[str, Any]) -> str:
    """The model card's ``README.md``, from the same data as ``training.json``."""
    target = card.get("target", {})
    data = card.get("data", {})
    training = card.get("training", {})
    validation = training.get("validation") or {}
    head = card.get("head") or {"kind": "eagle"}
    kind = head.get("kind", "eagle")
    load = f'{{"method": "{kind}", "model": <this folder>, "num_speculative_tokens": 3}}'
    if kind == "eagle3":
        objective = (
            f"- objective: cross-entropy on the target's greedy token over the "
            f"{training.get('vocab_size')} most frequent tokens (covering "
            f"{_fmt(training.get('vocab_coverage'))} of labels), {training.get('unroll')} "
            "drafting steps unrolled (each step after the first reads the head's own state)")
        reads = (f"It reads the target's layers {_fmt(head.get('aux_layers'))} (residual "
                 "streams before the final norm; vLLM's `eagle_aux_hidden_state_layer_ids`) "
                 "and shares the target's embedding and LM head.")
    else:
        objective = (
            f"- objective: smooth-L1 on the next hidden state + {training.get('ce_weight')} x "
            f"cross-entropy on the target's greedy token over the {training.get('vocab_size')} "
            f"most frequent tokens (covering {_fmt(training.get('vocab_coverage'))} of labels), "
            f"{training.get('unroll')} drafting steps unrolled")
        reads = ("It reads the target's final hidden state (after the final norm) and shares "
                 "the target's embedding and LM head.")
    lines = [
        f"# {HEAD_TITLES.get(kind, kind)} head for {target.get('model')}",
        "",
        ("Trained on the CPU by `specdec train eagle` (self-distillation: the target's own "
         f"greedy answers). Load it with vLLM's `speculative_config={load}`, or with specdec: "
         f"`specdec-run --strategy {kind} --set strategy.model={card.get('name')}`."),
        "",
        reads,
        "",
        "## Data",
        "",
        f"- prompt files: {', '.join(data.get('sources', [])) or '-'}",
        (f"- held out for the evaluation: {data.get('held_out_source')} "
         f"({data.get('held_out_conversations')} conversations)"),
        (f"- training conversations: {data.get('train_conversations')}, sequences "
         f"{data.get('sequences')} ({data.get('val_sequences')} for the held-out loss)"),
        (f"- tokens with hidden states: {data.get('tokens')} "
         f"(answer tokens {data.get('answer_tokens')}), generation max_tokens "
         f"{data.get('max_tokens')}"),
        "",
        "## Training",
        "",
        (f"- steps {training.get('steps')} ({training.get('epochs_run')} epochs), best "
         f"held-out loss at step {training.get('best_step')}, early stop: "
         f"{training.get('stopped_early')}"),
        objective,
        f"- seed {training.get('seed')}, {training.get('seconds')} s of training",
        "",
        ("Held-out top-1 agreement with the target (full vocabulary), per drafting step: "
         f"{_fmt(validation.get('acc'))}; share of answer positions whose first s+1 drafts "
         f"all match: {_fmt(validation.get('chain'))}; predicted mean acceptance length "
         f"{_fmt(validation.get('predicted_mean_acceptance_length'))}."),
        "",
        "### Loss curve",
        "",
        *_curve(training.get("history", [])),
        "",
        "## Measured acceptance (vLLM, held-out prompts)",
        "",
    ]
    evaluation = card.get("evaluation")
    if not evaluation:
        lines.append("Not measured (the evaluation was skipped or has not run yet).")
    else:
        lines += [
            f"{evaluation.get('prompts')}; {evaluation.get('settings')}.",
            "",
            ("| strategy | mean acceptance length | acceptance rate | acceptance per position "
             "| speedup (Spec-Bench) | speedup (throughput) |"),
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for row in evaluation.get("strategies", []):
            lines.append(
                f"| {row['strategy']} | {_fmt(row.get('mean_acceptance_length'), 2)} | "
                f"{_fmt(row.get('acceptance_rate'), 2)} | "
                f"{_fmt(row.get('acceptance_per_position'), 2)} | "
                f"{_fmt(row.get('speedup_spec_bench'), 2)} | "
                f"{_fmt(row.get('speedup_throughput'), 2)} |"
            )
        lines += ["", "Full report: `evaluation/report.md`."]
    return "\n".join(lines) + "\n"
