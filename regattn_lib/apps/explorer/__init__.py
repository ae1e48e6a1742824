"""Interactive query explorer: which queries does attention fix or break, and where does it look?

``source``: what the explorer searches (a dataset and the cached descriptors of the ablation
rows written by notebook 03; a missing cache raises ``MissingCacheError`` naming the command
that builds it). ``model``: ``QueryExplorer``, the selection, rankings, per-query APs, uploads
and attention views as plain methods that tests drive without a browser. ``imaging``: the JPEG
thumbnails and heat maps it shows. ``view``: the ipywidgets layer and ``open_explorer``.
``scripts/explorer_screenshot.py`` opens notebook 07 in a real JupyterLab and headless Chromium.
"""
