"""Names the whole package shares, each defined once here: the engine, the run settings, the adapter files and the
app's tables all read them from this module. It imports nothing (ground floor: anything may import it, torch-free).
"""

from __future__ import annotations

# The four scalars of a layer, in the column order of every [num_layers, 4] scales tensor and file:
#   x1 = b_att * Attention(Norm(x)) + s_att * x;   out = b_mlp * MLP(Norm(x1)) + s_mlp * x1
COLUMNS = ("b_att", "s_att", "b_mlp", "s_mlp")

# One b per branch (the paper's) | per-channel b_att / b_mlp vectors beside the scalars
GRANULARITIES = ("scalar", "channel")

# What candidate scoring and scale training minimise (method/training.py): cross-entropy on the answers, KL to the
# original model, or their sum
OBJECTIVES = ("ce", "kl", "ce+kl")
