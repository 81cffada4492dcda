"""The `jconv` console script (also ``python -m jconv``).

``jconv explain`` answers "when a conv layer gets C feature maps, are they merged, averaged or
passed on?" for the question's own example or any network, with every number beside its
formula and checked by running the einsum engine; with ``--mesh``/``--shard``, each
convolution split over a device mesh (bytes per device, bytes sent forward and backward,
checked against the compiled sharded programs; `jconv._explain_mesh`). Exit status: 0 all
checks pass, 1 a check failed, 2 a malformed command line.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import textwrap
from collections.abc import Sequence
from typing import Any, NoReturn

from . import models
from ._grammar import GRAMMAR_HELP, KINDS, GrammarError, parse_input, parse_layer
from ._report import DTYPES, MAX_DEPTH

__all__ = ["main"]

_EXPLAIN_EPILOG = f"""\
{GRAMMAR_HELP}

examples:
  jconv explain                              the question's example: 28x28x1 through two
                                             conv layers of 10 3x3 filters, then 28x28x3
  jconv explain --plot docs/explain.png      also plot memory and params vs depth
  jconv explain --input 224x224x3 --layer conv:64,k=3,s=2 --layer dw:k=3 \\
                --layer sep:128,k=3 --layer pool:max,k=2,s=2 --layer gap --layer dense:10
  jconv explain --model resnet50 --no-verify --json > resnet50.json
  jconv explain --model vgg16 --batch 1 --check-maps 4     verify all 13 convs (progress shown)
  jconv explain --model mobilenet_v1 --dtype bfloat16 --markdown
  jconv explain --fn mypkg.models:make_resnet --input 1x32x32x3
                your own model: the factory returns a function of arrays, a Flax nnx
                module, or (module, variables) for linen; --input gives each input
                with its batch (repeat --input for several inputs)
  jconv explain --torch mypkg.models:make_net --input 1x3x32x32
                a torch.nn.Module traced with torch.fx (Conv1d/2d/3d, ConvTranspose,
                Linear, BatchNorm), input NCHW
  jconv explain --model resnet50 --batch 8 --mesh 8 --shard batch
                each convolution split over 8 devices (simulated on the CPU when fewer):
                bytes per device and bytes sent forward and backward, with formulas,
                checked against the compiled sharded programs
  jconv explain --input 32x32x16 --layer conv:32,k=3 --batch 4 --mesh 2x4 --shard batch,h
                a 2-D mesh: the batch over 2 devices, the height over 4

verification: every conv layer runs in full through the einsum engine on random data (shape,
element count and bytes are measured); the check "each output map is the SUM of its per-channel
correlations, not their average" recomputes each per-channel correlation separately with the
engine, for up to --check-maps evenly spaced output maps per layer (first and last included).
exit status: 0 all checks pass, 1 some check failed, 2 malformed command line or an error
in the user's code (one line; --debug shows the traceback).
"""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2, no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(
        prog="jconv",
        description=textwrap.fill(
            "jconv: N-D convolution as an einsum over channels and kernel offsets. Each of a "
            "layer's F filters sums its C_in per-channel correlations, so a layer outputs F "
            "maps. Also runs as `python -m jconv`.", 90),
        epilog="examples:\n  jconv explain\n  jconv explain --model vgg16 --no-verify\n"
               "  jconv explain --help          every option of explain, with the layer grammar",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"jconv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    ex = sub.add_parser(
        "explain",
        help="per-layer shapes, parameters, bytes and multiply-adds, with formulas, verified",
        description=textwrap.fill(
            "Explain what a conv network does with its feature maps: per layer the input shape, "
            "kernel shape, weights and biases, how one output map is formed (a SUM over the "
            "input channels) and its einsum, output shape, activation bytes and multiply-adds, "
            "each beside its symbolic formula; then totals, the three hypotheses over depth, "
            "and a numeric verification with the einsum engine. Without --model/--layer it "
            "runs the question's example.", 90),
        epilog=_EXPLAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    net = ex.add_argument_group("network (default: the question's example)")
    net.add_argument("--input", metavar="HxWxC", action="append",
                     help="input shape without batch, channels last, e.g. 224x224x3 "
                          "(default with --layer: 28x28x1; with --model: the model's own); "
                          "with --fn/--torch each input with its batch, e.g. 1x32x32x3")
    net.add_argument("--layer", metavar="SPEC", action="append", default=[],
                     help="one layer, repeatable, in order, e.g. conv:64,k=3,s=2,p=same "
                          "(grammar below)")
    net.add_argument("--model", choices=tuple(models.MODELS),
                     help="a network from jconv.models; totals are checked against the "
                          "published figures")
    net.add_argument("--fn", metavar="MODULE:FACTORY",
                     help="your own JAX model: FACTORY() returns a function of arrays, a Flax "
                          "nnx module, or (linen module, variables); --input gives the inputs "
                          "with their batch, e.g. 1x32x32x3")
    net.add_argument("--torch", metavar="MODULE:FACTORY",
                     help="your own torch.nn.Module, traced with torch.fx; --input NCHW with "
                          "batch, e.g. 1x3x32x32")
    net.add_argument("--debug", action="store_true",
                     help="show the traceback of an error in --fn/--torch code")
    run = ex.add_argument_group("run")
    run.add_argument("--batch", metavar="N", type=int, default=1,
                     help="batch size N for shapes, bytes and MACs (default 1)")
    run.add_argument("--dtype", choices=tuple(DTYPES), default="float32",
                     help="element type for bytes and for the verification run (default float32)")
    run.add_argument("--no-verify", dest="verify", action="store_false",
                     help="skip running the engine (numbers and formulas only)")
    run.add_argument("--check-maps", metavar="K", type=int, default=16,
                     help="output maps per layer in the sum-over-channels check (default 16)")
    run.add_argument("--depth", metavar="L", type=int, default=8,
                     help=f"largest depth in the hypotheses table (default 8, at most "
                          f"{MAX_DEPTH})")
    run.add_argument("--no-hypotheses", dest="hypotheses", action="store_false",
                     help="omit the three-hypotheses table")
    run.add_argument("--seed", type=int, default=0,
                     help="random seed of the data, >= 0 (default 0)")
    scale = ex.add_argument_group("scale out (each convolution split over a device mesh)")
    scale.add_argument("--mesh", metavar="PxQ",
                       help="device counts per mesh axis, e.g. 8 or 2x4 (each >= 2); without "
                            "as many devices, that many CPU devices are simulated (at most "
                            "1024); replaces the report by per-device bytes and communication")
    scale.add_argument("--shard", metavar="SPLITS",
                       help="what each mesh axis splits, comma-separated, one per axis: batch, "
                            "h, w (d), features (output) or channels (input); e.g. batch,h")
    out = ex.add_argument_group("output")
    fmt = out.add_mutually_exclusive_group()
    fmt.add_argument("--json", dest="format", action="store_const", const="json",
                     help="machine-readable JSON with every number and formula (stable keys)")
    fmt.add_argument("--markdown", dest="format", action="store_const", const="markdown",
                     help="GitHub Markdown tables")
    fmt.add_argument("--latex", dest="format", action="store_const", const="latex",
                     help="LaTeX tabulars, formulas in math mode")
    out.add_argument("--view", choices=("auto", "full", "compact"), default="auto",
                     help="terminal tables: one per layer (full), one per network (compact), "
                          "or full up to 8 layers (auto, default)")
    out.add_argument("--plot", metavar="FILE.png",
                     help="write memory and parameters vs depth for the three hypotheses "
                          "(log scale)")
    return parser


def _options(args: argparse.Namespace) -> None:
    """Checks shared by every kind of network (exit 2 naming the option)."""
    if args.batch < 1:
        _fail(f"--batch {args.batch!r}: must be >= 1; example: --batch 8")
    if args.check_maps < 1:
        _fail(f"--check-maps {args.check_maps!r}: must be >= 1; example: --check-maps 4")
    if args.depth < 1:
        _fail(f"--depth {args.depth!r}: must be >= 1; example: --depth 8")
    if args.depth > MAX_DEPTH:
        _fail(f"--depth {args.depth!r}: must be <= {MAX_DEPTH} (keeping every map needs "
              f"C0*F^L channels, beyond any memory long before); example: --depth 16")
    if args.seed < 0:
        _fail(f"--seed {args.seed!r}: must be >= 0; example: --seed 1")
    picked = [f for f in ("model", "fn", "torch") if getattr(args, f)]
    if len(picked) > 1 or (picked and args.layer):
        given = ", ".join(f"--{f}" for f in picked + (["layer"] if args.layer else []))
        _fail(f"give one of --model, --fn, --torch or --layer, not {given}; "
              "example: --model vgg16")


def _note(message: str) -> None:
    sys.stderr.write(f"jconv explain: note: {message}\n")


def _fail(message: str) -> NoReturn:
    sys.stderr.write(f"jconv explain: error: {message}\n")
    raise SystemExit(2)


def _grammar_fail(flag: str, e: GrammarError) -> NoReturn:
    _fail(f"{flag} {e.text!r}: {e.token!r} {e.rule}; example: {flag} {e.example}")


def _networks(args: argparse.Namespace) -> list[tuple[models.Network, str]]:
    """The networks to explain, validated layer by layer (exit 2 naming the bad layer)."""
    shape = None
    if args.input is not None:
        if len(args.input) > 1:
            _fail("--input is given once for a --layer network (several inputs are for "
                  "--fn/--torch); example: --input 224x224x3")
        args.input = args.input[0]
        try:
            shape = parse_input(args.input)
        except GrammarError as e:
            _grammar_fail("--input", e)
        if len(shape) == 2 and args.layer:
            _note(f"--input {args.input}: read as a 1-D signal of length {shape[0]} with "
                  f"{shape[1]} channels; for a {args.input} image with one channel write "
                  f"--input {args.input}x1")
    if args.model:
        net = models.MODELS[args.model]()
        if shape is not None and shape != net.input_shape:
            # another input: the published figures (for the model's own input) do not apply
            net = models.Network(f"{net.name}@{_x(shape)}", shape, net.layers)
        return [(_validated(net, []), f"{args.model} on {_x(net.input_shape)}")]
    if not args.layer:
        if shape is not None:
            _fail(f"--input {args.input!r} needs --layer specs or --model; "
                  "example: --input 224x224x3 --layer conv:64,k=3")
        from ._explain import DEFAULT_NETWORKS

        return DEFAULT_NETWORKS()
    layers: list[models.Layer] = []
    for text in args.layer:
        try:
            layers.append(parse_layer(text))
        except GrammarError as e:
            _grammar_fail("--layer", e)
        except ValueError as e:
            _fail(f"--layer {text!r}: {e}")
    in_shape = shape or (28, 28, 1)
    net = models.Network("custom", in_shape, tuple(layers))
    titles = ", ".join(args.layer)
    return [(_validated(net, args.layer), f"{_x(in_shape)} -> {titles}")]


def _x(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


def _validated(net: models.Network, texts: list[str]) -> models.Network:
    """Walk growing prefixes so a geometry error names the --layer (or --input) at fault."""
    for i in range(1, len(net.layers) + 1):
        if texts:
            head = texts[i - 1].partition(":")[0].strip().lower()
            where = f"--layer {texts[i - 1]!r}"
            example = f"--layer {KINDS[head].example}" if head in KINDS else ""
        else:
            where, example = f"--input {_x(net.input_shape)!r}", "--input 224x224x3"
        try:
            infos = models.Network(net.name, net.input_shape, net.layers[:i]).walk()
        except ValueError as e:
            _fail(f"{where} on input {_x(net.input_shape)}: {e} example: {example}")
        empty = [inf for inf in infos if 0 in inf.out_shape]
        if empty:
            _fail(f"{where}: output shape {empty[0].out_shape} is empty (window larger than "
                  f"its input); use a smaller kernel or p=same; example: {example}")
    return net


def _explain(args: argparse.Namespace) -> int:
    _options(args)  # before importing what computes: bad options answer at once
    if args.mesh is not None or args.shard is not None:
        return _explain_mesh(args)
    from rich.console import Console

    from ._explain import build_report

    if args.fn or args.torch:
        from ._user_code import user_report

        report = user_report(args, _fail)
        err = Console(stderr=True)
        return _output(args, report, err)
    networks = _networks(args)
    err = Console(stderr=True)
    total = sum(len(n.walk(args.batch)) for n, _ in networks) if args.verify else 0
    if args.verify and total > 8 and err.is_terminal:
        from rich.progress import Progress

        with Progress(console=err, transient=True) as bar:
            task = bar.add_task("verifying", total=total)

            def tick(msg: str) -> None:
                bar.update(task, advance=1, description=f"verifying {msg}")

            report = build_report(networks, batch=args.batch, dtype=args.dtype, verify=True,
                                  check_maps=args.check_maps, depth=args.depth,
                                  hypotheses=args.hypotheses, progress=tick, seed=args.seed)
    else:
        if args.verify and total > 8:
            err.print(f"verifying {total} layers ...")
        report = build_report(networks, batch=args.batch, dtype=args.dtype, verify=args.verify,
                              check_maps=args.check_maps, depth=args.depth,
                              hypotheses=args.hypotheses, seed=args.seed)
    return _output(args, report, err)


def _explain_mesh(args: argparse.Namespace) -> int:
    """``--mesh``/``--shard``: every convolution split over the mesh, per device."""
    from ._explain_mesh import Layout, MeshError, check_networks, parse_mesh, parse_shard

    if args.mesh is None or args.shard is None:
        given = "--mesh" if args.shard is None else "--shard"
        value = args.mesh if args.shard is None else args.shard
        _fail(f"{given} {value!r}: needs {'--shard' if args.shard is None else '--mesh'} "
              "too (the mesh and what each of its axes splits); example: --mesh 8 --shard batch")
    for flag, bad in (("--fn", args.fn), ("--torch", args.torch), ("--plot", args.plot),
                      ("--latex", args.format == "latex")):
        if bad:
            _fail(f"--mesh {args.mesh!r}: not with {flag} (the mesh report covers --layer and "
                  "--model networks, as text, --json or --markdown); example: "
                  "--model resnet50 --batch 8 --mesh 8 --shard batch")
    try:
        shape = parse_mesh(args.mesh)
        layout = Layout(shape, parse_shard(args.shard, shape, args.mesh))
    except MeshError as e:
        _fail(str(e))
    if args.verify:
        _simulate(layout.size)  # before anything below imports JAX
    networks = _networks(args)
    try:
        count = check_networks(networks, layout, args.batch)
    except MeshError as e:
        _fail(str(e))
    from rich.console import Console

    from ._explain_mesh import build_mesh_report

    err = Console(stderr=True)
    devices, text = _mesh_devices(args.mesh, layout.size) if args.verify else (None, "")
    if devices is not None and count > 8:
        err.print(f"compiling {count} convolutions on {text} ...")
    report = build_mesh_report(networks, layout, batch=args.batch, dtype=args.dtype,
                               devices=devices, device_text=text)
    return _output_mesh(args, report)


_COUNT_FLAG = "--xla_force_host_platform_device_count"


def _simulate(size: int) -> None:
    """Ask XLA for `size` CPU devices (appended to ``XLA_FLAGS``) unless JAX has started or
    the flags already ask for as many."""
    import re

    from ._explain_mesh import MAX_SIMULATED_DEVICES

    if "jax" in sys.modules or size > MAX_SIMULATED_DEVICES:
        return
    flags = os.environ.get("XLA_FLAGS", "")
    asked = re.findall(_COUNT_FLAG + r"=(\d+)", flags)
    if asked and int(asked[-1]) >= size:
        return
    os.environ["XLA_FLAGS"] = f"{flags} {_COUNT_FLAG}={size}".strip()


def _mesh_devices(text: str, size: int) -> tuple[list[Any], str]:
    """`size` devices of the default backend, else of the CPU (simulated); exit 2 naming
    the mesh when neither has that many."""
    import jax

    from ._explain_mesh import MAX_SIMULATED_DEVICES

    have = jax.devices()
    try:
        cpu = have if have[0].platform == "cpu" else jax.devices("cpu")
    except RuntimeError:  # JAX_PLATFORMS leaves the CPU out
        cpu = []
    for devices in (have, cpu):
        if len(devices) >= size:
            platform = devices[0].platform
            simulated = platform == "cpu" and _COUNT_FLAG in os.environ.get("XLA_FLAGS", "")
            return list(devices[:size]), (f"{size} {platform} devices"
                                          + (" (simulated)" if simulated else ""))
    here = f"{len(have)} {have[0].platform} device(s) here"
    if size > MAX_SIMULATED_DEVICES:
        rule = (f"needs {size} devices: {here}, and at most {MAX_SIMULATED_DEVICES} CPU "
                "devices are simulated")
    else:
        rule = (f"needs {size} devices: {here}, and JAX started before the command could ask "
                f"for simulated ones (set XLA_FLAGS={_COUNT_FLAG}={size} before JAX starts)")
    _fail(f"--mesh {text!r}: {rule}; example: --mesh 8")


def _output_mesh(args: argparse.Namespace, report: Any) -> int:
    from rich.console import Console

    from ._explain_mesh import render_mesh_json, render_mesh_markdown, render_mesh_rich

    if args.format == "json":
        sys.stdout.write(render_mesh_json(report) + "\n")
    elif args.format == "markdown":
        sys.stdout.write(render_mesh_markdown(report))
    elif sys.stdout.isatty():
        render_mesh_rich(report, Console())
    else:  # plain text without trailing blanks, wide enough for the tables
        buffer = io.StringIO()
        width = int(os.environ.get("COLUMNS") or 160)
        render_mesh_rich(report, Console(file=buffer, width=width))
        sys.stdout.write("".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines()))
    return 0 if report.ok else 1


def _output(args: argparse.Namespace, report: Any, err: Any) -> int:
    from rich.console import Console

    from ._explain_render import render_json, render_latex, render_markdown, render_rich, write_plot

    if args.format == "json":
        sys.stdout.write(render_json(report) + "\n")
    elif args.format == "markdown":
        sys.stdout.write(render_markdown(report))
    elif args.format == "latex":
        sys.stdout.write(render_latex(report))
    else:
        if sys.stdout.isatty():
            render_rich(report, Console(), view=args.view)
        else:  # plain text without trailing blanks, wide enough for the tables
            buffer = io.StringIO()
            width = int(os.environ.get("COLUMNS") or 136)
            render_rich(report, Console(file=buffer, width=width), view=args.view)
            sys.stdout.write("".join(line.rstrip() + "\n"
                                     for line in buffer.getvalue().splitlines()))
    if args.plot:
        if report.hypotheses is None:
            _fail(f"--plot {args.plot!r}: needs the hypotheses (a network starting with a conv "
                  "layer on an HxWxC input, without --no-hypotheses)")
        try:
            written = write_plot(report.hypotheses, args.plot)
        except (OSError, ValueError) as e:
            _fail(f"--plot {args.plot!r}: cannot write it "
                  f"({getattr(e, 'strerror', None) or e}); example: --plot explain.png")
        err.print(f"wrote {written}")
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `jconv` console script; returns the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return _explain(args)
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
