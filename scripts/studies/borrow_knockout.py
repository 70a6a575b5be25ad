"""Evaluate a borrow/full checkpoint with its matching knocked out at inference: does the detector use *which*
cells a small one borrows from, or only that it borrows? (docs/learning-to-borrow.md, "Knockout").

    python scripts/studies/borrow_knockout.py uniform --checkpoint WEIGHTS --coco data/wider/val.json \
        --images ../shared/data/wider-faces/images --out OUT.json [any other `borrowcore eval` option]

Modes (each replaces S_hat, nothing else; FRB, the fusion and the head keep their trained weights):
- ``uniform``: every row of S_hat spread evenly over the deeper cells, so Z(n) at every cell is the photo's
  mean borrowed feature, the same for a small face and for background.
- ``zero``: Z(n) = 0, as if FFB had no borrowed input.
The trained model's own figures are plain ``borrowcore eval`` on the same checkpoint and recipe; the paired
bootstrap of the two reports (``borrowcore compare``) says what the knockout costs, twins included.
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor

import borrowcore.models.neck as neck
from borrowcore.cli import main as borrowcore


def uniform(queries: Tensor, keys: Tensor, values: Tensor, **_) -> Tensor:
    """Z with S_hat uniform: each query cell gets the mean of the values (B, d, c) -> (B, m, c)."""
    return values.mean(dim=1, keepdim=True).expand(-1, queries.shape[1], -1)


def zero(queries: Tensor, keys: Tensor, values: Tensor, **_) -> Tensor:
    """Z = 0."""
    return torch.zeros(values.shape[0], queries.shape[1], values.shape[2], dtype=values.dtype, device=values.device)


MODES = {"uniform": uniform, "zero": zero}


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in MODES:
        sys.exit(f"usage: borrow_knockout.py {{{','.join(MODES)}}} [borrowcore eval options]")
    neck.attend = MODES[sys.argv[1]]  # BorrowNeck.forward looks attend up at call time
    sys.exit(borrowcore(["eval", *sys.argv[2:]]))
