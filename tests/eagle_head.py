"""Build an untrained EAGLE-1 head for the bundled model, in the layout vLLM loads.

It proves the ``eagle`` plumbing end to end; it is not a useful drafter.
"""

from __future__ import annotations

from pathlib import Path

import orjson


def build_eagle_head(target: Path, out: Path) -> Path:
    """Write a one-layer EAGLE head for ``target`` into ``out``.

    ``fc`` passes the target's hidden state through (``[0 | I]``) and the layer
    is a copy of the target's last decoder layer, without the input norm vLLM
    refuses.
    """
    import torch
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    config = orjson.loads((target / "config.json").read_bytes())
    hidden = config["hidden_size"]
    last = config["num_hidden_layers"] - 1
    weights = load_file(str(target / "model.safetensors"))
    prefix = f"model.layers.{last}."
    head = {
        f"layers.0.{key.removeprefix(prefix)}": value.clone()
        for key, value in weights.items()
        if key.startswith(prefix) and "input_layernorm" not in key
    }
    head["fc.weight"] = torch.cat(
        [torch.zeros(hidden, hidden), torch.eye(hidden)], dim=1
    ).to(weights["model.embed_tokens.weight"].dtype)
    save_file(head, str(out / "model.safetensors"), metadata={"format": "pt"})
    config["num_hidden_layers"] = 1
    (out / "config.json").write_bytes(orjson.dumps(config, option=orjson.OPT_INDENT_2))
    return out
