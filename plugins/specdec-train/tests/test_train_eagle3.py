"""specdec train eagle --head eagle3: the EAGLE-3 head against vLLM's semantics, and one real run.

The unit tests use a tiny random eight-layer Llama (so vLLM's default auxiliary
layers ``(2, n // 2, n - 3)`` are three distinct layers: 2, 4 and 5) and never
start vLLM.  The engine test trains a tiny EAGLE-3 head of the bundled model
end to end and has vLLM draft with it under ``method: eagle3``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from specdec import models
from specdec.errors import InvalidOptionError, ModelError

from specdec_train import EAGLE3_ALIAS, TrainingError, TrainOptions, check_target
from specdec_train.options import aux_layers
from specdec_train.pipeline import stage_keys
from test_train_eagle import (
    TINY,
    _config,
    _options,
    _sequences,
    parse_train_eagle,
    train_tiny_head,
)

torch = pytest.importorskip("torch")

DEEP: dict[str, Any] = {**TINY, "num_hidden_layers": 8}
AUX = (2, 4, 5)
"""vLLM's default auxiliary layers for eight layers: (2, 8 // 2, 8 - 3)."""


@pytest.fixture(scope="module")
def deep_target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random eight-layer Llama saved as a Hugging Face folder (safetensors)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("deep") / "target"
    LlamaForCausalLM(LlamaConfig(**DEEP)).save_pretrained(str(folder))
    return folder


def _eagle3(target: Path, *, random: bool = True) -> tuple[Any, dict[str, Any]]:
    from specdec_train.head import new_head
    from specdec_train.trainer import target_weights

    weights = target_weights(target)
    head = new_head("eagle3", _config(target), weights)
    if random:
        torch.manual_seed(1)
        with torch.no_grad():
            for name, parameter in head.named_parameters():
                if "norm" in name:
                    parameter.uniform_(0.5, 1.5)
                else:
                    parameter.normal_(0, 0.1)
    return head, weights


def _rms(x: Any, weight: Any) -> Any:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + DEEP["rms_norm_eps"]))


def _vllm_eagle3(head: Any, embed: Any) -> Any:
    """vLLM's ``llama_eagle3`` layer 0 and final norm, written out with transformers' attention.

    ``run(tokens, states)`` takes the token ids and the hidden-state inputs of
    every position (``fc(aux)`` for target positions, the previous step's
    prenorm output for drafted ones) and returns (normed, prenorm).
    """
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import (
        LlamaAttention,
        LlamaMLP,
        LlamaRotaryEmbedding,
    )

    config = LlamaConfig(**DEEP)
    config._attn_implementation = "eager"
    hidden = DEEP["hidden_size"]
    attention = LlamaAttention(config, 0).eval()
    for name in ("q_proj", "k_proj", "v_proj"):
        source = getattr(head.midlayer.self_attn, name).weight
        linear = torch.nn.Linear(2 * hidden, source.shape[0], bias=False)
        linear.weight.data.copy_(source)
        setattr(attention, name, linear)
    attention.o_proj.weight.data.copy_(head.midlayer.self_attn.o_proj.weight)
    mlp = LlamaMLP(config).eval()
    mlp.load_state_dict({k.removeprefix("midlayer.mlp."): v for k, v in head.state_dict().items()
                         if k.startswith("midlayer.mlp.")})
    rotary = LlamaRotaryEmbedding(config)
    norms = {name: getattr(head.midlayer, name).weight
             for name in ("input_layernorm", "hidden_norm", "post_attention_layernorm")}

    def run(tokens: Any, states: Any) -> tuple[Any, Any]:
        # LlamaDecoderLayer.forward, layer_idx 0, norm_before_residual off:
        embeds = _rms(embed[tokens], norms["input_layernorm"])
        residual = states
        x = torch.cat([embeds, _rms(states, norms["hidden_norm"])], dim=-1)
        length = x.shape[1]
        positions = torch.arange(length)[None]
        mask = torch.full((length, length), float("-inf")).triu(1)[None, None]
        attended, _ = attention(x, position_embeddings=rotary(x, positions), attention_mask=mask)
        # post_attention_layernorm(hidden, residual) adds, then norms.
        residual = attended + residual
        out = mlp(_rms(residual, norms["post_attention_layernorm"]))
        # LlamaModel.norm(hidden, residual): the sum is the prenorm output.
        prenorm = out + residual
        return _rms(prenorm, head.norm.weight), prenorm

    return run


def test_eagle3_steps_match_vllm_semantics(deep_target: Path) -> None:
    """Step 0 is vLLM's layer on fc(aux); steps 1 and 2 feed its prenorm output back, fc-free."""
    head, weights = _eagle3(deep_target)
    embed = weights["model.embed_tokens.weight"]
    reference = _vllm_eagle3(head, embed)
    length = 10
    tokens = torch.randint(0, 100, (1, length))
    greedy = torch.randint(0, 100, (1, length))
    aux = torch.randn(1, length, 3 * DEEP["hidden_size"]) * 3
    with torch.no_grad():
        steps = head(tokens, aux, greedy, 3)
        combined = aux[:, :-1] @ head.fc.weight.T  # the proposer's combine_hidden_states
        normed, prenorm = reference(tokens[:, 1:], combined)
        assert torch.allclose(steps[0], normed, atol=1e-5)
        for row in range(length - 3):
            ids = list(tokens[0, 1 : row + 2])
            states = [combined[0, j] for j in range(row + 1)]
            carried = prenorm[0, row]
            for step in (1, 2):
                ids.append(greedy[0, row + step])
                states.append(carried)
                out, pre = reference(torch.tensor(ids)[None], torch.stack(states)[None])
                assert torch.allclose(out[0, -1], steps[step][0, row], atol=1e-4), (row, step)
                carried = pre[0, -1]


def test_eagle3_warm_start_is_the_high_layers_early_exit(deep_target: Path) -> None:
    """Untrained: fc picks layer c, outputs zeroed, final norm: logits are the exit at layer c."""
    from transformers import AutoModelForCausalLM

    head, _ = _eagle3(deep_target, random=False)
    model = AutoModelForCausalLM.from_pretrained(str(deep_target)).eval()
    tokens = torch.randint(0, 100, (2, 9))
    with torch.no_grad():
        hidden = model(tokens, output_hidden_states=True).hidden_states
        aux = torch.cat([hidden[k] for k in AUX], -1)
        out = head(tokens, aux, tokens, 1)[0]
        expected = model.model.norm(hidden[AUX[-1]][:, :-1])
    assert torch.allclose(out, expected, atol=1e-5)
    assert not torch.equal(hidden[AUX[-1]], hidden[AUX[0]])


def test_eagle3_features_are_aux_hidden_states(deep_target: Path, tmp_path: Path) -> None:
    """Shards hold layers 2, 4, 5 (residual stream after k layers, un-normed) and greedy tokens."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from specdec_train.features import collect

    sequences = _sequences()
    manifest = collect(_options(tmp_path, head="eagle3"), deep_target, sequences,
                       tmp_path / "work")
    assert manifest.head == "eagle3"
    assert manifest.aux_layers == AUX == aux_layers(8)
    model = AutoModelForCausalLM.from_pretrained(str(deep_target)).eval()
    outputs: dict[int, Any] = {}
    hooks = [layer.register_forward_hook(
        lambda _m, _i, out, k=k: outputs.__setitem__(k + 1, out[0] if isinstance(out, tuple)
                                                     else out))
        for k, layer in enumerate(model.model.layers)]
    first = manifest.shards[0]
    path = tmp_path / "work" / "features" / first.name
    data = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        ids = orjson.loads(f.metadata()["ids"])
    seq = {s.id: s for s in sequences}[ids[0]]
    length = len(seq.tokens)
    with torch.no_grad():
        out = model(torch.tensor([seq.tokens]), output_hidden_states=True)
    for hook in hooks:
        hook.remove()
    assert data["features"].shape[1] == 3 * DEEP["hidden_size"]
    for chunk, k in enumerate(AUX):
        # hidden_states[k] is the k-th layer's output, before any final norm.
        assert torch.allclose(out.hidden_states[k][0], outputs[k][0], atol=1e-6)
        width = DEEP["hidden_size"]
        stored = data["features"][:length, chunk * width : (chunk + 1) * width]
        assert torch.allclose(stored, out.hidden_states[k][0], atol=1e-5), k
    assert data["labels"][:length].tolist() == out.logits[0].argmax(-1).tolist()


def test_eagle3_trains_on_tokens_only(deep_target: Path, tmp_path: Path) -> None:
    """Cross-entropy alone: no regression term, held-out loss falls, chain statistics kept."""
    from specdec_train.features import collect
    from specdec_train.save import EAGLE3_TENSORS
    from specdec_train.trainer import Trainer

    options = _options(tmp_path, head="eagle3", max_steps=12, lr=3e-3)
    collect(options, deep_target, _sequences(), tmp_path / "work")
    trainer = Trainer(options, deep_target, _config(deep_target), tmp_path / "work")
    result = trainer.run()
    assert sorted(result.state) == sorted(EAGLE3_TENSORS)
    losses = [h["val_loss"] for h in result.history if "val_loss" in h]
    assert losses[-1] < losses[0]
    batch_data = trainer.train.load(0)
    from specdec_train.trainer import make_batch

    batch = make_batch(batch_data, [0, 1])
    with torch.no_grad():
        _, stats = trainer.objective(trainer.head, batch, 2)
    assert stats["reg"] == [0.0, 0.0]
    assert len(result.validation["acc"]) == 3
    assert result.validation["predicted_mean_acceptance_length"] >= 1


def test_eagle3_features_are_not_reused_for_eagle1(deep_target: Path, tmp_path: Path) -> None:
    """A features folder knows its head kind: the trainer and collector refuse the other kind."""
    from specdec_train.features import collect
    from specdec_train.trainer import Trainer

    collect(_options(tmp_path, head="eagle3"), deep_target, _sequences(), tmp_path / "work")
    with pytest.raises(TrainingError, match="features for an eagle3 head, not eagle"):
        Trainer(_options(tmp_path), deep_target, _config(deep_target), tmp_path / "work")
    with pytest.raises(TrainingError, match="features for an eagle3 head, not eagle"):
        collect(_options(tmp_path), deep_target, _sequences(), tmp_path / "work")


def test_eagle3_saved_layout_is_vllms(deep_target: Path, tmp_path: Path) -> None:
    """Tensor names and shapes, config keys, no LM head; the eagle3 pre-flight accepts it."""
    from safetensors import safe_open
    from specdec.errors import StrategyError
    from specdec.interfaces import TargetInfo
    from specdec.strategies.eagle import Eagle3Options, Eagle3Strategy, EagleOptions, EagleStrategy

    from specdec_train import save

    head, _ = _eagle3(deep_target)
    out = tmp_path / "head"
    card = {"target": {"model": "deep"}, "training": {"history": []},
            "head": {"kind": "eagle3", "aux_layers": list(AUX)}}
    save.save_head(out, head.head_state(), _config(deep_target), card, name="t",
                   overwrite=False, head="eagle3")
    h, inner = DEEP["hidden_size"], DEEP["intermediate_size"]
    kv = DEEP["num_key_value_heads"] * h // DEEP["num_attention_heads"]
    expected = {
        "fc.weight": [h, 3 * h],
        "midlayer.hidden_norm.weight": [h],
        "midlayer.input_layernorm.weight": [h],
        "midlayer.post_attention_layernorm.weight": [h],
        "midlayer.self_attn.q_proj.weight": [h, 2 * h],
        "midlayer.self_attn.k_proj.weight": [kv, 2 * h],
        "midlayer.self_attn.v_proj.weight": [kv, 2 * h],
        "midlayer.self_attn.o_proj.weight": [h, h],
        "midlayer.mlp.gate_proj.weight": [inner, h],
        "midlayer.mlp.up_proj.weight": [inner, h],
        "midlayer.mlp.down_proj.weight": [h, inner],
        "norm.weight": [h],
    }
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}  # noqa: SIM118
    assert shapes == expected
    config = _config(out)
    assert config["architectures"] == ["LlamaForCausalLMEagle3"]
    assert config["num_hidden_layers"] == 1
    assert config["tie_word_embeddings"] is False
    assert config["draft_vocab_size"] == DEEP["vocab_size"]
    assert config["target_hidden_size"] == h
    assert config["eagle_config"] == {"eagle_aux_hidden_state_layer_ids": list(AUX),
                                      "use_aux_hidden_state": True}
    readme = (out / "README.md").read_text()
    assert readme.startswith("# EAGLE-3 head")
    assert '"method": "eagle3"' in readme
    assert "layers 2, 4, 5" in readme
    target = TargetInfo(model="deep", path=deep_target, config=_config(deep_target))
    Eagle3Strategy().check(Eagle3Options(model=str(out)), target)
    with pytest.raises(StrategyError, match="needs 2 x 64 = 128"):
        EagleStrategy().check(EagleOptions(model=str(out)), target)


def test_eagle3_options_and_alias(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--head eagle3 parses; without a shipped head the alias waits for training; bad
    combinations are refused."""
    from cyclopts import CycloptsError

    assert parse_train_eagle("--head", "eagle3").head == "eagle3"
    with pytest.raises(CycloptsError):
        parse_train_eagle("--head", "medusa")
    monkeypatch.setenv("SPECDEC_HOME", str(tmp_path))
    monkeypatch.setattr(models, "HEADS", tmp_path / "no-shipped-heads")
    assert EAGLE3_ALIAS in models.BUNDLED
    with pytest.raises(ModelError, match=r"not trained yet: run `specdec train eagle --head "
                                         r"eagle3`"):
        models.resolve_model(EAGLE3_ALIAS)
    assert TrainOptions(head="eagle3").output_path() == models.bundled(EAGLE3_ALIAS).path
    assert TrainOptions().output_path() == models.bundled(models.EAGLE_ALIAS).path
    with pytest.raises(InvalidOptionError, match="soft_labels needs"):
        TrainOptions(head="eagle3", soft_labels=True)
    with pytest.raises(InvalidOptionError, match="head must be one of eagle, eagle3"):
        TrainOptions(head="medusa")  # type: ignore[arg-type]
    assert aux_layers(30) == (2, 15, 27)
    with pytest.raises(ModelError, match="at least 7 layers; this target has 2"):
        check_target(TINY, "tiny", "eagle3")
    check_target(TINY, "tiny", "eagle")


def test_head_kind_keys_its_steps_but_not_generation() -> None:
    """head enters features, train and evaluate keys; EAGLE-1 keys are those made before it."""
    from specdec_train import pipeline

    base = stage_keys(TrainOptions())
    three = stage_keys(TrainOptions(head="eagle3"))
    assert three["generate"] == base["generate"]
    assert all(three[k] != base[k] for k in ("features", "train", "evaluate"))
    without = {stage: tuple(n for n in names if n != "head")
               for stage, names in pipeline.STAGES.items()}
    original = pipeline.STAGES
    try:
        pipeline.STAGES = without
        assert stage_keys(TrainOptions()) == base
    finally:
        pipeline.STAGES = original


def test_eagle_evaluation_runs_the_head_with_its_method(tmp_path: Path) -> None:
    """'eagle' evaluates the trained head under eagle3 for an EAGLE-3 head; 'eagle3' needs one."""
    from specdec_train.evaluate import eval_items

    prompts = tmp_path / "q.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    options = TrainOptions(head="eagle3", eval_strategies=("eagle",), output=tmp_path / "h")
    items = eval_items(options, tmp_path / "h", prompts)
    assert [i.name for i in items] == ["baseline", "eagle3"]
    assert items[1].experiment["strategy"]["name"] == "eagle3"
    with pytest.raises(TrainingError, match="needs an EAGLE-3 head"):
        eval_items(TrainOptions(eval_strategies=("eagle3",)), tmp_path / "h", prompts)


@pytest.mark.engine
def test_train_eagle3_end_to_end(tmp_path: Path) -> None:
    """Generation, aux hidden states, four steps, save, then vLLM drafts with it as eagle3."""
    head = train_tiny_head(tmp_path, "--head", "eagle3")
    from safetensors import safe_open

    from specdec_train.save import EAGLE3_TENSORS

    with safe_open(str(head / "model.safetensors"), framework="pt") as f:
        assert sorted(f.keys()) == sorted(EAGLE3_TENSORS)
        assert f.get_slice("fc.weight").get_shape() == [576, 3 * 576]
    config = _config(head)
    assert config["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [2, 15, 27]
    card = orjson.loads((head / "training.json").read_bytes())
    assert card["head"]["kind"] == "eagle3"
    assert card["training"]["steps"] == 4
    rows = {r["strategy"]: r for r in card["evaluation"]["strategies"]}
    assert set(rows) == {"baseline", "eagle3"}
    assert rows["eagle3"]["num_drafts"] > 0
    assert rows["eagle3"]["lossless"] is True
    work = tmp_path / "head.partial"
    metrics = orjson.loads((work / "eval" / "eagle3" / "metrics.json").read_bytes())
    assert metrics["summary"]["engine_spec"]["num_drafts"] > 0
    assert metrics["config"]["strategy"]["name"] == "eagle3"
    assert "EAGLE-3 head" in (head / "README.md").read_text()
