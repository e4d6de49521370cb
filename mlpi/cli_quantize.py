"""``mlpi quantize``: derive a model's fp16, bf16 or int8 file ahead of time.

The same transform ``mlpi run --precision`` applies (:mod:`mlpi.core.engine.precision`),
done once before any run: a later run with the same model, precision, settings and
calibration data finds the file in the cache and says so.
"""

from __future__ import annotations

import json
from typing import Any

import click


@click.command()
@click.option("--model", "-m", help="A registered model name.")
@click.option("--model-path", type=click.Path(dir_okay=False), help="The model's fp32 ONNX file.")
@click.option("--weights", type=click.Choice(["official", "random"]),
              help="For --model: the official file, or seeded random weights. Default: official if downloaded, else random.")
@click.option("--model-option", "-M", "model_options", multiple=True, help="Model option KEY=VALUE; repeatable.")
@click.option("--shape", "shapes", multiple=True, help="Fix dynamic dimensions, as mlpi run --shape does; repeatable.")
@click.option("--batch-axis", "batch_axes", multiple=True, help="NAME=K or NAME=none, as mlpi run --batch-axis.")
@click.option("--precision", required=True, type=click.Choice(["fp16", "bf16", "int8"]), help="The precision to derive.")
@click.option("--calibration", help="int8: official (the default where the model has a list), dataset, or FILE "
                                    "(a list of names); only official is valid for the closed division.")
@click.option("--calibration-path", type=click.Path(), help="int8: the folder holding the calibration samples.")
@click.option("--precision-option", "-P", "precision_options", multiple=True,
              help="calibration_method=minmax|entropy|percentile, per_channel=true, block_ops=OP,OP, "
                   "calibration_count=N; repeatable.")
@click.option("--dataset", help="With --calibration dataset: the dataset plugin whose first samples calibrate.")
@click.option("--dataset-path", type=click.Path(), help="The dataset's folder (and the calibration samples' default folder).")
@click.option("--count", "dataset_count", type=int, help="With --calibration dataset: use only this many samples of it.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for synthetic data and random weights.")
@click.option("--plugins", "plugins_file", type=click.Path(), help="plugins.toml to merge over the packaged one.")
@click.option("--json", "as_json", is_flag=True, help="Print the transform's record as JSON.")
@click.option("--debug", is_flag=True, hidden=True)
def quantize(as_json: bool, debug: bool, **kwargs: Any) -> None:
    """Derive a model's fp16, bf16 or int8 ONNX file into the cache and print where it is.

    int8 is static Q/DQ quantisation calibrated on the benchmark's official calibration list
    (read from --calibration-path, else --dataset-path); `mlpi run --precision` with the same
    settings then runs that file on any backend."""
    from mlpi.cli_output import precision_line
    from mlpi.core.engine.planning import RunRequest, derive_precision
    from mlpi.core.plugins.options import parse_assignments

    kwargs["model_options"] = parse_assignments(kwargs["model_options"], "-M max_rows=100000")
    kwargs["precision_options"] = parse_assignments(kwargs["precision_options"], "-P calibration_method=entropy")
    kwargs["shapes"] = list(kwargs["shapes"])
    kwargs["batch_axes"] = list(kwargs["batch_axes"])
    model_ref, record = derive_precision(RunRequest(**kwargs))
    if as_json:
        click.echo(json.dumps({"path": model_ref.path, "sha256": model_ref.sha256, "record": record}, indent=2))
        return
    line = precision_line(record)
    if line:
        click.echo(f"mlpi: {line}", err=True)
    click.echo(model_ref.path)
