"""The ``suffix_lookup`` strategy: points vLLM's ``custom_class`` method at our proposer."""

from __future__ import annotations

from typing import Any

from attrs import field, frozen
from specdec.errors import InvalidOptionError, StrategyError
from specdec.interfaces import TargetInfo

from specdec_suffix_lookup.proposer import DEFAULT_MIN_MATCH, proposer_path

PLUGIN_API_VERSION = 1
"""The specdec plugin API this package was written for (a literal, on purpose:
specdec refuses the plugin if it offers another version)."""

METHOD = "custom_class"


def _at_least_one(_instance: object, attribute: Any, value: int) -> None:
    if value < 1:
        msg = f"{attribute.name} must be at least 1, got {value}"
        raise InvalidOptionError(msg)


def _lookback(instance: SuffixLookupOptions, _attribute: Any, value: int | None) -> None:
    if value is not None and value <= instance.min_match:
        msg = (
            f"max_lookback ({value}) must be larger than min_match ({instance.min_match}): "
            "the match and its earlier occurrence must both fit in the window; "
            "leave max_lookback unset to search the whole text"
        )
        raise InvalidOptionError(msg)


@frozen
class SuffixLookupOptions:
    """Options of longest-repeated-span drafting.

    ``num_speculative_tokens`` is the draft length k; ``min_match`` the shortest
    repeated suffix that yields a draft; ``max_lookback`` how many of the last
    tokens are searched (None: the whole prompt and output).
    """

    num_speculative_tokens: int = field(default=4, validator=_at_least_one)
    min_match: int = field(default=DEFAULT_MIN_MATCH, validator=_at_least_one)
    max_lookback: int | None = field(default=None, validator=_lookback)


class SuffixLookupStrategy:
    """Draft the tokens that followed the longest earlier copy of the text's suffix."""

    name = "suffix_lookup"
    plugin_api_version = PLUGIN_API_VERSION
    options_type = SuffixLookupOptions

    def check(self, options: SuffixLookupOptions, target: TargetInfo) -> None:
        """The installed vLLM must load proposer classes (method ``custom_class``)."""
        if target.vllm_version is None or METHOD in target.speculative_methods:
            return
        msg = (
            f"suffix_lookup needs vLLM's {METHOD!r} speculative method (vLLM 0.27 or later), "
            f"which the installed vLLM {target.vllm_version} does not offer (it offers "
            f"{', '.join(sorted(target.speculative_methods)) or 'none'}). Upgrade vLLM, or use "
            "the built-in 'ngram' strategy."
        )
        raise StrategyError(msg)

    def speculative_config(
        self, options: SuffixLookupOptions, target: TargetInfo
    ) -> dict[str, Any]:
        """``{"method": "custom_class", "model": <proposer class path>, ...}``.

        ``min_match`` and ``max_lookback`` are carried by the class name (see
        :func:`specdec_suffix_lookup.proposer.proposer_path`), since vLLM passes
        no other settings to a custom proposer.
        """
        return {
            "method": METHOD,
            "model": proposer_path(options.min_match, options.max_lookback),
            "num_speculative_tokens": options.num_speculative_tokens,
        }
