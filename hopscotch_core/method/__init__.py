"""The method: run settings, self-distillation data, scale training, block selection, the pipeline, the run store."""
