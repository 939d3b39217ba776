"""The ``fastattn bench`` command line: its options and what they run.

``fastattn bench [options]`` runs a sweep and writes a report directory;
``fastattn bench compare A B`` prints the ratios of two saved reports.
"""

import argparse
import sys

HELP = "measure time, throughput and memory vs sequence length; write a report"
USAGE = """\
%(prog)s [options]                             run a sweep, write a report
       %(prog)s compare A B [--max-slowdown PERCENT]  compare two saved reports"""
DESCRIPTION = """\
Sweep the sequence length N over powers of two for every backend (naive, numba,
cython when built, torch when installed), with and without a causal mask. Each
point runs in a fresh process: median, fastest and slowest time after a warm-up,
GFLOP/s, tokens/s and peak memory, next to a matmul reference (the faster of
NumPy's and torch's, in the same dtype). Then forward + backward (a training
step: attention, then attention_backward; torch: SDPA, then .backward) of the
compiled backends and torch, at B x H as given and at B x H = 1, with the peak
memory of the backward. With --models, whole models in transformers with
attn_implementation "fastattn", "sdpa" and "eager": a tiny Llama's prefill
(N = 512 ... 4096) and 64 decoded tokens, MiniLM's encode (N = 128 ... 512),
tokens/s and peak memory. With --dtypes, every forward and forward + backward
point is timed in each dtype (float16 and bfloat16 too: stored in 16 bits,
computed in float32), torch's SDPA in the same dtype among them, and the report
compares the dtypes; with --isa, the Cython points are repeated at each listed
instruction-set level. With --serving, serving workloads: decoding (Lq = 1,
Lk = 65536, Hq = 32, Hk = 8, D = 64) through attention, paged_attention and
torch's SDPA against the machine's read bandwidth, measured in the same run;
a packed batch of 16 sequences (64 ... 2048 tokens) through varlen_attention
against the same batch padded (attention with a padding mask, torch's SDPA);
ALiBi at N = 32768 and its peak memory. Every point records the level it ran
at. Writes report.md, results.json and PNG plots to --out. The optional action
`compare A B` compares two saved reports instead of running a sweep."""
EXAMPLES = [
    ("fastattn bench --quick", "every backend, N = 128 ... 2048, and fwd + bwd (minutes)"),
    ("fastattn bench --backward only", "forward + backward only, N = 512 ... 16384"),
    ("fastattn bench --models only", "tiny Llama and MiniLM in transformers: fastattn, "
                                      "sdpa, eager"),
    ("fastattn bench --dtypes float32,bfloat16", "every point in both dtypes, compared"),
    ("fastattn bench --serving only", "decoding against the read bandwidth, varlen against "
                                      "padding, ALiBi at N = 32768"),
    ("fastattn bench compare A B", "time and GFLOP/s ratios of two saved reports"),
]
"""``(command, what it does)`` lines for ``fastattn --help``."""


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _size_list(text):
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes, got {text!r}")
    return sizes


def _name_list(text):
    return [part.strip() for part in text.split(",") if part.strip()]


def _dtype_list(text):
    from ._workload import DTYPES

    names = list(dict.fromkeys(part.strip().lower() for part in text.split(",")
                               if part.strip()))
    if not names or any(name not in DTYPES for name in names):
        raise argparse.ArgumentTypeError(f"expected comma-separated dtypes among "
                                         f"{', '.join(DTYPES)}, got {text!r}")
    return names


def add_arguments(parser):
    """Add the ``bench`` options (and its ``compare`` action) to ``parser``."""
    from ._machine import default_memory_budget_gib

    sweep = parser.add_argument_group("sweep")
    sweep.add_argument("--quick", action="store_true",
                       help="N = 128 ... 2048, forward + backward at N = 512, 1024, "
                            "3 repeats, smaller reference matmul (a few minutes on two cores)")
    sweep.add_argument("--sizes", type=_size_list, metavar="N,N,...",
                       help="exact sequence lengths (default 128 ... 16384 by powers of two)")
    sweep.add_argument("--max-n", type=_positive_int, metavar="N",
                       help="largest N of the geometric sweep from 128")
    sweep.add_argument("--backward", choices=("yes", "no", "only"), default="yes",
                       help="also time forward + backward (default), not, or only that")
    sweep.add_argument("--backward-sizes", type=_size_list, metavar="N,N,...",
                       help="sequence lengths of forward + backward (default: those of "
                            "--sizes or --max-n when given, else 512 ... 16384; quick "
                            "512, 1024)")
    sweep.add_argument("--models", choices=("yes", "no", "only"), default="no",
                       help="also time whole models in transformers (tiny Llama prefill "
                            "and decode, MiniLM encode; a few minutes), not (default), or "
                            "only them")
    sweep.add_argument("--serving", choices=("yes", "no", "only"), default="no",
                       help="also time the serving workloads (decoding against the read "
                            "bandwidth, contiguous and paged; a varlen batch against "
                            "padding; ALiBi at N = 32768; minutes), not (default), or "
                            "only them")
    sweep.add_argument("--backends", type=_name_list, metavar="NAME,...",
                       help="backends to run (default: every available one and torch if "
                            "installed)")
    sweep.add_argument("--causal", choices=("both", "yes", "no"), default="both",
                       help="run with a causal mask, without, or both (default both)")
    sweep.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                       help="dtype of the points and the matmul reference (default "
                            "%(default)s)")
    sweep.add_argument("--dtypes", type=_dtype_list, metavar="DTYPE,...",
                       help="time every forward and forward + backward point in each of "
                            "these dtypes (float32, float64, float16, bfloat16; bfloat16 "
                            "needs ml_dtypes) and compare them in the report; default: "
                            "--dtype alone")
    sweep.add_argument("--isa", metavar="LEVEL,...|all",
                       help="also time the Cython points at each of these instruction-set "
                            "levels (baseline, avx2, avx512, avx512bf16), or at every "
                            "level this build and CPU run (all); default: once, at the "
                            "level chosen at import")
    sweep.add_argument("--batch", type=_positive_int, default=1)
    sweep.add_argument("--heads", type=_positive_int, default=8)
    sweep.add_argument("--head-dim", type=_positive_int, default=64)
    sweep.add_argument("--threads", type=_positive_int,
                       help="threads for every backend (default: all available cores)")
    sweep.add_argument("--repeats", type=_positive_int,
                       help="timed calls per point after the warm-up (default 5, quick 3)")
    sweep.add_argument("--time-budget", type=float, metavar="SECONDS",
                       help="stop timing a point after this long (default 20, quick 3)")
    sweep.add_argument("--min-time", type=float, metavar="SECONDS",
                       help="keep timing short calls until this long (default 1, quick 0.3)")
    sweep.add_argument("--memory-budget", type=float, metavar="GIB",
                       default=default_memory_budget_gib(),
                       help="skip naive where its score matrices need more "
                            "(default 25%% of RAM: %(default)s)")
    sweep.add_argument("--reference-size", type=int, metavar="M",
                       help="size M of the M x M matmul reference, timed with NumPy "
                            "and torch (default 4096, quick 2048; 0 to skip)")
    sweep.add_argument("--point-timeout", type=float, default=1800.0, metavar="SECONDS",
                       help="stop a point's process after this long (default %(default)s)")
    sweep.add_argument("--no-check", action="store_true",
                       help="do not compare results with the naive reference")
    output = parser.add_argument_group("output")
    output.add_argument("--out", default="bench-report", metavar="DIR",
                        help="report directory (default %(default)s)")
    output.add_argument("--no-plots", action="store_true", help="do not draw the PNG plots")
    output.add_argument("--quiet", action="store_true", help="print no progress")

    actions = parser.add_subparsers(dest="action", metavar="[compare]", required=False,
                                    title="optional action",
                                    description="without one, the command runs a sweep")
    compare = actions.add_parser(
        "compare", prog=f"{parser.prog} compare", help="per-point ratios of two saved reports",
        description="Print time and GFLOP/s ratios (B over A) of two saved reports, "
                    "matched by backend, mask, N, dtype and shape.")
    compare.add_argument("a", metavar="A", help="baseline report directory or results.json")
    compare.add_argument("b", metavar="B", help="new report directory or results.json")
    compare.add_argument("--max-slowdown", type=float, metavar="PERCENT",
                         help="exit with status 1 when a point of B is more than PERCENT "
                              "%% slower than in A")


def config_from_args(args):
    """Turn parsed options into a :class:`~fastattn.bench._sweep.SweepConfig`."""
    from .._config import available_cores
    from ._models import MODEL_WORKLOADS
    from ._sweep import SweepConfig
    from ._workload import benchmark_backends

    sizes, backward_sizes = _sizes(args)
    causal = {"both": (False, True), "yes": (True,), "no": (False,)}[args.causal]

    def pick(value, quick, full):
        return value if value is not None else (quick if args.quick else full)

    reference_size = pick(args.reference_size, 2048, 4096) if sizes else 0
    models = () if args.models == "no" else MODEL_WORKLOADS
    backends = tuple(benchmark_backends(args.backends))
    return SweepConfig(
        sizes=tuple(sizes), backends=backends,
        threads=args.threads or available_cores(), memory_budget_gib=args.memory_budget,
        causal=causal, dtype=args.dtype, dtypes=_dtypes(args),
        isa_levels=_isa_levels(args, backends), batch=args.batch, heads=args.heads,
        head_dim=args.head_dim, repeats=pick(args.repeats, 3, 5),
        time_budget_s=pick(args.time_budget, 3.0, 20.0), min_time_s=pick(args.min_time, 0.3, 1.0),
        reference_size=reference_size, check=not args.no_check,
        point_timeout_s=args.point_timeout, backward_sizes=tuple(backward_sizes), models=models,
        serving=args.serving != "no", extra={"quick": args.quick})


def _dtypes(args):
    """The dtypes ``--dtypes`` asks for (each one that NumPy can make here), or None."""
    from ._workload import numpy_dtype

    if not args.dtypes:
        return None
    for name in args.dtypes:
        try:
            numpy_dtype(name)
        except ModuleNotFoundError as error:
            raise ValueError(f"--dtypes {name}: {error}") from None
    return tuple(args.dtypes)


def _isa_levels(args, backends):
    """The levels ``--isa`` asks for, or None; ValueError when nothing could use them."""
    from ._levels import parse_levels

    if not args.isa:
        return None
    if "cython" not in backends:
        raise ValueError("--isa repeats the Cython points, but cython is not among the "
                         f"backends ({', '.join(backends)})")
    return parse_levels(args.isa)


def _sizes(args):
    """``(forward sizes, forward + backward sizes)`` that the options ask for."""
    from ._sweep import (FULL_BACKWARD_SIZES, FULL_SIZES, QUICK_BACKWARD_SIZES, QUICK_SIZES,
                         geometric_sizes)

    if args.sizes:
        sizes = args.sizes
    elif args.max_n:
        sizes = geometric_sizes(min(128, args.max_n), args.max_n)
    else:
        sizes = QUICK_SIZES if args.quick else FULL_SIZES
    if args.backward_sizes:
        backward = args.backward_sizes
    elif args.sizes or args.max_n:
        backward = sizes
    else:
        backward = QUICK_BACKWARD_SIZES if args.quick else FULL_BACKWARD_SIZES
    only_other = "only" in (args.models, args.serving)  # models or serving alone
    if args.backward == "no" or only_other:
        backward = ()
    if args.backward == "only" or only_other:
        sizes = ()
    return sizes, backward


def run(args):
    """Run the action ``args`` asks for; return the exit status."""
    if args.action == "compare":
        return _run_compare(args)
    from ._report import write_report
    from ._sweep import run_sweep

    try:
        config = config_from_args(args)
    except ValueError as error:
        print(f"fastattn bench: {error}", file=sys.stderr)
        return 2
    results = run_sweep(config, progress=not args.quiet,
                        command=["fastattn"] + list(getattr(args, "argv", None) or ["bench"]))
    written = write_report(results, args.out, plots=not args.no_plots)
    if not args.quiet:
        print("wrote " + ", ".join(str(path) for path in written))
    failed = [p for p in results["points"] if p["status"] == "failed"]
    return 1 if failed else 0


def _run_compare(args):
    from ._compare import compare_results, format_comparison, regressions

    try:
        comparison = compare_results(args.a, args.b)
    except (FileNotFoundError, ValueError) as error:
        print(f"fastattn bench compare: {error}", file=sys.stderr)
        return 2
    print(format_comparison(comparison, args.a, args.b))
    if args.max_slowdown is not None:
        slower = regressions(comparison, 1 + args.max_slowdown / 100)
        if slower:
            print(f"\n{len(slower)} point(s) more than {args.max_slowdown:g}% slower in B",
                  file=sys.stderr)
            return 1
    return 0
