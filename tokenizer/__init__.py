"""tokenizer: train, extend, convert, audit and report Chinese-aware SentencePiece/Hugging Face tokenizers."""

__version__ = "0.1.0"
