"""The detector, one file per box of the paper's figures: backbone, neck (FMB, FRB, FFB), anchors, head,
boxes, loss, post-processing; ``detector.py`` composes them and ``checkpoint.py`` saves and loads them."""
