"""specdec-suffix-lookup: longest-repeated-span speculation for specdec, as a vLLM custom proposer.

The strategy (entry point ``suffix_lookup``) is in :mod:`.strategy`; the class
vLLM loads in its workers is :class:`.proposer.LongestSpanProposer`.
"""

from __future__ import annotations

from specdec_suffix_lookup.proposer import LongestSpanProposer, draft_tokens, find_longest_span
from specdec_suffix_lookup.strategy import SuffixLookupOptions, SuffixLookupStrategy

__all__ = [
    "LongestSpanProposer",
    "SuffixLookupOptions",
    "SuffixLookupStrategy",
    "draft_tokens",
    "find_longest_span",
]
