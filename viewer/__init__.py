"""The BorrowScope app's shared helpers: asset discovery, cached models and results, figures.

``viewer/Home.py`` is the entry script (``streamlit run viewer/Home.py``); the pages live in ``pages/``.
Nothing here computes model outputs: that is ``borrowcore``'s job.
"""
