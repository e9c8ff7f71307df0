"""What training leaves behind as weights: the best-so-far copy (`trainer.select_best`) and the
saved adapter or model."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import torch

from harness.lora import save_adapter
from harness.config import MethodConfig
from harness.models import base_checkpoint

log = logging.getLogger("harness")


class BestWeights:
    """The trainable parameters at the best validation evaluation so far (`trainer.select_best`).

    Kept as a CPU copy, so CUDA memory figures are unaffected (it costs host memory: the adapter and
    head for LoRA, a whole model for full FT), and written to `checkpoints/best.safetensors` with
    its step, so a preempted run that resumes still has them. A resume whose checkpoint predates
    the file's step (a new best found after the last checkpoint) finds the step mismatched and
    keeps nothing: the replayed evaluations find that best again, or `metrics.test.best` is null.
    """

    def __init__(self, path: Path):
        self.path, self.step, self.tensors = path, None, None

    # safetensors is imported where used: a module that submitit's cloudpickle pickles by value (one
    # run as __main__) must not hold safetensors' Rust safe_open, which does not unpickle.
    def keep(self, model: torch.nn.Module, step: int) -> None:
        from safetensors.torch import save_file

        self.tensors = {n: p.detach().to("cpu", copy=True).contiguous()
                        for n, p in model.named_parameters() if p.requires_grad}
        self.step = step
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        save_file(self.tensors, tmp, metadata={"step": str(step)})
        os.replace(tmp, self.path)

    def restore(self, step: int) -> bool:
        """Load the file if it holds the weights of `step`; say why not otherwise."""
        from safetensors import safe_open

        if self.path.is_file():
            with safe_open(str(self.path), framework="pt") as f:
                if (f.metadata() or {}).get("step") == str(step):
                    self.tensors, self.step = {k: f.get_tensor(k) for k in f.keys()}, step
                    return True
        log.warning("select_best: no saved weights for the best step %d so far; a later best replaces it, "
                    "else metrics.test.best stays null", step)
        return False

    @contextlib.contextmanager
    def swapped_in(self, model: torch.nn.Module):
        """The model holds the kept weights inside the block and its own again after it."""
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        own = {n: p.detach().to("cpu", copy=True) for n, p in params.items()}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(self.tensors[n])
        try:
            yield model
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(own[n])


def save_trained(model, method: MethodConfig, model_cfg, tokenizer, folder: Path) -> None:
    """LoRA: the adapter in peft's format; full FT: the whole model with its tokenizer."""
    if method.name == "lora":
        save_adapter(model, folder, base_model_name_or_path=base_checkpoint(model_cfg))
    else:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
