"""Packed sweeps: the LoRA jobs of a multirun trained together over one frozen base (issue 16).

    layer.py     PackedModel: one base, each job's adapters on its own rows (PackedLoraLinear,
                 PackedHead), the jobs' frozen tensors shared (share_frozen), batches concatenated
    loop.py      run_pack: the lock-step loop, each job its own Training, record and W&B run
    prune.py     successive halving between the pack's jobs (PruneConfig)
    group.py     which jobs can share a pack (pack_reason, pack_key) and how they are grouped
    launcher.py  PackedLauncher, `hydra/launcher=packed` (registered by hydra_plugins/harness_packed)

Code outside the package imports from here (`from harness.pack import run_pack`).
"""

from harness.pack.layer import PackedHead, PackedLoraLinear, PackedModel, Segments, concat_batches, share_frozen
from harness.pack.loop import PackJob, run_pack
from harness.pack.prune import PruneConfig, survivors

__all__ = ["PackJob", "PackedHead", "PackedLoraLinear", "PackedModel", "PruneConfig", "Segments", "concat_batches",
           "run_pack", "share_frozen", "survivors"]
