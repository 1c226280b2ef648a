"""The memory plan (`capo.memory`): the shape counts what the model holds (checked against the model itself, built on
the meta device), the shipped configs stand for the documented models, and a run that cannot fit a (faked) GPU is
refused before any model loads, in one line that names the option to change; CPU runs are not planned."""

from __future__ import annotations

from dataclasses import replace

import pytest
from conftest import load_script

from capo import memory
from capo.errors import DataError
from capo.memory import GIB, Inference, Shape, Training, fits


def _config(**changes):
    from transformers import LlamaConfig

    values = {"hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 3, "num_attention_heads": 4,
              "num_key_value_heads": 2, "head_dim": 24, "vocab_size": 1000, "max_position_embeddings": 512}
    return LlamaConfig(**(values | changes))


SPEC = Training(kind="sft", dtype="bfloat16", bf16=True, per_device_train_batch_size=8, per_device_eval_batch_size=8,
                max_length=512, gradient_checkpointing=True, lora_r=8, lora_target_modules="all-linear",
                lora_dropout=0.0, load_in_4bit=False)


def _spec(**changes) -> Training:
    return replace(SPEC, **changes)


@pytest.mark.parametrize("tied", [False, True])
def test_the_shape_counts_every_parameter_and_every_lora_weight(tied):
    import torch
    from peft import LoraConfig, inject_adapter_in_model
    from transformers import AutoModelForCausalLM

    config = _config(tie_word_embeddings=tied)  # head_dim x heads != hidden_size, as in Qwen3-4B
    shape = Shape.of(config, "tiny")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert shape.params == sum(p.numel() for p in model.parameters())
    for targets in (list(memory.PROJECTIONS), ["q_proj", "v_proj"]):
        with torch.device("meta"):
            model = inject_adapter_in_model(LoraConfig(r=4, target_modules=targets), AutoModelForCausalLM.from_config(
                config))
        lora = sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)
        assert shape.lora_params(4, targets) == lora
    assert shape.lora_params(4, "all-linear") == shape.lora_params(4, list(memory.PROJECTIONS))


@pytest.mark.parametrize(("hub_id", "billions"), [("meta-llama/Meta-Llama-3-8B-Instruct", 8.03),
                                                  ("meta-llama/Llama-3.1-8B-Instruct", 8.03),
                                                  ("meta-llama/Llama-3.2-3B-Instruct", 3.21), ("Qwen/Qwen3-4B", 4.02)])
def test_the_shipped_configs_stand_for_the_documented_models(hub_id, billions):
    shape, source = memory.model_shape(hub_id)  # offline: no hub, the file in recipes/model_configs/
    assert source.startswith(str(memory.MODEL_CONFIGS)) and round(shape.params / 1e9, 2) == billions


def test_a_model_without_a_config_at_hand_asks_for_one():
    with pytest.raises(DataError, match="field 'model': no config for the memory plan of org/unknown-7b.*model_config"):
        memory.model_shape("org/unknown-7b")


@pytest.mark.parametrize(("spec", "between", "option"), [
    # only gradient checkpointing brings it under the device's memory
    (_spec(gradient_checkpointing=False), _spec(), "gradient_checkpointing"),
    # fp32 weights, checkpointing on: bf16 weights first
    (_spec(dtype="float32", bf16=False), _spec(), "dtype"),
    # a smaller batch, with the accumulation that keeps the effective batch
    (_spec(per_device_train_batch_size=32), _spec(per_device_train_batch_size=8), "per_device_train_batch_size"),
])
def test_the_refusal_names_the_first_option_that_makes_the_run_fit(spec, between, option):
    shape = Shape.of(_config(), "tiny")
    need = max(p.total for p in spec.estimate(shape))
    enough = max(p.total for p in between.estimate(shape))
    assert enough < need
    _, refusal = fits(shape, spec, ("Fake GPU", int((need + enough) / 2)))
    assert refusal is not None and refusal.field == option and "does not fit the GPU (Fake GPU" in str(refusal)
    assert "\n" not in str(refusal) and str(refusal).startswith(f"field '{option}': sft step, ")
    if option == "per_device_train_batch_size":
        assert "gradient_accumulation_steps x" in str(refusal)
    assert fits(shape, spec, ("Fake GPU", int(need) + 1))[1] is None


def test_nothing_fits_a_device_smaller_than_the_weights():
    shape = Shape.of(_config(), "tiny")
    _, refusal = fits(shape, _spec(load_in_4bit=True), ("Fake GPU", GIB // 2))  # less than the 1 GiB reserve
    assert refusal.field == "model" and "smaller model" in str(refusal)
    _, refusal = fits(shape, Inference("mjd", "bfloat16", 1 << 16, 512), ("Fake GPU", int(1.2 * GIB)))
    assert refusal.field == "batch_size"


@pytest.fixture
def small_model(tmp_path):
    """A model folder with a config and no weights: all a plan reads (nothing here could load a model)."""
    folder = tmp_path / "llama"
    _config(vocab_size=32000).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(("recipe", "option"), [("recipes/sft.py", "per_device_train_batch_size 16"),
                                                ("recipes/capo.py", "per_device_train_batch_size 8"),
                                                ("recipes/mjd.py", "dtype bfloat16"),
                                                ("recipes/generate.py", "batch_size 512")])
def test_a_recipe_refuses_a_run_that_cannot_fit_before_any_model_loads(recipe, option, small_model, tmp_path,
                                                                        monkeypatch):
    monkeypatch.setattr(memory, "device_memory", lambda: ("Fake GPU", 6 * GIB))
    out = tmp_path / "out"
    if recipe in ("recipes/sft.py", "recipes/capo.py"):  # fp32, no checkpointing: the logits outgrow the GPU
        argv = ["--model_name_or_path", small_model, "--use_cpu", "false", "--bf16", "false", "--max_length", "512",
                "--per_device_train_batch_size", "64", "--gradient_checkpointing", "false"]
        argv += ["--init_from", "base"] if recipe == "recipes/capo.py" else []
    elif recipe == "recipes/mjd.py":
        argv = ["--model_name_or_path", small_model, "--batch_size", "4096", "--dtype", "float32"]
    else:
        argv = ["--model", small_model, "--targets", "A1", "--batch_size", "4096", "--few_shot", "50", "--dtype",
                "bfloat16"]
    with pytest.raises(DataError, match=r"does not fit the GPU \(Fake GPU, 6.0 GiB\)") as err:
        load_script(recipe).main.__wrapped__([*map(str, argv), "--output_dir", str(out)])
    assert str(err.value).startswith(f"field '{option.split()[0]}': ") and f"GiB): {option}" in str(err.value)
    assert not out.exists() or not any(out.iterdir())


def test_cpu_runs_are_not_planned(monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setattr(memory, "model_shape", lambda *a, **k: pytest.fail("a CPU run read a model config"))
    assert memory.plan_training(SimpleNamespace(use_cpu=True), SimpleNamespace()) is None
    if memory.device_memory() is None:  # this machine: no CUDA device
        assert memory.check_memory("any/model", _spec()) is None


def test_a_run_without_evaluation_plans_no_eval_batch():
    from types import SimpleNamespace

    training = SimpleNamespace(eval_strategy="no", bf16=True, fp16=False, per_device_train_batch_size=4,
                               per_device_eval_batch_size=64, max_length=256, gradient_checkpointing=True)
    model = SimpleNamespace(dtype="bfloat16", lora_r=8, lora_target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
                            load_in_4bit=False)
    spec = Training.from_args(training, model, preference=True)
    assert spec.per_device_eval_batch_size == 0 and spec.lora_target_modules == ("q_proj", "v_proj")
    (plan,) = spec.estimate(Shape.of(_config(), "tiny"))
    assert plan.what == "capo step, 8 x 256 tokens"  # chosen and rejected: 2 x 4 rows
