"""Other tools: export (stock transformers, compact, GGUF), llama.cpp runtime, lm-evaluation-harness."""
