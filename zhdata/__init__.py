"""zhdata: streaming Polars/Arrow pipelines that turn raw Chinese text and instruction data into training data."""

__version__ = "0.1.0"
