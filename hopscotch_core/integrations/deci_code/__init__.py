"""The configuration and modeling files a `deci` export carries beside its weights.

They are copied verbatim into the export folder (config.json's auto_map names them), so they import nothing of
hopscotch_core: only torch and transformers, which is what `trust_remote_code=True` gives them.
"""
