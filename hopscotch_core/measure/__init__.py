"""Measurement: MMD and fidelity metrics, evaluation of runs, speed, architecture summaries."""
