"""`trainlens.watch`: the context manager around the user's own, unchanged training loop."""

from __future__ import annotations

import datetime as _dt
import os
import secrets
import signal
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from . import _distributed, _rundir, _stream, _wrappers
from ._errors import UsageError
from ._finding import Finding
from ._finish import Written, finish_run, problems_message
from ._meta import (
    describe_modules,
    describe_optimizer,
    describe_params,
    describe_unregistered,
    identical_rows,
    tied_params,
)
from ._plugins import get_plugin_manager
from ._probes import DEFAULT_PROBES, LossProbe, ProbeSet, WatchState
from ._probes._checkpoint import CheckpointProbe
from ._probes._memory import raised_in_backward
from ._probes._state import DEFAULT_SAMPLE_EVERY, Sampling
from ._records import Records
from ._release import release_after_block
from ._signals import SigtermGuard, TerminatedBySignal

# run dirs of the blocks active right now: two nested blocks must not write one folder
_ACTIVE_RUN_DIRS: set[Path] = set()


def new_run_id() -> str:
    """Sortable timestamp plus a short random suffix: `20261123-101500-3fa2`."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def watch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    run_dir: str | os.PathLike[str] | None = None,
    run_id: str | None = None,
    sample_every: int = DEFAULT_SAMPLE_EVERY,
    plugins: Iterable[Any] = (),
    quiet: bool = False,
    checkpoint: bool | str = False,
) -> Lens:
    """Watch `model` (and `optimizer`) while your own loop trains it.

    Use as a context manager. Leaving the block runs the rules and writes the drill to
    `run_dir` (default `./trainlens-runs/<run_id>`); an exception raised in the block is
    re-raised unchanged after that. `sample_every` sets how often, once the run's first
    steps are past, the costlier statistics are taken. `plugins` adds rule or report plugins
    without entry points. `quiet` silences the one-line summary printed on exit.
    `checkpoint=True` (or `"best"`) keeps the last good weights as `checkpoint.pt` in
    `run_dir`: those of the best validation loss, else the last with a finite loss.
    """
    return Lens(
        model,
        optimizer,
        run_dir=run_dir,
        run_id=run_id,
        sample_every=sample_every,
        plugins=plugins,
        quiet=quiet,
        checkpoint=checkpoint,
    )


class Lens:
    """A watched run. After the block: `findings`, `drill`, `records`, `run_dir`."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        run_dir: str | os.PathLike[str] | None = None,
        run_id: str | None = None,
        sample_every: int = DEFAULT_SAMPLE_EVERY,
        plugins: Iterable[Any] = (),
        quiet: bool = False,
        checkpoint: bool | str = False,
    ):
        _check_args(model, optimizer, sample_every, run_id)
        if checkpoint not in (False, None, True, "best"):
            raise UsageError(
                f'checkpoint must be True, "best" or False, not {checkpoint!r} (it keeps the '
                "weights of the best validation loss, else the last finite ones)"
            )
        self._checkpoint = checkpoint
        # hooks go on the module that holds the layers, names without `module.`/`_orig_mod.`
        self.model = _wrappers.unwrap_model(model)
        self._outer_model = model
        self.optimizer = optimizer
        self.run_id = run_id or _distributed.shared_run_id_if_distributed() or new_run_id()
        self.run_dir = (
            Path(run_dir) if run_dir is not None else Path("trainlens-runs") / self.run_id
        )
        self.findings: list[Finding] = []
        self.drill: dict[str, Any] | None = None
        self.records: Records | None = None
        self._sampling = Sampling(every=sample_every)
        self._plugins = list(plugins)
        self._quiet = quiet
        self._state: WatchState | None = None
        self._probes: list[Any] = []
        self._probe_set: ProbeSet | None = None
        self._loss_probe: LossProbe | None = None
        self._entered = False
        self._started_at = ""
        self._dist: _distributed.RankRun | None = None
        self._guard = SigtermGuard()
        self._lock: _rundir.RunDirLock | None = None
        self._stream: _stream.RecordStream | None = None

    # --- notebook display (IPython's rich display protocol) ---------------------------
    def __repr__(self) -> str:
        status = (self.drill or {}).get("status", "running" if self._entered else "not started")
        return f"<trainlens.Lens run {self.run_id} {status} ({self.run_dir})>"

    def _repr_html_(self) -> str | None:
        from ._report.display import lens_html

        return lens_html(self)

    def _repr_markdown_(self) -> str | None:
        from ._report.display import lens_markdown

        return lens_markdown(self)

    # --- the block -------------------------------------------------------------------
    def __enter__(self) -> Lens:
        if self._entered:
            raise UsageError("a Lens can be entered once; call trainlens.watch(...) again")
        self._entered = True
        # one process: None; a rank of a DDP run writes into run_dir/rank-<r>/
        self._dist = _distributed.RankRun.start(self.run_dir, _prepare_root)
        if self._dist is not None:
            self.run_dir, self._guard = self._dist.dir, self._dist.guard
        self.run_dir = _resolve(self.run_dir)
        self._lock = _rundir.claim(self.run_dir)  # refused if another run owns it
        try:
            self._start()
        except BaseException:
            self._uninstall()
            self._release_lock()
            raise
        self._guard.install()  # SIGTERM unwinds the block, the drill is written
        return self

    def _start(self) -> None:
        self._started_at = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
        state = WatchState(self.model, self.optimizer, self._sampling)
        state.checkpoint, state.run_dir = self._checkpoint, self.run_dir
        state.outer = self._outer_model
        if self._dist is not None:
            state.extra_meta["distributed"] = self._dist.describe()
        if self._outer_model is not self.model:
            state.extra_meta["wrappers"] = _wrappers.wrappers(self._outer_model)
        self._state = state
        _ACTIVE_RUN_DIRS.add(self.run_dir)
        self._probe_set = ProbeSet.install(state, DEFAULT_PROBES)
        self._probes = list(self._probe_set)
        self._loss_probe = self._probe_set.get(LossProbe)
        self._start_stream(state)

    def _start_stream(self, state: WatchState) -> None:
        """Stream the records to the run dir while the run goes (see `_stream`)."""
        stream = _stream.RecordStream(self.run_dir, state.tables, lambda: self._meta(state, None))
        stream.listeners += [p.persist for p in self._probes if isinstance(p, CheckpointProbe)]
        every = _stream.STREAM_EVERY_S

        def write(now: float) -> None:
            stream.write(state.step)
            state.stream_due = now + every if stream.error is None else float("inf")

        self._stream = stream
        stream.write(state.step)  # run.json at once: a run killed early still says so
        state.on_stream = write
        state.stream_due = _stream.FIRST_STREAM_S

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        failed_at = time.time() if exc is not None else None
        guard = self._guard
        guard.hold()  # SIGTERM and a second Ctrl-C wait until the files are written
        try:
            try:
                self._uninstall()
            finally:
                try:
                    self._conclude(exc, failed_at)
                except Exception as err:
                    # trainlens's own trouble never replaces the user's exception nor
                    # turns a finished run into a crash
                    warnings.warn(
                        f"trainlens could not write the drill for run {self.run_id} to "
                        f"{self.run_dir}: {type(err).__name__}: {err}",
                        RuntimeWarning,
                        stacklevel=2,
                    )
        finally:
            self._release_lock()
            release_after_block(self)  # the recording buffers and pyarrow's pages (issue 20)
            guard.release()  # after a SIGTERM: the process ends here, as SIGTERM would
        return False  # the user's exception, if any, goes on unchanged

    def log_loss(self, loss: torch.Tensor | float, split: str | None = None) -> None:
        """Record a loss computed without an `nn` loss module (e.g. `F.cross_entropy`).

        `split` is "train" or "val"; by default "train" when grad is enabled and the
        model is in training mode, else "val".
        """
        if self._loss_probe is None or not self._probes:
            raise UsageError("lens.log_loss(...) works only inside its `with watch(...)` block")
        if split not in (None, "train", "val"):
            raise UsageError(f'split must be "train", "val" or None, not {split!r}')
        self._loss_probe.log(loss, split, source="log_loss")

    def note(self, key: str, value: Any) -> None:
        """Hand the run a fact before it is written: rules read it as `records.meta[key]`.

        For callers that drive a watched run (overfit-one-batch, integrations); `value`
        must be JSON-able. Only inside the block.
        """
        if self._state is None or not self._probes:
            raise UsageError("lens.note(...) works only inside its `with watch(...)` block")
        self._state.extra_meta[key] = value

    def losses_seen(self) -> int:
        """How many losses this run has recorded so far (loss modules, `F.*` losses, log_loss).

        For callers that drive a watched run (framework integrations, overfit-one-batch):
        a loss they could log themselves is logged only when none was seen.
        """
        return 0 if self._loss_probe is None else self._loss_probe.count

    def set_split(self, split: str | None) -> None:
        """Say which loop runs now ("train" / "val"), for integrations that know it; None:
        back to the default (train when grad is enabled and the model is training)."""
        if split not in (None, "train", "val"):
            raise UsageError(f'split must be "train", "val" or None, not {split!r}')
        if self._state is not None and self._probes:
            self._state.split_override = split

    def log_attention(
        self,
        name: str,
        weights: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        causal: bool = False,
    ) -> None:
        """Record attention weights `[..., queries, keys]` computed your own way.

        `name` is the module the weights belong to (its dotted name, so findings point at
        it). `mask` (bool, True where a query may attend, broadcastable to `weights`) or
        `causal=True` tells how many keys each query may see. Recorded like the built-in
        sources: on sampled training steps, as summaries.
        """
        from ._probes._attention import AttentionProbe

        probe = next((p for p in self._probes if isinstance(p, AttentionProbe)), None)
        if probe is None:
            raise UsageError(
                "lens.log_attention(...) works only inside its `with watch(...)` block"
            )
        if not isinstance(name, str):
            raise UsageError(f"name must be a string (the module's dotted name), got {name!r}")
        if not isinstance(weights, torch.Tensor) or weights.dim() < 2:
            got = list(weights.shape) if isinstance(weights, torch.Tensor) else type(weights)
            raise UsageError(f"weights must be a tensor [..., queries, keys], got {got}")
        if causal:
            q, k = weights.shape[-2:]
            tril = torch.ones(q, k, dtype=torch.bool, device=weights.device).tril()
            mask = tril if mask is None else (mask.bool() & tril)
        if mask is not None:
            try:
                torch.broadcast_shapes(mask.shape, weights.shape)
            except RuntimeError:
                raise UsageError(
                    f"mask of shape {list(mask.shape)} does not broadcast to weights "
                    f"{list(weights.shape)}"
                ) from None
        probe.log(name, weights, mask)

    # --- leaving ---------------------------------------------------------------------
    def _uninstall(self) -> None:
        self._probes = []
        try:
            if self._probe_set is not None:
                self._probe_set.close()  # every hook, patch and filter, whatever fails
        finally:
            _ACTIVE_RUN_DIRS.discard(self.run_dir)

    def _release_lock(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    def _conclude(self, exc: BaseException | None, failed_at: float | None) -> None:
        state = self._state
        assert state is not None
        state.on_stream, state.stream_due = None, float("inf")
        lost: list[str] = []
        if self._probe_set is not None:
            # a probe may read what only the end of the run knows (the exception, memory);
            # one that failed (then or during the run) is named in what was lost
            lost += self._probe_set.finish(exc)
        state.deferred.flush()  # never raises: what it could not read is in `errors`
        if state.deferred.errors:
            lost.append(f"some sampled statistics ({state.deferred.errors[0]})")
        thinned = {n: t.thinning() for n, t in state.tables.items() if t.dropped}
        if thinned:  # long runs: rules can see which tables lost resolution, and how much
            state.extra_meta["thinning"] = thinned
        meta = self._meta(state, exc)
        meta["ended"] = _ended(exc, state.step, self._guard)
        if meta["ended"]["how"] == "exited" and meta["ended"].get("exit_code") in (0, None):
            meta["exception"] = None  # sys.exit(0): a clean early stop
        self.records = Records({n: t.frame() for n, t in state.tables.items()}, meta)
        written = finish_run(
            get_plugin_manager(self._plugins), self.run_dir, self.run_id, self.records
        )
        self._take(written)
        lost += written.lost
        plugin_errors = list(written.plugin_errors)
        dist = self._dist
        if dist is not None:
            merged = dist.finish(self.run_id, self.drill, exc, failed_at, self._plugins)
            if merged is not None:  # rank 0: the merged run is the run
                self._take(merged)
                lost += merged.lost
                plugin_errors += merged.plugin_errors
        stream = self._stream
        if lost and stream is not None and stream.error is not None:
            lost.append(
                f"records streamed after step {stream.error_step} "
                f"({type(stream.error).__name__}: {stream.error})"
            )
        if not self._quiet and (dist is None or dist.rank == 0):
            try:
                _print_summary(self)
            except Exception as err:  # a closed stderr pipe
                lost.append(f"the summary line on stderr ({type(err).__name__}: {err})")
        message = problems_message(self.run_id, self.run_dir, lost, plugin_errors)
        if message:
            warnings.warn(message, RuntimeWarning, 3)

    def _take(self, written: Written) -> None:
        self.drill, self.findings = written.drill, written.findings
        self.records, self.run_dir = written.records, written.run_dir

    def _meta(self, state: WatchState, exc: BaseException | None) -> dict[str, Any]:
        from ._version import __version__

        model, opt = self.model, self.optimizer
        params = [p for p in model.parameters() if not is_lazy(p)]
        return {
            "run_id": self.run_id,
            "started_at": self._started_at,
            "duration_s": round(time.perf_counter() - state.t0, 3),
            "steps": state.step,
            "backward_passes": state.backward_passes,
            "optimizer_given": opt is not None,
            "sampling": {
                "every": state.sampling.every,
                "dense_steps": state.sampling.dense_steps,
            },
            "trainlens_version": __version__,
            "torch_version": torch.__version__,
            "model": {
                "class": type(model).__name__,
                "num_params": sum(p.numel() for p in params),
                "trainable_params": sum(p.numel() for p in params if p.requires_grad),
                "training": model.training,
                # the grad mode of its last forward (None: never called)
                "last_forward_grad_enabled": state.forward_grad,
            },
            "modules": describe_modules(model),
            "params": describe_params(model, opt),
            "tied_params": tied_params(model),
            "identical_rows": identical_rows(model),
            "unregistered_modules": describe_unregistered(model, state.foreign_modules),
            "optimizer": describe_optimizer(opt),
            "exception": _exception_meta(state, exc),
            **state.extra_meta,
        }


def _exception_meta(state: WatchState, exc: BaseException | None) -> dict[str, Any] | None:
    if exc is None:
        return None
    phase: str | None = state.phase
    if phase == "other" or (phase == "backward" and not raised_in_backward(exc)):
        phase = None  # raised after the backward pass, before the step (the user's code)
    info: dict[str, Any] = {
        "type": type(exc).__name__,
        "message": str(exc)[:4000],
        "phase": phase,
        "module": None,
        "step": state.step,
    }
    failure = state.failure
    if failure is not None and failure.exc_id == id(exc):
        info.update(
            phase=failure.phase,
            module=failure.module,
            module_type=failure.module_type,
            inputs=failure.inputs,
            dtypes=failure.dtypes,
            path=failure.path,
            call=failure.call,
            int_range=failure.int_range,
        )
    elif state.call_stack:
        # KeyboardInterrupt (not an Exception) skips always-call hooks: the stack still
        # holds the forwards in flight, innermost last
        info.update(
            phase="forward", module=state.call_stack[-1][0], path=[n for n, _ in state.call_stack]
        )
    return info


def _check_args(model: Any, optimizer: Any, sample_every: Any, run_id: Any) -> None:
    if not isinstance(model, nn.Module):
        hint = ""
        if isinstance(model, torch.optim.Optimizer):
            hint = " (the optimizer goes second: watch(model, optimizer))"
        elif callable(model):
            hint = " (wrap plain functions in an nn.Module)"
        raise UsageError(
            f"trainlens.watch needs a torch.nn.Module as its first argument, got "
            f"{type(model).__name__}{hint}"
        )
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        if isinstance(optimizer, (list, tuple)):
            hint = " (one optimizer per watch; pass the one that steps this model)"
        else:
            hint = (
                " (an optimizer written by hand: pass optimizer=None, and each backward pass "
                "is a step, its update whatever your code does to the parameters)"
            )
        raise UsageError(
            f"optimizer must be a torch.optim.Optimizer or None, got "
            f"{type(optimizer).__name__}{hint}"
        )
    if isinstance(sample_every, bool) or not isinstance(sample_every, int) or sample_every < 1:
        raise UsageError(f"sample_every must be a positive integer, got {sample_every!r}")
    _rundir.check_run_id(run_id)


def _ended(exc: BaseException | None, step: int, guard: SigtermGuard) -> dict[str, Any]:
    """How the block ended, for `drill["ended"]`."""
    if isinstance(exc, TerminatedBySignal) or (exc is None and guard.signalled is not None):
        signum = exc.signum if isinstance(exc, TerminatedBySignal) else guard.signalled
        return {"how": "terminated", "signal": signal.Signals(signum).name, "step": step}
    if exc is None:
        return {"how": "completed", "step": step}
    if isinstance(exc, KeyboardInterrupt):
        return {"how": "interrupted", "step": step}
    if isinstance(exc, SystemExit):
        code = exc.code if isinstance(exc.code, (int, type(None))) else str(exc.code)[:200]
        return {"how": "exited", "exit_code": code, "step": step}
    return {"how": "raised", "step": step}


def _resolve(run_dir: Path) -> Path:
    run_dir = Path(run_dir).expanduser().resolve()
    if run_dir in _ACTIVE_RUN_DIRS:
        raise UsageError(
            f"run_dir {run_dir} is already used by an enclosing trainlens.watch block; "
            "give the inner block its own run_dir"
        )
    return run_dir


def _prepare_root(run_dir: Path) -> Path:
    """The shared root of a DDP run: created and writable (each rank claims its own dir)."""
    run_dir = _resolve(run_dir)
    _rundir.ensure_writable(run_dir)
    return run_dir


def _print_summary(lens: Lens) -> None:
    from rich.console import Console

    from ._report.summary import RunSummary

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    # rich answers a closed pipe by pointing stdout at /dev/null and raising SystemExit:
    # that would end the user's program; raise the error for the caller to report instead
    console.on_broken_pipe = _broken_pipe  # type: ignore[method-assign]
    console.print(RunSummary(lens.drill or {}, lens.findings, lens.run_dir))


def _broken_pipe() -> None:
    raise BrokenPipeError(32, "Broken pipe (stderr closed)")
