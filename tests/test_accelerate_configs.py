"""The configs in recipes/accelerate_configs/, checked by accelerate itself (no GPU, no deepspeed package): each
loads as accelerate's `ClusterConfig` (unknown keys and values refused) and goes through `accelerate launch`'s own
argument merging, each nested FSDP / DeepSpeed key is one of its launch options (an unknown one would be dropped
without a word), and the FSDP2 and DeepSpeed configs build the plugin that a launched process builds from them.

FSDP2 for SFT and CAPO cannot run on CPU: accelerate enables FSDP only on accelerators (on a CPU it starts gloo DDP
and ignores the FSDP plugin), so no 2-process CPU run can equal the 1-process one; the last test checks that this
blocker still holds, and fails once it does not (then write that equality test, as tests/test_capo_ddp.py does)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from unittest import mock

import pytest
from conftest import ROOT

CONFIGS = ROOT / "recipes" / "accelerate_configs"


def _launch_args(name: str):
    """(args, config, mixed precision from the config) as `accelerate launch --config_file` merges them."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / name), "train.py"])
    return _validate_launch_command(args)


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_config_parses_as_accelerate_launch_does(name):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    config = load_config_from_file(str(CONFIGS / name))
    options = {action.dest for action in launch_command_parser()._actions}
    nested = [*(config.fsdp_config or {}), *(config.deepspeed_config or {})]
    assert [key for key in nested if key not in options] == [], name
    args, merged, _ = _launch_args(name)
    assert merged.distributed_type == config.distributed_type and args.num_processes == config.num_processes
    assert (CONFIGS / name).read_text().startswith("#"), "each config opens with a comment saying what it is for"


def test_fsdp2_config_builds_the_fsdp2_plugin():
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    args, _, _ = _launch_args("fsdp2.yaml")
    assert args.use_fsdp and args.mixed_precision == "bf16"
    with mock.patch.dict(os.environ, prepare_multi_gpu_env(args)):  # restores what the plugin writes there too
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward and plugin.cpu_ram_efficient_loading
    assert plugin.state_dict_type.name == "FULL_STATE_DICT" and not plugin.activation_checkpointing


@pytest.mark.parametrize("name, stage", [("zero2.yaml", 2), ("zero3.yaml", 3)])
def test_deepspeed_configs_build_the_plugin(name, stage):
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    args, config, mixed_precision_from_config = _launch_args(name)
    assert args.use_deepspeed
    # as `accelerate launch` does before it starts the DeepSpeed launcher (accelerate/commands/launch.py)
    fields = [*config.deepspeed_config, *(["mixed_precision"] if mixed_precision_from_config else [])]
    args.deepspeed_fields_from_accelerate_config = ",".join(fields)
    _, env = prepare_deepspeed_cmd_env(args)
    with mock.patch.dict(os.environ, env):
        plugin = DeepSpeedPlugin()
    assert plugin.zero_stage == stage and plugin.deepspeed_config["zero_optimization"]["stage"] == stage
    assert plugin.zero3_init_flag == (stage == 3)


def test_fsdp_on_cpu_is_still_blocked():
    """A launched rank under fsdp2.yaml on a CPU (use_cpu, as the CPU recipes train) gets gloo DDP, not FSDP: the
    blocker fsdp2.yaml and the README state. One rank of one, in its own process (accelerate's state is global)."""
    import torch
    from accelerate.utils.launch import prepare_multi_gpu_env

    if torch.cuda.is_available():
        pytest.skip("about CPU-only machines")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args, _, _ = _launch_args("fsdp2.yaml")
    env = {**prepare_multi_gpu_env(args), "LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
    code = "from accelerate import Accelerator; print(Accelerator(cpu=True).distributed_type.name)"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == "MULTI_CPU", "FSDP now runs on CPU: test 2 processes = 1 process instead"
