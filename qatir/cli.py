"""The ``qatir`` command line: dump, compile, analyze, verify, passes, bench, demo.

The commands are thin: each parses its options and calls the library
(:mod:`qatir.compile` for the compile driver, :mod:`qatir.draw` for pictures).
An error the user caused (a missing file, a bad option, any
:class:`~qatir.errors.QatirError`) prints one line on stderr and exits with
status 2; ``--debug`` (or ``QATIR_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

import click

from qatir.errors import QatirError

EXIT_USER_ERROR = 2


class UsageProblem(QatirError):
    """A command-line option that cannot be used as given."""


# --------------------------------------------------------------------------- helpers
def parse_input_shapes(specs: Sequence[str]) -> dict[str, list[int]]:
    """``["x=1,3,224,224", ...]`` -> ``{"x": [1, 3, 224, 224]}`` (source layout, positive dims)."""
    shapes: dict[str, list[int]] = {}
    for spec in specs:
        name, sep, dims = spec.partition("=")
        name = name.strip()
        parts = [p.strip() for p in dims.replace("x", ",").split(",")] if sep else []
        if not name or not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise UsageProblem(f"--input-shape {spec!r}: expected NAME=D1,D2,... "
                               "with positive integers, e.g. x=1,3,224,224")
        if name in shapes:
            raise UsageProblem(f"--input-shape {spec!r}: input {name!r} given twice")
        shapes[name] = [int(p) for p in parts]
    return shapes


def require_file(path: str, what: str = "model") -> str:
    """Check a file given on the command line exists (one clear error if not)."""
    if not os.path.exists(path):
        raise UsageProblem(f"{path}: no such {what} file")
    if not os.path.isfile(path):
        raise UsageProblem(f"{path}: is not a file")
    return path


def check_output_dir(*paths: str | None) -> None:
    """Fail before any work when an output's directory does not exist."""
    for path in paths:
        if path and not Path(path).resolve().parent.is_dir():
            raise UsageProblem(f"{path}: directory {Path(path).parent} does not exist")


def write_output(path: str, data: bytes | str, *inputs: str | None) -> None:
    """Write atomically; refuse to overwrite an input; an old file is replaced only on success."""
    from qatir.fileio import atomic_write, check_distinct

    check_distinct(path, *inputs)
    atomic_write(path, data.encode() if isinstance(data, str) else data)


def _load(model: str, input_shape: Sequence[str]):
    import qatir

    shapes = parse_input_shapes(input_shape)
    require_file(model)
    return qatir.load(model, input_shapes=shapes or None)


def import_tensorflow_quietly(debug: bool = False) -> None:
    """Import TensorFlow with its C++ start-up chatter (oneDNN, CUDA stubs) sent to /dev/null.

    TensorFlow prints those lines before its logging can be configured, whatever
    TF_CPP_MIN_LOG_LEVEL says. Python exceptions from the import still surface.
    With --debug / QATIR_DEBUG nothing is hidden.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    root = click.get_current_context(silent=True)
    debug = debug or bool(root and root.find_root().params.get("debug"))
    from qatir.tf.env import import_tensorflow

    if debug or "tensorflow" in sys.modules or os.environ.get("QATIR_DEBUG", "") not in ("", "0"):
        import_tensorflow()
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import_tensorflow()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


debug_option = click.option("--debug", is_flag=True, help="Show tracebacks of errors.")
shape_option = click.option(
    "--input-shape", "input_shape", multiple=True, metavar="NAME=D1,D2,...",
    help="Fix an input's shape (source layout, e.g. NCHW for ONNX). Repeatable.")


# --------------------------------------------------------------------------- commands
@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="qatir", prog_name="qatir")
@debug_option
def cli(debug: bool) -> None:
    """qatir: quantization-aware training and direct int8 TFLite export."""


@cli.command()
@click.argument("model")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "svg", "html"]),
              default="text", show_default=True, help="Dump format.")
@click.option("-o", "--output", help="Write here (atomically) instead of stdout.")
@shape_option
@click.option("--after-pass", "after_pass", metavar="PASS",
              help="Show the graph before and after this pass, as the default pipeline runs it "
                   "(html: both pictures, text: a diff, svg: after).")
@click.option("--table", help="Pattern table for --after-pass (default: the built-in one).")
@click.option("--with-data", is_flag=True,
              help="JSON: include constant values, so the dump reloads losslessly.")
@debug_option
def dump(model: str, fmt: str, output: str | None, input_shape: tuple[str, ...],
         after_pass: str | None, table: str | None, with_data: bool, debug: bool) -> None:
    """Print MODEL's IR as text, JSON, an SVG picture or an HTML page."""
    from qatir import draw

    check_output_dir(output)
    graph = _load(model, input_shape)
    before = None
    if after_pass:
        from qatir.compile import run_one_pass

        before, graph = run_one_pass(graph, after_pass, table=table)
    title = f"{Path(model).name}" + (f" after {after_pass}" if after_pass else "")
    if fmt == "text":
        text = str(graph) + "\n"
        if before is not None:
            text = draw.text_diff(before, graph, after_pass or "") + "\n"
    elif fmt == "json":
        text = graph.to_json(include_data=with_data) + "\n"
    elif fmt == "svg":
        text = draw.to_svg(graph)
    elif before is not None:
        text = draw.diff_html(before, graph, title=f"{Path(model).name}: {after_pass}")
    else:
        text = draw.to_html(graph, title=title)
    if output:
        write_output(output, text, model)
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)


@cli.command(name="compile")
@click.argument("model")
@click.option("-o", "--output", required=True, help="The int8 .tflite file to write.")
@shape_option
@click.option("--calib", metavar="DATA.npz", help="Calibration data: one array per input name.")
@click.option("--calib-random", type=click.IntRange(min=1), metavar="N",
              help="Calibrate on N random batches (real data is much better).")
@click.option("--train", metavar="DATA.npz",
              help="QAT data: arrays by input name plus the labels (see --label-key).")
@click.option("--label-key", default="y", show_default=True, help="Labels' array in --train.")
@click.option("--epochs", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--loss", default="sparse_categorical_crossentropy", show_default=True,
              help="A Keras loss name for --train.")
@click.option("--from-logits/--from-probabilities", "from_logits", default=None,
              help="For cross-entropy losses: the model outputs logits or probabilities "
                   "(default: probabilities only when the output comes from SOFTMAX/LOGISTIC).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--learning-rate", type=float, default=1e-4, show_default=True)
@click.option("--table", metavar="TABLE.toml", help="Your own pattern table.")
@click.option("--passes", metavar="A,B,C",
              help="Comma-separated passes; a pipeline name (default, float) stands for its passes.")
@click.option("--io", "io_type", type=click.Choice(["int8", "float"]), default="int8",
              show_default=True, help="Type of the model's inputs and outputs.")
@click.option("--mode", "mode", type=click.Choice(["int8", "dynamic", "float16", "all"]),
              default="int8", show_default=True,
              help="int8: full integer (calibrated); dynamic: int8 weights, float activations "
                   "(LiteRT's hybrid kernels); float16: float16 weights. Neither of the last two "
                   "needs --calib. all: the three files (OUT, OUT.dynamic.tflite, "
                   "OUT.float16.tflite) and a table of size and SQNR side by side.")
@click.option("--print-ir-after", "print_ir_after", metavar="all|A,B",
              help="Print the IR after these passes or lowering steps (lower.bias), or all.")
@click.option("--strict-int8", "strict_int8", is_flag=True, default=False,
              help="Refuse float islands (nodes kept float by the table or without an int8 "
                   "kernel) instead of exporting them as float ops.")
@click.option("--report", "report", type=click.Choice(["litert", "full"]), is_flag=False,
              flag_value="litert", default=None,
              help="Print the parity report. --report (or =litert) needs no TensorFlow; "
                   "--report=full adds the fake-quant column, run in TensorFlow.")
@click.option("--save-ir", metavar="OUT.qatir", help="Also save the trained, quantized IR.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bars (default: when stderr is a terminal).")
@click.option("--target-sqnr", "target_sqnr", type=float, metavar="DB",
              help="Analyze first (qatir analyze) and keep the fewest MACs out of int8 "
                   "(int16 or float) that reach this output SQNR.")
@debug_option
def compile_cmd(model: str, output: str, input_shape: tuple[str, ...], calib: str | None,
                calib_random: int | None, train: str | None, label_key: str, epochs: int,
                loss: str, from_logits: bool | None, batch_size: int, learning_rate: float, table: str | None,
                passes: str | None, io_type: str, mode: str, print_ir_after: str | None,
                strict_int8: bool,
                report: str | None, save_ir: str | None, progress: bool | None,
                target_sqnr: float | None, debug: bool) -> None:
    """Quantize MODEL (.onnx, .tflite, .qatir) and write an int8 TFLite file.

    Post-training (no --train) needs no TensorFlow: calibration and the SQNR
    evaluation run qatir's own float export and the int8 file in LiteRT.
    """
    from qatir.compile import CompileOptions, compile_model

    require_file(model)
    if train or report == "full" or target_sqnr is not None:  # else no TensorFlow
        import_tensorflow_quietly(debug)
    for extra in (calib, train, table):
        if extra:
            require_file(extra, "data" if extra.endswith(".npz") else "input")
    if not output.lower().endswith(".tflite"):
        raise UsageProblem(f"-o {output}: the output must end in .tflite")
    check_output_dir(output, save_ir)
    from qatir.fileio import check_distinct

    check_distinct(output, model, calib, train, table)
    if calib and calib_random:
        raise UsageProblem("give --calib or --calib-random, not both")
    if calib_random and mode in ("int8", "all"):
        click.echo("warning: calibrating on random data; real samples (--calib DATA.npz) "
                   "give much better accuracy", err=True)
    opts = CompileOptions(
        input_shapes=parse_input_shapes(input_shape), calib=calib, calib_random=calib_random,
        train=train, label_key=label_key, epochs=epochs, loss=loss, from_logits=from_logits,
        batch_size=batch_size,
        learning_rate=learning_rate, table=table,
        passes=[p.strip() for p in passes.split(",") if p.strip()] if passes else None,
        io=io_type, mode=mode, print_ir_after=_split_names(print_ir_after),
        report=report or False, save_ir=save_ir, progress=progress, strict_int8=strict_int8,
        target_sqnr=target_sqnr)
    summary = compile_model(model, output, opts, echo=lambda s: click.echo(s, err=True))
    click.echo(summary.format())


@cli.command(name="analyze")
@click.argument("model")
@shape_option
@click.option("--calib", metavar="DATA.npz", help="Calibration data: one array per input name.")
@click.option("--calib-random", type=click.IntRange(min=1), metavar="N",
              help="Use N random samples instead (real data is much better).")
@click.option("--samples", type=click.IntRange(min=1), default=4, show_default=True,
              help="Samples calibrated on and evaluated per configuration.")
@click.option("--table", metavar="TABLE.toml", help="The pattern table to start from.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "html"]), default="text",
              show_default=True)
@click.option("-o", "--output", help="Write the analysis here instead of stdout.")
@click.option("--suggest", "suggest", metavar="OUT.toml",
              help="Write the table reaching --target-sqnr with the fewest MACs out of int8.")
@click.option("--target-sqnr", "target", type=float, default=30.0, show_default=True,
              help="Output SQNR (dB) the suggested table must reach.")
@click.option("--no-int16", "no_int16", is_flag=True, help="Suggest float islands only.")
@click.option("--int8-inputs", "int8_inputs", is_flag=True,
              help="Keep the graph inputs int8 (the suggestion may otherwise make them int16).")
@click.option("--margin", "margin", type=click.FloatRange(min=0.0), default=0.5,
              show_default=True, metavar="DB",
              help="dB above --target-sqnr the suggestion's checks aim at (they run on the "
                   "calibration samples; deployment sees others).")
@click.option("--check", "check", type=click.Choice(["fake-quant", "file"]),
              default="fake-quant", show_default=True,
              help="Check the suggested table on the fake-quant run or on the exported file "
                   "in LiteRT (slower; what the file computes).")
@debug_option
def analyze_cmd(model: str, input_shape: tuple[str, ...], calib: str | None,
                calib_random: int | None, samples: int, table: str | None, fmt: str,
                output: str | None, suggest: str | None, target: float, no_int16: bool,
                int8_inputs: bool, margin: float, check: str, debug: bool) -> None:
    """Rank MODEL's nodes by how much int8 costs its output SQNR; suggest a table."""
    import_tensorflow_quietly(debug)
    from qatir.data import load_npz, random_batches, single_samples
    from qatir.sensitivity import analyze

    check_output_dir(output, suggest)
    if calib and calib_random:
        raise UsageProblem("give --calib or --calib-random, not both")
    if table:
        require_file(table, "table")
    graph = _load(model, input_shape)
    if calib:
        require_file(calib, "data")
        feeds = single_samples([load_npz(calib, graph)], samples)
    else:
        feeds = random_batches(graph, calib_random or samples, 1)
    rep = analyze(graph, feeds, table=table, max_batches=samples)
    if fmt == "json":
        text = rep.to_json() + "\n"
    elif fmt == "html":
        from qatir.draw_sensitivity import sensitivity_html

        text = sensitivity_html(rep)
    else:
        text = rep.format_text() + "\n"
    if output:
        write_output(output, text, model)
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)
    if suggest:
        from qatir.recipes import dump_toml

        data = rep.suggest(target, allow_int16=not no_int16, margin_db=margin,
                           check=check.replace("-", "_"), int16_inputs=not int8_inputs)
        write_output(suggest, dump_toml(data), model, table)
        click.echo(f"wrote {suggest}: {rep.suggestion.format_text()}", err=True)


def _split_names(value: str | None) -> list[str] | None:
    if not value:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


@cli.command()
@click.argument("tflite_model")
@click.option("--against", required=True, metavar="GRAPH.qatir",
              help="The quantized IR the file was written from (compile --save-ir); for a "
                   "dynamic-range or float16 file, the model it was written from.")
@click.option("--samples", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--data", metavar="DATA.npz", help="Inputs to compare on (default: random).")
@click.option("--resolver", type=click.Choice(["default", "ref"]), default="default",
              show_default=True, help="LiteRT kernels: default (XNNPACK) or ref (reference).")
@click.option("--tolerance", type=click.IntRange(min=0), default=0, show_default=True,
              help="Allowed difference from qatir's integer reference, in int8 steps.")
@debug_option
def verify(tflite_model: str, against: str, samples: int, data: str | None, resolver: str,
           tolerance: int, debug: bool) -> int:
    """Compare a .tflite in LiteRT with float, fake-quant and integer-reference runs.

    Exit status 1 when LiteRT differs from the integer reference by more than
    --tolerance steps on any compared tensor.
    """
    from qatir.compile import verify_tflite

    require_file(tflite_model)
    require_file(against)
    if data:
        require_file(data, "data")
    import_tensorflow_quietly(debug)
    result = verify_tflite(tflite_model, against, samples=samples, data=data,
                           resolver=resolver, tolerance_lsb=tolerance)
    click.echo(result.format())
    return 0 if result.ok else 1


@cli.command(name="passes")
@debug_option
def passes_cmd(debug: bool) -> None:
    """List the registered passes, pattern tables and quantizers."""
    from qatir.compile import registry_listing

    click.echo(registry_listing())


@cli.command()
@click.argument("model", required=False)
@shape_option
@click.option("--calib-random", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--repeat", type=click.IntRange(min=1), default=20, show_default=True,
              help="Invocations timed in LiteRT.")
@debug_option
def bench(model: str | None, input_shape: tuple[str, ...], calib_random: int, repeat: int,
          debug: bool) -> None:
    """Time each stage (load, quantize, calibrate, write, LiteRT invoke) on MODEL.

    Without MODEL, the demo CNN is built and timed.
    """
    from qatir.bench import bench_model

    if model:
        require_file(model)
    click.echo(bench_model(model, parse_input_shapes(input_shape), calib_batches=calib_random,
                           repeat=repeat,
                           import_tf=lambda: import_tensorflow_quietly(debug)).format())


@cli.command()
@click.option("--out", "out_dir", default="qatir-demo", show_default=True,
              help="Directory for the files the demo writes.")
@click.option("--fast", is_flag=True, help="Fewer epochs (for smoke tests).")
@click.option("--progress/--no-progress", default=None,
              help="Progress bars (default: when stderr is a terminal).")
@debug_option
def demo(out_dir: str, fast: bool, progress: bool | None, debug: bool) -> None:
    """Train a small CNN on scikit-learn's digits, run QAT, export int8 and run it in LiteRT."""
    from qatir.demo import run_demo

    import_tensorflow_quietly(debug)
    result = run_demo(out_dir, fast=fast, progress=progress,
                      echo=lambda s: click.echo(s))
    click.echo(result.format())


# --------------------------------------------------------------------------- entry point
def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point: returns the exit status (2 for a user's error)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("QATIR_DEBUG", "") not in ("", "0")
    try:
        rv = cli.main(args=args, prog_name="qatir", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except (click.Abort, KeyboardInterrupt):
        click.echo("qatir: interrupted", err=True)
        return 130
    except BrokenPipeError:  # e.g. `qatir dump m.onnx | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except click.ClickException as e:
        if debug:
            traceback.print_exc()
        click.echo(f"qatir: error: {_one_line(e.format_message())}", err=True)
        return EXIT_USER_ERROR
    except (QatirError, OSError) as e:
        if debug:
            traceback.print_exc()
        click.echo(f"qatir: error: {_one_line(str(e))}", err=True)
        return EXIT_USER_ERROR
    return rv if isinstance(rv, int) else 0


def _one_line(msg: str) -> str:
    """Errors may carry an IR excerpt; the first line says what went wrong."""
    lines = [ln for ln in msg.strip().splitlines() if ln.strip()]
    if not lines:
        return "unknown error"
    more = f" (+{len(lines) - 1} more lines; --debug shows all)" if len(lines) > 1 else ""
    return lines[0] + more


if __name__ == "__main__":
    sys.exit(main())
