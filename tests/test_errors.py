"""Malformed input: one line naming the file, the line or item, and the field; non-zero exit; nothing written."""

import json
import re
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_script, write_jsonl

from capo.data.distributions import read_distributions
from capo.data.formats.jsonl import load_items_jsonl
from capo.data.formats.lewidi import load_lewidi, load_lewidi_annotators_meta
from capo.data.formats.mjd_files import load_nli341
from capo.data.formats.varierr import load_varierr
from capo.errors import DataError

GOOD = {
    "id": "q1",
    "task": "nli",
    "inputs": {"premise": "A man sleeps.", "hypothesis": "A person rests."},
    "annotations": [{"annotator": "A1", "label": "entailment", "explanation": "Sleeping is resting."}],
    "distributions": {"chaosnli": [0.7, 0.2, 0.1]},
}


def _with(**changes):
    row = json.loads(json.dumps(GOOD))
    for dotted, value in changes.items():
        target, *keys = [row, *dotted.split("__")]
        for key in keys[:-1]:
            target = target[int(key)] if key.isdigit() else target[key]
        target[keys[-1]] = value
    return row


CASES = [
    ("malformed json", ['{"id": "q1", "task": '], r"items.jsonl:2: malformed JSON"),
    ("missing field", [{k: v for k, v in GOOD.items() if k != "task"}], r"items.jsonl:2: item q1: field 'task': missing field"),
    ("unknown task", [_with(task="sentiment")], r"item q1: field 'task': unknown task 'sentiment' \(valid: nli, paraphrase\)"),
    ("unknown label", [_with(annotations__0__label="maybe")], r"item q1: field 'annotations\[0\].label': unknown label 'maybe'"),
    ("unknown annotator", [_with(annotations__0__annotator="A7")], r"field 'annotations\[0\].annotator': unknown annotator 'A7'"),
    ("empty explanation", [_with(annotations__0__explanation="   ")], r"field 'annotations\[0\].explanation': empty explanation"),
    ("distribution sum", [_with(distributions={"chaosnli": [0.5, 0.2, 0.1]})], r"field 'distributions.chaosnli': distribution sums to 0.8, not 1"),
    ("distribution length", [_with(distributions={"chaosnli": [0.5, 0.5]})], r"field 'distributions.chaosnli': expected 3 values, got 2"),
    ("negative probability", [_with(distributions={"chaosnli": [1.2, -0.2, 0.0]})], r"values must be finite and non-negative"),
    ("missing input", [_with(inputs={"premise": "x"})], r"field 'inputs.hypothesis': missing or empty input text"),
    ("duplicate id", [GOOD, GOOD], r"items.jsonl:3: item q1: field 'id': duplicate item id"),
    ("not an object", ["[1, 2]"], r"items.jsonl:2: expected a JSON object, got list"),
    ("annotations not a list", [_with(annotations={"A1": "x"})], r"item q1: field 'annotations': expected list, got dict"),
    ("distributions not an object", [_with(distributions=[0.2, 0.8])], r"field 'distributions': expected dict, got list"),
    ("error labels not a list", [_with(error_labels="neutral")], r"field 'error_labels': expected list, got str"),
]


@pytest.mark.parametrize("name,rows,pattern", CASES, ids=[c[0] for c in CASES])
def test_bring_your_own_errors_are_one_located_line(tmp_path, name, rows, pattern):
    path = write_jsonl(tmp_path / "items.jsonl", [GOOD | {"id": "q0"}, *rows])
    with pytest.raises(DataError, match=pattern) as info:
        load_items_jsonl(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_varierr_bad_reason_and_annotator(tmp_path):
    row = json.loads(Path(load_varierr.__defaults__[0]).read_text().splitlines()[0])
    row["neutral"] = [dict(row["entailment"][0], reason="")]
    with pytest.raises(DataError, match=r"varierr.jsonl:1: item 23751e: field 'neutral\[0\].reason': empty explanation"):
        load_varierr(write_jsonl(tmp_path / "varierr.jsonl", [row]))
    row["neutral"] = [dict(row["entailment"][0], annotator=7)]
    with pytest.raises(DataError, match=r"field 'neutral\[0\].annotator': unknown annotator 7"):
        load_varierr(write_jsonl(tmp_path / "varierr.jsonl", [row]))
    row["neutral"] = [dict(row["entailment"][0], judgments=["yes"])]
    with pytest.raises(DataError, match=r"field 'neutral\[0\].judgments\[0\]': expected an object"):
        load_varierr(write_jsonl(tmp_path / "varierr.jsonl", [row]))
    row["neutral"], row["idk"] = [], ["A2"]
    with pytest.raises(DataError, match=r"item 23751e: field 'idk\[0\]': unknown annotator 'A2'"):
        load_varierr(write_jsonl(tmp_path / "varierr.jsonl", [row]))


def test_lewidi_misaligned_explanations(tmp_path):
    record = {
        "annotation task": "natural language inference",
        "text": {"context": "c", "statement": "s"},
        "annotators": "Ann1,Ann2",
        "annotations": {"Ann1": "neutral", "Ann2": "entailment"},
        "other_info": {"explanations": ["only one"]},
    }
    path = tmp_path / "ven.json"
    path.write_text(json.dumps({"42": record}))
    with pytest.raises(DataError, match=r"ven.json: item 42: field 'other_info.explanations': 1 explanations for 2 annotator slots"):
        load_lewidi(path)


def test_meta_file_that_is_broken_beyond_trailing_commas(tmp_path):
    path = tmp_path / "meta.json"
    path.write_text('{\n "Ann1": {"Age": "26",},\n "Ann2": {"Age": 30\n}')
    with pytest.raises(DataError, match=r"meta.json:\d+: malformed JSON"):
        load_lewidi_annotators_meta(path)


def test_nli341_bad_chaos_probs(tmp_path):
    row = json.loads(Path(load_nli341.__defaults__[0]).read_text().splitlines()[0])
    row["chaos probs"] = [0.3, 0.3, 0.3]
    with pytest.raises(DataError, match=r"nli.jsonl:1: item 61429c: field 'chaos probs': distribution sums to 0.9"):
        load_nli341(write_jsonl(tmp_path / "nli.jsonl", [row]))


def test_distribution_file_errors(tmp_path):
    with pytest.raises(DataError, match=r"d.jsonl:2: field 'id': missing or invalid id"):
        read_distributions(write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "distribution": [1, 0, 0]}, {"distribution": [1, 0, 0]}]))
    with pytest.raises(DataError, match=r"d.jsonl:2: item a: field 'id': duplicate id"):
        read_distributions(write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "distribution": [1, 0, 0]}] * 2))
    with pytest.raises(DataError, match=r"missing.jsonl: file not found"):
        read_distributions(tmp_path / "missing.jsonl")


def test_cli_reports_one_line_and_exit_2_and_writes_nothing(tmp_path):
    human = write_jsonl(tmp_path / "h.jsonl", [{"id": "a", "distribution": [0.5, 0.5, 0]}, {"id": "b", "distribution": [0, 0, 1]}])
    model = write_jsonl(tmp_path / "m.jsonl", [{"id": "a", "distribution": [0.5, 0.5, 0]}, {"id": "c", "distribution": [0.2, 0.2, 0.6]}])
    out_csv = tmp_path / "table.csv"
    proc = run_script("eval/distributions.py", "--human", human, "--model", model, "--csv", out_csv)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith("error: ids do not match: 2 mismatched, e.g. 'b' is in") and "Traceback" not in proc.stderr
    assert not out_csv.exists()
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "a", "distribution": [0.5, 0.6, 0]}])
    proc = run_script("eval/distributions.py", "--human", human, "--model", bad)
    assert proc.returncode == 2 and "bad.jsonl:1: item a: field 'distribution': distribution sums to 1.1" in proc.stderr


# --- every script: malformed input -> exit 2, one located `error:` line, nothing written -------------------------

BOOL_ID_ITEM = dict(GOOD, id=True)
TINY_LLAMA = {"model_type": "llama", "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
              "num_attention_heads": 1, "num_key_value_heads": 1, "vocab_size": 32}
# a generation record (recipes/generate.py) for a VariErr item held out by the default split (seed 0)
GEN = {"id": "1735n", "annotator": "A1", "task": "nli", "label": "neutral", "explanation": "It may be so.",
       "parsed": True}
RAW = {"prompts": [{"options": "ENC", "letter_scores": [1.0, 0.5, -1.0]}]}  # a raw_scores.jsonl row without id


def _inputs(tmp_path: Path) -> Path:
    """The malformed inputs the cases point at, in `tmp_path/in`; the scripts run in the empty `tmp_path/cwd`."""
    d = tmp_path / "in"
    d.mkdir()
    (d / "bad.yaml").write_text("limit: 2\nadapters: [A1=x\nbatch_size: 4\n")
    (d / "empty.yaml").write_text("")
    (d / "list.yaml").write_text("- limit\n- 2\n")
    (d / "unknown.yaml").write_text("limit: 2\nbogus_key: 1\n")
    (d / "wrongtype.yaml").write_text("batch_size: 4\nlimit: abc\n")
    (d / "float_int.yaml").write_text("items_per_chunk: 2.5\n")
    (d / "bad_choice.yaml").write_text("per_device_train_batch_size: 2\neval_strategy: sometimes\n")
    (d / "ft_unknown.yaml").write_text("learning_rate: 1.0e-4\nbogus_key: 1\n")
    (d / "sft_unknown.yaml").write_text("lora_r: 8\nlora_rank: 8\n")
    (d / "a_folder").mkdir()
    (d / "a_file.txt").write_text("not a folder\n")
    (d / "fake_model").mkdir()
    (d / "fake_model" / "config.json").write_text("{}\n")  # enough for the path check; loading it would fail
    (d / "adapter_noweights").mkdir()  # a LoRA config copied without its weights
    (d / "adapter_noweights" / "adapter_config.json").write_text('{"peft_type": "LORA"}\n')
    (d / "adapter_nomanifest").mkdir()  # weights (never loaded here: refused first) but no run manifest
    (d / "adapter_nomanifest" / "adapter_config.json").write_text('{"peft_type": "LORA"}\n')
    (d / "adapter_nomanifest" / "adapter_model.safetensors").write_bytes(b"not loaded")
    (d / "items.jsonl").write_text(json.dumps(BOOL_ID_ITEM) + "\n")
    (d / "h.jsonl").write_text(json.dumps({"id": "a", "distribution": [0.5, 0.5, 0]}) + "\n")
    (d / "h2.jsonl").write_text("".join(json.dumps({"id": i, "distribution": [0.5, 0.5, 0]}) + "\n" for i in "ab"))
    (d / "tiny_llama").mkdir()  # a config without weights: enough for the model's skeleton on the meta device
    (d / "tiny_llama" / "config.json").write_text(json.dumps(TINY_LLAMA) + "\n")
    write_jsonl(d / "gen_badann.jsonl", [GEN, dict(GEN, annotator="A9")])
    write_jsonl(d / "gen_dup.jsonl", [dict(GEN, annotator="A2"), GEN, GEN])
    write_jsonl(d / "gen_noexpl.jsonl", [{k: v for k, v in GEN.items() if k != "explanation"}])
    write_jsonl(d / "gen_foreign.jsonl", [dict(GEN, id="not-an-item")])
    write_jsonl(d / "par_str.jsonl", [{"id": "1", "annotator": "Ann1", "label": "5"}])
    write_jsonl(d / "raw.jsonl", [RAW | {"id": i} for i in "ab"])
    write_jsonl(d / "raw_noid.jsonl", [RAW | {"id": "a"}, RAW | {"idx": "b"}])
    (d / "raw_nan.jsonl").write_text('{"id": "a", "prompts": [{"options": "ENC", "letter_scores": [NaN, 1.0, 2.0]}]}\n')
    (tmp_path / "cwd").mkdir()
    return d


def _tree(root: Path) -> dict:
    """Every path under `root` with its mode and (for files) bytes: 'untouched' means this does not change."""
    return {str(p.relative_to(root)): (p.stat().st_mode, p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


G, M, S, C = "recipes/generate.py", "recipes/mjd.py", "recipes/sft.py", "recipes/capo.py"
E, F = "recipes/model_explanations.py", "recipes/finetune.py"
D, A, FC = "eval/distributions.py", "eval/attribution.py", "eval/finetune_compare.py"
J, L = "eval/jury.py", "eval/lewidi.py"
NO_WEIGHTS = (r"\S+/adapter_noweights: adapter folder has adapter_config\.json but no adapter weights "
              r"\(adapter_model\.safetensors or adapter_model\.bin\)$")
NO_MANIFEST = (r"\S+/adapter_nomanifest: adapter {adapter} has no run manifest \(run_manifest\.json\), so which items "
               r"it trained on is unknown .* or pass --allow_unchecked_adapters true to use it unverified$")
BS, BP, LM = "data_prep/build_sft.py", "data_prep/build_pairs.py", "recipes/build_corpus_lm.py"
I, P, CAL = "eval/imitation.py", "eval/patterns.py", "eval/calibrate.py"

# TRL's training configs on a CPU-only machine: no bf16, and the new name of gradient checkpointing (the old one,
# which TRL sets by default, prints a FutureWarning from transformers on every run)
CPU = "--use_cpu true --activation_checkpointing false"

# (case id, script, arguments with {in} = the inputs folder and {out} = a not yet existing output folder, the
# pattern the one stderr line must match after `error: `)
CASES_CLI = [
    # the shared parser (capo.cli.ArgumentParser): config files and flags, the same for every script
    ("generate-unknown-flag", G, "--bogus 1 --output_dir {out}", r"field 'bogus': unknown argument '--bogus'"),
    ("generate-unknown-yaml-key", G, "--config {in}/unknown.yaml --output_dir {out}",
     r"\S+/unknown\.yaml:2: field 'bogus_key': unknown key: not an argument of generate\.py"),
    ("generate-malformed-yaml", G, "--config {in}/bad.yaml --output_dir {out}", r"\S+/bad\.yaml:3: malformed YAML: "),
    ("generate-empty-yaml", G, "--config {in}/empty.yaml --output_dir {out}",
     r"\S+/empty\.yaml: expected a YAML mapping of argument names to values, got an empty file"),
    ("generate-list-yaml", G, "--config {in}/list.yaml --output_dir {out}", r"\S+/list\.yaml: .* got a list"),
    ("generate-missing-yaml", G, "--config {in}/missing.yaml --output_dir {out}",
     r"\S+/missing\.yaml: file not found"),
    ("generate-yaml-is-folder", G, "--config {in}/a_folder --output_dir {out}",
     r"\S+/a_folder: cannot read: is a folder, not a file"),
    ("generate-config-without-value", G, "--output_dir {out} --config", r"field '--config': expects a YAML file"),
    ("generate-yaml-wrong-type", G, "--config {in}/wrongtype.yaml --output_dir {out}",
     r"\S+/wrongtype\.yaml:2: field 'limit': invalid int value 'abc'"),
    ("generate-flag-wrong-type", G, "--limit abc --output_dir {out}", r"argument --limit: invalid int value: 'abc'"),
    ("mjd-yaml-float-for-int", M, "--config {in}/float_int.yaml --output_dir {out}",
     r"\S+/float_int\.yaml:1: field 'items_per_chunk': invalid int value 2\.5"),
    ("mjd-malformed-yaml", M, "--config {in}/bad.yaml --output_dir {out}", r"\S+/bad\.yaml:3: malformed YAML"),
    ("mjd-unknown-yaml-key", M, "--config {in}/unknown.yaml --output_dir {out}",
     r"\S+/unknown\.yaml:2: field 'bogus_key': unknown key: not an argument of mjd\.py"),
    ("mjd-empty-yaml", M, "--config {in}/empty.yaml --output_dir {out}", r"\S+/empty\.yaml: expected a YAML mapping"),
    ("mjd-explanations-none-serial", M, "--model_name_or_path {in}/fake_model --explanations none --output_dir {out}",
     r"field 'explanations': 'none' leaves nothing to show in mode 'serial'"),
    ("mjd-bad-bool", M, "--explicit maybe --output_dir {out}", r"argument --explicit: Truthy value expected"),
    ("sft-unknown-yaml-key", S, "--config {in}/sft_unknown.yaml --output_dir {out}",
     r"\S+/sft_unknown\.yaml:2: field 'lora_rank': unknown key: not an argument of sft\.py"),
    ("sft-yaml-bad-choice", S, "--config {in}/bad_choice.yaml --output_dir {out}",
     r"\S+/bad_choice\.yaml:2: field 'eval_strategy': invalid choice 'sometimes' \(valid: no, steps, epoch\)"),
    ("finetune-unknown-yaml-key", F, "--config {in}/ft_unknown.yaml --output_dir {out}",
     r"\S+/ft_unknown\.yaml:2: field 'bogus_key': unknown key: not an argument of finetune\.py"),
    ("model-explanations-malformed-yaml", E, "--config {in}/bad.yaml --output_dir {out}",
     r"\S+/bad\.yaml:3: malformed YAML"),
    ("distributions-unknown-flag", D, "--human {in}/h.jsonl --model {in}/h.jsonl --bogus",
     r"field 'bogus': unknown argument '--bogus'"),
    ("build-sft-flag-wrong-type", BS, "--annotator A1 --few_shot x --output {out}/sft.jsonl",
     r"argument --few_shot(/--few-shot)?: invalid int value: 'x'"),
    ("build-pairs-missing-required", BP, "--output {out}/p.jsonl", r"the following arguments are required: --annotator"),
    ("finetune-compare-unknown-yaml-key", FC, "--sources chaosnli --config {in}/ft_unknown.yaml --output_dir {out}",
     r"\S+/ft_unknown\.yaml:2: field 'bogus_key': unknown key: not an argument of"),
    ("finetune-compare-unknown-passthrough", FC, "--sources chaosnli --output_dir {out} --bogus 1",
     r"field 'bogus': unknown argument '--bogus'"),
    # models and adapters: a missing folder fails at once, before anything loads (no hub retries)
    ("generate-missing-corpus-lm", G, "--output_dir {out}",
     r"models/corpus-lm: model folder not found: build it first with: python recipes/build_corpus_lm\.py "
     + r"--output_dir models/corpus-lm"),
    ("generate-missing-adapter", G, "--model {in}/fake_model --adapters A1={in}/no_adapter --output_dir {out}",
     r"\S+/no_adapter: adapter folder not found"),
    ("generate-adapter-not-an-adapter", G, "--model {in}/fake_model --adapters A1={in}/a_folder --output_dir {out}",
     r"\S+/a_folder: not an adapter folder \(no adapter_config\.json\)"),
    ("generate-hub-id-offline", G, "--model nobody-org/no-such-model --output_dir {out}",
     r"nobody-org/no-such-model: model not found: no such folder, and not in the Hugging Face cache \(offline\)"),
    ("mjd-missing-model", M, "--model_name_or_path {in}/no_model --output_dir {out}", r"\S+/no_model: model folder not found"),
    ("sft-missing-model", S, "--model_name_or_path {in}/no_model --output_dir {out} " + CPU,
     r"\S+/no_model: model folder not found"),
    ("capo-missing-sft-adapter-bad-sft-config", C, "--model_name_or_path {in}/fake_model --sft_adapter {in}/sft/{{annotator}} "
     + "--sft_config {in}/no_sft.yaml --annotator A2 --output_dir {out} " + CPU,
     r"\S+/no_sft\.yaml: field 'sft_config': SFT config not found"),
    ("model-explanations-missing-corpus-lm", E, "--output_dir {out}", r"models/corpus-lm: model folder not found: build it"),
    ("finetune-missing-model", F, "--model_name_or_path {in}/no_model --output_dir {out}",
     r"\S+/no_model: model folder not found"),
    ("attribution-missing-corpus-lm", A, "--output {out}/r.json", r"models/corpus-lm: model folder not found: build it"),
    ("attribution-missing-adapter", A, "--model {in}/fake_model --adapter sft={in}/runs/s{{seed}}/{{annotator}} "
     + "--annotators A3 --seeds 4 --output {out}/r.json", r"\S+/runs/s4/A3: adapter folder not found"),
    ("attribution-bad-template", A, "--model {in}/fake_model --adapter sft={in}/{{sed}} --output {out}/r.json",
     r"field '--adapter': bad adapter template"),
    # an adapter folder with its config but no weights (reliability cases A11, L27, J02, G20): one line before the
    # base model loads (the fake model would fail to load), not PEFT's "Repo id must be in the form ..." traceback
    *[(f"{name}-adapter-without-weights", script, args, NO_WEIGHTS) for name, script, args in (
        ("generate", G, "--model {in}/fake_model --adapters A1={in}/adapter_noweights --output_dir {out}"),
        ("attribution", A, "--model {in}/fake_model --adapter sft={in}/adapter_noweights --limit 1"
         + " --output {out}/r.json"),
        ("jury", J, "--model {in}/fake_model --explainers {in}/adapter_noweights --output {out}/j.jsonl"),
        ("lewidi", L, "predict --dataset ven --split test --model {in}/fake_model --explainers"
         + " {in}/adapter_noweights --output {out}/p.jsonl"),
        ("capo-sft", C, "--model_name_or_path {in}/fake_model --sft_adapter {in}/adapter_noweights --annotator A2"
         + " --output_dir {out} " + CPU))],
    # an adapter without a run manifest (a hub adapter, a copied folder): what it trained on is unknown, so it is
    # refused (fail closed) unless --allow_unchecked_adapters true, before the model loads
    *[(f"{name}-adapter-without-manifest", script, args, NO_MANIFEST.format(adapter=adapter))
      for name, script, args, adapter in (
        ("generate", G, "--model {in}/fake_model --adapters A1={in}/adapter_nomanifest --output_dir {out}", "A1"),
        ("attribution", A, "--model {in}/fake_model --adapter sft={in}/adapter_nomanifest --limit 1"
         + " --output {out}/r.json", "sft A1 seed 0"),
        ("jury", J, "--model {in}/fake_model --explainers {in}/adapter_nomanifest --output {out}/j.jsonl",
         "conditioned all"),
        ("lewidi", L, "predict --dataset ven --split test --model {in}/fake_model --explainers"
         + " {in}/adapter_nomanifest --output {out}/p.jsonl", "conditioned all"))],
    ("build-sft-preview-missing-tokenizer", BS, "--annotator A1 --preview 1 --model {in}/no_model --output {out}/s.jsonl",
     r"\S+/no_model: tokenizer folder not found"),
    # inputs and outputs that are folders, files, or unreadable
    ("generate-output-dir-is-file", G, "--model {in}/fake_model --output_dir {in}/a_file.txt",
     r"\S+/a_file\.txt: cannot write: is a file, not a folder"),
    ("generate-output-under-file", G, "--model {in}/fake_model --output_dir {in}/a_file.txt/run",
     r"\S+/a_file\.txt/run: cannot write: \S+/a_file\.txt is a file, not a folder"),
    ("generate-dataset-is-folder", G, "--model {in}/fake_model --dataset {in}/a_folder --output_dir {out}",
     r"\S+/a_folder: cannot read: is a folder, not a file"),
    ("generate-boolean-item-id", G, "--model {in}/fake_model --dataset {in}/items.jsonl --output_dir {out}",
     r"\S+/items\.jsonl:1: field 'id': expected str or int, got bool"),
    ("mjd-explanations-is-folder", M, "--model_name_or_path {in}/fake_model --explanations {in}/a_folder --output_dir {out}",
     r"\S+/a_folder: cannot read: is a folder, not a file"),
    ("finetune-source-is-folder", F, "--source {in}/a_folder --output_dir {out}",
     r"\S+/a_folder: cannot read: is a folder, not a file"),
    ("distributions-human-is-folder", D, "--human {in}/a_folder --model {in}/h.jsonl",
     r"\S+/a_folder: cannot read: is a folder, not a file"),
    ("distributions-csv-is-folder", D, "--human {in}/h.jsonl --model {in}/h.jsonl --csv {in}/a_folder",
     r"\S+/a_folder: cannot write: is a folder, not a file"),
    ("attribution-output-is-folder", A, "--model {in}/fake_model --output {in}/a_folder",
     r"\S+/a_folder: cannot write: is a folder, not a file"),
    ("finetune-compare-source-is-folder", FC, "--sources {in}/a_folder --output_dir {out}",
     r"\S+/a_folder: cannot read: is a folder, not a file"),
    ("finetune-compare-output-is-file", FC, "--sources chaosnli --output_dir {in}/a_file.txt",
     r"\S+/a_file\.txt: cannot write: is a file, not a folder"),
    ("build-sft-output-is-folder", BS, "--annotator A1 --output {in}/a_folder",
     r"\S+/a_folder: cannot write: is a folder, not a file"),
    ("build-pairs-output-under-file", BP, "--annotator A1 --output {in}/a_file.txt/p.jsonl",
     r"\S+/a_file\.txt/p\.jsonl: cannot write: \S+/a_file\.txt is a file, not a folder"),
    ("build-corpus-lm-output-is-file", LM, "--output_dir {in}/a_file.txt",
     r"\S+/a_file\.txt: cannot write: is a file, not a folder"),
]

# The malformed inputs of the reliability sweep of 2026-12-07 (shared/notes/reliability-2026-12-07.md; its case ids
# lead), each once a traceback, an argparse usage text, a late refusal or a silent acceptance.
SWEEP_CASES = [
    ("S11-sft-batch-size-0", S, "--model_name_or_path {in}/fake_model --per_device_train_batch_size 0 "
     + "--output_dir {out} " + CPU, r"field 'per_device_train_batch_size': must be a whole number of at least 1, got 0"),
    ("S24-sft-max-steps-negative", S, "--model_name_or_path {in}/fake_model --max_steps -5 --output_dir {out} " + CPU,
     r"field 'max_steps': must be a whole number of at least 1, or -1 to train for num_train_epochs, got -5"),
    ("S25-sft-lora-target-not-in-model", S, "--model_name_or_path {in}/tiny_llama --lora_target_modules "
     + "no_such_module --output_dir {out} " + CPU, r"field 'lora_target_modules': 'no_such_module' matches no "
     + r"module of \S+/tiny_llama \(a single name is a regular expression over full module names"),
    ("capo-max-steps-0-before-sft-first", C, "--model_name_or_path {in}/fake_model --sft_adapter {in}/sft "
     + "--annotator A2 --max_steps 0 --output_dir {out} " + CPU, r"field 'max_steps': must be a whole number"),
    ("capo-lora-targets-not-in-model", C, "--model_name_or_path {in}/tiny_llama --init_from base "
     + "--lora_target_modules nope1 nope2 --output_dir {out} " + CPU,
     r"field 'lora_target_modules': \['nope1', 'nope2'\] matches no module of \S+/tiny_llama \(each name must end"),
    ("I06-imitation-unknown-task", I, "--task foo", r"argument --task: invalid choice: 'foo'"),
    ("I07-imitation-same-name-twice", I, "--generated a={in}/gen_dup.jsonl --generated a={in}/gen_badann.jsonl",
     r"field '--generated': name 'a' given twice"),
    ("I09-imitation-plots-is-file", I, "--generated a={in}/gen_badann.jsonl --plots {in}/a_file.txt",
     r"\S+/a_file\.txt: cannot write: is a file, not a folder"),
    ("I11-imitation-unknown-annotator", I, "--generated a={in}/gen_badann.jsonl --no_embeddings",
     r"\S+/gen_badann\.jsonl:2: item 1735n: field 'annotator': unknown annotator 'A9' \(valid: A1, A2, A3, A4\)"),
    ("I12-imitation-duplicate-row", I, "--generated a={in}/gen_dup.jsonl --no_embeddings",
     r"\S+/gen_dup\.jsonl:3: item 1735n: field 'annotator': the same response by A1 as on line 2"),
    ("I08-imitation-row-without-explanation", I, "--generated a={in}/gen_noexpl.jsonl --no_embeddings",
     r"\S+/gen_noexpl\.jsonl:1: item 1735n: field 'explanation': missing field"),
    ("I03-imitation-foreign-item-located", I, "--generated a={in}/gen_foreign.jsonl --no_embeddings",
     r"\S+/gen_foreign\.jsonl:1: item not-an-item: field 'id': generated record for an item not in the evaluation"),
    ("P05-patterns-unknown-feature", P, "--dataset varierr --features bogus",
     r"argument --features: invalid choice: 'bogus'"),
    ("P07-patterns-output-is-folder", P, "--dataset varierr --output {in}/a_folder",
     r"\S+/a_folder: cannot write: is a folder, not a file"),
    ("C10-calibrate-folds-not-a-number", CAL, "--raw {in}/raw.jsonl --human {in}/h2.jsonl --folds abc",
     r"argument --folds: invalid int value: 'abc'"),
    ("C09b-calibrate-nan-letter-score", CAL, "--raw {in}/raw_nan.jsonl --human {in}/h.jsonl --output {out}/c.jsonl",
     r"\S+/raw_nan\.jsonl:1: item a: field 'prompts\[0\]\.letter_scores': expected 3 finite numbers, got \[nan"),
    ("C11-calibrate-raw-row-without-id", CAL, "--raw {in}/raw_noid.jsonl --human {in}/h2.jsonl",
     r"\S+/raw_noid\.jsonl:2: field 'id': missing or invalid id"),
    ("C12-calibrate-human-covers-part", CAL, "--raw {in}/raw.jsonl --human {in}/h.jsonl --folds 2 --output {out}/c.jsonl",
     r"\S+/h\.jsonl: covers 1 of the 2 items in \S+/raw\.jsonl \(first missing: 'b'\)"),
    ("D13-distributions-model-covers-part", D, "--human {in}/h2.jsonl --model {in}/h.jsonl --csv {out}/t.csv",
     r"\S+/h\.jsonl: covers 1 of the 2 items in \S+/h2\.jsonl \(first missing: 'b'\); --allow_partial true"),
    ("L04-lewidi-par-label-string", L, "score --dataset par --split dev --predictions {in}/par_str.jsonl",
     r"\S+/par_str\.jsonl:1: item 1: field 'label': expected an integer from -5 to 5, got '5'"),
    ("L22-lewidi-no-command", L, "", r"no command given \(valid: predict, score, export; --help shows all three\)"),
    ("BS08-build-sft-negative-few-shot", BS, "--annotator A1 --few_shot -1 --output {out}/s.jsonl",
     r"field 'few_shot': must be a whole number of at least 0, got -1"),
    ("BS19-build-sft-negative-preview", BS, "--annotator A1 --preview -1 --output {out}/s.jsonl",
     r"field 'preview': must be a whole number of at least 0, got -1"),
]

# Value checks that helper `runner` adds in the argument dataclasses' __post_init__ (they fail on a branch
# without that work: the error then comes late, names no field, or does not come at all).
RUNNER_CASES = [
    ("generate-shard-size-0", G, "--model {in}/fake_model --shard_size 0 --output_dir {out}", r"field 'shard_size'"),
    ("generate-limit-0", G, "--model {in}/fake_model --limit 0 --output_dir {out}", r"field 'limit'"),
    ("generate-max-new-tokens-0", G, "--model {in}/fake_model --max_new_tokens 0 --output_dir {out}",
     r"field 'max_new_tokens'"),
    ("mjd-items-per-chunk-0", M, "--model_name_or_path {in}/fake_model --items_per_chunk 0 --output_dir {out}",
     r"field 'items_per_chunk'"),
    ("mjd-limit-0", M, "--model_name_or_path {in}/fake_model --limit 0 --output_dir {out}", r"field 'limit'"),
    ("model-explanations-limit-0", E, "--model {in}/fake_model --limit 0 --output_dir {out}", r"field 'limit'"),
]


def _check_one_line_error(tmp_path: Path, script: str, args: str, pattern: str, capsys, monkeypatch) -> None:
    """Run the script's `main` in this process (as `python script` would, minus the interpreter start-up): exit 2,
    one located `error:` line on stderr, nothing written. An unexpected exception fails the test as a traceback
    would."""
    import runpy

    inputs = _inputs(tmp_path)
    argv = args.format(**{"in": inputs, "out": tmp_path / "out"}).split()
    before = _tree(tmp_path)
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setattr(sys, "argv", [str(ROOT / script), *argv])
    main = runpy.run_path(str(ROOT / script), run_name="not_main")["main"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert exit_info.value.code == 2, err[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    assert re.fullmatch(r"error: (\S+: )?" + pattern + ".*", lines[0]), lines[0]
    assert _tree(tmp_path) == before  # no output folder, no file in cwd, inputs unchanged


@pytest.mark.parametrize("script,args,pattern", [c[1:] for c in CASES_CLI], ids=[c[0] for c in CASES_CLI])
def test_script_rejects_malformed_input_in_one_located_line(tmp_path, script, args, pattern, capsys, monkeypatch):
    _check_one_line_error(tmp_path, script, args, pattern, capsys, monkeypatch)


@pytest.mark.parametrize("script,args,pattern", [c[1:] for c in RUNNER_CASES], ids=[c[0] for c in RUNNER_CASES])
def test_script_rejects_bad_values_in_one_located_line(tmp_path, script, args, pattern, capsys, monkeypatch):
    _check_one_line_error(tmp_path, script, args, pattern, capsys, monkeypatch)


@pytest.mark.parametrize("script,args,pattern", [c[1:] for c in SWEEP_CASES], ids=[c[0] for c in SWEEP_CASES])
def test_sweep_inputs_are_refused_in_one_located_line(tmp_path, script, args, pattern, capsys, monkeypatch):
    _check_one_line_error(tmp_path, script, args, pattern, capsys, monkeypatch)


def test_sft_error_is_the_only_stderr_line_without_the_checkpointing_warning(tmp_path):
    """TRL's default gradient_checkpointing made transformers print a 2-line FutureWarning before every error of
    recipes/sft.py (a real interpreter: pytest's own warning capture would hide it in process)."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}\n")
    proc = run_script(S, "--model_name_or_path", tmp_path / "model", "--per_device_train_batch_size", "0",
                      "--output_dir", tmp_path / "out", "--use_cpu", "true", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.splitlines() == [
        "error: field 'per_device_train_batch_size': must be a whole number of at least 1, got 0"]
    assert not (tmp_path / "out").exists()


CONFIG_PARSERS = {"capo": C, "finetune": F, "generate": G, "mjd": M, "model_explanations": E, "sft": S,
                  "perspectivist": "recipes/perspectivist.py", "pipeline": "recipes/pipeline.py",
                  "study_slice": "recipes/study_slice.py"}


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "recipes" / "configs").glob("*.yaml")))
def test_shipped_configs_pass_the_config_checks(config):
    """The checks must not reject a config the project ships (each with its recipe's parser)."""
    import runpy

    prefix = next(p for p in sorted(CONFIG_PARSERS, key=len, reverse=True) if config.startswith(p))
    parse = runpy.run_path(str(ROOT / CONFIG_PARSERS[prefix]), run_name="not_main")["parse"]
    cpu = ["--use_cpu", "true"] if prefix in ("capo", "sft", "finetune", "perspectivist") else []
    if prefix == "perspectivist":
        cpu += ["--dataset", "ven"]  # which LeWiDi set is a per-run choice, not in the config  # GPU configs, parsed here on CPU
    parsed = parse(["--config", str(ROOT / "recipes" / "configs" / config), "--output_dir", "unused", *cpu])
    parsed = parsed if isinstance(parsed, tuple) else (parsed,)  # the pipeline parses one dataclass
    assert parsed and all(hasattr(p, "__dataclass_fields__") for p in parsed)


def test_atomic_writes_get_the_usual_permissions_and_refuse_folders(tmp_path):
    import os

    from capo.io import write_json

    mask = os.umask(0o027)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        (tmp_path / "b.json").write_text("{}")  # what a plain open() gives, for comparison
    finally:
        os.umask(mask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == (tmp_path / "b.json").stat().st_mode & 0o777 == 0o640
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match=r"folder: cannot write: is a folder, not a file$"):
        write_json(tmp_path / "folder", {})
    with pytest.raises(DataError, match=r"a.json/x.json: cannot write: \S+a.json is a file, not a folder$"):
        write_json(tmp_path / "a.json" / "x.json", {})
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.json", "b.json", "folder"]  # no temporary files left


def test_model_path_check(tmp_path, monkeypatch):
    from capo.io import check_model_path

    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"^models/corpus-lm: model folder not found: build it first with: python "
                                        r"recipes/build_corpus_lm.py --output_dir models/corpus-lm$"):
        check_model_path("models/corpus-lm")
    with pytest.raises(DataError, match=r"^runs/sft/nli/A1: adapter folder not found$"):
        check_model_path("runs/sft/nli/A1", kind="adapter")  # looks like org/name, but runs/ is this project's
    (tmp_path / "m").mkdir()
    with pytest.raises(DataError, match=r"^m: not a model folder \(no config.json or adapter_config.json\)$"):
        check_model_path("m")
    (tmp_path / "m" / "config.json").write_text("{}")
    check_model_path("m")
    check_model_path(tmp_path / "m", kind="tokenizer")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(DataError, match=r"^org/name: model not found: no such folder, and not in the Hugging Face"):
        check_model_path("org/name")
    (tmp_path / "hub" / "models--org--name").mkdir(parents=True)
    check_model_path("org/name")  # cached: from_pretrained finds it offline
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    check_model_path("other/name")  # online, a hub id is for from_pretrained to fetch
