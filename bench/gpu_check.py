"""The GPU path in one command: SFT, CAPO (TRL and shared-prefix), two-adapter generation, label scoring and MJD
scoring on random-init models of the shapes in recipes/model_configs, in bf16, with one table of the results.

    python bench/gpu_check.py           # one GPU: Llama-3.2-3B shape (training, generation, labels), Llama-3-8B (MJDs)
    python bench/gpu_check.py --tiny    # the same code on CPU: 1-2 layer tiny shapes, auto precision, < 1 min

It needs only what the device has plus the working tree (no network, no hub): the tokenizer is the corpus LM's,
built offline in seconds (`capo.models.corpus_lm`; `--tokenizer` reuses one), and each model is random-init from
its config, saved as a folder that the recipes load like a hub model. Stages, in order:
- sft: `recipes/sft.py --config recipes/configs/sft.yaml`, one epoch over `--rows` of A2's rows;
- capo TRL / capo packed: `recipes/capo.py --config recipes/configs/capo.yaml` from that SFT adapter with
  `--shared_prefix false` (TRL's `DPOTrainer`) and `true` (`capo.train.packed_trainer.SharedPrefixDPOTrainer`), one
  epoch over the same `--rows` pairs;
- agreement: both trainers' loss on one batch of the same `--agreement_pairs` pairs, same reference (the frozen SFT
  adapter) and policy (that adapter with seeded random LoRA B matrices);
- generation: `HFBackend` with the sft and capo adapters, greedy, `--items` held-out items each;
- labels: `capo.generate.scoring.label_log_probs` of the NLI labels under each adapter, same items;
- mjd: bench/mjd_throughput.py's comparison of our scorer with the papers' `generate`, same prompts.
Each row: seconds (training: the Trainer's train_runtime, model loading excluded), throughput, peak memory (GPU:
torch's max allocated in the stage; CPU: the process's max RSS so far) and MFU = model FLOPs / seconds / peak, with 2
FLOPs per non-embedding parameter and token forward (LM head and the attention's quadratic term, < 1 % here, left
out), LoRA's backward as one forward (frozen weights get no weight gradient), CAPO's reference forward as one more,
recomputation not counted; peak = the vendor's dense bf16 figure on a known GPU, else a measured matmul rate.
Decoding is memory-bound, so generation reports no MFU. The table goes to stdout and, as JSON, to `--output`
(default `$OUT/gpu_check.json`, `$OUT` defaulting to runs/bench).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import resource
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads slow shared CPUs 10-25x
if missing := [name for name in ("trl", "datasets") if importlib.util.find_spec(name) is None]:
    # The GPU image has torch, transformers, peft and accelerate only: say so before the first import fails.
    raise SystemExit(f"error: {' and '.join(missing)} not installed: carry them as wheels (docs/benchmarks.md, "
                     "'GPU check')")
HERE = Path(__file__).resolve().parent
# The device has no install of capo (run from the checkout), and mjd_throughput is a sibling script.
sys.path[:0] = [p for p in (str(HERE.parent), str(HERE)) if p not in sys.path]

import mjd_throughput as mjd

from capo.cli import run_main
from capo.io import write_json

GIB = 1024**3
ANNOTATOR, TASK = "A2", "nli"
GPU = {"shape": "llama3.2-3b", "mjd_shape": "llama3-8b", "layers": None, "rows": 256, "agreement_pairs": 8,
       "items": 32, "max_new_tokens": 64, "mjd_items": 3, "mjd_repeats": 2, "seed_new_tokens": "32,1"}
TINY = {"shape": "tiny", "mjd_shape": "tiny", "layers": 2, "rows": 8, "agreement_pairs": 4, "items": 2,
        "max_new_tokens": 4, "mjd_items": 1, "mjd_repeats": 1, "seed_new_tokens": "2,1"}
PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets")


def peak_memory_gib(torch) -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / GIB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # Linux: KiB; the process's max so far


@contextmanager
def stage(rows: list[dict], name: str, model: str, torch):
    """Time a stage (`seconds` unless the stage sets its own) and record its peak memory; memory is freed first so
    that each stage's peak is its own."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    row = {"stage": name, "model": model}
    start = time.perf_counter()
    yield row
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    row["wall_s"] = time.perf_counter() - start
    row.setdefault("seconds", row["wall_s"])
    row["peak_memory_gib"] = peak_memory_gib(torch)
    rows.append(row)
    print(f"{name}: {row['seconds']:.1f} s, {row['peak_memory_gib']:.1f} GiB", flush=True)


def build_tokenizer(folder: Path) -> str:
    """The corpus LM's byte-level BPE tokenizer (4096 tokens, chat template), trained offline; the one-step model
    built beside it is not used."""
    from capo.models.corpus_lm import build_corpus_lm, config_for

    build_corpus_lm(folder, config_for("test", vocab_size=4096, max_steps=1), log=lambda *_: None)
    return str(folder)


def save_random_model(shape: str, layers: int | None, tokenizer: str, dtype: str, folder: Path):
    """A random-init model of `shape` in `dtype`, saved with the tokenizer as a folder (loadable like a hub model);
    returns it on the meta device, for FLOP counts."""
    import torch
    from transformers import AutoModelForCausalLM

    spec = argparse.Namespace(random_init=shape, num_hidden_layers=layers, tokenizer=tokenizer, model=None,
                              dtype=dtype, device="cuda" if torch.cuda.is_available() else "cpu")
    model, tok = mjd.load_model(spec, torch)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(model.config)


def forward_flops(meta_model, tokens: int) -> float:
    """2 FLOPs per non-embedding parameter and token. The LM head is left out: TRL computes it at every position,
    the shared-prefix trainer only where a response token is predicted, so counting it would credit TRL's waste."""
    return mjd.flops(meta_model, {"computed_tokens": tokens, "attended_pairs": 0, "rows": 0})


def recipe_argv(config: str, model_dir: Path, out: Path, dtype: str, rows: int, device: str) -> list[str]:
    """A recipe's command line: its GPU config, this model, device and precision, one epoch over `rows` rows, no
    evaluation or checkpoints (timed training only)."""
    return ["--config", config, "--model_name_or_path", str(model_dir), "--annotator", ANNOTATOR, "--task", TASK,
            "--output_dir", str(out), "--use_cpu", str(device == "cpu").lower(), "--dtype", dtype,
            "--bf16", str(dtype == "bfloat16").lower(),
            "--max_train_rows", str(rows), "--num_train_epochs", "1", "--max_steps", "-1", "--eval_split", "none",
            "--eval_strategy", "no", "--save_strategy", "no", "--logging_steps", "1", "--report_to", "none",
            "--disable_tqdm", "true", "--seed", "0"]


def train(row: dict, job, argv: list[str], out: Path, meta_model, passes: int, peak: float) -> None:
    """Run a recipe in this process; fill `row` from its metrics and logged token count (TRL's `num_tokens`: non-pad
    tokens forwarded, the policy pass only)."""
    metrics = job.run(argv)
    state = json.loads((out / "trainer_state.json").read_text())
    tokens = max(int(r.get("num_tokens", 0)) for r in state["log_history"])
    row.update(seconds=metrics["train_runtime"], tokens=tokens, steps=state["global_step"],
               train_loss=metrics["train_loss"], throughput=tokens / metrics["train_runtime"],
               unit="tokens/s forwarded")
    row["mfu"] = passes * forward_flops(meta_model, tokens) / row["seconds"] / 1e12 / peak


def agreement(capo_argv: list[str], sft_dir: Path, pairs: int) -> dict:
    """Loss of TRL's `DPOTrainer` and of the shared-prefix trainer on one batch of the same pairs and the same policy
    and reference: the SFT adapter (its frozen copy is the reference, as `init_from sft` trains) with its LoRA B
    matrices redrawn from one seeded N(0, 0.05^2), so that the policy differs from the reference whatever a few
    training steps did."""
    import torch
    from transformers import AutoTokenizer
    from trl import DPOTrainer

    from capo.pipeline.launch import CAPO
    from capo.train.explainers import build_pair_datasets, load_sft_policy
    from capo.train.packed_trainer import SharedPrefixDPOTrainer

    _, capo_args, training_args, model_args, _ = CAPO.parse(capo_argv)
    capo_args.max_train_rows = pairs
    rows = build_pair_datasets(capo_args)[0]
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    losses = {}
    for name, trainer_class in (("trl", DPOTrainer), ("packed", SharedPrefixDPOTrainer)):
        policy, _ = load_sft_policy(sft_dir, capo_args, model_args, training_args)
        trainer = trainer_class(model=policy, args=training_args, train_dataset=rows, processing_class=tokenizer)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for key, param in trainer.model.named_parameters():  # the same order, so the same draws, for both
                if "lora_B.default" in key:
                    param.copy_(0.05 * torch.randn(param.shape, generator=generator))
        trainer.model.eval()  # no LoRA dropout: both see the same function
        data = trainer.train_dataset
        batch = trainer._prepare_inputs(trainer.data_collator([data[i] for i in range(len(data))]))
        with torch.no_grad(), trainer.compute_loss_context_manager():
            losses[name] = trainer.compute_loss(trainer.model, batch).item()
        del trainer, policy
        gc.collect()
    diff = abs(losses["trl"] - losses["packed"])
    return {"pairs": len(rows), "loss_trl": losses["trl"], "loss_packed": losses["packed"], "abs_diff": diff,
            "rel_diff": diff / abs(losses["trl"])}


def generate_and_score(rows: list[dict], model_dir: Path, adapters: dict[str, str], dtype: str, args, torch) -> None:
    """Two-adapter generation and label scoring on one `HFBackend`: tokens/s and prompts/s."""
    import numpy as np

    from capo.data.datasets import load_task_data
    from capo.data.prompts import prompt_messages, render_chat
    from capo.generate.backends.hf import HFBackend
    from capo.generate.labels import label_options, scoring_prompt
    from capo.generate.scoring import label_log_probs

    items = load_task_data(TASK).items("dev")[: args.items]  # held out from A2's training items
    with stage(rows, "generation", args.shape, torch) as row:
        backend = HFBackend(str(model_dir), adapters, dtype=dtype, batch_size=16)
        prompts = [render_chat(backend.tokenizer, prompt_messages(item)) for item in items]
        backend.generate(prompts[:2], "sft", max_new_tokens=2)  # warm-up (kernels, allocator), not timed
        start = time.perf_counter()
        generated = [g for name in adapters
                     for g in backend.generate(prompts, name, max_new_tokens=args.max_new_tokens)]
        row["seconds"] = time.perf_counter() - start
        row.update(records=len(generated), tokens=sum(g.generated_tokens for g in generated),
                   throughput=sum(g.generated_tokens for g in generated) / row["seconds"],
                   unit="generated tokens/s", mfu=None)
    with stage(rows, "labels", args.shape, torch) as row:
        prompts = [scoring_prompt(backend.tokenizer, item) for item in items]
        start = time.perf_counter()
        logp = np.stack([label_log_probs(backend.scorer, backend.tokenizer, prompts, label_options(TASK), name)
                         for name in adapters])
        row["seconds"] = time.perf_counter() - start
        row.update(prompts=logp.shape[0] * logp.shape[1], throughput=logp.shape[0] * logp.shape[1] / row["seconds"],
                   unit="prompts/s", mfu=None, finite=bool(np.isfinite(logp).all()))
    del backend


def mjd_rows(rows: list[dict], args, tokenizer: str, out: Path, torch) -> None:
    """bench/mjd_throughput.py on `--mjd_shape`: our scorer (prefix reuse) and the papers' `generate`, one row each."""
    argv = ["--random_init", args.mjd_shape, "--tokenizer", tokenizer, "--items", str(args.mjd_items),
            "--dtype", "auto", "--repeats", str(args.mjd_repeats), "--seed_new_tokens", args.seed_new_tokens,
            "--output", str(out)]
    with stage(rows, "mjd", args.mjd_shape, torch) as row:
        report = mjd.main(argv + (["--num_hidden_layers", str(args.layers)] if args.layers else []))
    for name, result in report["results"].items():
        speedups = {k.split("[")[1].rstrip("]"): v for k, v in result.items() if k.startswith("speedup_vs[")}
        rows.append({**row, "stage": f"mjd: {name}", "seconds": result["seconds"],
                     "throughput": result["prompts_per_s"], "unit": "prompts/s", "mfu": result.get("mfu"),
                     "max_abs_dp_mjd": result["max_abs_dp_mjd"], "speedups": speedups})
    rows.remove(row)  # the per-method rows replace the stage's own


def format_table(report: dict) -> str:
    lines = [f"{report['device']} ({report['precision']['basis']}), {report['dtype']}; "
             + ", ".join(f"{k} {v}" for k, v in report["versions"].items())
             + f"; peak {report['peak_tflops']:.1f} TFLOP/s ({report['peak_source']}); "
             f"total {report['wall_s']:.0f} s",
             "", "| stage | model | s | throughput | peak memory | MFU |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for row in report["rows"]:
        mfu = f"{100 * row['mfu']:.1f} %" if row.get("mfu") is not None else "–"
        lines.append(f"| {row['stage']} | {row['model']} | {row['seconds']:.2f} | {row['throughput']:.1f} "
                     f"{row['unit']} | {row['peak_memory_gib']:.1f} GiB | {mfu} |")
    lines.append("")
    lines += [f"{k}: {v:.3g}" if isinstance(v, float) else f"{k}: {v}" for k, v in report["summary"].items()]
    return "\n".join(lines)


@run_main
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="1-2 layer tiny shapes and a few rows (CPU, tests)")
    parser.add_argument("--shape", choices=list(mjd.SHAPES), help="training, generation and labels (default "
                        f"{GPU['shape']}; --tiny: tiny)")
    parser.add_argument("--mjd_shape", choices=list(mjd.SHAPES), help=f"MJD scoring (default {GPU['mjd_shape']})")
    parser.add_argument("--layers", type=int, help="override both shapes' depth (--tiny: 2)")
    parser.add_argument("--rows", type=int, help="SFT rows and CAPO pairs, one epoch each (default 256)")
    parser.add_argument("--agreement_pairs", type=int, help="pairs in the loss-agreement batch (default 8)")
    parser.add_argument("--items", type=int, help="held-out items for generation and labels (default 32)")
    parser.add_argument("--max_new_tokens", type=int, help="generation length (default 64)")
    parser.add_argument("--mjd_items", type=int, help="MJD items (default 3)")
    parser.add_argument("--mjd_repeats", type=int, help="MJD timing rounds, best kept (default 2)")
    parser.add_argument("--seed_new_tokens", help="max_new_tokens of the papers' generate (default 32,1)")
    parser.add_argument("--tokenizer", help="a tokenizer folder (default: the corpus LM's, built in seconds)")
    parser.add_argument("--sft_config", default=str(HERE.parent / "recipes/configs/sft.yaml"))
    parser.add_argument("--capo_config", default=str(HERE.parent / "recipes/configs/capo.yaml"))
    parser.add_argument("--work_dir", help="models and adapters go here (default: a temporary folder, removed)")
    parser.add_argument("--output", help="the JSON report (default $OUT/gpu_check.json; $OUT default runs/bench)")
    args = parser.parse_args(argv)
    for key, value in (TINY if args.tiny else GPU).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    output = args.output or str(Path(os.environ.get("OUT", "runs/bench")) / "gpu_check.json")

    import importlib.metadata

    import torch

    from capo.pipeline.launch import CAPO, SFT
    from capo.precision import precision_report, resolve_dtype

    begin = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = resolve_dtype("auto", device)  # bf16 on a bf16 GPU; on a CPU only where native, else fp32
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as temp:
        work = Path(args.work_dir or temp)
        rows: list[dict] = []
        with stage(rows, "setup: tokenizer, random model saved", args.shape, torch) as row:
            tokenizer = args.tokenizer or build_tokenizer(work / "tokenizer")
            meta_model = save_random_model(args.shape, args.layers, tokenizer, dtype, work / "model")
            row.update(throughput=sum(p.numel() for p in meta_model.parameters()) / 1e6, unit="M parameters",
                       mfu=None)
        peak, peak_source = mjd.vendor_peak(torch, device, getattr(torch, dtype))
        if peak is None:
            peak = mjd.matmul_peak_tflops(torch, device, getattr(torch, dtype), meta_model)
            peak_source = "measured matmul"
        sft_dir, out = work / "sft", {name: work / name for name in ("capo_trl", "capo_packed")}
        with stage(rows, "sft", args.shape, torch) as row:  # forward + LoRA backward
            train(row, SFT, recipe_argv(args.sft_config, work / "model", sft_dir, dtype, args.rows, device), sft_dir,
                  meta_model, 2, peak)
        capo_argv = recipe_argv(args.capo_config, work / "model", work / "agreement", dtype, args.rows, device) + [
            "--init_from", "sft", "--sft_adapter", str(sft_dir)]
        for name, shared in (("capo_trl", "false"), ("capo_packed", "true")):
            with stage(rows, f"capo ({'shared prefix' if shared == 'true' else 'TRL'})", args.shape, torch) as row:
                argv = capo_argv + ["--output_dir", str(out[name]), "--shared_prefix", shared]
                train(row, CAPO, argv, out[name], meta_model, 3, peak)  # + the reference forward
        trl_row, packed_row = rows[-2], rows[-1]
        pair_tokens = trl_row["tokens"]  # TRL forwards prompt + chosen and prompt + rejected of every pair
        packed_row["pair_tokens_per_s"] = pair_tokens / packed_row["seconds"]
        with stage(rows, "agreement", args.shape, torch) as row:
            row.update(agreement(capo_argv + ["--shared_prefix", "false"], sft_dir, args.agreement_pairs),
                       throughput=args.agreement_pairs, unit="pairs", mfu=None)
        generate_and_score(rows, work / "model", {"sft": str(sft_dir), "capo": str(out["capo_trl"])}, dtype, args,
                           torch)
        mjd_rows(rows, args, tokenizer, work / "mjd_throughput.json", torch)
    agree = next(r for r in rows if r["stage"] == "agreement")
    ours = next(r for r in rows if r["stage"] == "mjd: ours (prefix reuse)")
    report = {
        "device": torch.cuda.get_device_name() if device == "cuda" else f"CPU ({os.cpu_count()} threads visible)",
        "precision": precision_report(device), "dtype": dtype, "tiny": args.tiny,
        "versions": {p: importlib.metadata.version(p) for p in PACKAGES}, "peak_tflops": peak,
        "peak_source": peak_source, "wall_s": time.perf_counter() - begin, "rows": rows,
        "summary": {"capo pair tokens/s, TRL": pair_tokens / trl_row["seconds"],
                    "capo pair tokens/s, shared prefix": packed_row["pair_tokens_per_s"],
                    "speed-up shared prefix vs TRL (same pairs)": trl_row["seconds"] / packed_row["seconds"],
                    "loss agreement |TRL - packed|": agree["abs_diff"],
                    **{f"MJD speed-up vs {k}": v for k, v in ours["speedups"].items()}},
    }
    write_json(output, report)
    print(format_table(report))
    print(f"wrote {output}")
    return report


if __name__ == "__main__":
    main()
