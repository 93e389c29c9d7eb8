"""``make device-check``: one prepared run on an accelerator, its results written as files.

    PYTHONPATH=. python3 -m jaxnet.devicecheck --out docs        # on the machine with the GPU

Parts, each in its own process (a crash or a hang of one does not stop the others), each
time-boxed, in this order:

- ``environment``: which devices torch and JAX see, their versions; decides the device;
- ``parity-mlp-highest``, ``parity-cnn-highest``, ``parity-mlp-default``, ``parity-cnn-default``:
  ``jaxnet parity`` of both built-in models in both float32 matmul precisions (``highest``:
  IEEE float32 in both frameworks; ``default``: each framework's own, TF32 in JAX on recent
  NVIDIA parts, the floors scaled to it);
- ``bench``: ``jaxnet bench`` of the MLP's and the CNN's paths on a share of the training set;
- ``data-parallel``: ``jaxnet parity --devices N`` rows over the N GPUs present (needs N >= 2).

With no CUDA device visible to both frameworks the same parts run on the CPU with tiny
settings (the suite tests that path), and the summary says so. Files written to ``--out``
(names end in ``-gpu`` or ``-cpu``; at most 7): ``device-check-TAG.md`` (the summary table,
per-part wall times, errors), ``device-check-TAG.json`` (everything, machine-readable),
``parity-MODEL-PRECISION-TAG.md`` (the four reports), ``bench-TAG.json``.

Data: ``--data-dir``, else ``$JAXNET_DATA``, else ``.devdata/`` beside the ``jaxnet`` package
(an ignored folder to carry the four Fashion-MNIST ``.gz`` files to a machine without the
Debian package), else jaxnet's usual search (no download is attempted).

Exit status 0 when every part that ran passed (parts skipped for a stated reason count as
passed), 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from jaxnet.errors import JaxnetError

PARITY = tuple(f"parity-{m}-{p}" for p in ("highest", "default") for m in ("mlp", "cnn"))
PARTS = ("environment", *PARITY, "bench", "data-parallel")

# Seconds each part may take at most (the run's --budget caps them further). Sized for an
# H200 host: the parity parts are mostly compilation and per-step host round trips.
TIMEOUTS = {"environment": 120, "bench": 240, "data-parallel": 180} | {
    p: (150 if "mlp" in p else 110) for p in PARITY
}

# Per model: the settings of `jaxnet parity` on a GPU ("full") and on the CPU fallback ("tiny").
PARITY_SETTINGS = {
    "full": {
        "mlp": {"steps": 10, "recipes": None, "epoch_recipe": "sgd", "train_limit": 3200,
                "dtypes": ("float32", "float64")},
        "cnn": {"steps": 5, "recipes": None, "epoch_recipe": None, "train_limit": 3200,
                "dtypes": ("float32", "float64")},
    },
    "tiny": {
        "mlp": {"sections": "forward and gradient", "dtypes": ("float32",)},
        "cnn": {"sections": "forward and gradient", "dtypes": ("float32",)},
    },
}  # fmt: skip
BENCH_SETTINGS = {"full": {"epochs": 2, "train_limit": 6400}, "tiny": {"epochs": 1, "train_limit": 640}}
DP_STEPS = {"full": 10, "tiny": 2}
TF32_KEY = "torch cuda.matmul.allow_tf32 / cudnn.allow_tf32"  # cuDNN's convolutions: TF32 unless turned off
MIN_PART_S = 20  # a part is skipped rather than started with less budget than this


@dataclass
class Part:
    """The outcome of one part."""

    name: str
    status: str  # pass | FAIL | error | timeout | skipped
    seconds: float = 0.0
    detail: str = ""  # one line: rows passed, the skip's reason, the error's last line
    result: dict = field(default_factory=dict)  # what the part returned (JSON)
    log_tail: str = ""  # the end of its stdout and stderr, for errors

    @property
    def ok(self) -> bool:
        return self.status in ("pass", "skipped")


# ---------------------------------------------------------------------------- the parts (children)


def part_environment(device: str, size: str) -> dict:
    """What each framework sees: versions, devices, the GPUs' names."""
    import jax
    import torch

    gpus = [d for d in jax.devices() if d.platform == "gpu"] if _jax_has_gpu(jax) else []
    torch_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return {
        "python": platform.python_version(),
        "machine": _machine(),
        "jax": jax.__version__,
        "torch": torch.__version__,
        "jax devices": [f"{d.platform}:{d.id} {d.device_kind}" for d in jax.devices()],
        "jax gpus": len(gpus),
        "torch cuda devices": [torch.cuda.get_device_name(i) for i in range(torch_gpus)],
        "torch gpus": torch_gpus,
        "gpus": min(len(gpus), torch_gpus),
    }


def _machine() -> str:
    return f"{platform.platform()} ({platform.processor() or platform.machine()}), {os.cpu_count()} cores"


def nvidia_present() -> bool:
    """Whether an NVIDIA driver may show a device here (its device nodes, its /proc entry, its
    ``nvidia-smi``): a machine with none of them has no CUDA device, and the frameworks need
    not be started to ask."""
    nodes = Path("/proc/driver/nvidia/gpus").is_dir() or any(Path("/dev").glob("nvidia[0-9]*"))
    return nodes or shutil.which("nvidia-smi") is not None


def _jax_has_gpu(jax) -> bool:
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:  # no GPU backend (CPU-only jaxlib, or no plugin)
        return False


def part_parity(model: str, precision: str, device: str, size: str, out: Path, tag: str) -> dict:
    """One ``jaxnet parity`` report; its markdown written to ``out``. The tiny (CPU) setting
    compares the forward and gradient rows only, in float32, on one batch."""
    from jaxnet import checkpoint, data, parity, registry
    from jaxnet.parity.builtin import session
    from jaxnet.parity.layers import forward_and_gradient
    from jaxnet.parity.sections import BATCH

    s = PARITY_SETTINGS[size][model]
    if size == "full":
        report = parity.run(data.load(), model=model, matmul_precision=precision, device=device, **s)
    else:
        start, ds = time.perf_counter(), data.load()
        config = registry.family(model).config()
        state = checkpoint.init_state_dict(config, 0)
        x, y = ds.train[:BATCH].float_images(), ds.train.labels[:BATCH]
        options = {"config": config, "dtypes": s["dtypes"], "device": device, "matmul_precision": precision}
        with session(state, **options) as (setup, env):
            report = parity.Report(forward_and_gradient(setup, x, y), env)
        report.seconds = time.perf_counter() - start
    (out / f"parity-{model}-{precision}-{tag}.md").write_text(
        f"# jaxnet parity --model {model} --matmul-precision {precision} --device {device}\n\n"
        f"Settings: {_settings_text(s)}\n\n" + parity.markdown(report)
    )
    return {
        "passed": report.passed,
        "rows": len(report.rows),
        "failed": [[r.section, r.quantity, r.dtype, r.ratio, r.note] for r in report.failures],
        "seconds": report.seconds,
        "summary": parity.summary(report),
        "environment": report.environment,
        "settings": s,
    }


def part_bench(device: str, size: str, out: Path, tag: str) -> dict:
    """``jaxnet bench`` of every MLP and CNN path; JSON to ``out``, the table as text."""
    from jaxnet import bench

    s = BENCH_SETTINGS[size]
    every = bench.PATHS + tuple(p for p in bench.CNN_PATHS if not p.endswith("-ynn"))  # CPU-only
    paths = every if size == "full" else ("jax-jaxnet-step", "cnn-jax-jaxnet")
    report = bench.run_bench(paths, s["epochs"], s["train_limit"], with_startup=False)
    report["settings"] = s
    (out / f"bench-{tag}.json").write_text(json.dumps(report, indent=1))
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        bench.print_table(report)
    return {"passed": True, "table": text.getvalue(), "settings": s}


def part_data_parallel(device: str, size: str, gpus: int) -> dict:
    """``jaxnet parity --devices N`` rows over the GPUs, or the reason there are none."""
    if device != "cuda":
        return {"skipped": "no cuda device (data-parallel parity on CPUs is covered by the test suite)"}
    if gpus < 2:
        return {"skipped": f"data-parallel parity needs >= 2 GPUs; {gpus} present"}
    from jaxnet.parity import data_parallel, report

    rows = data_parallel.section(gpus, ("float32", "float64"), steps=DP_STEPS[size])
    r = report.Report(rows=rows, environment={})
    return {
        "passed": r.passed,
        "rows": len(rows),
        "failed": [[x.section, x.quantity, x.dtype, x.ratio, x.note] for x in r.failures],
        "table": report.markdown(r),
    }


def _settings_text(s: dict) -> str:
    return ", ".join(f"{k} {'/'.join(v) if isinstance(v, list | tuple) else v}" for k, v in s.items())


def run_child(name: str, device: str, size: str, out: Path, result_file: Path, gpus: int) -> None:
    """Run part ``name`` in this process; write its JSON result to ``result_file``."""
    from jaxnet import process

    process.prepare(shared=name.startswith("parity"))
    tag = "gpu" if device == "cuda" else "cpu"
    if name == "environment":
        result = part_environment(device, size)
    elif name.startswith("parity-"):
        _, model, precision = name.split("-")
        result = part_parity(model, precision, device, size, out, tag)
    elif name == "bench":
        result = part_bench(device, size, out, tag)
    elif name == "data-parallel":
        result = part_data_parallel(device, size, gpus)
    else:
        raise JaxnetError(f"unknown part {name!r}, expected one of {', '.join(PARTS)}")
    result_file.write_text(json.dumps(result, default=str))


# ---------------------------------------------------------------------------- the orchestration


def run_part(cmd: list[str], timeout: float, env: dict[str, str], log: Path) -> tuple[int | None, float]:
    """Run ``cmd`` in its own process group, output to ``log``; kill the whole group (the bench's
    workers too) after ``timeout`` s. Returns (exit status or None on timeout, seconds)."""
    start = time.perf_counter()
    with open(log, "wb") as sink:
        child = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            code = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            code = None
    return code, time.perf_counter() - start


def _tail(log: Path, chars: int = 3000) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    return text[-chars:]


def _last_line(text: str) -> str:
    """The error's own line: the last that names an exception (JAX prints a note after it)."""
    lines = [line for line in text.strip().splitlines() if line.strip() and not line.startswith("-----")]
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Exit)\b.*", line.strip())]
    return (errors or lines or [""])[-1].strip()[:300]


def data_dir(explicit: str | None) -> Path:
    """``--data-dir``, ``$JAXNET_DATA``, the repository's ``.devdata/``, or jaxnet's usual search
    without a download (a machine without network would wait for it).

    Raises:
        DataError: the four files are not there.
    """
    from jaxnet import data

    carried = Path(__file__).resolve().parent.parent / ".devdata"
    if not (explicit or os.environ.get("JAXNET_DATA")) and carried.is_dir():
        explicit = str(carried)
    return data.find_data_dir(explicit, allow_download=False)


class Check:
    """The parent process: runs the parts in order within ``budget`` seconds, records each."""

    def __init__(
        self, out: Path, parts: tuple[str, ...], device: str, budget: float, data: str | None
    ) -> None:
        self.out, self.parts, self.device, self.budget = out, parts, device, budget
        self.start = time.perf_counter()
        self.results: list[Part] = []
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
        # the children import this tree's jaxnet, wherever they start
        root = str(Path(__file__).resolve().parent.parent)
        self.env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])
        self.no_data = ""  # why the parts that read Fashion-MNIST cannot run
        try:
            self.env["JAXNET_DATA"] = str(data_dir(data))
        except JaxnetError as err:
            self.no_data = f"no Fashion-MNIST: {err} (copy the four .gz files into .devdata/)"
        self.gpus = 0
        self.size = "full"

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.start)

    def child(self, name: str, work: Path) -> Part:
        left = self.left()
        if left < MIN_PART_S:
            return Part(name, "skipped", detail=f"budget spent ({self.budget:.0f} s)")
        if self.no_data and name.startswith(("parity-", "bench")):
            return Part(name, "error", detail=self.no_data)
        if name == "environment" and self.device != "cuda" and not nvidia_present():
            result = {"python": platform.python_version(), "machine": _machine(), "gpus": 0}
            return Part(name, "pass", 0.0, "no NVIDIA device nodes (/dev/nvidia*)", result)
        timeout = min(TIMEOUTS[name], left)
        result_file, log = work / f"{name}.json", work / f"{name}.log"
        cmd = [sys.executable, "-m", "jaxnet.devicecheck", "--child", name, "--device", self.device,
               "--size", self.size, "--out", str(self.out), "--result", str(result_file),
               "--gpus", str(self.gpus)]  # fmt: skip
        code, seconds = run_part(cmd, timeout, self.env, log)
        tail = _tail(log)
        if code is None:
            return Part(name, "timeout", seconds, f"stopped after {timeout:.0f} s", log_tail=tail)
        if code != 0 or not result_file.exists():
            return Part(name, "error", seconds, _last_line(tail) or f"exit status {code}", log_tail=tail)
        result = json.loads(result_file.read_text())
        if "skipped" in result:
            return Part(name, "skipped", seconds, result["skipped"], result)
        status = "pass" if result.get("passed", name == "environment") else "FAIL"
        detail = result.get("summary") or (f"{result['rows']} rows" if "rows" in result else "")
        if name == "environment":
            detail = f"{result['gpus']} GPU(s) seen by both frameworks: {result['torch cuda devices']}"
        return Part(name, status, seconds, detail, result, "" if status == "pass" else tail)

    def run(self) -> list[Part]:
        self.out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="jaxnet-devicecheck-") as tmp:
            for name in self.parts:
                part = self.child(name, Path(tmp))
                if name == "environment":
                    self.decide_device(part)
                self.results.append(part)
                print(f"[{time.perf_counter() - self.start:6.1f} s] {name}: {part.status} "
                      f"({part.seconds:.1f} s) {part.detail}", flush=True)  # fmt: skip
        return self.results

    def decide_device(self, env: Part) -> None:
        """cuda when both frameworks see a GPU (unless --device says otherwise); tiny settings on CPUs."""
        self.gpus = int(env.result.get("gpus", 0))
        if self.device == "auto":
            self.device = "cuda" if self.gpus else "cpu"
        if self.device == "cpu":
            self.size = "tiny"
            if not self.gpus:
                env.detail = "no cuda device: the parts run on the CPU with tiny settings"

    @property
    def tag(self) -> str:
        return "gpu" if self.device == "cuda" else "cpu"

    def write(self, argv: list[str]) -> list[Path]:
        """``device-check-TAG.json`` and ``.md``; returns every file this run wrote."""
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        total = time.perf_counter() - self.start
        meta = {"date": when, "command": "python -m jaxnet.devicecheck " + " ".join(argv),
                "device": self.device, "settings": self.size, "gpus": self.gpus, "total_s": total,
                "budget_s": self.budget, "passed": all(p.ok for p in self.results)}  # fmt: skip
        summary = {**meta, "parts": [asdict(p) for p in self.results]}
        (self.out / f"device-check-{self.tag}.json").write_text(json.dumps(summary, indent=1, default=str))
        (self.out / f"device-check-{self.tag}.md").write_text(self.markdown(meta))
        return sorted(
            p for p in self.out.iterdir() if p.name.endswith((f"-{self.tag}.md", f"-{self.tag}.json"))
        )

    def markdown(self, meta: dict) -> str:
        lines = [f"# jaxnet device check ({meta['date']})", "", f"`{meta['command']}`: device {self.device}, "
                 f"{self.size} settings, {self.gpus} GPU(s), {meta['total_s']:.0f} s in all "
                 f"(budget {self.budget:.0f} s).", "", table(self.results, markdown=True), ""]  # fmt: skip
        env = next((p.result for p in self.results if p.name == "environment"), {})
        if env:
            lines += ["## Environment", "", "| | |", "|---|---|"]
            lines += [f"| {k} | {v} |" for k, v in env.items()] + [""]
        for p in self.results:
            if p.name.startswith("parity-") and p.result:
                lines += [f"## {p.name}", "", f"{p.result['summary']}; settings: {_settings_text(p.result['settings'])};"
                          f" float32 matmul arithmetic: {p.result['environment'].get('float32 matmul arithmetic in force')}"
                          f" (torch allow_tf32, matmul / cuDNN: {p.result['environment'].get(TF32_KEY)});"
                          f" report: parity-{p.name[7:]}-{self.tag}.md", ""]  # fmt: skip
                lines += [f"- FAIL {f}" for f in p.result["failed"]] + ([""] if p.result["failed"] else [])
            if p.name == "bench" and p.result:
                lines += ["## bench", "", f"settings: {_settings_text(p.result['settings'])}", "", "```",
                          p.result["table"].rstrip(), "```", ""]  # fmt: skip
            if p.name == "data-parallel" and p.result.get("table"):
                lines += ["## data-parallel", "", p.result["table"], ""]
            if p.log_tail:
                lines += [
                    f"## {p.name}: {p.status}, the end of its output",
                    "",
                    "```",
                    p.log_tail.rstrip(),
                    "```",
                    "",
                ]
        return "\n".join(lines)


def table(parts: list[Part], markdown: bool = False) -> str:
    """The summary: one line per part, its status, wall time and one-line detail."""
    rows = [(p.name, p.status, f"{p.seconds:.1f}", p.detail) for p in parts]
    if markdown:
        out = ["| part | status | wall s | detail |", "|---|---|---|---|"]
        return "\n".join(out + ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows])
    widths = [max(len(r[i]) for r in [("part", "status", "wall s", "detail"), *rows]) for i in range(3)]
    head = ("part", "status", "wall s", "detail")
    return "\n".join(
        f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}" for r in [head, *rows]
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jaxnet.devicecheck", description=__doc__.splitlines()[0])
    p.add_argument(
        "--out", type=Path, default=Path("docs"), help="folder for the result files (default: %(default)s)"
    )
    p.add_argument("--parts", default=",".join(PARTS),
                   help=f"comma-separated parts to run, in order (default: all: {','.join(PARTS)})")  # fmt: skip
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="auto: cuda where both frameworks see a GPU, else the CPU with tiny settings")  # fmt: skip
    p.add_argument("--budget", type=float, default=450.0,
                   help="seconds for all parts together; a part is stopped at its own limit or at this (default: %(default)s)")  # fmt: skip
    p.add_argument(
        "--data-dir", help="the four Fashion-MNIST .gz files (default: $JAXNET_DATA, then .devdata/)"
    )
    # the child side (one part in this process)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--size", choices=("full", "tiny"), default="full", help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--gpus", type=int, default=0, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        if args.child:
            run_child(args.child, args.device, args.size, args.out, args.result, args.gpus)
            return 0
        parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
        unknown = [p for p in parts if p not in PARTS]
        if unknown:
            raise JaxnetError(f"--parts: unknown {', '.join(unknown)} (known: {', '.join(PARTS)})")
        if "environment" not in parts:
            parts = ("environment", *parts)  # it decides the device
        check = Check(args.out, parts, args.device, args.budget, args.data_dir)
        check.run()
        written = check.write(argv)
    except JaxnetError as err:
        print(f"jaxnet.devicecheck: error: {err}", file=sys.stderr)
        return 2
    print()
    print(table(check.results))
    total = time.perf_counter() - check.start
    print(f"\n{total:.0f} s in all; wrote {', '.join(str(p) for p in written)}")
    return 0 if all(p.ok for p in check.results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
