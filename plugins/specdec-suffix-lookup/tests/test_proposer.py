"""The proposer's matching and drafting, on plain numpy arrays (no engine)."""

from __future__ import annotations

import importlib
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from specdec_suffix_lookup import proposer
from specdec_suffix_lookup.proposer import (
    LongestSpanProposer,
    Span,
    draft_tokens,
    find_longest_span,
    proposer_path,
)


def _tokens(*values: int) -> NDArray[np.int32]:
    return np.array(values, dtype=np.int32)


def _naive_span(tokens: list[int], min_match: int, max_match: int) -> Span | None:
    """The definition, by brute force: longest earlier copy of a suffix, latest on ties."""
    total = len(tokens)
    best: Span | None = None
    for end in range(1, total):
        length = 0
        while (length < max_match and length < end
               and tokens[end - 1 - length] == tokens[total - 1 - length]):
            length += 1
        if length >= min_match and (best is None or length >= best.length):
            best = Span(length, end)
    return best


def _config(k: int = 4, max_model_len: int = 64) -> Any:
    return SimpleNamespace(
        speculative_config=SimpleNamespace(num_speculative_tokens=k),
        model_config=SimpleNamespace(max_model_len=max_model_len),
    )


def test_drafts_what_followed_the_repeated_suffix() -> None:
    """The suffix 1 2 3 occurred at the start; the draft is what came after it."""
    tokens = _tokens(1, 2, 3, 4, 5, 1, 2, 3)
    assert find_longest_span(tokens) == Span(length=3, start=3)
    assert draft_tokens(tokens, 2).tolist() == [4, 5]


def test_no_earlier_occurrence_gives_no_draft() -> None:
    """Text whose last token never occurred before yields nothing."""
    tokens = _tokens(1, 2, 3, 4)
    assert find_longest_span(tokens) is None
    assert draft_tokens(tokens, 4).tolist() == []
    assert draft_tokens(_tokens(), 4).tolist() == []
    assert draft_tokens(_tokens(7), 4).tolist() == []


def test_longest_match_beats_a_more_recent_shorter_one() -> None:
    """A six-token match picks its occurrence where a fixed five-token window could not."""
    first = [10, 11, 12, 13, 14, 15, 20]
    second = [99, 11, 12, 13, 14, 15, 30]
    tokens = _tokens(*first, *second, 10, 11, 12, 13, 14, 15)
    assert find_longest_span(tokens) == Span(length=6, start=6)
    assert draft_tokens(tokens, 1).tolist() == [20]
    # Capped at five tokens, both occurrences tie and the most recent wins.
    assert find_longest_span(tokens, max_match=5) == Span(length=5, start=13)


def test_most_recent_occurrence_wins_a_tie() -> None:
    """Two equally long matches: the later one's continuation is drafted."""
    tokens = _tokens(1, 2, 5, 1, 2, 6, 1, 2)
    assert find_longest_span(tokens) == Span(length=2, start=5)
    assert draft_tokens(tokens, 1).tolist() == [6]


def test_min_match_refuses_short_matches() -> None:
    """A two-token match yields a draft at min_match 2 but not at 3."""
    tokens = _tokens(1, 2, 5, 9, 1, 2)
    assert draft_tokens(tokens, 1, min_match=2).tolist() == [5]
    assert draft_tokens(tokens, 1, min_match=3).tolist() == []


def test_lookback_window_hides_older_text() -> None:
    """An occurrence before the last max_lookback tokens is not found."""
    tokens = _tokens(1, 2, 3, 9, 8, 7, 6, 1, 2)
    assert find_longest_span(tokens) == Span(length=2, start=2)
    assert find_longest_span(tokens, max_lookback=6) is None
    assert find_longest_span(tokens, max_lookback=9) == Span(length=2, start=2)


def test_draft_repeats_when_it_reaches_the_end() -> None:
    """A loop in the text continues as a full-length periodic draft."""
    assert draft_tokens(_tokens(3, 3, 3, 3), 4).tolist() == [3, 3, 3, 3]
    tokens = _tokens(8, 1, 2, 1, 2, 1, 2)
    assert find_longest_span(tokens) == Span(length=4, start=5)
    assert draft_tokens(tokens, 5).tolist() == [1, 2, 1, 2, 1]


def test_degenerate_text_is_capped() -> None:
    """All-equal text stops at MAX_MATCH rather than comparing the whole sequence."""
    tokens = np.zeros(2000, dtype=np.int32)
    span = find_longest_span(tokens)
    assert span == Span(length=proposer.MAX_MATCH, start=1999)


@pytest.mark.parametrize("seed", range(20))
def test_agrees_with_the_definition_on_random_text(seed: int) -> None:
    """Random short texts over a small alphabet: same span as brute force."""
    rng = np.random.default_rng(seed)
    for _ in range(50):
        tokens = rng.integers(0, 3, size=int(rng.integers(0, 40)), dtype=np.int32)
        for min_match, max_match in ((1, 256), (2, 256), (3, 5)):
            expected = _naive_span(tokens.tolist(), min_match, max_match)
            assert find_longest_span(tokens, min_match, max_match=max_match) == expected


def test_propose_returns_one_list_per_request() -> None:
    """Prefill requests (nothing sampled) and full contexts get no draft; k is respected."""
    drafter = LongestSpanProposer(_config(k=3, max_model_len=12))
    drafter.load_model(object())
    token_ids = np.zeros((3, 12), dtype=np.int32)
    token_ids[0, :8] = [1, 2, 3, 4, 5, 6, 1, 2]
    token_ids[1, :8] = [1, 2, 3, 4, 5, 6, 1, 2]
    token_ids[2, :12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 1, 2]
    num_tokens = np.array([8, 8, 12], dtype=np.int32)
    drafts = drafter.propose([[2], [], [2]], num_tokens, token_ids)
    assert drafts == [[3, 4, 5], [], []]
    assert all(isinstance(t, int) for t in drafts[0])


def test_propose_stops_at_the_context_length() -> None:
    """Two tokens of room left: at most two draft tokens."""
    drafter = LongestSpanProposer(_config(k=4, max_model_len=10))
    token_ids = np.array([[1, 2, 3, 4, 5, 1, 2, 3, 0, 0]], dtype=np.int32)
    assert drafter.propose([[3]], np.array([8]), token_ids) == [[4, 5]]


def test_variant_classes_carry_their_settings() -> None:
    """The class name in the path sets min_match and max_lookback."""
    assert proposer_path() == "specdec_suffix_lookup.proposer.LongestSpanProposer"
    path = proposer_path(min_match=3, max_lookback=64)
    assert path == "specdec_suffix_lookup.proposer.LongestSpanProposer_min3_lookback64"
    module_name, class_name = path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module_name), class_name)
    assert issubclass(cls, LongestSpanProposer)
    assert (cls.min_match, cls.max_lookback) == (3, 64)
    assert cls.__name__ == class_name
    assert getattr(proposer, class_name) is cls
    only_min = proposer.LongestSpanProposer_min4
    assert (only_min.min_match, only_min.max_lookback) == (4, None)
    assert proposer.LongestSpanProposer_min2 is LongestSpanProposer


def test_variant_settings_change_the_drafts() -> None:
    """A min_match of 3 refuses what the default accepts."""
    token_ids = np.array([[1, 2, 5, 9, 1, 2]], dtype=np.int32)
    default = LongestSpanProposer(_config(k=1))
    strict = proposer.LongestSpanProposer_min3(_config(k=1))
    assert default.propose([[2]], np.array([6]), token_ids) == [[5]]
    assert strict.propose([[2]], np.array([6]), token_ids) == [[]]


@pytest.mark.parametrize("name", ["Nope", "LongestSpanProposer_min0", "LongestSpanProposer_x"])
def test_unknown_names_raise_attribute_error(name: str) -> None:
    """Anything but a well-formed variant name is a normal AttributeError."""
    with pytest.raises(AttributeError, match=name):
        getattr(proposer, name)


def test_vllm_loads_it_with_its_own_loader() -> None:
    """vLLM's custom_class loader imports, builds and accepts a variant (if vLLM is here)."""
    loader = pytest.importorskip("vllm.v1.spec_decode.custom_class_proposer")
    config = _config(k=3)
    config.speculative_config.model = proposer_path(min_match=3)
    drafter = loader.create_custom_proposer(config)
    assert isinstance(drafter, LongestSpanProposer)
    assert drafter.min_match == 3
