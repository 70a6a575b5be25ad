"""BorrowScope: the app's entry script. `streamlit run viewer/Home.py` (what `make app` runs).

Streamlit only discovers a pages/ folder beside the entry script, so the pages are declared here
(paths relative to viewer/).
"""

import sys
from pathlib import Path

import streamlit as st

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:  # the pages import `viewer.*` whatever the working directory
    sys.path.insert(0, ROOT)

st.set_page_config(page_title="BorrowScope", page_icon=":material/image_search:", layout="wide")
pages = [
    st.Page("../pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("../pages/inspect_image.py", title="Inspect", icon=":material/image_search:"),
    st.Page("../pages/evaluate.py", title="Evaluate", icon=":material/speed:"),
    st.Page("../pages/compare.py", title="Compare", icon=":material/bar_chart:"),
    st.Page("../pages/head_to_head.py", title="Head to head", icon=":material/compare_arrows:"),
    st.Page("../pages/data_anchors.py", title="Data & anchors", icon=":material/straighten:"),
    st.Page("../pages/training.py", title="Training", icon=":material/show_chart:"),
]
st.navigation(pages).run()
