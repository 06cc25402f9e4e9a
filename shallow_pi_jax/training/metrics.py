"""Where training metrics go: TensorBoard event files, optionally wandb; only process 0 writes."""
from __future__ import annotations

import math
import pathlib
from collections.abc import Mapping

import jax

from shallow_pi_jax import run_dir


class MetricWriter:
    def __init__(self, workdir: pathlib.Path, wandb_cfg=None, config_dict: dict | None = None):
        self.enabled = jax.process_index() == 0
        self._tb = self._wandb = None
        if not self.enabled:
            return
        from tensorboardX import SummaryWriter

        self._dir = workdir / run_dir.TENSORBOARD
        self._tb = SummaryWriter(str(self._dir))
        if wandb_cfg is not None and wandb_cfg.enabled:
            try:
                import wandb
            except ImportError:
                print("wandb.enabled is set but wandb is not installed; logging to TensorBoard only")
            else:
                self._wandb = wandb.init(project=wandb_cfg.project, name=wandb_cfg.name or None,
                                         config=config_dict, dir=str(workdir), resume="allow")

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        for k, v in metrics.items():
            self._tb.add_scalar(k, v, step)
        self._flush()
        if self._wandb is not None:
            self._wandb.log(dict(metrics), step=step)

    def write_text(self, tag: str, text: str) -> None:
        if self.enabled:
            self._tb.add_text(tag, text)

    def _flush(self) -> None:
        # tensorboardX writes in a thread that dies silently on a write error (a full or read-only
        # disk), after which adding events blocks forever once its queue is full. Flushing here
        # raises that error in the training loop instead.
        try:
            self._tb.flush()
        except OSError as e:
            raise OSError(f"metrics could not be written to {self._dir} ({e.strerror or e})") from e

    def close(self) -> None:
        tb, run, self._tb, self._wandb = self._tb, self._wandb, None, None
        try:
            if tb is not None:
                tb.close()
        except OSError as e:
            raise OSError(f"metrics could not be written to {self._dir} ({e.strerror or e})") from e
        finally:
            if run is not None:
                run.finish()


def check_finite(step: int, metrics: Mapping[str, float]) -> None:
    """Raise FloatingPointError naming the offending terms; the caller stops before saving."""
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    if bad:
        raise FloatingPointError(
            f"non-finite values at step {step}: {bad}. Stopping; the last saved checkpoint is intact "
            f"(lower optim.peak_lr or check the data for NaNs).")


def memory_summary(compiled) -> dict[str, int]:
    """Per-device bytes of a compiled step, from XLA's memory analysis (empty if unavailable)."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # some backends do not implement it
        return {}
    if m is None:
        return {}
    out = {k: int(getattr(m, f"{k}_size_in_bytes", 0))
           for k in ("argument", "output", "temp", "generated_code", "alias")}
    out["total"] = out["argument"] + out["output"] + out["temp"] + out["generated_code"] - out["alias"]
    return out
