"""train: a QLoRA backend for Mixtral (4-bit experts included), evaluation and the vocabulary comparison."""

__version__ = "0.1.0"
