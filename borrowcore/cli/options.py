"""Options several commands share: the matching, CPU precision and inference recipe a checkpoint runs with."""

from __future__ import annotations

import argparse

from borrowcore.models.config import DEFAULT_KEY_BUDGET


def add_matching_arguments(p: argparse.ArgumentParser) -> None:
    """--exact and --key-budget, the matching a borrow/full checkpoint runs with (default: its own)."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--exact", action="store_true",
                       help="borrow/full: match every cell of every deeper map (the paper's full softmax; time "
                            "grows with the square of the image)")
    group.add_argument("--key-budget", dest="key_budget", type=int,
                       help="borrow/full: fast matching with at most this many keys per deeper map, larger maps "
                            f"average-pooled (time linear in the image; default {DEFAULT_KEY_BUDGET})")


def add_precision_argument(p: argparse.ArgumentParser) -> None:
    """--precision, of inference on the CPU (``checkpoint.resolve_precision``), and --no-fold-bn
    (``checkpoint.fold_batch_norm``)."""
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="CPU inference: bf16 autocast or fp32; auto (default) takes bf16 where the CPU computes it "
                        "natively (AVX-512 BF16, AMX)")
    p.add_argument("--no-fold-bn", dest="fold_bn", action="store_false",
                   help="keep each BatchNorm as trained instead of folding it into the conv before it (the default: "
                        "the same detections up to rounding, faster)")


def add_recipe_argument(p: argparse.ArgumentParser, help: str | None = None) -> None:
    """--recipe KEY=VALUE: an inference-recipe field in place of the checkpoint's (repeatable)."""
    p.add_argument("--recipe", action="append", default=[], metavar="KEY=VALUE",
                   help=help or "run with this inference-recipe field (YAML value) in place of the checkpoint's, "
                                "e.g. oversize=shrink or zoom_out=[0.5]; repeatable")


def parse_recipe(items: list[str]) -> dict:
    """--recipe's KEY=VALUE items as overrides (borrowcore.models.checkpoint.parse_recipe)."""
    from borrowcore.models.checkpoint import parse_recipe as parse

    return parse(items)
