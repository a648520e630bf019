"""`medsamix`: the command line. Each command is a verb; user errors print one line and exit with status 2."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from search.errors import MedSAMixError, MedSAMixWarning
from service.imaging import NORMALIZATION_NAMES

console = Console()
EXIT_USER_ERROR = 2
MERGE_DTYPES = ("float32", "float16", "bfloat16")  # torch dtype names `medsamix merge --dtype` writes


def cmd_inspect(args: argparse.Namespace) -> None:
    from search.checkpoints import load_checkpoint

    checkpoint = load_checkpoint(args.file, allow_non_finite=True)
    sizes = checkpoint.component_sizes()
    non_finite = checkpoint.non_finite()
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in checkpoint.state_dict.values()})
    table = Table(title=str(checkpoint.path), show_header=False)
    table.add_column("field", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_row(
        "format", checkpoint.format + (f" (prefix '{checkpoint.prefix}' stripped)" if checkpoint.prefix else "")
    )
    table.add_row("architecture", checkpoint.arch.name)
    for component, count in sizes.items():
        table.add_row(f"{component} parameters", f"{count:,}")
    table.add_row("total parameters", f"{sum(sizes.values()):,}")
    table.add_row("dtype", ", ".join(dtypes))
    if checkpoint.ignored_keys:
        table.add_row("ignored keys", f"{checkpoint.ignored_keys} outside the SAM model")
    table.add_row(
        "non-finite tensors",
        f"{len(non_finite)}: " + ", ".join(f"{k} ({n} NaN/inf)" for k, n in non_finite.items())
        if non_finite
        else "none",
    )
    table.add_row("sha256", checkpoint.sha256)
    console.print(table)


def cmd_merge(args: argparse.Namespace) -> None:
    import torch

    from search.checkpoints import save_checkpoint
    from search.merge.engine import load_recipe_inputs
    from search.recipe import load_recipe, recipe_yaml

    recipe = load_recipe(args.recipe)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    engine = load_recipe_inputs(recipe, Path(args.recipe).resolve().parent, device=args.device, dtype=dtype)
    state = engine.merge_recipe(recipe)
    metadata = {"medsamix_recipe": recipe_yaml(recipe), "architecture": engine.arch.name}
    out = save_checkpoint(state, args.output, metadata=metadata)
    dtype_name = str(engine.dtype).removeprefix("torch.")
    console.print(
        f"wrote {out} ({engine.arch.name}, {dtype_name}, {len(recipe.groups)} groups, device {engine.device})"
    )


def cmd_recipe(args: argparse.Namespace) -> None:
    from search.checkpoints import load_checkpoint
    from search.groups import Granularity
    from search.recipe import InputModel, save_recipe, uniform_recipe

    folder = Path(args.output).resolve().parent
    inputs = []
    arch = None
    for spec in [args.base, *args.models]:
        name, _, path = spec.partition("=") if "=" in spec else (Path(spec).stem, "", spec)
        checkpoint = load_checkpoint(path)
        arch = arch or checkpoint.arch
        relative = Path(path).resolve()
        relative = relative.relative_to(folder) if relative.is_relative_to(folder) else relative
        inputs.append(InputModel(name=name, path=str(relative), sha256=checkpoint.sha256))
    assert arch is not None, "the loop loads at least the base checkpoint"
    recipe = uniform_recipe(
        inputs[0], inputs[1:], arch, args.method, Granularity(*args.granularity), args.normalization, args.seed
    )
    recipe.plan(arch)
    save_recipe(recipe, args.output)
    console.print(f"wrote {args.output}: {len(recipe.groups)} groups, all {args.method}")


def cmd_methods(args: argparse.Namespace) -> None:
    from search.merge import METHODS, FloatParam

    table = Table("method", "parameters", "what it does", "reference")
    for method in METHODS.values():
        params = ", ".join(
            f"{p.name}{'[per input]' if p.per_input else '[per model]' if p.per_model else ''} in [{p.low}, {p.high}]"
            f" (default {p.default})"
            if isinstance(p, FloatParam)
            else f"{p.name} (an input's name)"
            for p in method.params
        )
        table.add_row(method.name, params or "none", method.summary, method.reference)
    console.print(table)


def cmd_groups(args: argparse.Namespace) -> None:
    from search.architectures import get_architecture
    from search.groups import Granularity, layer_groups

    arch = get_architecture(args.arch)
    groups = layer_groups(arch, Granularity(*args.granularity))
    table = Table("group", "tensors", title=f"{arch.name}: {len(groups)} groups")
    for group in groups:
        table.add_row(group.name, str(len(group.keys)))
    console.print(table)


def cmd_zoo(args: argparse.Namespace) -> None:
    from search.zoo import ZooConfig, build_zoo, refit_iou_heads

    config = ZooConfig() if args.scale == 1.0 else ZooConfig().scaled(args.scale)
    if args.iou_heads_only:
        refit_iou_heads(args.output, config, wheel=args.nilearn_wheel, log=console.print)
        console.print(f"fitted the IoU heads of the zoo in {args.output}; its masks and premise table are unchanged")
        return
    record = build_zoo(args.output, config, wheel=args.nilearn_wheel, log=console.print)
    if record["premise"]["violations"]:
        raise MedSAMixError(f"the zoo in {args.output} does not show the premise: {record['premise']['violations'][0]}")
    console.print(f"wrote the zoo to {args.output} in {record['seconds']['total']:.0f} s")


def cmd_search(args: argparse.Namespace) -> None:
    from search.config import load_search_config
    from search.optimize import Search

    config = load_search_config(args.config)
    overrides = {"workers": args.workers, "scheduler": args.scheduler, "device": args.device, "trials": args.trials}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if args.output is not None:
        overrides["output"] = Path(args.output).resolve()
    if args.scheduler is not None:
        overrides["workers"] = 1
    config = config.model_validate({**config.model_dump(), **overrides})
    result = Search(config, overwrite=args.overwrite, report=not args.no_report, console=console).run()
    dice = ", ".join(f"{task} {value:.4f}" for task, value in result.best_dice.items())
    console.print(f"best calibration Dice: {dice}; recipe {Path(config.output) / 'best.yaml'}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from search.baselines import trained_convention
    from search.checkpoints import load_checkpoint
    from search.config import load_conventions, load_task_specs
    from search.data import chosen_presets, load_task
    from search.evaluate import Evaluator
    from search.merge.engine import load_recipe_inputs
    from search.recipe import load_recipe
    from search.scores import score

    path = Path(args.model)
    recipe = load_recipe(path) if path.suffix in (".yaml", ".yml") else None
    specs = chosen_presets(load_task_specs(args.tasks), recipe.preprocessing.presets if recipe else None)
    loaded = {spec.name: load_task(spec) for spec in specs}
    splits = {
        "calibration": {n: t.calibration for n, t in loaded.items()},
        "test": {n: t.test for n, t in loaded.items()},
    }
    if args.split != "both":
        splits = {args.split: splits[args.split]}
    if recipe is not None:
        engine = load_recipe_inputs(recipe, path.resolve().parent, device=args.device)
        arch = engine.arch
        normalization = args.normalization or recipe.preprocessing.normalization
        evaluator = Evaluator(arch, device=args.device)
        rows = {path.name: score(evaluator, engine.merge_recipe(recipe), normalization, splits)}
        conventions = {path.name: normalization}
        trained = load_conventions(args.tasks)
        for i, name in enumerate(engine.names):  # the merge beside each input, under its training convention
            conventions[name] = trained_convention(name, trained)
            rows[name] = score(evaluator, engine.input_state(i), conventions[name], splits)
    else:
        checkpoint = load_checkpoint(path)
        arch, normalization = checkpoint.arch, args.normalization or "sam"
        rows = {path.name: score(Evaluator(arch, device=args.device), checkpoint.state_dict, normalization, splits)}
        conventions = {path.name: normalization}
    table = Table(title=f"Dice of {path.name} ({arch.name})")
    table.add_column("model")
    table.add_column("convention")
    for task in loaded:
        for split in splits:
            table.add_column(f"{task} {split}", justify="right")
    for split in splits:
        table.add_column(f"mean {split}", justify="right", style="bold")
    for row, dice in rows.items():
        means = [sum(v[s] for v in dice.values()) / len(dice) for s in splits]
        cells = [f"{dice[t][s]:.4f}" for t in loaded for s in splits] + [f"{m:.4f}" for m in means]
        table.add_row(row, conventions[row], *cells)
    console.print(table)


def cmd_export(args: argparse.Namespace) -> None:
    from search.config import load_conventions, load_task_specs
    from search.data import chosen_presets
    from search.errors import ExportError
    from search.export import export_model, load_source, parse_task
    from search.quantize import Int8Plan

    if args.tasks and args.task:
        raise ExportError(
            "--tasks FILE names the tasks the model serves (with their presets) and gates on them; --task names them "
            "by hand: give one of the two"
        )
    if args.int8 and not args.tasks:
        raise ExportError(
            "--int8 calibrates on the tasks' calibration slices and checks Dice on their held-out ones: give --tasks "
            "FILE (e.g. the search configuration)"
        )
    source = load_source(args.source, args.normalization)
    tasks = dict(parse_task(spec) for spec in args.task)
    chosen = source.recipe.preprocessing.presets if source.recipe else None  # where a search chose the windows
    specs = chosen_presets(load_task_specs(args.tasks), chosen) if args.tasks else []
    out = export_model(
        source,
        args.name,
        args.out,
        geometry=args.geometry,
        tasks=list(tasks),
        presets={task: preset for task, preset in tasks.items() if preset},
        report=Path(args.report) if args.report else source.report,
        specs=specs,
        conventions=load_conventions(args.tasks) if args.tasks else {},
        force=args.force,
        fp16=args.fp16,
        int8=Int8Plan.of(specs, force=args.force) if args.int8 else None,
        overwrite=args.overwrite,
        version=args.model_version,
    )
    precision = "int8" if args.int8 else "float16" if args.fp16 else "float32"
    console.print(f"wrote {out} ({source.arch.name}, {precision}, {source.normalization})")


def cmd_segment(args: argparse.Namespace) -> None:
    import json

    from rich.progress import track

    from search.pacs_batch import Client, load_prompts, segment

    prompts = load_prompts(Path(args.prompts))
    client = Client(args.server, args.token or os.environ.get("MEDSAMIX_TOKEN"), args.timeout)
    options = {k: v for k, v in (("model", args.model), ("preset", args.preset)) if v is not None}
    outcome = segment(
        client,
        args.dicomweb,
        args.study,
        args.series,
        prompts,
        options,
        lambda work: track(work, description="segmenting", console=console),
    )
    if args.output:
        Path(args.output).write_text(json.dumps({"answers": outcome.answers, "failures": outcome.failures}, indent=1))
    segs = sum(len(answer["instances"]) for answer in outcome.answers)
    console.print(f"stored {segs} SEG(s) for {len(outcome.answers)} instance(s); {len(outcome.failures)} failed")
    if outcome.failures:
        first = outcome.failures[0]
        raise MedSAMixError(
            f"{len(outcome.failures)} instance(s) were not segmented; the first answer was {first['status']}: "
            f"{first['error']}"
        )


def _granularity(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--granularity",
        nargs=3,
        type=int,
        default=(1, 1, 1),
        metavar=("ENC", "PROMPT", "DEC"),
        help="units per group in the image encoder, prompt encoder and mask decoder",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medsamix", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    inspect = commands.add_parser("inspect", help="show a checkpoint's format, architecture, sizes and sha256")
    inspect.add_argument("file")
    inspect.set_defaults(run=cmd_inspect)

    merge = commands.add_parser("merge", help="apply a merge recipe and write the merged checkpoint")
    merge.add_argument("recipe")
    merge.add_argument("-o", "--output", required=True, help="merged checkpoint (.safetensors, .pth or .pt)")
    merge.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    merge.add_argument(
        "--dtype", choices=MERGE_DTYPES, default=None, help="dtype of the merged weights (default: the base's)"
    )
    merge.set_defaults(run=cmd_merge)

    recipe = commands.add_parser("recipe", help="write a recipe with one method in every group, to edit by hand")
    recipe.add_argument("base", help="base checkpoint, optionally NAME=PATH")
    recipe.add_argument("models", nargs="+", help="fine-tuned checkpoints, optionally NAME=PATH")
    recipe.add_argument("-o", "--output", required=True)
    recipe.add_argument("--method", default="linear")
    recipe.add_argument("--normalization", choices=NORMALIZATION_NAMES, default="sam")
    recipe.add_argument("--seed", type=int, default=0)
    _granularity(recipe)
    recipe.set_defaults(run=cmd_recipe)

    methods = commands.add_parser("methods", help="list the merge methods and their parameters")
    methods.set_defaults(run=cmd_methods)

    groups = commands.add_parser("groups", help="list the layer groups of an architecture")
    groups.add_argument("--arch", default="vit_b")
    _granularity(groups)
    groups.set_defaults(run=cmd_groups)

    search = commands.add_parser("search", help="search merge recipes with SMAC; rerun the same command to resume")
    search.add_argument("config", help="the search configuration (YAML)")
    search.add_argument("-o", "--output", default=None, help="run folder (default: the configuration's output)")
    search.add_argument("--trials", type=int, default=None, help="number of trials (more than before continues)")
    search.add_argument("--workers", type=int, default=None, help="run trials on a local Dask cluster of N workers")
    search.add_argument("--scheduler", default=None, help="run trials on an existing Dask cluster (tcp://HOST:PORT)")
    search.add_argument("--device", default=None, help="torch device of the trials (default: the config's, auto)")
    search.add_argument("--overwrite", action="store_true", help="discard what the run folder holds and start again")
    search.add_argument("--no-report", action="store_true", help="skip the report (plots and Dice tables)")
    search.set_defaults(run=cmd_search)

    evaluate = commands.add_parser("evaluate", help="Dice per task of a recipe or checkpoint on calibration/test")
    evaluate.add_argument("model", help="a merge recipe (.yaml) or a checkpoint")
    evaluate.add_argument("--tasks", required=True, help="a YAML file with a 'tasks' list (e.g. a search config)")
    evaluate.add_argument("--normalization", choices=NORMALIZATION_NAMES, default=None, help="override the convention")
    evaluate.add_argument("--split", choices=["calibration", "test", "both"], default="both")
    evaluate.add_argument("--device", default=None)
    evaluate.set_defaults(run=cmd_evaluate)

    export = commands.add_parser("export", help="export a recipe or checkpoint to the model store (ONNX + manifest)")
    export.add_argument("source", metavar="RECIPE_OR_CHECKPOINT", help="a recipe (.yaml) or a SAM checkpoint")
    export.add_argument("--name", required=True, help="the model's name: its folder in the store")
    export.add_argument("--out", default="models", help="the model store (default: models)")
    export.add_argument("--task", action="append", default=[], metavar="NAME[=PRESET]", help="a task it serves")
    export.add_argument("--normalization", help="sam or medsam, for a checkpoint (a recipe fixes its own)")
    export.add_argument("--geometry", help="sam or medsam (default: the normalization's)")
    export.add_argument("--report", help="search report folder to copy (default: report/ beside the recipe)")
    export.add_argument("--model-version", default="1", help="the version recorded in the manifest")
    export.add_argument(
        "--tasks", help="a YAML file with a 'tasks' list (e.g. the search config): score held-out cases, gate on them"
    )
    export.add_argument(
        "--force", action="store_true", help="export even if the merge does not beat its inputs (or int8 loses Dice)"
    )
    export.add_argument("--fp16", action="store_true", help="float16 weights, for GPU serving")
    export.add_argument(
        "--int8", action="store_true", help="an int8 encoder for CPU serving, calibrated and Dice-gated on --tasks"
    )
    export.add_argument("--overwrite", action="store_true", help="replace an existing model of that name")
    export.set_defaults(run=cmd_export)

    segment = commands.add_parser(
        "segment", help="segment a PACS study through a running server (DICOMweb), storing one SEG per instance"
    )
    segment.add_argument("--dicomweb", required=True, metavar="URL", help="the PACS, as on the server's allow-list")
    segment.add_argument("--study", required=True, metavar="UID", help="Study Instance UID")
    segment.add_argument("--series", metavar="UID", help="Series Instance UID (default: every series of the study)")
    segment.add_argument(
        "--prompts", required=True, help="JSON: a list of prompts for every instance, or SOP Instance UID -> prompts"
    )
    segment.add_argument("--server", default="http://127.0.0.1:3000", help="the MedSAMix server")
    segment.add_argument("--token", help="the server's bearer token (default: $MEDSAMIX_TOKEN)")
    segment.add_argument("--model", help="serve every prompt with this model (else routing by task)")
    segment.add_argument("--preset", help="force an intensity preset")
    segment.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for each instance")
    segment.add_argument("-o", "--output", help="write every answer (SEG UIDs, masks) and failure to this JSON file")
    segment.set_defaults(run=cmd_segment)

    zoo = commands.add_parser("zoo", help="train the tiny model zoo (base + CT and MR specialists) and its datasets")
    zoo.add_argument("-o", "--output", default="tests/zoo", help="output folder (default: tests/zoo)")
    zoo.add_argument("--nilearn-wheel", default=None, help="read the MNI template from this nilearn wheel file")
    zoo.add_argument("--scale", type=float, default=1.0, help="scale every stage's steps (quick checks only)")
    zoo.add_argument(
        "--iou-heads-only", action="store_true", help="fit only the IoU heads of the zoo already in --output"
    )
    zoo.set_defaults(run=cmd_zoo)
    return parser


def _pin_hash_seed(argv: Sequence[str]) -> None:
    """Run `medsamix search` under PYTHONHASHSEED=0, re-executing this process once if it is not.

    SMAC's proposals depend on the iteration order of sets of strings, i.e. on Python's per-process hash seed; a
    search resumed in a new process replays into an identical SMAC state only under the same seed."""
    if os.environ.get("PYTHONHASHSEED") != "0":
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, "-m", "search.cli", *argv], {**os.environ, "PYTHONHASHSEED": "0"})


def _show_warning(message, category, filename, lineno, file=None, line=None, *, default=warnings.showwarning) -> None:
    """MedSAMix's own warnings as one line, like its errors; every other warning as Python shows it."""
    if issubclass(category, MedSAMixWarning):
        Console(stderr=True).print(Text.assemble(("warning: ", "bold yellow"), str(message)), soft_wrap=True)
    else:
        default(message, category, filename, lineno, file, line)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    warnings.showwarning = _show_warning
    args = build_parser().parse_args(argv)
    if args.run is cmd_search:
        _pin_hash_seed(argv)
    run: Callable[[argparse.Namespace], None] = args.run
    try:
        run(args)
    except MedSAMixError as error:
        Console(stderr=True).print(Text.assemble(("error: ", "bold red"), str(error)), soft_wrap=True)
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
