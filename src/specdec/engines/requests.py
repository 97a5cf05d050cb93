"""What a request carries, the same on every backend: sampling, seeds, chat messages, warm-up.

The offline engine hands these to ``vllm.SamplingParams`` and the chat
template; the server engine puts them in an OpenAI-compatible request body.
Keeping them here means a sampling setting, a request's seed or a
conversation's layout cannot differ between the two.  Scoring's answer is read
here too: both backends get vLLM's prompt log-probabilities, one as objects
and one as JSON.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from specdec.errors import EngineError
from specdec.interfaces import SCORE_TOP, SampleRequest, TokenScore
from specdec.records import Conversation, ExperimentConfig, GenerationConfig

WARMUP_PROMPT = "Say hello."
WARMUP_MAX_TOKENS = 8
"""The warm-up request: short, unmeasured, so compilation and caches are ready."""


class RawPromptError(EngineError):
    """A conversation needs the chat template but the run has none."""


def warmup_conversation() -> Conversation:
    """The conversation every engine answers once before measuring."""
    return Conversation(id="warmup", turns=(WARMUP_PROMPT,))


SEED_BITS = 63
"""Derived seeds are below ``2**63``: vLLM's server takes seeds in ``torch.long``'s range."""


def derive_seed(*parts: object) -> int:
    """A seed from ``parts``, the same in every Python process and on every machine.

    ``sha256`` of the parts' ``str()`` joined by the unit separator (U+001F);
    the digest's first :data:`SEED_BITS` bits (big-endian) are the seed.
    Python's ``hash()`` of a string changes between processes, so it is not used.
    """
    text = "\x1f".join(str(part) for part in parts)
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - SEED_BITS)


def seeded(gen: GenerationConfig) -> bool:
    """Whether each request carries its own seed: a sampled run, or ``generation.seed`` set."""
    return gen.seed is not None or gen.sampled


def request_seed(config: ExperimentConfig, request_id: str, turn: int) -> int | None:
    """The sampling seed of turn ``turn`` (0-based) of request ``request_id``, or None.

    ``derive_seed(run seed, request id, turn, repeat)``, where the run seed is
    ``generation.seed``, else ``engine.seed``, and the repeat is
    ``config.repeat``.  Every request (and turn) of a run so draws its own
    random stream, a rerun draws the same ones, and so does every strategy of
    one repeat of a study (their samples are comparable).  None, and no seed
    sent, for a greedy run without ``generation.seed``: its requests are as
    before per-request seeds existed.
    """
    gen = config.generation
    if not seeded(gen):
        return None
    base = gen.seed if gen.seed is not None else config.engine.seed
    return derive_seed(base, request_id, turn, config.repeat)


def sampling_settings(gen: GenerationConfig, max_tokens: int | None = None,
                      seed: int | None = None) -> dict[str, Any]:
    """Sampling settings by vLLM's names (``SamplingParams`` and the server's request body).

    ``max_tokens`` overrides the configured budget (the warm-up's short answer);
    ``seed`` is the request's own (:func:`request_seed`; None: none is sent).
    Log-probabilities are left to each backend: the APIs ask for them differently.
    """
    settings: dict[str, Any] = {
        "max_tokens": max_tokens or gen.max_tokens,
        "temperature": gen.temperature,
        "top_p": gen.top_p,
        "ignore_eos": gen.ignore_eos,
    }
    if gen.top_k is not None:
        settings["top_k"] = gen.top_k
    if seed is not None:
        settings["seed"] = seed
    if gen.stop:
        settings["stop"] = list(gen.stop)
    return settings


def sample_settings(request: SampleRequest, seed: int) -> dict[str, Any]:
    """One seeded sample's settings by vLLM's names (``SamplingParams``, a completions body).

    ``ignore_eos`` only when asked: vLLM's server takes it as an extra field of
    the completions body, and a body without it is what other servers expect.
    """
    settings: dict[str, Any] = {"max_tokens": request.max_tokens,
                                "temperature": request.temperature, "top_p": request.top_p,
                                "seed": seed}
    if request.top_k is not None:
        settings["top_k"] = request.top_k
    if request.ignore_eos:
        settings["ignore_eos"] = True
    return settings


def chat_messages(conv: Conversation, answers: Sequence[str]) -> list[dict[str, str]]:
    """The messages for the next turn: context, earlier turns with the engine's answers, then it.

    ``answers`` are the engine's own answers to the earlier turns, so the turn
    asked is ``conv.turns[len(answers)]``.
    """
    turn = len(answers)
    messages = [{"role": m.role, "content": m.content} for m in conv.context]
    for question, answer in zip(conv.turns[:turn], answers, strict=True):
        messages += [{"role": "user", "content": question},
                     {"role": "assistant", "content": answer}]
    messages.append({"role": "user", "content": conv.turns[turn]})
    return messages


def raw_prompt(conv: Conversation, answers: Sequence[str]) -> str:
    """The prompt text of a run without the chat template (single-turn, no context only)."""
    if conv.context or answers:
        msg = (
            f"conversation {conv.id!r} has context or several turns, which need the chat "
            "template: run it with chat_template: true"
        )
        raise RawPromptError(msg)
    return conv.turns[0]


class PromptTokenizer(Protocol):
    """What building a prompt's token ids needs of a tokenizer (Hugging Face's, or vLLM's)."""

    def apply_chat_template(self, conversation: list[dict[str, str]], *, tokenize: bool,
                            add_generation_prompt: bool) -> Any:
        """The chat template's token ids (a list, or a mapping holding ``input_ids``)."""

    def encode(self, text: str, *, add_special_tokens: bool) -> Sequence[int]:
        """The token ids of ``text``."""


def chat_token_ids(tokenizer: PromptTokenizer, conv: Conversation,
                   answers: Sequence[str]) -> list[int]:
    """The next turn's prompt through the chat template, with the generation prompt added."""
    ids = tokenizer.apply_chat_template(chat_messages(conv, answers), tokenize=True,
                                        add_generation_prompt=True)
    if isinstance(ids, Mapping):
        ids = ids["input_ids"]
    return [int(t) for t in ids]


def text_token_ids(tokenizer: PromptTokenizer, text: str) -> list[int]:
    """A text prompt's token ids as vLLM's renderer encodes text: with special tokens."""
    return [int(t) for t in tokenizer.encode(text, add_special_tokens=True)]


def prompt_token_ids(tokenizer: PromptTokenizer, conv: Conversation, answers: Sequence[str],
                     *, chat_template: bool) -> tuple[int, ...]:
    """The token ids the engine gets for the turn after ``answers`` (see :func:`chat_messages`).

    Through the chat template, or (``chat_template`` off) the raw prompt encoded
    as text; the offline engine builds its requests with the same two functions.
    """
    if chat_template:
        return tuple(chat_token_ids(tokenizer, conv, answers))
    return tuple(text_token_ids(tokenizer, raw_prompt(conv, answers)))


def token_score(position: int, token_id: int,
                candidates: Mapping[int, tuple[float, int | None]]) -> TokenScore:
    """One position's score from vLLM's prompt log-probabilities there.

    ``candidates`` maps token id to (log-probability, rank) as vLLM reports them
    with ``prompt_logprobs=2``: the two most likely tokens and the sequence's own
    token (three entries when the own token is not among the top two).
    """
    if token_id not in candidates:
        msg = (
            f"vLLM's prompt log-probabilities at position {position} lack the sequence's own "
            f"token {token_id} (got {sorted(candidates)}): is the engine's vLLM too old?"
        )
        raise EngineError(msg)
    # By rank where vLLM gives one, so ties keep vLLM's order; by value otherwise.
    ranked = sorted(candidates.items(),
                    key=lambda item: (item[1][1] if item[1][1] is not None else 0, -item[1][0]))
    top = ranked[:SCORE_TOP]
    return TokenScore(
        position=position,
        token_id=token_id,
        logprob=candidates[token_id][0],
        top_token_ids=tuple(t for t, _ in top),
        top_logprobs=tuple(lp for _, (lp, _rank) in top),
    )
