"""The ``rejection_sampler`` section: how vLLM verifies drafts, put into ``speculative_config``.

vLLM takes its rejection sampler's settings inside ``speculative_config``
(``rejection_sample_method``, ``synthetic_acceptance_rates``,
``synthetic_acceptance_length``); specdec takes them in their own typed section
(:class:`~specdec.records.RejectionSamplerConfig`), so that they combine with
any strategy and can be swept (``sweep: {rejection_sampler.acceptance_length:
[1.5, 2, 3]}``).  :func:`apply` checks them against the strategy's
``speculative_config`` and the engine before anything starts, as vLLM would
check them after: a strategy that drafts, the number of rates or the length
against ``num_speculative_tokens``, each field and method in the engine's vLLM
(the release that brings it named otherwise), the engine's device (the CPU
build cannot run ``synthetic``), and an engine specdec starts (a server you
started keeps the sampler its own ``--speculative-config`` gave it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from specdec.errors import StrategyError
from specdec.interfaces import TargetInfo
from specdec.records import SYNTHETIC_SAMPLER, EngineConfig, RejectionSamplerConfig
from specdec.strategies.checks import require_device, require_fields
from specdec.strategies.methods import SYNTHETIC_FIELDS, sampler_note


def fields(sampler: RejectionSamplerConfig) -> dict[str, Any]:
    """The ``speculative_config`` fields of ``sampler``, as vLLM names them."""
    out: dict[str, Any] = {"rejection_sample_method": sampler.method}
    if sampler.acceptance_rates is not None:
        out["synthetic_acceptance_rates"] = list(sampler.acceptance_rates)
    if sampler.acceptance_length is not None:
        out["synthetic_acceptance_length"] = sampler.acceptance_length
    return out


def apply(sampler: RejectionSamplerConfig | None, spec: Mapping[str, Any] | None,
          target: TargetInfo, engine: EngineConfig) -> dict[str, Any] | None:
    """``spec`` with ``sampler``'s fields added, once every check has passed.

    Raises :class:`~specdec.errors.StrategyError` naming what to change.
    """
    if sampler is None:
        return None if spec is None else dict(spec)
    if spec is None:
        msg = ("rejection_sampler sets how vLLM verifies drafts, but the strategy drafts "
               "nothing (strategy none): choose a speculative strategy, or leave "
               "rejection_sampler out")
        raise StrategyError(msg)
    twice = sorted(set(spec) & set(SYNTHETIC_FIELDS))
    if twice:
        msg = (f"the strategy's options set {', '.join(twice)} and rejection_sampler sets it "
               "too: give it in one place (rejection_sampler: method, acceptance_rates, "
               "acceptance_length)")
        raise StrategyError(msg)
    if engine.backend == "server" and not engine.launch:
        msg = ("rejection_sampler reaches vLLM only where specdec starts it (the offline "
               "engine, or engine.launch: true); a server you started verifies as its own "
               "--speculative-config says: set rejection_sample_method there, and leave "
               "rejection_sampler out")
        raise StrategyError(msg)
    _check_k(sampler, spec.get("num_speculative_tokens"))
    added = fields(sampler)
    require_fields(target, added)
    note = sampler_note(sampler.method, target.vllm_version)
    if note is not None:
        raise StrategyError(note)
    merged = {**spec, **added}
    require_device(target, merged)
    return merged


def _check_k(sampler: RejectionSamplerConfig, k: object) -> None:
    """The rates, one per speculative token, and the length, at most k + 1 (vLLM's bounds)."""
    if sampler.method != SYNTHETIC_SAMPLER or not isinstance(k, int):
        return
    rates = sampler.acceptance_rates
    if rates is not None and len(rates) != k:
        msg = (f"rejection_sampler.acceptance_rates gives {len(rates)} rates but the strategy "
               f"drafts {k} tokens (num_speculative_tokens): give one rate per draft position")
        raise StrategyError(msg)
    length = sampler.acceptance_length
    if length is not None and length > k + 1:
        msg = (f"rejection_sampler.acceptance_length {length:g} is more than {k + 1}, the most "
               f"a verify step of {k} drafts can give (num_speculative_tokens + 1)")
        raise StrategyError(msg)
