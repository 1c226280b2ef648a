"""Precision chosen by the hardware (`capo.precision`): each CPU capability resolves `auto` as documented (the
capability is faked), an explicit bf16 where it is emulated still runs with one warning, and the scripts' parser
turns `bf16: auto` (the default) into TRL's bool before TRL sees it."""

from __future__ import annotations

import pytest

from capo import precision


def _cpu(capability: str, avx512_bf16: bool = False, amx_tile: bool = False, machine: str = "x86_64") -> dict:
    return {"capability": capability, "avx512_bf16": avx512_bf16, "amx_tile": amx_tile, "machine": machine}


def _never(*_):
    raise AssertionError("an x86 capability report is unambiguous: no micro-benchmark")


@pytest.mark.parametrize(("report", "native"), [
    (_cpu("AVX512", avx512_bf16=True), True),  # e.g. AMD Zen 4, Intel Cooper Lake
    (_cpu("AVX512", amx_tile=True), True),  # Intel Sapphire Rapids and later
    (_cpu("AVX512"), False),  # AVX-512 without BF16 instructions (Skylake-X): bf16 is emulated
    (_cpu("AVX2"), False),  # AVX2 only (the AMD EPYC of issue 24: bf16 matmul 44x slower than fp32)
    (_cpu("AVX2", avx512_bf16=True), False),  # kernels capped at AVX2 (ATEN_CPU_CAPABILITY=avx2): emulated
    (_cpu("DEFAULT"), False),
])
def test_x86_capabilities_resolve_without_measuring(report, native):
    assert precision.cpu_native_bf16(report, measure=_never)[0] is native


@pytest.mark.parametrize(("ratio", "native"), [(1.8, True), (0.9, True), (0.05, False)])
def test_an_ambiguous_cpu_is_measured(ratio, native):
    result, why = precision.cpu_native_bf16(_cpu("DEFAULT", machine="aarch64"), measure=lambda: ratio)
    assert result is native and f"{ratio:.2f}x" in why


def test_the_micro_benchmark_runs_and_leaves_the_thread_count_as_it_was():
    import torch

    threads = torch.get_num_threads()
    assert precision.bf16_speed_ratio(size=64, repeats=1) > 0
    assert torch.get_num_threads() == threads


def _fake(monkeypatch, native: bool) -> None:
    monkeypatch.setattr(precision, "_native", lambda device_type: (native, f"faked {device_type}"))
    precision._warn_once.cache_clear()


@pytest.mark.parametrize("native", [True, False])
def test_auto_follows_the_device_and_explicit_values_stay(monkeypatch, capsys, native):
    _fake(monkeypatch, native)
    assert precision.resolve_dtype("auto") == ("bfloat16" if native else "float32")
    assert precision.resolve_bf16("auto") is native and precision.resolve_bf16("AUTO", "cpu") is native
    assert precision.resolve_dtype("float32") == "float32" and precision.resolve_bf16(False) is False
    assert capsys.readouterr().err == ""
    # An explicit bf16 runs as asked; where it is emulated, one warning line says what to expect.
    assert precision.resolve_dtype("bfloat16") == "bfloat16" and precision.resolve_bf16("true") is True
    err = capsys.readouterr().err
    if native:
        assert err == ""
    else:
        assert err.count("\n") == 1 and "4-40x slower" in err and "faked" in err
    assert precision.precision_report("cpu") == {"device": "cpu", "native_bf16": native,
                                                 "auto_dtype": "bfloat16" if native else "float32",
                                                 "basis": "faked cpu"}


def _sft_config(argv, tmp_path, config: str | None = None):
    from trl import SFTConfig

    from capo.cli import parse_arguments

    if config is not None:
        path = tmp_path / "c.yaml"
        path.write_text(config)
        argv = ["--config", str(path), *argv]
    (args,) = parse_arguments((SFTConfig,), ["--output_dir", str(tmp_path / "out"), "--use_cpu", "true", *argv])
    return args


@pytest.mark.parametrize("native", [True, False])
def test_the_parser_resolves_bf16_auto_from_the_command_line_a_config_or_the_default(monkeypatch, tmp_path, native):
    _fake(monkeypatch, native)
    assert _sft_config([], tmp_path).bf16 is native  # TRL's own default would be true
    assert _sft_config(["--bf16", "auto"], tmp_path).bf16 is native
    assert _sft_config(["--bf16=auto"], tmp_path).bf16 is native
    assert _sft_config([], tmp_path, "bf16: auto\n").bf16 is native
    assert _sft_config([], tmp_path, "bf16: false\n").bf16 is False
    assert _sft_config(["--bf16", "false"], tmp_path, "bf16: auto\n").bf16 is False  # the command line wins
    assert _sft_config(["--bf16", "auto"], tmp_path, "bf16: true\n").bf16 is native
    assert _sft_config(["--bf16", "true"], tmp_path).bf16 is True


def test_manifests_record_what_auto_resolved_to(monkeypatch, tmp_path):
    from capo.manifest import write_manifest

    _fake(monkeypatch, False)
    manifest = write_manifest(tmp_path, config={})
    assert manifest["precision"]["auto_dtype"] == "float32" and manifest["precision"]["native_bf16"] is False


def test_auto_leaves_bf16_off_beside_fp16_and_on_a_cpu_without_use_cpu(monkeypatch, tmp_path):
    from trl import SFTConfig

    from capo.cli import parse_arguments

    _fake(monkeypatch, True)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    out = ["--output_dir", str(tmp_path / "out")]
    # transformers refuses bf16 on a CPU unless use_cpu, and bf16 beside fp16 anywhere: auto steps aside
    (no_cpu_flag,) = parse_arguments((SFTConfig,), out)
    assert no_cpu_flag.bf16 is False
    assert _sft_config(["--bf16", "true", "--bf16", "auto"], tmp_path).bf16 is True  # the last one wins, as argparse
    assert _sft_config(["--bf16", "auto", "--bf16"], tmp_path).bf16 is True
