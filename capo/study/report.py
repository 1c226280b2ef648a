"""The study report from the committed study slices: judge attribution with item-clustered bootstrap intervals, paired
differences, learning curves, controls, label behaviour and caricature diagnostics, in one markdown file
(`python eval/study_report.py --slices docs/study/slices --output docs/study/report.md --figures docs/study`).
A slice is one folder per (task, seed) (`slice.json`, `responses.jsonl`, `labels.jsonl`; a `<task>_controls_s<seed>`
folder adds sources to the same task and seed). Every interval resamples items (all of an item's responses, every
target and seed, stay together), never responses; the same inputs give the same bytes.
"""

from __future__ import annotations

import os
import re
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from capo.errors import DataError
from capo.evaluate.intervals import N_RESAMPLES, Estimate, cluster_bootstrap
from capo.io import atomic_write_text, check_output, iter_jsonl, read_json
from capo.study.figures import attribution_figure, confusion_grid, confusion_matrix, curve_figure
from capo.study.slice import slice_seconds as _slice_seconds

WANTED_SEEDS = 3  # the issue asks for at least three seeds per task
PAIRS = (("capo", "sft"), ("capo", "sft_matched"), ("sft_matched", "sft"),  # (a, b): a - b where both kinds exist
         ("capo_same_label", "capo"), ("capo_different_label", "capo"), ("capo_sft_weight", "capo"))
CURVE_KINDS = ("sft", "sft_matched", "sft_curve")  # sources on the learning curve (those with a step)
_MEASURES = ("marginal_js", "loglik", "agreement")  # label behaviour's measures, in the table's order
CONTROL_PREFIX = "pseudo_"  # pseudo-annotator sources: expected at chance
HUMAN = "human"
_SLICE_KEYS = {"task": str, "seed": int, "items": list, "labels": list, "annotators": list, "judges": dict,
               "sources": dict}
_TOKEN = re.compile(r"\w+|[^\w\s]")


@dataclass
class StudyReportArguments:
    """Arguments of `eval/study_report.py` (a `TrlParser` dataclass; YAML config keys have the same names)."""

    slices: str = field(default="docs/study/slices", metadata={"help": "folder of slice folders (one per task, seed)"})
    output: str = field(default="docs/study/report.md", metadata={"help": "the markdown report"})
    figures: str | None = field(default=None, metadata={"help": "folder for the PNGs (default: the report's)"})
    seed: int = field(default=0, metadata={"help": "seed of every bootstrap"})
    n_resamples: int = N_RESAMPLES

    def __post_init__(self) -> None:
        if self.n_resamples < 100:
            raise DataError(f"at least 100 resamples, got {self.n_resamples}", field="--n_resamples")

    def figure_folder(self) -> Path:
        return Path(self.figures) if self.figures else Path(self.output).parent

    def command(self) -> str:
        return (f"python eval/study_report.py --slices {self.slices} --output {self.output} "
                f"--figures {self.figure_folder().as_posix()}")


# ---------------------------------------------------------------------------------------------------------- reading


@dataclass
class Seed:
    """Everything the slices of one (task, seed) hold, merged."""

    task: str
    seed: int
    slices: list[str]
    labels: list[str]
    annotators: list[str]
    judges: list[str]
    items: list[str]
    sources: dict[str, dict] = field(default_factory=dict)  # name -> spec (kind, step, rows, description)
    responses: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))  # source -> rows; "human"
    probs: dict[tuple[str, str], dict[str, list[float]]] = field(default_factory=lambda: defaultdict(dict))
    meta: list[dict] = field(default_factory=list)  # one per slice: name, sources, items, machine, precision, wall


def _fail(message: str, path: Path, line: int | None = None, field_name: str | None = None):
    raise DataError(message, path=str(path), line=line, field=field_name)


def _check_row(row: dict, meta: dict, path: Path, line: int, *, human: bool) -> None:
    """The fields a responses.jsonl and a labels.jsonl row share: a known source, target and item."""
    for name, known in (("source", set(meta["sources"]) | ({HUMAN} if human else set())),
                        ("target", meta["annotators"]), ("item_id", set(meta["items"]))):
        if row.get(name) not in known:
            _fail(f"unknown {name} {row.get(name)!r} (not in slice.json)", path, line, name)


def read_slice(folder: str | Path) -> tuple[dict, list[dict], list[dict]]:
    """(slice.json, responses rows, labels rows) of one slice folder, every field checked."""
    folder = Path(folder)
    path = folder / "slice.json"
    if not path.is_file():
        _fail("slice folder without slice.json", path)
    meta = read_json(path)
    for key, kind in _SLICE_KEYS.items():
        if not isinstance(meta, dict) or not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            _fail(f"missing or not a {kind.__name__}", path, field_name=key)
    for name, spec in meta["sources"].items():
        if (name == HUMAN or not isinstance(spec, dict) or not isinstance(spec.get("kind"), str)
                or not isinstance(spec.get("step", 0) or 0, int)):
            _fail(f"source {name!r}: expected an object with a kind and an integer or null step (and not the name "
                  f"{HUMAN!r})", path, field_name="sources")
    judges, k, labels = meta["judges"], len(meta["annotators"]), meta["labels"]
    responses, label_rows = [], []
    rpath, lpath = folder / "responses.jsonl", folder / "labels.jsonl"
    for line, row in iter_jsonl(rpath):
        _check_row(row, meta, rpath, line, human=True)
        scores = row.get("judge") or {}
        if row.get("label") is not None and row["label"] not in labels:
            _fail(f"unknown label {row['label']!r}", rpath, line, "label")
        if not isinstance(row.get("explanation", ""), str) or not isinstance(row.get("parsed", True), bool):
            _fail("expected a string explanation and a boolean parsed", rpath, line, "explanation")
        if not isinstance(scores, dict) or any(
                j not in judges or not isinstance(v, list) or len(v) != k
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
                for j, v in scores.items()):
            _fail(f"expected {{judge: {k} log-probs, one per annotator}} for the judges {sorted(judges)}", rpath,
                  line, "judge")
        if row.get("parsed", True) and set(scores) != set(judges):
            _fail(f"a parsed response needs every judge's log-probs ({', '.join(sorted(judges))})", rpath, line,
                  "judge")
        responses.append(row)
    for line, row in iter_jsonl(lpath) if lpath.exists() else ():
        _check_row(row, meta, lpath, line, human=False)
        probs = row.get("probs")
        if (not isinstance(probs, list) or len(probs) != len(labels)
                or not all(isinstance(p, (int, float)) and p >= 0 for p in probs) or abs(sum(probs) - 1) > 1e-4):
            _fail(f"expected {len(labels)} non-negative probabilities summing to 1", lpath, line, "probs")
        label_rows.append(row)
    return meta, responses, label_rows


def read_slices(folder: str | Path) -> dict[str, dict[int, Seed]]:
    """task -> seed -> `Seed`: every slice folder under `folder`, in sorted order, merged by (task, seed)."""
    folder = Path(folder)
    if not folder.is_dir():
        _fail("slices folder not found", folder)
    study: dict[str, dict[int, Seed]] = defaultdict(dict)
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        meta, responses, label_rows = read_slice(sub)
        key = (meta["task"], meta["seed"])
        seed = study[key[0]].get(key[1])
        if seed is None:
            seed = study[key[0]][key[1]] = Seed(meta["task"], meta["seed"], [], list(meta["labels"]),
                                                list(meta["annotators"]), [], [])
        for what in ("labels", "annotators"):
            if list(meta[what]) != getattr(seed, what):
                _fail(f"differs from slice {seed.slices[0]} of the same task and seed", sub / "slice.json",
                      field_name=what)
        for name, spec in meta["sources"].items():
            if name in seed.sources:
                _fail(f"source {name!r} is also in slice {seed.slices[0]}", sub / "slice.json", field_name="sources")
            seed.sources[name] = {**spec, "slice": sub.name}
        seed.slices.append(sub.name)
        seed.judges = sorted(set(seed.judges) | set(meta["judges"]))
        seed.items = sorted(set(seed.items) | set(meta["items"]))
        seen_human = {(r["target"], r["item_id"], r.get("sample", 0)) for r in seed.responses[HUMAN]}
        for row in responses:
            # a controls slice repeats the real responses: count them once
            if row["source"] == HUMAN and (row["target"], row["item_id"], row.get("sample", 0)) in seen_human:
                continue
            seed.responses[row["source"]].append(row)
        for row in label_rows:
            seed.probs[(row["source"], row["target"])][row["item_id"]] = row["probs"]
        seed.meta.append({"slice": sub.name, "sources": sorted(meta["sources"]), "items": len(meta["items"]),
                          "machine": meta.get("machine", "?"), "precision": meta.get("precision", "?"),
                          "wall_s": _slice_seconds(meta.get("wall_s") or {}, meta.get("wall_s_earlier", ())),
                          "dataset": meta.get("dataset", "?"), "heldout_split": meta.get("heldout_split", "?")})
    return {task: dict(sorted(seeds.items())) for task, seeds in sorted(study.items())}


# ---------------------------------------------------------------------------------------------------------- measures


def row_keys(seed: Seed) -> dict[str, str]:
    """source name -> its row in the tables: its kind, or kind:name where a seed has several sources of the kind."""
    count = defaultdict(int)
    for spec in seed.sources.values():
        count[spec["kind"]] += 1
    return {name: spec["kind"] if count[spec["kind"]] == 1 else f"{spec['kind']}:{name}"
            for name, spec in seed.sources.items()}


def correct(row: dict, judge: str, annotators: list[str]) -> float:
    """1 when the judge's argmax is the response's target; an unparsed response without log-probs counts 0."""
    vector = (row.get("judge") or {}).get(judge)
    return float(vector is not None and annotators[int(np.argmax(vector))] == row["target"])


def per_item(rows: list[dict], judge: str, annotators: list[str]) -> dict[str, tuple[float, float]]:
    """item -> (correct responses, responses); a parsed response without this judge (its slice has none) is left
    out."""
    out: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for row in rows:
        if row.get("parsed", True) and judge not in row.get("judge", {}):
            continue
        out[row["item_id"]][0] += correct(row, judge, annotators)
        out[row["item_id"]][1] += 1
    return {item: (c, n) for item, (c, n) in out.items()}


def _stable_seed(seed: int, *parts: str) -> int:
    return seed + zlib.crc32("/".join(parts).encode())


def rows_of(seeds: dict[int, Seed], key: str | int) -> dict[int, list[dict]]:
    """seed -> the responses of `key`: a table row, "human", or a step (the learning-curve sources of that step)."""
    out = {}
    for number, s in seeds.items():
        names = [HUMAN] if key == HUMAN else [
            name for name, k in row_keys(s).items() if k == key or (
                s.sources[name]["kind"] in CURVE_KINDS and s.sources[name].get("step") == key)]
        rows = [r for name in names for r in s.responses.get(name, [])]
        if rows:
            out[number] = rows
    return out


def attribution(seeds: dict[int, Seed], key: str | int, judge: str, *, seed: int = 0,
                n_resamples: int = N_RESAMPLES, items: set[str] | None = None) -> Estimate:
    """Judge attribution of one `rows_of` key (mean over seeds, item-clustered interval), on `items` if given."""
    per_seed = [{i: v for i, v in per_item(rows, judge, seeds[n].annotators).items() if items is None or i in items}
                for n, rows in rows_of(seeds, key).items()]
    return cluster_bootstrap(per_seed, seed=_stable_seed(seed, "attr", str(key), judge), n_resamples=n_resamples)


def paired_difference(seeds: dict[int, Seed], key_a: str, key_b: str, judge: str, *, seed: int = 0,
                      n_resamples: int = N_RESAMPLES) -> Estimate:
    """Attribution of row a minus row b on the same (seed, target, item) cells: per cell the difference of the two
    sources' mean correctness, then per item the sum and count of cells, bootstrapped over items."""
    a, b = rows_of(seeds, key_a), rows_of(seeds, key_b)
    per_seed = []
    for number in sorted(set(a) & set(b)):
        ann = seeds[number].annotators
        cells = []
        for rows in (a[number], b[number]):
            cell: dict[tuple[str, str], list[float]] = defaultdict(list)
            for row in rows:
                cell[(row["target"], row["item_id"])].append(correct(row, judge, ann))
            cells.append(cell)
        counts: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for target_item in sorted(set(cells[0]) & set(cells[1])):
            counts[target_item[1]][0] += np.mean(cells[0][target_item]) - np.mean(cells[1][target_item])
            counts[target_item[1]][1] += 1
        per_seed.append({i: (d, n) for i, (d, n) in counts.items()})
    return cluster_bootstrap(per_seed, seed=_stable_seed(seed, "pair", key_a, key_b, judge), n_resamples=n_resamples)


def text_measures(rows: list[dict]) -> dict[str, float]:
    """Parse rate, mean words, distinct-2 and repetition rate (a word 3-gram at least twice) of one response set."""
    words = [r.get("explanation", "").split() for r in rows]
    tokens = [_TOKEN.findall(r.get("explanation", "").lower()) for r in rows]
    bigrams = [tuple(t[j:j + 2]) for t in tokens for j in range(len(t) - 1)]
    repeated = [len(grams) != len(set(grams)) for t in tokens
                for grams in [[tuple(t[j:j + 3]) for j in range(len(t) - 2)]]]
    return {"parse": float(np.mean([bool(r.get("parsed", True)) for r in rows])),
            "words": float(np.mean([len(w) for w in words])),
            "distinct2": len(set(bigrams)) / len(bigrams) if bigrams else float("nan"),
            "repetition": float(np.mean(repeated))}


def diagnostics(seeds: dict[int, Seed], key: str) -> dict[str, float]:
    """`text_measures` per (seed, target), length as a ratio to the target's human responses too, averaged."""
    cells = []
    for number, rows in rows_of(seeds, key).items():
        human = seeds[number].responses.get(HUMAN, [])
        for target in seeds[number].annotators:
            mine = [r for r in rows if r["target"] == target]
            theirs = [r for r in human if r["target"] == target]
            if mine:
                m = text_measures(mine)
                ref = text_measures(theirs)["words"] if theirs else float("nan")
                m["ratio"] = m["words"] / ref if ref else float("nan")
                cells.append(m)
    return {k: float(np.nanmean([c[k] for c in cells])) if cells else float("nan")
            for k in ("parse", "words", "ratio", "distinct2", "repetition")}


def curve(seeds: dict[int, Seed], judge: str, **opts) -> list[tuple[int, str, Estimate]]:
    """(step, kinds, attribution) of every step of the learning-curve sources (the sources of one step pooled)."""
    specs = [spec for s in seeds.values() for spec in s.sources.values()
             if spec["kind"] in CURVE_KINDS and spec.get("step") is not None]
    return [(step, ", ".join(sorted({sp["kind"] for sp in specs if sp["step"] == step})),
             attribution(seeds, step, judge, **opts)) for step in sorted({sp["step"] for sp in specs})]


def label_rows(seeds: dict[int, Seed], key: str) -> dict[str, dict[str, float]]:
    """target -> mean over seeds of `label_behaviour`'s measures of the row's label probabilities."""
    from capo.evaluate.behaviour.label_behaviour import label_behaviour

    got: dict[str, list[dict]] = defaultdict(list)
    for s in seeds.values():
        for name in (n for n, k in row_keys(s).items() if k == key):
            for target in (t for t in s.annotators if s.probs.get((name, t))):
                got[target].append(label_behaviour(s.probs[(name, target)], human_labels(s), target, s.labels))
    return {t: {m: float(np.mean([r[m] for r in rs])) for m in _MEASURES} for t, rs in sorted(got.items())}


def human_labels(s: Seed) -> dict[tuple[str, str], list[str]]:
    """(item, annotator) -> the annotator's real labels: `label_behaviour`'s `human`."""
    out: dict[tuple[str, str], list[str]] = defaultdict(list)
    for row in s.responses.get(HUMAN, []):
        if row.get("label") is not None:
            out[(row["item_id"], row["target"])].append(row["label"])
    return dict(out)


def bands(seeds: dict[int, Seed], target: str) -> dict[str, list[str]]:
    """reference predictor -> its measures' texts: `reference_bands` of `target`, averaged over seeds."""
    from capo.evaluate.behaviour.label_behaviour import reference_bands

    got: dict[str, list[list]] = defaultdict(list)
    for s in seeds.values():
        b = reference_bands(human_labels(s), target, s.labels, s.items)
        per = b["one_label"]["per_label"]
        best = [min(per, key=lambda x: per[x][m]) if m == "marginal_js" else max(per, key=lambda x: per[x][m])
                for m in _MEASURES]
        if b["other_annotators"]:
            got["other annotators (min–max)"].append([(b["other_annotators"][m]["min"],
                                                        b["other_annotators"][m]["max"]) for m in _MEASURES])
        if b["split_half"]:
            got["split-half"].append([(b["split_half"][m],) for m in _MEASURES])
        got["uniform"].append([(b["uniform"][m],) for m in _MEASURES])
        got["best one label"].append([(per[label][m], label) for label, m in zip(best, _MEASURES, strict=True)])
    out = {}
    for ref, runs in got.items():
        cells = list(zip(*runs, strict=True))  # per measure: one tuple per seed
        out[ref] = ["–".join(f"{np.mean([c[j] for c in cell]):.3f}" for j in range(len(cell[0]) if ref[0] == "o"
                    else 1)) + (f" ({'/'.join(sorted({c[1] for c in cell}))})" if ref[0] == "b" else "")
                    for cell in cells]
    return out


# ---------------------------------------------------------------------------------------------------------- the report

_ORDER = ("zs", "fs4", "fs16", "fs50", "sft", "sft_matched", "capo", "capo_same_label", "capo_different_label",
          "capo_sft_weight", "pseudo_sft", "pseudo_capo")


def table_keys(seeds: dict[int, Seed]) -> list[str]:
    """The rows of the attribution tables (every source but the learning-curve-only ones), in a fixed order."""
    keys = {k for s in seeds.values() for n, k in row_keys(s).items() if s.sources[n]["kind"] != "sft_curve"}
    return sorted(keys, key=lambda k: (_ORDER.index(k.split(":")[0]) if k.split(":")[0] in _ORDER else len(_ORDER), k))


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |",
            *("| " + " | ".join(r) + " |" for r in rows), ""]


def _seeds_text(seeds: dict[int, Seed]) -> str:
    return (f"slices {', '.join(n for s in seeds.values() for n in s.slices)} "
            f"(seeds {', '.join(map(str, seeds))})")


_TITLES = {
    1: ("1. Judge attribution", ("Accuracy: share of responses whose judge argmax is the target; an unparsed response "
        "counts as not attributed. Row human: the real held-out responses, the judge's ceiling.")),
    2: ("2. Paired differences (same items, seeds and targets)", ("Per (seed, target, item) the difference of the two "
        "sources' mean correctness; an interval that excludes 0 is a difference the items support. Rows per seed: the "
        "spread across training runs that the item intervals do not show.")),
    3: ("3. Learning curve", "Attribution against optimizer steps; sources of one step pooled; CAPO at its own step."),
    4: ("4. Controls: pseudo-annotators (expected at chance)", ""),
    5: ("5. Label behaviour from label probabilities", ("Per target, mean over seeds; the reference predictors "
        "(italic) on the same items (`capo.evaluate.behaviour.label_behaviour.reference_bands`).")),
    6: ("6. Caricature diagnostics", ("Per (seed, target), then averaged; distinct-2 = distinct word bigrams / "
        "bigrams of the target's responses; repetition = share of responses with a word 3-gram at least twice.")),
    7: ("7. Figures", ""),
}
_ABOVE = ("† above the human ceiling of the same judge on the same items: a caricature warning (the explainer "
          "exaggerates what the judge learned), not success.")


def _header(study: dict[str, dict[int, Seed]], args: StudyReportArguments) -> list[str]:
    """The title, how intervals are made, the slices found and the seeds missing."""
    out = ["# Study report", "", (
        f"_Made by `{args.command()}` from the committed slices in `{args.slices}`. Intervals: 95 % percentile "
        f"bootstrap over items ({args.n_resamples} resamples, seed {args.seed}, `scipy.stats.bootstrap`, paired): "
        "every response of a resampled item (all targets, all seeds) stays together; a value is the mean over "
        "seeds._"), "", "## Slices", ""]
    rows = [[m["slice"], s.task, str(s.seed), ", ".join(m["sources"]), str(m["items"]), m["machine"],
             m["precision"], f"{m['wall_s']:.0f}"] for seeds in study.values() for s in seeds.values() for m in s.meta]
    out += _table(["slice", "task", "seed", "sources", "items", "machine", "precision", "wall s"], rows)
    for task in ("nli", "paraphrase", *sorted(set(study) - {"nli", "paraphrase"})):
        seeds = ", ".join(map(str, study.get(task, {})))
        if len(study.get(task, {})) < WANTED_SEEDS:
            have = f"only seed(s) {seeds}" if seeds else "no slice"
            out.append(f"- **{task}: {have}; the issue asks for at least {WANTED_SEEDS} seeds.**")
        else:
            out.append(f"- {task}: seeds {seeds}.")
    return [*out, ""]


def _task_sections(task: str, seeds: dict[int, Seed], args: StudyReportArguments) -> tuple[dict, list[Path]]:
    """(section number -> the lines of one task's tables, the figures drawn): `attribution_<task>.png`,
    `curve_<task>.png` (where a learning curve exists) and `confusion_<task>_<judge>.png` in `args.figure_folder()`."""

    opts = {"seed": args.seed, "n_resamples": args.n_resamples}
    judges, keys = sorted({j for s in seeds.values() for j in s.judges}), table_keys(seeds)
    annotators = next(iter(seeds.values())).annotators
    chance = 1 / len(annotators)
    est = {(k, j): attribution(seeds, k, j, **opts) for k in [HUMAN, *keys] for j in judges}
    tables: dict[int, tuple[list[str], list[list[str]], str]] = {}
    rows, flagged = [], False
    for k in [HUMAN, *keys]:
        cells = [est[(k, j)].text() for j in judges]
        if k != HUMAN:
            items = {r["item_id"] for rs in rows_of(seeds, k).values() for r in rs}
            for c, j in enumerate(judges):
                if est[(k, j)].value > attribution(seeds, HUMAN, j, items=items, **opts).value:
                    cells[c], flagged = cells[c] + " †", True
        widest = max((est[(k, j)] for j in judges), key=lambda e: e.n_items)
        rows.append([k, *cells, str(widest.n_seeds), str(widest.n_items)])
    tables[1] = (["source kind", *judges, "seeds", "items"], rows, _ABOVE if flagged else "")
    pairs = [(a, b) for a, b in PAIRS if a in keys and b in keys]
    rows = [[f"{a} − {b}", *(paired_difference(seeds, a, b, j, **opts).text() for j in judges)] for a, b in pairs]
    one = lambda s, a, b: [paired_difference({s: seeds[s]}, a, b, j, **opts) for j in judges]  # the seeds' spread
    rows += [[f"{a} − {b}, seed {s}", *(e.text() for e in ests)] for a, b in pairs for s in seeds
             if len(seeds) > 1 and (ests := one(s, a, b))[0].n_seeds]
    tables[2] = (["difference", *judges], rows, "No pair of these kinds in the slices.")
    points = {j: {step: (kinds, e) for step, kinds, e in curve(seeds, j, **opts)} for j in judges}
    steps = sorted({step for p in points.values() for step in p})
    rows = [[str(step), next(p[step][0] for p in points.values() if step in p),
             *(points[j][step][1].text() if step in points[j] else "–" for j in judges)] for step in steps]
    capo_steps = sorted({s.sources[n]["step"] for s in seeds.values() for n in s.sources
                         if s.sources[n]["kind"] == "capo" and s.sources[n].get("step") is not None})
    capo_steps = capo_steps if "capo" in keys else []
    if rows and capo_steps:
        rows.append([f"{'/'.join(map(str, capo_steps))}", "capo", *(est[("capo", j)].text() for j in judges)])
    if rows:
        rows.append(["–", "human ceiling", *(est[(HUMAN, j)].text() for j in judges)])
    tables[3] = (["step", "kinds", *judges], rows, ("No learning-curve source (sft, sft_matched or sft_curve with a "
                 "step)."))
    rows = [[k, j, est[(k, j)].text(), f"{chance:.3f}", "yes" if est[(k, j)].low <= chance <= est[(k, j)].high
             else "**no**"] for k in keys if k.startswith(CONTROL_PREFIX) for j in judges]
    tables[4] = (["control", "judge", "attribution", "chance", "chance inside interval"], rows,
                 "No pseudo-annotator source in the slices.")
    label_keys = [k for k in keys if any(row_keys(s)[n] == k for s in seeds.values() for n, _ in s.probs)]
    got = {k: label_rows(seeds, k) for k in label_keys}
    rows = []
    for target in annotators if label_keys else ():
        rows += [[target, f"_{ref}_", *texts] for ref, texts in bands(seeds, target).items()]
        rows += [[target, k, *(f"{got[k][target][m]:.3f}" for m in _MEASURES)] for k in label_keys
                 if target in got[k]]
    tables[5] = (["target", "predictor", "marginal_js ↓", "loglik ↑", "agreement ↑"], rows,
                 "No label probabilities (labels.jsonl) in the slices.")
    rows = [[k, *(f"{d[m]:.3f}" for m in ("parse", "words", "ratio", "distinct2", "repetition"))]
            for k in [HUMAN, *keys] for d in [diagnostics(seeds, k)]]
    tables[6] = (["source kind", "parse rate", "mean words", "words / target's human", "distinct-2", "repetition"],
                 rows, "")
    made = f"_`{args.command()}`; pools {_seeds_text(seeds)}._"
    out = {n: [f"### {task}", "", made, ""] + (_table(h, r) + ([note, ""] if note and n == 1 else []) if r
                                               else [note, ""]) for n, (h, r, note) in tables.items()}
    folder, base = args.figure_folder(), Path(args.output).resolve().parent
    paths = [folder / f"attribution_{task}.png"]
    ceiling = {j: est[(HUMAN, j)].value for j in judges}
    attribution_figure(task, judges, [HUMAN, *keys], est, ceiling,
                           chance, paths[0])
    if steps:
        capo = {j: (float(np.mean(capo_steps)), est[("capo", j)]) for j in judges if capo_steps}
        paths.append(folder / f"curve_{task}.png")
        curve_figure(task, judges, {j: [(st, e) for st, (_, e) in sorted(points[j].items())]
                                        for j in judges}, capo, ceiling, chance, paths[-1])
    for j in judges:
        paths.append(folder / f"confusion_{task}_{j}.png")
        confusion_grid(task, j, annotators, {k: confusion_matrix(
            [(annotators.index(r["target"]), int(np.argmax(r["judge"][j]))) for rows in rows_of(seeds, k).values()
             for r in rows if j in (r.get("judge") or {})], len(annotators)) for k in [HUMAN, *keys]}, paths[-1])
    links = [Path(os.path.relpath(p.resolve(), base)).as_posix() for p in paths]
    out[7] = [f"### {task}", "", made, "", *(f"![{Path(p).stem}]({p})\n" for p in links)]
    return out, paths


def render(study: dict[str, dict[int, Seed]], args: StudyReportArguments) -> tuple[str, list[Path]]:
    """The markdown report, and the figures it drew (`_task_sections`)."""
    per_task = [_task_sections(task, seeds, args) for task, seeds in study.items()]
    out = _header(study, args)
    for number, (title, note) in _TITLES.items():
        out += [f"## {title}", "", *([note, ""] if note else []), *(line for t, _ in per_task for line in t[number])]
    return "\n".join(out).rstrip() + "\n", [p for _, paths in per_task for p in paths]


def run_study_report(args: StudyReportArguments) -> dict:
    """`eval/study_report.py`: read every slice, write the figures and the report; returns what it wrote."""
    check_output(args.output)
    check_output(args.figure_folder(), folder=True)
    study = read_slices(args.slices)
    if not study:
        raise DataError("no slice folder found", path=args.slices)
    text, figures = render(study, args)
    atomic_write_text(args.output, text)
    print(f"wrote {args.output} and {len(figures)} figures")
    return {"output": args.output, "figures": [str(p) for p in figures]}
