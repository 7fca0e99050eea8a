"""Measuring where training and scoring time goes: the model's own limit against the real pipeline.

Every figure is images per second, the median of several timed repeats after untimed warm-up ones,
with the device synchronised around each repeat. The bare figures run the model on tensors already
on the device (the most the hardware allows this model); the pipeline figures run the project's own
loaders and trainer from image files; their ratio says how much of the machine the pipeline leaves
to the model.
"""

from __future__ import annotations

import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

from deepfake.engine.precision import autocast


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_call(run: Callable[[], object], device: torch.device) -> tuple[object, float]:
    """``(run(), seconds)``, the device synchronised around the call."""
    synchronize(device)
    started = time.perf_counter()
    result = run()
    synchronize(device)
    return result, time.perf_counter() - started


def rate(run: Callable[[], int], device: torch.device) -> float:
    """Images per second of one call of ``run()``, which returns how many images it processed."""
    images, seconds = timed_call(run, device)
    return images / seconds


def figure(rates: list[float]) -> dict:
    """A figure as bench.json holds it: the median rate and every repeat's."""
    return {"images_per_s": statistics.median(rates), "repeats": [round(r, 2) for r in rates]}


def images_per_second(run: Callable[[], int], device: torch.device, *, repeats: int, warmup: int,
                      compiled: bool = False) -> dict:  # fmt: skip
    """``run()`` processes some images and returns how many; the median rate over ``repeats`` calls.
    ``warmup_s``: the untimed calls first. A ``compiled`` run compiles in its first call, which is
    therefore always untimed (``warmup=0`` too): the compilation is ``warmup_s``, never a repeat."""
    synchronize(device)
    started = time.perf_counter()
    for _ in range(max(warmup, int(compiled))):
        run()
    synchronize(device)
    warmup_s = time.perf_counter() - started
    return {**figure([rate(run, device) for _ in range(repeats)]), "warmup_s": round(warmup_s, 3)}


def paired_rates(pipeline: Callable[[], int], bare: Callable[[], int], device: torch.device, *, repeats: int,
                 warmup: int) -> tuple[dict, dict, float]:  # fmt: skip
    """``pipeline`` and ``bare`` timed in alternation, ``(pipeline figure, bare figure, ratio)``; the
    ratio is the median of each repeat's pipeline rate over the bare rate measured just before it,
    so that a machine slowing down or speeding up over the run moves both sides of every ratio."""
    for _ in range(warmup):
        bare()
        pipeline()
    pairs = []
    for _ in range(repeats):
        bare_rate = rate(bare, device)
        pairs.append((bare_rate, rate(pipeline, device)))
    return figure([p for _, p in pairs]), figure([b for b, _ in pairs]), paired_ratio(pairs)


def paired_ratio(pairs: list[tuple[float, float]]) -> float:
    """The median over ``(bare rate, pipeline rate)`` pairs of pipeline / bare."""
    return round(statistics.median(pipeline / bare for bare, pipeline in pairs), 3)


def alternating_seconds(variants: dict[str, Callable[[], object]], device: torch.device,
                        repeats: int) -> dict[str, list[float]]:  # fmt: skip
    """Each variant's seconds per call, the variants called in turn ``repeats`` times after one
    untimed round, so that the machine's drift falls on all of them alike."""
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(repeats + 1):
        for name, run in variants.items():
            _, took = timed_call(run, device)
            if round_:
                seconds[name].append(took)
    return seconds


def switch_costs(model: torch.nn.Module, make_optimizer: Callable[..., torch.optim.Optimizer],
                 train_steps: Callable[[], int], device: torch.device, directory: Path, repeats: int) -> dict:  # fmt: skip
    """What two fast-path switches save, each side timed in alternation: an optimizer step fused and
    per tensor (``make_optimizer(groups, fused=...)``); and what a last.pth-sized save (``model``'s
    weights and optimizer state) adds to a few training steps (``train_steps``, on ``model``) when it
    is written in the background, where the write shares the machine with those steps, or
    synchronously: the median over rounds of (save + steps) - (steps alone)."""
    from deepfake.tracking.checkpoint import atomic_save
    from deepfake.tracking.checkpoint_writer import CheckpointWriter

    params = [p for p in model.parameters() if p.requires_grad]
    for param in params:
        param.grad = torch.randn_like(param) * 1e-3
    optimizers = {name: make_optimizer([{"params": params, "lr": 1e-8}], fused=fused)
                  for name, fused in (("fused", True), ("per_tensor", False))}  # fmt: skip
    step_s = alternating_seconds({name: opt.step for name, opt in optimizers.items()}, device, repeats)
    state = {"model": model.state_dict(), "optimizer": optimizers["fused"].state_dict()}
    writer = CheckpointWriter()
    directory.mkdir(parents=True, exist_ok=True)
    background, synchronous = directory / "background.pth", directory / "synchronous.pth"
    try:
        rounds = alternating_seconds({
            "steps_alone": train_steps,
            "background": lambda: (writer.save(state, background), train_steps(), writer.wait()),
            "synchronous": lambda: (atomic_save(state, synchronous), train_steps()),
        }, device, repeats)  # fmt: skip
        megabytes = synchronous.stat().st_size / 2**20
    finally:
        writer.close()
        background.unlink(missing_ok=True)
        synchronous.unlink(missing_ok=True)
    return {
        "optimizer_step_s": {name: round(statistics.median(values), 4) for name, values in step_s.items()},
        "checkpoint_cost_s": {
            name: round(statistics.median(t - alone for t, alone in zip(rounds[name], rounds["steps_alone"])), 4)
            for name in ("background", "synchronous")
        },
        "steps_alone_s": round(statistics.median(rounds["steps_alone"]), 4),
        "checkpoint_mib": round(megabytes, 1),
    }


def bare_train_steps(model: torch.nn.Module, batch_size: int, img_size: int, device: torch.device, precision: str,
                     steps: int, channels_last: bool = False,
                     make_optimizer: Callable[[list[dict]], torch.optim.Optimizer] | None = None) -> Callable[[], int]:  # fmt: skip
    """``steps`` forward + backward + optimizer steps on one batch already on the device; the optimizer
    is ``make_optimizer(param_groups)`` (the run's, e.g. fused AdamW), plain AdamW without one."""
    images = torch.randn(batch_size, 3, img_size, img_size, device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    targets = (torch.arange(batch_size, device=device) % 2).float()
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": 1e-5}]
    optimizer = (make_optimizer or torch.optim.AdamW)(groups)
    model.train()

    def run() -> int:
        for _ in range(steps):
            with autocast(device, precision):
                logits = model(images).squeeze(1)
            loss = F.binary_cross_entropy_with_logits(logits.float(), targets)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return steps * batch_size

    return run


def bare_forward(model: torch.nn.Module, batch_size: int, img_size: int, device: torch.device, precision: str,
                 batches: int, channels_last: bool = False) -> Callable[[], int]:  # fmt: skip
    """``batches`` eval-mode forward passes on one batch already on the device."""
    images = torch.randn(batch_size, 3, img_size, img_size, device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def run() -> int:
        model.eval()
        for _ in range(batches):
            with autocast(device, precision):
                model(images)
        return batches * batch_size

    return run


def loader_pass(loader) -> Callable[[], int]:
    """One pass over ``loader`` (decoding, augmentation, collation), nothing else."""

    def run() -> int:
        return sum(len(batch["target"]) for batch in loader)

    return run


class PeakMemory:
    """Peak resident memory of this process and its children (DataLoader workers), and CUDA's peak
    allocation.

    The kernel keeps each process's own peak (VmHWM in /proc/<pid>/status; this process's is reset
    when watching starts), so a slow poll finds the live processes and reads their peaks so far,
    where sampling the resident size itself would have to poll fast enough to catch each peak: at
    20 polls a second, walking the process table cost the training step 4% of its speed on 2 cores.
    Without /proc (not Linux), the resident size is sampled at the same pace. The figure is the
    largest sum, over one poll's live processes, of their peaks (workers that have ended, such as
    each validation pass's, no longer count).
    """

    def __init__(self, device: torch.device, interval_s: float = 0.5) -> None:
        import psutil  # the bench extra

        self.device, self.interval_s = device, interval_s
        self.process = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def _peak_bytes(proc) -> int:
        try:
            with open(f"/proc/{proc.pid}/status", encoding="ascii") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024  # kB
        except (OSError, ValueError):
            pass
        return proc.memory_info().rss

    def _poll(self) -> None:
        total = 0
        for proc in (self.process, *self.process.children(recursive=True)):
            try:
                total += self._peak_bytes(proc)
            except Exception:  # noqa: BLE001 - a worker that ended between listing and reading
                continue
        self.peak = max(self.peak, total)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._poll()

    @contextmanager
    def watching(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        try:  # this process's peak so far would hide the watched part's ("5": reset VmHWM, Linux 4.0+)
            with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
                clear_refs.write("5")
        except OSError:
            pass
        self.peak = 0
        self._poll()
        self._stop.clear()
        sampler = threading.Thread(target=self._sample, daemon=True)
        sampler.start()
        try:
            yield self
        finally:
            self._poll()  # before the caller's loaders let their workers go
            self._stop.set()
            sampler.join()

    def report(self) -> dict:
        report = {"peak_rss_mib": round(self.peak / 2**20, 1)}
        if self.device.type == "cuda":
            report["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        return report


def machine() -> dict:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    description = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    return description
