"""The engine: model families, the Hopscotch handle (scaling), KV cache, decoding, folding, loading, artifacts."""
