"""Step 3: train the EAGLE head on the collected shards, resumably.

For EAGLE-1 the objective is EAGLE's: a smooth-L1 regression of the target's
next hidden state plus ``ce_weight`` times the cross-entropy of the target's LM
head on the predicted state against the target's own greedy next token.  For
EAGLE-3 it is the cross-entropy alone (as in the EAGLE-3 paper: the head's
states have no counterpart in the target to regress on).  Beyond step 0
(teacher forcing on the target's hidden states) ``unroll`` drafting steps feed
the head its own predictions, attending as vLLM's draft KV cache does, so the
second and third drafted tokens are trained in the conditions they meet.

Everything random derives from the seed, the epoch and the step, and a
checkpoint (weights, optimizer, step, position in the epoch, history) is
written every ``checkpoint_every`` steps, so a resumed training continues
exactly where the interrupted one stopped.  Data streams shard by shard.

This module imports torch; specdec imports it only when training.
"""

from __future__ import annotations

import io
import math
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import structlog
import torch
import torch.nn.functional as F  # noqa: N812
from attrs import frozen
from specdec.files import atomic_write_bytes

from specdec_train.features import FEATURES_DIR, Manifest, check_head, read_manifest
from specdec_train.head import Head, new_head
from specdec_train.options import TrainingError, TrainOptions

log = structlog.get_logger("specdec_train")

CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "checkpoint.pt"
LOG_EVERY = 10
StepCallback = Callable[[int, int, dict[str, Any]], None]
"""Called as (step, total steps, the step's figures) after every training step."""
FINAL_CHUNK = 512


@frozen
class Batch:
    """Padded sequences: token ids, hidden states, greedy next tokens and lengths.

    ``hidden`` holds what the head reads: the final hidden state (EAGLE-1) or
    the concatenated auxiliary ones (EAGLE-3).
    """

    tokens: torch.Tensor
    hidden: torch.Tensor
    labels: torch.Tensor
    lengths: torch.Tensor
    answer_start: torch.Tensor


@frozen
class TrainResult:
    """The trained head's weights and what training measured."""

    state: dict[str, torch.Tensor]
    steps: int
    epochs_run: float
    best_step: int
    stopped_early: bool
    history: list[dict[str, Any]]
    validation: dict[str, Any]
    vocab_size: int
    vocab_coverage: float
    seconds: float


def target_weights(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the target's safetensors files."""
    from safetensors.torch import load_file  # noqa: PLC0415

    files = sorted(path.glob("*.safetensors"))
    if not files:
        msg = f"{path} holds no .safetensors weights: train eagle reads safetensors targets"
        raise TrainingError(msg)
    weights: dict[str, torch.Tensor] = {}
    for file in files:
        weights.update(load_file(str(file)))
    return weights


def lm_head_weight(weights: dict[str, torch.Tensor], config: dict[str, Any]) -> torch.Tensor:
    """The target's LM head matrix (its embedding when the two are tied)."""
    if "lm_head.weight" in weights:
        return weights["lm_head.weight"].float()
    if config.get("tie_word_embeddings", True):
        return weights["model.embed_tokens.weight"].float()
    msg = "the target has untied embeddings but no lm_head.weight in its safetensors"
    raise TrainingError(msg)


class Shards:
    """The train or val shards of a features folder, read one at a time."""

    def __init__(self, folder: Path, manifest: Manifest, split: str) -> None:
        """Index the shards of ``split``."""
        from safetensors import safe_open  # noqa: PLC0415

        self.folder = folder
        self.infos = manifest.of(split)
        self.lengths: list[list[int]] = []
        for info in self.infos:
            with safe_open(str(folder / info.name), framework="pt") as f:
                offsets = f.get_tensor("offsets")
            self.lengths.append((offsets[1:] - offsets[:-1]).tolist())

    def load(self, index: int) -> dict[str, torch.Tensor]:
        """All tensors of shard ``index``."""
        from safetensors.torch import load_file  # noqa: PLC0415

        data: dict[str, torch.Tensor] = load_file(str(self.folder / self.infos[index].name))
        return data

    def labels(self) -> Iterator[torch.Tensor]:
        """The label tensor of every shard (for the vocabulary count)."""
        from safetensors import safe_open  # noqa: PLC0415

        for info in self.infos:
            with safe_open(str(self.folder / info.name), framework="pt") as f:
                yield f.get_tensor("labels")


def group_by_length(lengths: list[int], budget: int) -> list[list[int]]:
    """Indices in length order, grouped so that count x longest stays within ``budget``."""
    groups: list[list[int]] = []
    group: list[int] = []
    longest = 0
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        new_longest = max(longest, lengths[i])
        if group and new_longest * (len(group) + 1) > budget:
            groups.append(group)
            group, new_longest = [], lengths[i]
        group.append(i)
        longest = new_longest
    if group:
        groups.append(group)
    return groups


def plan_epoch(shards: Shards, budget: int, seed: int, epoch: int) -> list[tuple[int, list[int]]]:
    """The epoch's batches as (shard, sequence indices), shuffled from seed and epoch only."""
    rng = random.Random(seed * 1_000_003 + epoch)  # noqa: S311 - shuffling, not secrets
    order = list(range(len(shards.infos)))
    rng.shuffle(order)
    plan: list[tuple[int, list[int]]] = []
    for shard in order:
        groups = group_by_length(shards.lengths[shard], budget)
        rng.shuffle(groups)
        plan += [(shard, g) for g in groups]
    return plan


def make_batch(data: dict[str, torch.Tensor], indices: list[int]) -> Batch:
    """Pad the chosen sequences of one loaded shard into a :class:`Batch`."""
    offsets = data["offsets"].tolist()
    spans = [(offsets[i], offsets[i + 1]) for i in indices]
    longest = max(b - a for a, b in spans)
    hidden_size = data["features"].shape[1]
    tokens = torch.zeros(len(spans), longest, dtype=torch.long)
    labels = torch.zeros(len(spans), longest, dtype=torch.long)
    hidden = torch.zeros(len(spans), longest, hidden_size)
    for row, (a, b) in enumerate(spans):
        tokens[row, : b - a] = data["tokens"][a:b]
        labels[row, : b - a] = data["labels"][a:b]
        hidden[row, : b - a] = data["features"][a:b].float()
    lengths = torch.tensor([b - a for a, b in spans])
    return Batch(tokens, hidden, labels, lengths, data["answer_start"][indices])


def _shift(x: torch.Tensor, by: int) -> torch.Tensor:
    """``x`` moved ``by`` places left along dim 1, padded with its last column."""
    if by == 0:
        return x
    pad = x[:, -1:].expand(x.shape[0], by, *x.shape[2:])
    return torch.cat((x[:, by:], pad), dim=1)


class Objective:
    """EAGLE's loss over ``steps`` drafting steps, with the target's LM head frozen.

    The cross-entropy runs over the ``vocab`` tokens only (the data's most
    frequent greedy tokens) to keep the CPU's cost down; labels outside it count
    in the regression only (EAGLE-1) or not at all (EAGLE-3, whose loss is the
    cross-entropy alone).  Accuracy and the chain statistics are the same for
    both heads.
    """

    def __init__(self, lm_head: torch.Tensor, vocab: torch.Tensor, options: TrainOptions) -> None:
        """Keep the LM head rows of ``vocab`` and a map from token id to its row."""
        self.lm_head = lm_head
        self.sub_head = lm_head[vocab].contiguous()
        self.map = torch.full((lm_head.shape[0],), -1, dtype=torch.long)
        self.map[vocab] = torch.arange(len(vocab))
        self.options = options

    def __call__(self, head: Head, batch: Batch, steps: int, *,
                 full_vocab: bool = False, train: bool = False,
                 ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The weighted loss and per-step figures (regression, cross-entropy, accuracy).

        With ``train`` the head reads the hidden states with ``feature_noise``
        added; the regression targets are always the clean states.
        """
        opts = self.options
        regress = head.regresses
        ce_weight = opts.ce_weight if regress else 1.0
        inputs = batch.hidden
        if train and opts.feature_noise > 0:
            inputs = inputs + (torch.rand_like(inputs) - 0.5) * opts.feature_noise
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=opts.autocast):
            outputs = head(batch.tokens, inputs, batch.labels, steps,
                           detach=opts.detach_steps)
        rows = batch.tokens.shape[1] - 1
        index = torch.arange(rows)
        total = torch.zeros(())
        stats: dict[str, Any] = {"reg": [], "ce": [], "acc": [], "n": []}
        correct: list[torch.Tensor] = []
        for step, pred32 in enumerate(outputs):
            pred = pred32.float()
            valid = index[None, :] < (batch.lengths[:, None] - 1 - step)
            labels = _shift(batch.labels[:, 1:], step)
            # EAGLE-3's inputs are other layers' states: nothing to regress on.
            feats = _shift(batch.hidden[:, 1:], step) if regress else None
            reg_loss = torch.zeros(()) if feats is None else _regression(pred, feats, valid)
            chosen = pred[valid]
            if full_vocab:
                guess = torch.cat([(c @ self.lm_head.T).argmax(-1)
                                   for c in chosen.split(FINAL_CHUNK)])
                right = guess == labels[valid]
                ce_loss = torch.zeros(())
            else:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=opts.autocast):
                    logits = chosen @ self.sub_head.T
                mapped = self.map[labels[valid]]
                if opts.soft_labels and feats is not None and chosen.shape[0]:
                    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                         enabled=opts.autocast):
                        teacher = torch.softmax((feats[valid] @ self.sub_head.T).float(), -1)
                    log_probs = torch.log_softmax(logits.float(), -1)
                    ce_loss = -(teacher * log_probs).sum(-1).mean()
                elif bool((mapped >= 0).any()):
                    ce_loss = F.cross_entropy(logits.float(), mapped, ignore_index=-1)
                else:
                    ce_loss = torch.zeros(())
                right = logits.argmax(-1) == mapped
            weight = opts.step_decay ** step
            total = total + weight * (reg_loss + ce_weight * ce_loss)
            stats["reg"].append(reg_loss.item())
            stats["ce"].append(ce_loss.item())
            stats["acc"].append(float(right.float().mean()) if right.numel() else 0.0)
            stats["n"].append(int(valid.sum()))
            full = torch.zeros_like(valid)
            full[valid] = right
            correct.append(full)
        stats["chain"] = _chain(correct, batch, steps)
        return total, stats


def _regression(pred: torch.Tensor, feats: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """EAGLE-1's smooth-L1 distance to the target's next hidden state, over valid rows."""
    reg = F.smooth_l1_loss(pred, feats, reduction="none").mean(-1)
    return (reg * valid).sum() / valid.sum().clamp(min=1)


def _chain(correct: list[torch.Tensor], batch: Batch, steps: int) -> dict[str, Any]:
    """On answer rows valid for every step: the share whose first s + 1 drafts all match."""
    rows = batch.tokens.shape[1] - 1
    index = torch.arange(rows)[None, :]
    usable = (index < (batch.lengths[:, None] - steps)) & (
        index >= (batch.answer_start[:, None] - 1))
    chain = usable.clone()
    hits: list[int] = []
    for step in range(steps):
        chain = chain & correct[step]
        hits.append(int(chain.sum()))
    return {"rows": int(usable.sum()), "hits": hits}


def learning_rate(options: TrainOptions, step: int, total: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak at ``total`` steps."""
    if step < options.warmup_steps:
        return options.lr * (step + 1) / options.warmup_steps
    progress = min(1.0, (step - options.warmup_steps) / max(1, total - options.warmup_steps))
    return options.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def choose_vocab(shards: Shards, size: int, vocab_size: int) -> tuple[torch.Tensor, float]:
    """The ``size`` most frequent greedy tokens of the training data, and their coverage."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for labels in shards.labels():
        counts += torch.bincount(labels.long(), minlength=vocab_size)
    total = int(counts.sum())
    if size <= 0 or size >= vocab_size:
        return torch.arange(vocab_size), 1.0
    top = torch.topk(counts, size).indices.sort().values
    return top, float(counts[top].sum()) / max(total, 1)


def _summarise(parts: list[dict[str, Any]], steps: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    weights = [sum(p["n"][s] for p in parts) or 1 for s in range(steps)]
    for key in ("reg", "ce", "acc"):
        out[key] = [round(sum(p[key][s] * p["n"][s] for p in parts) / weights[s], 5)
                    for s in range(steps)]
    rows = sum(p["chain"]["rows"] for p in parts)
    hits = [sum(p["chain"]["hits"][s] for p in parts) for s in range(steps)]
    out["chain"] = [round(h / rows, 4) if rows else None for h in hits]
    out["predicted_mean_acceptance_length"] = (
        round(1 + sum(h / rows for h in hits), 4) if rows else None
    )
    out["answer_rows"] = rows
    return out


class Trainer:
    """One training run over a features folder, checkpointed in ``work/checkpoint``."""

    def __init__(self, options: TrainOptions, target_path: Path, target_config: dict[str, Any],
                 work: Path) -> None:
        """Load the target's frozen weights and index the shards."""
        torch.set_num_threads(options.threads)
        self.options = options
        self.work = work
        folder = work / FEATURES_DIR
        manifest = read_manifest(folder)
        if manifest is None or not manifest.complete:
            msg = f"{folder} holds no complete features: collect them first"
            raise TrainingError(msg)
        self.train = Shards(folder, manifest, "train")
        self.val = Shards(folder, manifest, "val")
        if not self.train.infos:
            msg = "no training sequences were collected (every answer was empty?)"
            raise TrainingError(msg)
        check_head(manifest, options.head, folder)
        weights = target_weights(target_path)
        self.config = target_config
        torch.manual_seed(options.seed)
        self.head = new_head(options.head, target_config, weights)
        lm_head = lm_head_weight(weights, target_config)
        del weights
        self.vocab, self.coverage = choose_vocab(self.train, options.ce_vocab,
                                                 int(target_config["vocab_size"]))
        self.objective = Objective(lm_head, self.vocab, options)
        params = [p for p in self.head.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=options.lr, betas=(0.9, 0.95),
                                           weight_decay=options.weight_decay)
        self.batches_per_epoch = len(plan_epoch(self.train, options.batch_tokens, 0, 0))
        self.total_steps = options.epochs * self.batches_per_epoch
        if options.max_steps is not None:
            self.total_steps = min(self.total_steps, options.max_steps)
        self._clock = time.perf_counter()

    @property
    def checkpoint_path(self) -> Path:
        """Where the last checkpoint lives."""
        return self.work / CHECKPOINT_DIR / CHECKPOINT_FILE

    def _save(self, state: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(self.checkpoint_path, buffer.getvalue())

    def validate(self, steps: int, limit: int | None = None, *, full_vocab: bool = False,
                 ) -> dict[str, Any]:
        """Figures of the current head on the held-out shards (see ``_summarise``).

        ``limit`` stops after that many positions; ``full_vocab`` scores top-1
        over the whole vocabulary (as vLLM drafts) instead of the training's
        sub-vocabulary, and then reports no loss.
        """
        parts: list[dict[str, Any]] = []
        losses: list[tuple[float, int]] = []
        seen = 0
        self.head.eval()
        with torch.no_grad():
            for shard in range(len(self.val.infos)):
                data = self.val.load(shard)
                for indices in group_by_length(self.val.lengths[shard], self.options.batch_tokens):
                    batch = make_batch(data, indices)
                    loss, stats = self.objective(self.head, batch, steps, full_vocab=full_vocab)
                    parts.append(stats)
                    losses.append((float(loss), stats["n"][0]))
                    seen += stats["n"][0]
                    if limit is not None and seen >= limit:
                        break
                if limit is not None and seen >= limit:
                    break
        self.head.train()
        if not parts:
            return {}
        out = _summarise(parts, steps)
        if not full_vocab:
            weight = max(1, sum(n for _, n in losses))
            out["loss"] = round(sum(v * n for v, n in losses) / weight, 5)
        return out

    def run(self, on_step: StepCallback | None = None) -> TrainResult:
        """Train until the step budget or early stopping; resume from a checkpoint if any.

        ``on_step(step, total, figures)`` is called after every step.
        """
        opts = self.options
        state = self._initial_state()
        self._clock = time.perf_counter()
        self.head.train()
        while not self._finished(state):
            self._epoch(state, on_step)
        if state["running"]:
            state["history"].append(_log_entry(state, state["running"]))
            state["running"] = []
        if state["last_eval"] != state["step"]:
            self._evaluate(state)
        self._checkpoint(state)
        self.head.load_state_dict(state["best_state"], strict=False)
        steps = max(opts.unroll, opts.eval_k)
        validation = self.validate(steps, None, full_vocab=True) if self.val.infos else {}
        epochs_run = state["epoch"] + state["batch"] / max(1, self.batches_per_epoch)
        return TrainResult(
            self.head.head_state(), state["step"], round(epochs_run, 3), state["best_step"],
            bool(state["stopped_early"]), state["history"], validation, len(self.vocab),
            round(self.coverage, 4), round(state["seconds"], 1),
        )

    def _epoch(self, state: dict[str, Any], on_step: StepCallback | None) -> None:
        """Run the rest of the current epoch (or until the budget or early stopping)."""
        plan = plan_epoch(self.train, self.options.batch_tokens, self.options.seed,
                          state["epoch"])
        current, data = -1, {}
        for position in range(state["batch"], len(plan)):
            shard, indices = plan[position]
            if shard != current:
                data, current = self.train.load(shard), shard
            state["phase"] = self._steps_for(state["epoch"])
            figures = self._step(make_batch(data, indices), state["step"], state["phase"])
            state["step"] += 1
            state["batch"] = position + 1
            end_of_epoch = position + 1 == len(plan)
            if end_of_epoch:
                state["epoch"], state["batch"] = state["epoch"] + 1, 0
            self._after_step(state, figures, end_of_epoch=end_of_epoch)
            if on_step is not None:
                on_step(state["step"], self.total_steps, figures)
            if self._finished(state):
                return

    def _after_step(self, state: dict[str, Any], figures: dict[str, Any], *,
                    end_of_epoch: bool) -> None:
        """Log, validate and checkpoint on their schedules."""
        opts = self.options
        state["running"].append({k: figures[k] for k in ("loss", "lr", "acc")})
        if state["step"] % LOG_EVERY == 0:
            state["history"].append(_log_entry(state, state["running"]))
            state["running"] = []
        if state["step"] % opts.eval_every == 0 or end_of_epoch:
            self._evaluate(state)
        if state["step"] % opts.checkpoint_every == 0 or end_of_epoch:
            self._checkpoint(state)

    def _initial_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "step": 0, "epoch": 0, "batch": 0, "history": [], "bad_evals": 0,
            "best_loss": math.inf, "best_step": 0, "best_state": None, "seconds": 0.0,
            "stopped_early": False, "last_eval": -1, "running": [],
            "phase": self._steps_for(0), "eval_phase": self._steps_for(0),
        }
        if self.checkpoint_path.is_file():
            saved = torch.load(self.checkpoint_path, weights_only=False)
            self.head.load_state_dict(saved.pop("head"), strict=False)
            self.optimizer.load_state_dict(saved.pop("optimizer"))
            state.update(saved)
            log.info("resuming training", step=state["step"], path=str(self.checkpoint_path))
        return state

    def _finished(self, state: dict[str, Any]) -> bool:
        return bool(state["stopped_early"]) or state["step"] >= self.total_steps

    def _checkpoint(self, state: dict[str, Any]) -> None:
        now = time.perf_counter()
        state["seconds"] += now - self._clock
        self._clock = now
        self._save({**state, "head": self.head.head_state(),
                    "optimizer": self.optimizer.state_dict()})

    def _steps_for(self, epoch: int) -> int:
        """Drafting steps trained in ``epoch``: teacher forcing first, then the unroll."""
        return 1 if epoch < self.options.teacher_epochs else self.options.unroll

    def _step(self, batch: Batch, step: int, steps: int) -> dict[str, Any]:
        opts = self.options
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(opts, step, self.total_steps)
        loss, stats = self.objective(self.head, batch, steps, train=True)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if opts.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.head.parameters(), opts.grad_clip)
        self.optimizer.step()
        return {"loss": loss.item(), "lr": self.optimizer.param_groups[0]["lr"], **stats}

    def _evaluate(self, state: dict[str, Any]) -> None:
        opts = self.options
        if not self.val.infos:
            state["best_state"] = {k: v.clone() for k, v in self.head.head_state().items()}
            state["best_step"] = state["last_eval"] = state["step"]
            return
        if state["phase"] != state["eval_phase"]:
            # Losses of different unroll depths do not compare: each phase picks its best,
            # and the last phase's best is the head.
            state["eval_phase"] = state["phase"]
            state["best_loss"], state["bad_evals"] = math.inf, 0
        figures = self.validate(state["phase"], opts.val_tokens)
        loss = figures["loss"]
        state["last_eval"] = state["step"]
        state["history"].append({"step": state["step"], "val_loss": loss,
                                 "val_acc": figures["acc"], "val_chain": figures["chain"]})
        log.info("validation", step=state["step"], loss=loss, acc=figures["acc"])
        if loss < state["best_loss"] - 1e-4 or state["best_state"] is None:
            state["best_loss"] = min(loss, state["best_loss"])
            state["best_step"] = state["step"]
            state["best_state"] = {k: v.clone() for k, v in self.head.head_state().items()}
            state["bad_evals"] = 0
        else:
            state["bad_evals"] += 1
            if state["bad_evals"] >= opts.patience:
                state["stopped_early"] = True
                log.info("early stopping", step=state["step"], best_step=state["best_step"])


def _log_entry(state: dict[str, Any], running: list[dict[str, Any]]) -> dict[str, Any]:
    count = max(1, len(running))
    return {
        "step": state["step"],
        "epoch": state["epoch"],
        "lr": round(running[-1]["lr"], 8) if running else None,
        "loss": round(sum(r["loss"] for r in running) / count, 5),
        "acc": [round(sum(r["acc"][s] for r in running) / count, 4)
                for s in range(min(len(r["acc"]) for r in running))] if running else [],
    }


def history_json(history: list[dict[str, Any]]) -> bytes:
    """The history as indented JSON (for the model card)."""
    return orjson.dumps(history, option=orjson.OPT_INDENT_2)
