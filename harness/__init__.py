"""lora-harness: in-house LoRA vs full fine-tuning, one trainer, Hydra sweeps, paper tables."""
