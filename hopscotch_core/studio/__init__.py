"""What the app shows: jobs, run views, figures and their export, reports, side-by-side compare, drift, errors explained.

The only part of hopscotch_core that imports pandas or plotly (the `app` extra); it never imports streamlit.
"""
