"""`zhdata instruct`: instruction data in Alpaca, ShareGPT or OpenAI-messages form into one conversation schema."""
