"""Longest-repeated-span drafting: a proposer class for vLLM's ``custom_class`` method.

At every step, for each request, find the longest suffix of the text so far
(prompt and output) that also occurred earlier, take its most recent earlier
occurrence, and propose the tokens that followed it.  When those tokens run
into the end of the text, the draft continues periodically (the span between
the occurrence and the end repeats), so a loop in the output still yields a
full draft.

How this differs from vLLM's ``ngram`` method: ``ngram`` looks only at suffixes
of ``prompt_lookup_min`` to ``prompt_lookup_max`` tokens, takes the earliest
occurrence of the longest one, and stops its draft at the end of the text.
Here the match grows as long as it keeps matching (up to :data:`MAX_MATCH`),
so a long shared context singles out the right occurrence; the most recent
occurrence wins ties, since recent text predicts the next tokens best.

vLLM imports the class named in ``speculative_config["model"]`` in each of its
worker processes and builds it as ``cls(vllm_config)``.  Settings other than
``num_speculative_tokens`` cannot travel in vLLM's ``speculative_config``, so
they travel in the class name: ``LongestSpanProposer`` uses the defaults and
``LongestSpanProposer_min3_lookback1024`` (made on demand by this module's
``__getattr__``) uses ``min_match=3, max_lookback=1024``.  See
:func:`proposer_path`.

Only numpy is imported here: vLLM is not needed to import or test this module.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import numpy as np
from numpy.typing import NDArray

DEFAULT_MIN_MATCH = 2
"""Shortest suffix worth matching; one token repeats too often to predict anything."""

MAX_MATCH = 256
"""Longest match searched for: beyond it the occurrence is already singled out,
and the cap bounds the work per step on degenerate (all-equal) text."""

CLASS_NAME = "LongestSpanProposer"

_VARIANT = re.compile(
    rf"{CLASS_NAME}_min(?P<min_match>[1-9][0-9]*)(?:_lookback(?P<max_lookback>[1-9][0-9]*))?"
)

Tokens = NDArray[np.integer[Any]]


class Span(NamedTuple):
    """An earlier occurrence of the text's suffix.

    ``length`` is how many tokens match; ``start`` is the index (in the whole
    text) of the token that followed the occurrence, where the draft begins.
    """

    length: int
    start: int


def _match_length(window: Tokens, end: int, limit: int) -> int:
    """How many tokens before index ``end`` equal the last tokens of ``window`` (at most limit)."""
    room = min(limit, end)
    if room <= 0:
        return 0
    size = window.shape[0]
    same = window[end - room : end][::-1] == window[size - room :][::-1]
    return room if bool(same.all()) else int(np.argmin(same))


def find_longest_span(
    tokens: Tokens,
    min_match: int = DEFAULT_MIN_MATCH,
    max_lookback: int | None = None,
    max_match: int = MAX_MATCH,
) -> Span | None:
    """Find the longest suffix of ``tokens`` that occurred earlier, most recent occurrence first.

    Only the last ``max_lookback`` tokens are searched (all of them when None).
    Candidates are the positions after every earlier copy of the last token.
    The most recent candidate's match is measured in one comparison; only an
    earlier candidate that matches more tokens can beat it, so those are kept
    (one comparison for all of them) and the search repeats among them.  On
    repetitive text the most recent candidate usually reaches ``max_match`` at
    once, which ends the search.  Returns None when no suffix of at least
    ``min_match`` tokens occurred earlier.
    """
    total = int(tokens.shape[0])
    offset = 0 if max_lookback is None or total <= max_lookback else total - max_lookback
    window = tokens[offset:]
    last = window.shape[0] - 1
    if last < 1:
        return None
    # ends[j] is the index just after an earlier copy of the last token, ascending.
    ends = np.flatnonzero(window[:last] == window[last]) + 1
    best: Span | None = None
    while ends.size:
        end = int(ends[-1])
        length = _match_length(window, end, max_match)
        best = Span(length=length, start=offset + end)
        if length >= max_match:
            break
        rivals = ends[:-1]
        rivals = rivals[rivals > length]
        steps = np.arange(length + 1)
        longer = (window[rivals[:, None] - 1 - steps] == window[last - steps]).all(axis=1)
        ends = rivals[longer]
    if best is None or best.length < min_match:
        return None
    return best


def draft_tokens(
    tokens: Tokens,
    k: int,
    min_match: int = DEFAULT_MIN_MATCH,
    max_lookback: int | None = None,
) -> Tokens:
    """Up to ``k`` tokens that followed the longest earlier match of the text's suffix.

    If the continuation reaches the end of the text, it repeats with the period
    between the occurrence and the end (what a copying loop would produce next).
    Returns an empty array when nothing matches or ``k`` is not positive.
    """
    span = find_longest_span(tokens, min_match, max_lookback)
    if span is None or k <= 0:
        return tokens[:0]
    period = tokens.shape[0] - span.start
    drafted: Tokens = tokens[span.start + np.arange(k) % period]
    return drafted


class LongestSpanProposer:
    """vLLM ``custom_class`` proposer drafting by longest repeated span.

    vLLM builds it as ``cls(vllm_config)`` in each worker, calls ``load_model``
    (the CPU runner always does) and, every step, :meth:`propose`.
    ``min_match`` and ``max_lookback`` are class attributes, set by the
    variant classes this module makes from their names.
    """

    min_match: ClassVar[int] = DEFAULT_MIN_MATCH
    max_lookback: ClassVar[int | None] = None

    def __init__(self, vllm_config: Any) -> None:
        """Read the draft length and the model's context length from vLLM's config."""
        self.k = int(vllm_config.speculative_config.num_speculative_tokens)
        self.max_model_len = int(vllm_config.model_config.max_model_len)

    def load_model(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to load: drafts come from the text itself."""

    def propose(
        self,
        sampled_token_ids: Sequence[Sequence[int]],
        num_tokens_no_spec: NDArray[np.integer[Any]],
        token_ids_cpu: NDArray[np.integer[Any]],
        slot_mappings: Any = None,
    ) -> list[list[int]]:
        """One list of draft token ids per request in the batch (empty for no draft).

        ``token_ids_cpu[i, :num_tokens_no_spec[i]]`` is request ``i``'s prompt and
        output so far.  A request that sampled nothing this step (it is still in
        prefill) or has reached the model's context length gets no draft.
        """
        drafts: list[list[int]] = []
        for i, sampled in enumerate(sampled_token_ids):
            total = int(num_tokens_no_spec[i])
            k = min(self.k, self.max_model_len - total)
            if not sampled or k <= 0:
                drafts.append([])
                continue
            found = draft_tokens(token_ids_cpu[i, :total], k, self.min_match, self.max_lookback)
            drafts.append([int(t) for t in found])
        return drafts


def variant_name(min_match: int = DEFAULT_MIN_MATCH, max_lookback: int | None = None) -> str:
    """The class name that carries these settings (the plain name for the defaults)."""
    if min_match < 1 or (max_lookback is not None and max_lookback < 1):
        msg = f"min_match and max_lookback must be at least 1, got {min_match}, {max_lookback}"
        raise ValueError(msg)
    if min_match == DEFAULT_MIN_MATCH and max_lookback is None:
        return CLASS_NAME
    lookback = "" if max_lookback is None else f"_lookback{max_lookback}"
    return f"{CLASS_NAME}_min{min_match}{lookback}"


def proposer_path(min_match: int = DEFAULT_MIN_MATCH, max_lookback: int | None = None) -> str:
    """The dotted path to give vLLM as ``speculative_config["model"]``."""
    return f"{__name__}.{variant_name(min_match, max_lookback)}"


@functools.cache
def _variant(min_match: int, max_lookback: int | None) -> type[LongestSpanProposer]:
    name = variant_name(min_match, max_lookback)
    if name == CLASS_NAME:
        return LongestSpanProposer
    # Named and placed in this module so that it pickles and prints like a normal class.
    attributes = {
        "min_match": min_match,
        "max_lookback": max_lookback,
        "__module__": __name__,
        "__qualname__": name,
        "__doc__": f"LongestSpanProposer with min_match={min_match}, max_lookback={max_lookback}.",
    }
    return type(name, (LongestSpanProposer,), attributes)


def __getattr__(name: str) -> type[LongestSpanProposer]:
    """Make ``LongestSpanProposer_min<M>[_lookback<W>]`` on first access (PEP 562)."""
    match = _VARIANT.fullmatch(name)
    if match is None:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    lookback = match["max_lookback"]
    return _variant(int(match["min_match"]), None if lookback is None else int(lookback))
