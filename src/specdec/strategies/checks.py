"""Pre-flight checks shared by the built-in strategies.

They run before the engine starts (which takes tens of seconds), so that a
mismatched draft or head, or a method the engine's vLLM lacks, fails at once
with a message that says what to do.  They check against the capabilities of
the engine that will run the strategy; where that engine cannot tell (a server
does not list its methods), the check skips that part and logs that it did.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from specdec.errors import StrategyError
from specdec.interfaces import TargetInfo
from specdec.strategies.methods import device_note, missing_message


def require_method(target: TargetInfo, method: str, since: str | None = None) -> None:
    """Fail unless the engine's vLLM offers speculative ``method`` (skipped when unknown)."""
    if not target.method_known(method):
        return
    msg = missing_message(method, "method", target.vllm_version, target.speculative_methods,
                          since=since)
    if msg is not None:
        raise StrategyError(msg)


def require_fields(target: TargetInfo, config: Mapping[str, Any]) -> None:
    """Fail unless the engine's vLLM has every key of ``config`` as a speculative_config field.

    Skipped when the engine cannot list its fields (a server).  The message names
    the release that brings a field the tables know (:mod:`specdec.strategies.methods`).
    """
    fields = target.speculative_config_fields
    if not fields:
        return
    for name in sorted(config):
        msg = missing_message(name, "field", target.vllm_version, fields)
        if msg is not None:
            raise StrategyError(msg)


def require_device(target: TargetInfo, config: Mapping[str, Any]) -> None:
    """Fail if the engine's device cannot run ``config`` (see :func:`methods.device_note`)."""
    refused = device_note(config, target.engine.device if target.engine else None)
    if refused is not None:
        raise StrategyError(refused)


def read_config(folder: Path, what: str) -> dict[str, Any]:
    """The ``config.json`` of a draft or head folder."""
    path = folder / "config.json"
    try:
        config: dict[str, Any] = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        msg = f"{what} folder {folder} has no config.json"
        raise StrategyError(msg) from None
    except orjson.JSONDecodeError as exc:
        msg = f"{path}: not valid JSON ({exc})"
        raise StrategyError(msg) from exc
    return config


def tensor_shapes(folder: Path) -> dict[str, list[int]]:
    """Names and shapes of every tensor in a folder's safetensors files (no data read)."""
    from safetensors import safe_open  # noqa: PLC0415 - only needed for checks

    files = sorted(folder.glob("*.safetensors"))
    shapes: dict[str, list[int]] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                shapes[key] = list(f.get_slice(key).get_shape())
    return shapes


def _vocab(folder: Path) -> dict[str, int] | None:
    tokenizer = folder / "tokenizer.json"
    if not tokenizer.is_file():
        return None
    vocab: dict[str, int] | None = orjson.loads(tokenizer.read_bytes()).get("model", {}).get(
        "vocab"
    )
    return vocab


def check_same_vocabulary(target: TargetInfo, draft: Path, draft_config: dict[str, Any]) -> None:
    """Fail if the draft's vocabulary differs from the target's.

    Compares ``vocab_size`` and, where both folders have a ``tokenizer.json``,
    the token-to-id tables themselves.
    """
    target_size = target.config.get("vocab_size")
    draft_size = draft_config.get("vocab_size")
    if target_size is not None and draft_size is not None and target_size != draft_size:
        msg = (
            f"draft {draft} has a vocabulary of {draft_size} tokens but the target "
            f"{target.model} has {target_size}: a draft must share the target's tokenizer"
        )
        raise StrategyError(msg)
    if target.path is None:
        return
    ours, theirs = _vocab(target.path), _vocab(draft)
    if ours is not None and theirs is not None and ours != theirs:
        differing = sum(1 for token, i in theirs.items() if ours.get(token) != i)
        msg = (
            f"draft {draft} uses a different tokenizer from the target {target.model} "
            f"({differing} tokens map to other ids): a draft must share the target's tokenizer"
        )
        raise StrategyError(msg)
