"""minilora: LoRA (low-rank adaptation) from scratch."""

__version__ = "0.1.0"
