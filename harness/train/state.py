"""The loop's position: everything a checkpoint must carry, besides weights, optimizer, scheduler
and RNG states, so that a resumed run continues exactly where the killed one stopped."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


def empty_window() -> dict:
    """The logging window's sums since the last train row (loss over the finite steps `n`)."""
    return {"loss": 0.0, "n": 0, "tokens": 0, "time": 0.0}


@dataclass
class LoopState:
    step: int = 0                       # optimizer steps done
    best: dict | None = None            # the best validation evaluation so far: {step, epoch, metrics...}
    evals: list = field(default_factory=list)  # every validation evaluation: {step, epoch, metrics...}
    skipped_steps: int = 0              # non-finite steps skipped (trainer.on_nan=skip)
    window: dict = field(default_factory=empty_window)
    train_loss: float | None = None     # the last logged window's mean loss
    timer: dict = field(default_factory=dict)     # StepTimer.state_dict(): the step-time sums so far
    segments: list = field(default_factory=list)  # the processes this run took, up to the checkpoint
    forget_before: dict | None = None   # the forgetting probe on the model before the first step

    def state_dict(self) -> dict:
        """Plain containers only: `torch.load(weights_only=True)` reads them back."""
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        """Accepts the loop dicts of older checkpoints too, which lacked the later keys."""
        fresh = LoopState()
        for name in self.__dataclass_fields__:
            value = state.get(name)
            setattr(self, name, getattr(fresh, name) if value is None else value)
