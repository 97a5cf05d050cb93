"""The EAGLE-1 and EAGLE-3 heads in torch, computing exactly what vLLM computes at draft time.

vLLM's ``EagleLlamaForCausalLM`` (``vllm/model_executor/models/llama_eagle.py``)
drafts token ``t + 2`` at position ``t`` from the embedding of token ``t + 1``
and the target's hidden state at ``t``::

    x = fc(cat(embed(token[t + 1]), hidden[t]))     # embedding first, then hidden
    r = x + attention(x)                             # layer 0 has no input norm
    h = r + mlp(post_attention_layernorm(r))         # returned without a final norm
    logits = lm_head(h)                              # the target's own LM head

``hidden`` is the target's last hidden state *after* its final norm (vLLM's
Llama returns ``norm(hidden + residual)``, and the model runner hands that to
the drafter).  The next drafting step feeds ``h`` back as the hidden state, one
position further on, with the drafted token.

vLLM's ``Eagle3LlamaForCausalLM`` (``llama_eagle3.py``; the proposer in
``vllm/v1/spec_decode/llm_base_proposer.py``) reads instead the target's
residual streams after three layers ``a < b < c``, before any norm, and
combines them once, in the proposer's ``combine_hidden_states``::

    g = fc(cat(aux_a[t], aux_b[t], aux_c[t]))        # step 0 only
    x = cat(input_layernorm(embed(token[t + 1])), hidden_norm(g))   # 2 * hidden wide
    r = g + o_proj(attention(x))                     # the residual is g, un-normed
    p = r + mlp(post_attention_layernorm(r))         # "prenorm", fed to the next step
    logits = lm_head(norm(p))                        # the target's LM head (shared)

Later drafting steps skip ``fc``: ``p`` takes the place of ``g``, one position
further on, with the drafted token.  (The options ``norm_before_residual``,
``norm_before_fc``, ``fc_norm`` and ``norm_output`` are off by default and are
not used by these heads.)

This module imports torch; the rest of specdec imports it only when training.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from torch import nn

LOGIT_ROWS = 1024
"""Rows whose greedy draft token is computed at once (bounds the [rows, vocab] logits)."""

HEAD_PREFIX = "layers.0."
"""Tensor names of the decoder layer inside vLLM's EAGLE-1 checkpoint."""


class RMSNorm(nn.Module):  # type: ignore[misc]  # torch is untyped here
    """Llama's RMS norm (computed in float32)."""

    def __init__(self, size: int, eps: float) -> None:
        """A norm over ``size`` features."""
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise the last dimension."""
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class Attention(nn.Module):  # type: ignore[misc]
    """Llama attention (grouped-query, rotary) that can also attend as a drafting step.

    A drafting step ``s >= 1`` at row ``i`` (position ``i + s``) sees what vLLM's
    draft KV cache holds at that moment: the step-0 keys of positions ``0..i``
    (written from the target's hidden states) and the keys its own earlier
    drafting steps wrote at positions ``i + 1 .. i + s``.
    """

    def __init__(self, config: dict[str, Any], inputs: int | None = None) -> None:
        """Projections named as in a Llama checkpoint, reading ``inputs`` features.

        ``inputs`` defaults to the hidden size; EAGLE-3's layer reads twice that.
        """
        super().__init__()
        hidden = config["hidden_size"]
        width = inputs or hidden
        self.heads = config["num_attention_heads"]
        self.kv_heads = config.get("num_key_value_heads") or self.heads
        self.head_dim = config.get("head_dim") or hidden // self.heads
        self.q_proj = nn.Linear(width, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(width, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(width, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, hidden, bias=False)
        self.scale = 1.0 / math.sqrt(self.head_dim)

    def project(self, x: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries [B, H, T, D] and keys and values [B, H, T, D] (kv heads repeated)."""
        from transformers.models.llama.modeling_llama import (  # noqa: PLC0415
            apply_rotary_pos_emb,
        )

        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        repeat = self.heads // self.kv_heads
        if repeat > 1:
            k = k.repeat_interleave(repeat, dim=1)
            v = v.repeat_interleave(repeat, dim=1)
        return q, k, v

    def output(self, attended: torch.Tensor) -> torch.Tensor:
        """[B, H, T, D] -> [B, T, hidden] through ``o_proj``."""
        batch, _, length, _ = attended.shape
        return self.o_proj(attended.transpose(1, 2).reshape(batch, length, -1))


class MLP(nn.Module):  # type: ignore[misc]
    """Llama's SwiGLU MLP."""

    def __init__(self, config: dict[str, Any]) -> None:
        """Projections named as in a Llama checkpoint."""
        super().__init__()
        hidden, inner = config["hidden_size"], config["intermediate_size"]
        self.gate_proj = nn.Linear(hidden, inner, bias=False)
        self.up_proj = nn.Linear(hidden, inner, bias=False)
        self.down_proj = nn.Linear(inner, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``down(silu(gate(x)) * up(x))``."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):  # type: ignore[misc]
    """A Llama decoder layer without its input norm (vLLM's EAGLE-1 layer 0)."""

    def __init__(self, config: dict[str, Any], inputs: int | None = None) -> None:
        """Attention (reading ``inputs`` features), MLP and the post-attention norm."""
        super().__init__()
        self.self_attn = Attention(config, inputs)
        self.mlp = MLP(config)
        self.post_attention_layernorm = RMSNorm(config["hidden_size"], config["rms_norm_eps"])

    def finish(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """Residual, post-attention norm, MLP and residual again."""
        residual = x + self.self_attn.output(attended)
        return residual + self.mlp(self.post_attention_layernorm(residual))


class Eagle3Layer(Layer):
    """vLLM's EAGLE-3 ``midlayer``: attention over [normed embedding, normed hidden state]."""

    def __init__(self, config: dict[str, Any]) -> None:
        """The Llama layer reading ``2 * hidden`` features, plus its two input norms."""
        hidden, eps = config["hidden_size"], config["rms_norm_eps"]
        super().__init__(config, 2 * hidden)
        self.input_layernorm = RMSNorm(hidden, eps)
        self.hidden_norm = RMSNorm(hidden, eps)


class _Unrolled(nn.Module):  # type: ignore[misc]
    """What both heads share: frozen embedding, rotary positions and the unrolled drafting.

    A subclass says how a step's attention input and residual come from the
    embedded token and the carried state (:meth:`_step_input`), and what a step
    returns for the LM head and carries to the next step (:meth:`_step_output`).
    """

    def __init__(self, config: dict[str, Any], embed: torch.Tensor) -> None:
        from transformers import LlamaConfig  # noqa: PLC0415
        from transformers.models.llama.modeling_llama import (  # noqa: PLC0415
            LlamaRotaryEmbedding,
        )

        super().__init__()
        self.config = dict(config)
        self.register_buffer("embed", embed.detach().float().clone(), persistent=False)
        settings = {k: v for k, v in config.items() if k not in ("architectures", "dtype")}
        self.rotary = LlamaRotaryEmbedding(LlamaConfig(**settings))

    @property
    def layer(self) -> Layer:
        """The one decoder layer."""
        raise NotImplementedError

    def _step_input(self, embedded: torch.Tensor,
                    state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _step_output(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self.rotary(self.embed, positions)
        return cos.float(), sin.float()

    def first_state(self, features: torch.Tensor) -> torch.Tensor:
        """Step 0's state at rows ``0 .. T - 2`` from the target's features [B, T, F]."""
        raise NotImplementedError

    def _unroll(self, tokens: torch.Tensor, first: torch.Tensor, steps: int, *, detach: bool,
                feed: Callable[[int, torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
        """Run ``steps`` drafting steps from ``first``, the state at rows ``0 .. T - 2``.

        Step 0 reads the real next token (``tokens[:, 1:]``); step ``s >= 1`` reads
        ``feed(s, out)``, its token per row, given step ``s - 1``'s output.
        """
        batch, length = tokens.shape
        rows = length - 1
        base = torch.arange(rows, device=tokens.device).expand(batch, rows)
        attn = self.layer.self_attn
        outputs: list[torch.Tensor] = []
        keys: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        state = first
        first_k = first_v = torch.empty(0)
        for step in range(steps):
            step_tokens = tokens[:, 1:] if step == 0 else feed(step, outputs[-1])
            x, residual = self._step_input(self.embed[step_tokens], state)
            cos, sin = self._cos_sin(base + step)
            q, k, v = attn.project(x, cos, sin)
            if step == 0:
                attended = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                          scale=attn.scale)
                first_k, first_v = k, v
            else:
                keys.append(k)
                values.append(v)
                attended = _draft_attention(q, (first_k, first_v), keys, values, attn.scale)
            out, carried = self._step_output(self.layer.finish(residual, attended))
            outputs.append(out)
            state = carried.detach() if detach else carried
        return outputs

    def _teacher(self, next_tokens: torch.Tensor) -> Callable[[int, torch.Tensor], torch.Tensor]:
        """Training's feed: step ``s`` reads the token an accepted draft had at its position."""
        def feed(step: int, _out: torch.Tensor) -> torch.Tensor:
            return _shift(next_tokens[:, 1:], step - 1)
        return feed

    def drafts(self, tokens: torch.Tensor, features: torch.Tensor, lm_head: torch.Tensor,
               steps: int) -> torch.Tensor:
        """The greedy drafts vLLM makes from every row, as vLLM makes them: [steps, B, T - 1].

        Row ``i`` of step 0 reads the real token ``i + 1`` and the target's
        features at ``i``; step ``s >= 1`` reads the token its step ``s - 1``
        drafted at the same row and that step's own output state (not the
        target's), at position ``i + s``, attending to the step-0 keys of rows
        ``0 .. i`` and its own earlier steps' keys: vLLM's ``propose`` for a
        request whose last known token is ``i + 1``.  ``lm_head`` is the
        [vocab, hidden] matrix of the LM head the head drafts with.
        """
        drafted: list[torch.Tensor] = []

        def greedy(out: torch.Tensor) -> torch.Tensor:
            flat = out.reshape(-1, out.shape[-1])
            best = torch.cat([(chunk @ lm_head.T).argmax(-1) for chunk in flat.split(LOGIT_ROWS)])
            return best.view(out.shape[:-1])

        def own(_step: int, out: torch.Tensor) -> torch.Tensor:
            drafted.append(greedy(out))
            return drafted[-1]

        outputs = self._unroll(tokens, self.first_state(features), steps, detach=True, feed=own)
        drafted.append(greedy(outputs[-1]))
        return torch.stack(drafted)


class EagleHead(_Unrolled):
    """EAGLE-1: ``fc`` plus one :class:`Layer`, with the target's embedding and LM head frozen.

    ``forward`` runs ``steps`` drafting steps at once over padded sequences
    (teacher forcing for step 0, the head's own hidden states after it) and
    returns each step's predicted hidden states.
    """

    regresses = True
    """Trained to predict the target's next hidden state as well as its token."""

    def __init__(self, config: dict[str, Any], embed: torch.Tensor) -> None:
        """Build the head for a target described by its ``config.json`` mapping.

        ``embed`` is the target's input embedding [vocab, hidden] (kept frozen).
        """
        super().__init__(config, embed)
        hidden = config["hidden_size"]
        self.fc = nn.Linear(2 * hidden, hidden, bias=False)
        self.layers = nn.ModuleList([Layer(config)])

    @property
    def layer(self) -> Layer:
        """The one decoder layer."""
        layer: Layer = self.layers[0]
        return layer

    def head_state(self) -> dict[str, torch.Tensor]:
        """The trainable weights under the names vLLM's EAGLE-1 loader expects."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(("fc.", "layers."))}

    def _step_input(self, embedded: torch.Tensor,
                    state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.fc(torch.cat((embedded, state), dim=-1))  # embedding first, then hidden
        return x, x

    def _step_output(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return out, out

    def first_state(self, features: torch.Tensor) -> torch.Tensor:
        """The target's post-norm hidden states themselves, rows ``0 .. T - 2``."""
        return features[:, :-1]

    def forward(self, tokens: torch.Tensor, hidden: torch.Tensor, next_tokens: torch.Tensor,
                steps: int, *, detach: bool = False) -> list[torch.Tensor]:
        """Predicted hidden states of each drafting step, each [B, T - 1, hidden].

        Args:
            tokens: [B, T] token ids of the sequences.
            hidden: [B, T, hidden] the target's post-norm hidden states.
            next_tokens: [B, T] the target's greedy next token at each position
                (what an accepted draft would have been), used as the drafted
                token of steps after the first.
            steps: drafting steps to unroll.
            detach: feed each step's prediction to the next without its gradient.

        Row ``i`` of step ``s`` sits at position ``i + s`` and predicts the
        target's hidden state at ``i + s + 1``; rows past a sequence's end are
        garbage and must be masked by the caller.
        """
        return self._unroll(tokens, self.first_state(hidden), steps, detach=detach,
                            feed=self._teacher(next_tokens))


class Eagle3Head(_Unrolled):
    """EAGLE-3: ``fc`` over three target layers, ``midlayer`` and ``norm``; LM head shared.

    The parameters carry vLLM's checkpoint names (``fc``, ``midlayer.*``,
    ``norm``).  ``forward`` returns, per drafting step, the normed state the
    target's LM head reads (``norm(p)``); ``p`` itself is what the next step
    receives.
    """

    regresses = False
    """Its states have no counterpart in the target: trained on tokens only."""

    def __init__(self, config: dict[str, Any], embed: torch.Tensor, aux: int = 3) -> None:
        """Build the head for a target's ``config.json``, reading ``aux`` of its layers.

        ``embed`` is the target's input embedding [vocab, hidden] (kept frozen).
        """
        super().__init__(config, embed)
        hidden = config["hidden_size"]
        self.fc = nn.Linear(aux * hidden, hidden, bias=False)
        self.midlayer = Eagle3Layer(config)
        self.norm = RMSNorm(hidden, config["rms_norm_eps"])

    @property
    def layer(self) -> Layer:
        """The one decoder layer (``midlayer``)."""
        layer: Layer = self.midlayer
        return layer

    def head_state(self) -> dict[str, torch.Tensor]:
        """The trainable weights under the names vLLM's EAGLE-3 loader expects."""
        return {k: v for k, v in self.state_dict().items()
                if k.startswith(("fc.", "midlayer.", "norm."))}

    def _step_input(self, embedded: torch.Tensor,
                    state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        layer = self.midlayer
        # vLLM's default (no norm_before_residual): the residual is the un-normed state.
        x = torch.cat((layer.input_layernorm(embedded), layer.hidden_norm(state)), dim=-1)
        return x, state

    def _step_output(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.norm(out), out

    def first_state(self, features: torch.Tensor) -> torch.Tensor:
        """``fc`` of the concatenated auxiliary states (vLLM's ``combine_hidden_states``)."""
        return self.fc(features[:, :-1])

    def forward(self, tokens: torch.Tensor, aux: torch.Tensor, next_tokens: torch.Tensor,
                steps: int, *, detach: bool = False) -> list[torch.Tensor]:
        """The normed output of each drafting step, each [B, T - 1, hidden].

        Args:
            tokens: [B, T] token ids of the sequences.
            aux: [B, T, aux * hidden] the target's concatenated auxiliary hidden
                states (residual streams, before any norm).
            next_tokens: [B, T] the target's greedy next token at each position.
            steps: drafting steps to unroll.
            detach: feed each step's state to the next without its gradient.

        Rows and positions as in :meth:`EagleHead.forward`: row ``i`` of step
        ``s`` predicts the target's greedy token after position ``i + s + 1``.
        """
        return self._unroll(tokens, self.first_state(aux), steps, detach=detach,
                            feed=self._teacher(next_tokens))


def _shift(x: torch.Tensor, by: int) -> torch.Tensor:
    """``x`` moved ``by`` places to the left along dim 1, padded with its last column."""
    if by == 0:
        return x
    pad = x[:, -1:].expand(-1, by)
    return torch.cat((x[:, by:], pad), dim=1)


def _draft_attention(q: torch.Tensor, first: tuple[torch.Tensor, torch.Tensor],
                     keys: list[torch.Tensor], values: list[torch.Tensor],
                     scale: float) -> torch.Tensor:
    """Attention of drafting step ``len(keys)``: causal over step 0, diagonal over later steps.

    ``first`` holds step 0's keys and values (the draft cache written from the
    target's hidden states); ``keys`` and ``values`` those of steps 1..s at the
    same row (what the earlier drafting steps appended).
    """
    first_k, first_v = first
    rows = q.shape[2]
    scores = torch.matmul(q, first_k.transpose(-1, -2)) * scale
    future = torch.ones(rows, rows, dtype=torch.bool, device=q.device).triu(1)
    scores = scores.masked_fill(future, float("-inf"))
    own = torch.stack([(q * k).sum(-1) * scale for k in keys], dim=-1)
    weights = torch.softmax(torch.cat((scores, own), dim=-1).float(), dim=-1).to(q.dtype)
    attended = torch.matmul(weights[..., :rows], first_v)
    for index, v in enumerate(values):
        attended = attended + weights[..., rows + index, None] * v
    return attended


def warm_start(head: EagleHead, target_weights: dict[str, torch.Tensor], layers: int) -> None:
    """Start from the target's last decoder layer, with ``fc = [0 | I]`` and its outputs zeroed.

    With ``fc`` passing the hidden state through and the attention's and MLP's
    output projections at zero, the untrained head predicts "the next hidden
    state equals this one", a sane baseline; the last layer's other weights give
    the attention and MLP a trained place to start.  (Copying the layer whole
    does not work: it expects the target's un-normalised residual stream and
    blows the post-norm hidden states up by orders of magnitude.)
    """
    prefix = f"model.layers.{layers - 1}."
    state = {
        HEAD_PREFIX + key.removeprefix(prefix): value.float().clone()
        for key, value in target_weights.items()
        if key.startswith(prefix) and "input_layernorm" not in key
    }
    hidden = head.fc.weight.shape[0]
    state["fc.weight"] = torch.cat((torch.zeros(hidden, hidden), torch.eye(hidden)), dim=1)
    missing = set(head.head_state()) - set(state)
    if missing:
        msg = f"the target's layer {layers - 1} lacks {', '.join(sorted(missing))}"
        raise KeyError(msg)
    for name in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
        state[HEAD_PREFIX + name].zero_()
    head.load_state_dict(state, strict=False)


Head = EagleHead | Eagle3Head
"""Either kind of head."""


def warm_start_eagle3(head: Eagle3Head, target_weights: dict[str, torch.Tensor],
                      layers: int) -> None:
    """Start as "the highest aux layer's residual stream, read by the target's LM head".

    ``fc = [0 | 0 | I]`` passes the highest auxiliary layer through, the
    attention's and MLP's output projections are zero, and ``norm`` is the
    target's final norm, so the untrained head's logits are the target's early
    exit at that layer.  The other weights come from where the target applies
    them to the same kind of input: ``hidden_norm``, the post-attention norm and
    the MLP from its last layer; ``input_layernorm`` from its first layer (the
    norm it applies to embeddings); the query, key and value projections take
    the last layer's on the hidden-state half and zero on the embedding half.
    """
    last, hidden = f"model.layers.{layers - 1}.", head.fc.weight.shape[0]

    def weight(name: str) -> torch.Tensor:
        if name not in target_weights:
            msg = f"the target lacks {name}"
            raise KeyError(msg)
        return target_weights[name].float().clone()

    state = {
        "fc.weight": torch.cat((torch.zeros(hidden, head.fc.weight.shape[1] - hidden),
                                torch.eye(hidden)), dim=1),
        "norm.weight": weight("model.norm.weight"),
        "midlayer.input_layernorm.weight": weight("model.layers.0.input_layernorm.weight"),
        "midlayer.hidden_norm.weight": weight(last + "input_layernorm.weight"),
    }
    for name in ("post_attention_layernorm.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight"):
        state["midlayer." + name] = weight(last + name)
    for name in ("q_proj", "k_proj", "v_proj"):
        projection = weight(f"{last}self_attn.{name}.weight")
        state[f"midlayer.self_attn.{name}.weight"] = torch.cat(
            (torch.zeros_like(projection), projection), dim=1)
    state["midlayer.self_attn.o_proj.weight"] = torch.zeros_like(
        weight(last + "self_attn.o_proj.weight"))
    state["midlayer.mlp.down_proj.weight"] = torch.zeros_like(weight(last + "mlp.down_proj.weight"))
    missing = set(head.head_state()) - set(state)
    if missing:
        msg = f"EAGLE-3 warm start has no value for {', '.join(sorted(missing))}"
        raise KeyError(msg)
    head.load_state_dict(state, strict=False)


def new_head(kind: str, config: dict[str, Any],
             target_weights: dict[str, torch.Tensor]) -> EagleHead | Eagle3Head:
    """A warm-started head of ``kind`` (``"eagle"`` or ``"eagle3"``) for the target."""
    embed = target_weights["model.embed_tokens.weight"]
    layers = int(config["num_hidden_layers"])
    if kind == "eagle3":
        head3 = Eagle3Head(config, embed)
        warm_start_eagle3(head3, target_weights, layers)
        return head3
    head = EagleHead(config, embed)
    warm_start(head, target_weights, layers)
    return head
