"""N-gram (prompt lookup) speculation: drafts copied from earlier text."""

from __future__ import annotations

from typing import Any

from attrs import field, frozen

from specdec.errors import InvalidOptionError
from specdec.interfaces import TargetInfo
from specdec.registry import PLUGIN_API_VERSION
from specdec.strategies.checks import require_method
from specdec.validators import positive


def _window(instance: NgramOptions, _attribute: Any, value: int) -> None:
    if instance.prompt_lookup_min > value:
        msg = (
            f"prompt_lookup_min ({instance.prompt_lookup_min}) must be <= "
            f"prompt_lookup_max ({value})"
        )
        raise InvalidOptionError(msg)


@frozen
class NgramOptions:
    """Options of n-gram speculation.

    The lookup window defaults to vLLM's own (5 and 5, used when neither is
    given); they are written out here so every run records them.
    """

    num_speculative_tokens: int = field(default=4, validator=positive)
    prompt_lookup_min: int = field(default=5, validator=positive)
    prompt_lookup_max: int = field(default=5, validator=[positive, _window])


class NgramStrategy:
    """Match the last n tokens against the prompt and the text so far; draft what followed."""

    name = "ngram"
    plugin_api_version = PLUGIN_API_VERSION
    options_type = NgramOptions

    def check(self, options: NgramOptions, target: TargetInfo) -> None:
        """The installed vLLM must offer ngram."""
        require_method(target, "ngram")

    def speculative_config(self, options: NgramOptions, target: TargetInfo) -> dict[str, Any]:
        """``{"method": "ngram", ...}`` with the lookup window written out."""
        return {
            "method": "ngram",
            "num_speculative_tokens": options.num_speculative_tokens,
            "prompt_lookup_min": options.prompt_lookup_min,
            "prompt_lookup_max": options.prompt_lookup_max,
        }
