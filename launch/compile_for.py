"""Compile a run's training step ahead of time for its TPU slice, here, and say whether it fits in HBM.

    make libtpu                      # once: libtpu (requirements/libtpu.txt) into .libtpu/, outside .venv
    python -m launch.compile_for --gin_file=gin/runs/de_en_tpu_v4_64_mlm.gin [--gin_bindings=...] \
        [--topology=v4-64] [--task_type=pairs] [--num_negatives=7] [--json=out.json]

The slice comes from the run file (``topology.name = 'v4-64'``, names in ``launch.topology``; ``--topology``
overrides it). libtpu describes the slice without the hardware (``jax.experimental.topologies``), so on a
CPU-only machine this builds the run's mesh over the slice's devices and compiles the trainer's own step
(``trainer.build_steps`` + ``sharded.compile_step``: the same model, optimiser, shardings, donation and
GradCache as the real run) for every task type of the stage, on abstract shapes only: the global batch
``TrainConfig.batch_size`` at the stage's ``data.options`` sequence lengths. No data, tokenizer or checkpoint
is read (the model preset's vocabulary is used; ``init_from`` and ``tokenizer`` are ignored).

It prints, per step: the mesh, the global batch, XLA's per-device memory (arguments, outputs, the part of the
outputs aliased to the donated arguments, temporaries, generated code; total = arguments + outputs - aliased
+ temporaries + code) against the chip's HBM, the compile time, and the compiled FLOPs per step and per
device beside the analytic matmul count of ``bilingual.flops``. XLA counts every op and the recomputation of
``encoder.remat``, so its figure is higher; but it counts a while loop's body once, so with GradCache, whose
chunks are loops, it is about one chunk's share (marked ``*``).

Exit status 0: every step fits; 3: one does not, with the numbers in the ``error:`` line (the TPU compiler
refuses a step beyond the HBM it can use, and its message says by how much); 2: bad input (``launch.cli``).

libtpu is found through ``TPU_LIBRARY_PATH``, an installed ``libtpu`` package (``jax[tpu]`` on a TPU VM) or
``.libtpu/`` (``make libtpu``). The host's own devices are not used (``JAX_PLATFORMS=cpu`` unless set).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import time
from typing import Any, Callable, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from launch import cli  # noqa: E402
from launch import topology as topology_lib  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
GIN_DIR = ROOT / "gin"
LOCAL_LIBTPU = ROOT / ".libtpu" / "libtpu" / "libtpu.so"
GIB = 2 ** 30
EXIT_DOES_NOT_FIT = 3  # 1 is an uncaught exception, 2 bad input (launch.cli)


class DoesNotFit(Exception):
    """A step needs more HBM per device than the chip has; the message holds the numbers."""


def find_libtpu() -> Optional[str]:
    """The libtpu shared library: ``TPU_LIBRARY_PATH``, the ``libtpu`` package, or ``.libtpu/`` here."""
    from_env = os.environ.get("TPU_LIBRARY_PATH")
    if from_env and os.path.exists(from_env):
        return from_env
    try:
        import libtpu  # noqa: F401  (jax[tpu]; importing it sets TPU_LIBRARY_PATH)

        return libtpu.get_library_path()
    except ImportError:
        pass
    return str(LOCAL_LIBTPU) if LOCAL_LIBTPU.exists() else None


def prepare_libtpu(topo: topology_lib.Topology) -> str:
    """Point JAX at libtpu and quiet its start-up on a machine that is no TPU VM; returns the library path.

    libtpu reads these once, when JAX first loads it: ``TPU_SKIP_MDS_QUERY`` (no GCE metadata server here),
    ``TPU_ACCELERATOR_TYPE`` / ``TPU_WORKER_HOSTNAMES`` / ``TPU_WORKER_ID``, which it otherwise looks up and,
    failing, logs five lines of warnings for (harmless: the compile-only topology does not use them) and, for
    the worker id, writes a warning sentence into the process environment, and ``ALLOW_MULTIPLE_LIBTPU_LOAD``.
    """
    path = find_libtpu()
    if path is None:
        raise cli.UsageError("libtpu is not installed: run `make libtpu` (installs requirements/libtpu.txt into "
                             ".libtpu/), or `pip install -r requirements/libtpu.txt`, or set TPU_LIBRARY_PATH")
    os.environ["TPU_LIBRARY_PATH"] = path
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", topo.name)
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_WORKER_ID", "0")
    # libtpu takes /tmp/libtpu_lockfile so that one process owns the chips; nothing here opens a chip, and
    # without this a second compile (another terminal, the tests' subprocess) stops with "ABORTED: Internal
    # error when accessing libtpu multi-process lockfile"
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    return path


def topology_devices(topo: topology_lib.Topology) -> list:
    """The slice's devices as libtpu describes them (compile-only: nothing runs on them)."""
    from jax.experimental import topologies

    prepare_libtpu(topo)
    desc = topologies.get_topology_desc(platform="tpu", topology_name=topo.topology_name,
                                        chip_config_name=topo.chip_config_name,
                                        chips_per_host_bounds=topo.chips_per_host_bounds, num_slices=1,
                                        wrap=topo.wrap)
    if len(desc.devices) != topo.devices:
        raise RuntimeError(f"libtpu describes {topo.topology_name} with {len(desc.devices)} devices, "
                           f"the table says {topo.devices}")
    return list(desc.devices)


@dataclasses.dataclass
class StepReport:
    """One compiled step. Memory figures are bytes per device; FLOPs are XLA's per device and the analytic
    (matmul) count of the whole step. ``error``: the compiler's message when it refused the step."""

    stage: str
    task_type: str
    topology: str
    topology_name: str
    mesh: dict
    global_batch: int
    batch_shapes: dict
    hbm_bytes: int
    compile_seconds: float
    argument_bytes: int = 0
    output_bytes: int = 0
    alias_bytes: int = 0
    temp_bytes: int = 0
    code_bytes: int = 0
    flops_per_device: float = 0.0
    devices: int = 0
    analytic_flops: float = 0.0
    while_loops: int = 0  # in the compiled program: XLA's cost analysis counts each body once
    error: Optional[str] = None

    @property
    def total_bytes(self) -> int:
        """Peak per device as XLA accounts it (the donated state's outputs reuse its arguments' buffers)."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes

    @property
    def fits(self) -> bool:
        return self.error is None and self.total_bytes <= self.hbm_bytes

    @property
    def flops_per_step(self) -> float:
        return self.flops_per_device * self.devices

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "total_bytes": self.total_bytes, "fits": self.fits,
                "flops_per_step": self.flops_per_step}


def abstract_batch_shapes(task_type: str, batch_size: int, sequence_lengths: Optional[dict],
                          num_negatives: Optional[int], packing: Optional[dict] = None) -> dict:
    """Key -> global ``ShapeDtypeStruct`` of the stage's batches (defaults as the batch iterator's;
    ``packing``: ``data.options['packing']`` with its ``units`` filled in)."""
    from tasks import batching

    return batching.batch_shapes(task_type, batch_size, sequence_lengths, num_negatives, packing)


def stage_batch_shapes(config, sequence_lengths: Optional[dict] = None, num_negatives: Optional[int] = None,
                       task_types: Optional[list] = None, packing: Optional[dict] = None) -> dict[str, dict]:
    """Task type -> the abstract global batch of each step to compile (``config.batch_size`` rows at the
    ``sequence_lengths`` of ``data.options``, defaults as the batch iterator's); ``ConfigError`` for a stage,
    task type or length that cannot be compiled. ``config``: a ``TrainConfig``."""
    from bilingual.config import ConfigError
    from bilingual.training import objectives

    if config.stage not in ("mlm", "pairs", "multitask"):
        raise ConfigError(f"TrainConfig.stage={config.stage!r}: compile_for compiles the mlm, pairs and "
                          "multitask stages")
    stage_types = objectives.STAGES[config.stage]
    wanted = list(task_types or stage_types)
    unknown = [t for t in wanted if t not in stage_types]
    if unknown:
        raise ConfigError(f"--task_type {unknown}: the {config.stage} stage has {stage_types}")
    if "retrieval" in wanted and not num_negatives:
        raise ConfigError("the multitask stage's retrieval step needs the hard negatives per row: pass "
                          "--num_negatives (the registered retrieval tasks' num_negatives)")
    out = {}
    for task_type in wanted:
        try:
            out[task_type] = abstract_batch_shapes(task_type, config.batch_size, sequence_lengths, num_negatives,
                                                   packing)
        except ValueError as err:
            raise ConfigError(f"data.options: {err}") from err
    return out


def compile_config(config, topo: topology_lib.Topology, sequence_lengths: Optional[dict] = None,
                   num_negatives: Optional[int] = None, task_types: Optional[list] = None,
                   progress: Callable[[str], None] = lambda line: None,
                   packing: Optional[dict] = None) -> list[StepReport]:
    """Compile each step of ``config``'s stage (a ``TrainConfig``) for ``topo``; one report per task type
    (``progress`` gets a line before each compile, which takes minutes at full scale).

    The trainer's own pieces: ``trainer.validate`` (batch, GradCache chunks, ...), ``trainer.build_steps``
    (objective, optimiser, state shardings, steps) and ``sharded.compile_step`` (jit with in/out shardings,
    the state donated), on the abstract train state.
    """
    import flax.linen as nn
    import jax

    from bilingual import sharding
    from bilingual.training import sharded, trainer

    config = dataclasses.replace(config.resolved(), init_from=None, tokenizer=None)
    if packing is None:
        batches = stage_batch_shapes(config, sequence_lengths, num_negatives, task_types)  # fails before libtpu
    mesh = sharding.make_mesh(config.mesh, topology_devices(topo))
    if packing is not None:  # the units as launch.data_factory fills them in need the mesh
        if packing.get("units") is None:
            packing = {**packing, "units": sharding.batch_divisor(mesh) * max(1, config.step.gradcache_chunks)}
        batches = stage_batch_shapes(config, sequence_lengths, num_negatives, task_types, packing)
    trainer.validate(config, mesh)
    objective, tx, example_ids, shardings, step_fns = trainer.build_steps(config, mesh)
    state = nn.meta.unbox(sharded.abstract_state(objective.model, tx, example_ids))
    reports = []
    for task_type, shapes in batches.items():
        progress(f"compiling the {config.stage} stage's {task_type} step (global batch {config.batch_size}, mesh "
                 f"{dict(mesh.shape)}) ...")
        report = StepReport(stage=config.stage, task_type=task_type, topology=topo.name,
                            topology_name=topo.topology_name, mesh=dict(mesh.shape), global_batch=config.batch_size,
                            batch_shapes={k: [list(v.shape), str(v.dtype)] for k, v in shapes.items()},
                            hbm_bytes=topo.hbm_bytes_per_device, compile_seconds=0.0, devices=mesh.size,
                            analytic_flops=float(objective.flops(task_type, shapes)))
        start = time.perf_counter()
        try:
            compiled, memory = sharded.compile_step(step_fns[task_type], mesh, shardings, state, shapes,
                                                    rng_impl=config.dropout_prng)
        except jax.errors.JaxRuntimeError as err:
            if not _is_out_of_memory(err):
                raise
            report.error = cli.one_line(err)
            report.compile_seconds = time.perf_counter() - start
            reports.append(report)
            continue
        report.compile_seconds = time.perf_counter() - start
        report.argument_bytes = int(memory.argument_size_in_bytes)
        report.output_bytes = int(memory.output_size_in_bytes)
        report.alias_bytes = int(memory.alias_size_in_bytes)
        report.temp_bytes = int(memory.temp_size_in_bytes)
        report.code_bytes = int(memory.generated_code_size_in_bytes)
        report.flops_per_device = _flops(compiled.cost_analysis())
        report.while_loops = compiled.as_text().count(" while(")
        reports.append(report)
        del compiled
        jax.clear_caches()  # a full-scale compile holds GBs of host memory; the next step needs its own
    return reports


def _is_out_of_memory(err: Exception) -> bool:
    message = str(err).lower()
    return "resource_exhausted" in message or "ran out of memory" in message or "hbm" in message


def _flops(cost: Any) -> float:
    """XLA's FLOPs per device (``cost_analysis`` is a dict, or a list of one per module in older JAX)."""
    if isinstance(cost, (list, tuple)):
        return float(sum(c.get("flops", 0.0) for c in cost))
    return float((cost or {}).get("flops", 0.0))


def format_table(reports: list[StepReport]) -> str:
    """The memory table (GiB per device) and the FLOPs table, one row per step."""
    gib = lambda b: f"{b / GIB:.2f}"
    rows = [("stage", "step", "topology", "mesh (data x fsdp x tensor)", "global batch", "arguments", "outputs",
             "aliased", "temporaries", "code", "total", "HBM", "fits", "compile s")]
    for r in reports:
        mesh = " x ".join(str(r.mesh[a]) for a in ("data", "fsdp", "tensor"))
        memory = ("-",) * 6 if r.error else tuple(gib(b) for b in (r.argument_bytes, r.output_bytes, r.alias_bytes,
                                                                    r.temp_bytes, r.code_bytes, r.total_bytes))
        rows.append((r.stage, r.task_type, f"{r.topology} ({r.topology_name})", mesh, str(r.global_batch), *memory,
                     gib(r.hbm_bytes), "yes" if r.fits else "NO", f"{r.compile_seconds:.0f}"))
    lines = ["Per-device memory (GiB; total = arguments + outputs - aliased + temporaries + code)", _columns(rows)]
    rows = [("stage", "step", "devices", "XLA FLOP/step", "XLA FLOP/device", "analytic FLOP/step",
             "XLA / analytic", "while loops")]
    for r in reports:
        if r.error:
            rows.append((r.stage, r.task_type, str(r.devices), "-", "-", _flop(r.analytic_flops), "-", "-"))
            continue
        ratio = r.flops_per_step / r.analytic_flops if r.analytic_flops else float("nan")
        rows.append((r.stage, r.task_type, str(r.devices), _flop(r.flops_per_step), _flop(r.flops_per_device),
                     _flop(r.analytic_flops), f"{ratio:.2f}" + ("*" if r.while_loops else ""), str(r.while_loops)))
    lines += ["", "Compiled FLOPs (XLA cost analysis: every op, remat recomputation included) vs the analytic "
              "matmul count (bilingual.flops: 3x forward, +1 forward with GradCache)", _columns(rows)]
    if any(r.while_loops for r in reports):
        lines.append("* XLA's cost analysis counts a while loop's body once, not once per iteration: with GradCache "
                     "(StepConfig.gradcache_chunks > 1) the encoder runs in loops over the chunks, so the XLA figure "
                     "is about one chunk's share of the step")
    for r in reports:
        lines.append(f"{r.stage}/{r.task_type} batch: " + ", ".join(
            f"{k} {shape} {dtype}" for k, (shape, dtype) in r.batch_shapes.items()))
        if r.error:
            lines.append(f"{r.stage}/{r.task_type}: the TPU compiler refused the step: {r.error}")
    return "\n".join(lines)


def _flop(value: float) -> str:
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}FLOP"
    return f"{value:.3g} FLOP"


def _columns(rows) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) if i < 4 else cell.rjust(w) for i, (cell, w) in
                               enumerate(zip(row, widths))).rstrip() for row in rows)


def check_fits(reports: list[StepReport]) -> None:
    """``DoesNotFit`` naming every step over the chip's HBM, with its numbers."""
    problems = []
    for r in reports:
        if r.fits:
            continue
        if r.error:
            problems.append(f"the {r.stage} stage's {r.task_type} step (global batch {r.global_batch}) does not fit "
                            f"one {r.topology} device ({r.hbm_bytes / GIB:.1f} GiB HBM): {r.error}")
        else:
            problems.append(f"the {r.stage} stage's {r.task_type} step (global batch {r.global_batch}) needs "
                            f"{r.total_bytes / GIB:.2f} GiB per device (arguments {r.argument_bytes / GIB:.2f}, "
                            f"outputs {r.output_bytes / GIB:.2f}, aliased {r.alias_bytes / GIB:.2f}, temporaries "
                            f"{r.temp_bytes / GIB:.2f}, code {r.code_bytes / GIB:.2f}); a {r.topology} device has "
                            f"{r.hbm_bytes / GIB:.1f} GiB HBM")
    if problems:
        raise DoesNotFit("; ".join(problems))


def parse_args(argv=None) -> argparse.Namespace:
    parser = cli.parser(__doc__)
    parser.add_argument("--gin_file", action="append", required=True, help="gin file (repeatable)")
    parser.add_argument("--gin_bindings", action="append", default=[], help="gin binding (repeatable)")
    parser.add_argument("--topology", help="TPU slice (launch.topology); default: the run file's topology.name")
    parser.add_argument("--task_type", action="append", help="compile only this step (repeatable); "
                        "default: every task type of the stage")
    parser.add_argument("--num_negatives", type=int, help="hard negatives per retrieval row (multitask); "
                        "default: the largest num_negatives bound for a retrieval task in the gin files")
    parser.add_argument("--json", help="also write the reports to this JSON file")
    return parser.parse_args(argv)


def _bound_num_negatives() -> Optional[int]:
    """The largest ``num_negatives`` bound to a retrieval / BEIR task registration in the parsed gin config
    (any scope), else the bundled demo tasks' count when the run registers them, else None."""
    import gin

    from tasks import demo

    values = [_macro_value(params["num_negatives"]) for (_, selector), params in _gin_bindings().items()
              if selector.rsplit(".", 1)[-1] in ("register_retrieval_task", "register_beir_task")
              and "num_negatives" in params]
    values = [v for v in values if isinstance(v, int) and v > 0]
    if values:
        return max(values)
    try:
        return demo.NUM_NEGATIVES if gin.query_parameter("register_data.demo_tokenizer") else None
    except ValueError:
        return None


def _gin_bindings() -> dict:
    """``(scope, selector) -> {parameter: value}`` of the parsed gin config (gin has no public way to list
    the scoped bindings of a configurable; an empty dict if its internals change)."""
    import gin

    return dict(getattr(gin.config, "_CONFIG", {}))


def _macro_value(value):
    """``value`` with gin macros (``%NUM_NEGATIVES``, also chained ones) replaced by what they are bound to."""
    import gin

    for _ in range(16):
        if not (isinstance(value, gin.config.ConfigurableReference) and value.configurable.name == "macro"):
            return value
        value = gin.query_parameter("%" + value.scoped_selector.rsplit("/", 1)[0])
    return value


@cli.entry_point
def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the host's own devices are not needed
    import gin

    from launch import configurables, data_factory  # noqa: F401  (data_factory registers the data names)

    gin.add_config_file_search_path(str(GIN_DIR))
    configurables.parse(args.gin_file, args.gin_bindings)
    name = args.topology or configurables.topology_settings()
    if not name:
        raise cli.UsageError(f"{', '.join(args.gin_file)} names no TPU slice: add `topology.name = 'v4-64'` (or "
                             "another launch.topology name) to the run file, or pass --topology")
    topo = topology_lib.get(name, "--topology" if args.topology else "topology.name")
    num_negatives = args.num_negatives or _bound_num_negatives()
    options = configurables.data_settings()["options"]
    print(f"compiling the {configurables.stage()} stage of {', '.join(args.gin_file)} for {topo.name} "
          f"({topo.topology_name}, {topo.devices} devices) with libtpu {prepare_libtpu(topo)}", flush=True)
    reports = compile_config(configurables.TrainConfig(), topo, options.get("sequence_lengths"), num_negatives,
                             args.task_type, progress=lambda line: print(line, flush=True),
                             packing=options.get("packing"))
    print(format_table(reports), flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps([r.to_dict() for r in reports], indent=1))
    try:
        check_fits(reports)
    except DoesNotFit as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return EXIT_DOES_NOT_FIT
    return 0


if __name__ == "__main__":
    sys.exit(cli.exit_status(main()))
