"""The borrowing neck (paper §3; SPEC §4): FMB, FRB and FFB, and the neck that wires them.

For each shallow layer n < N, top-down so that Y(n + 1) exists when Y(n) needs it:

    S_hat(n) = softmax_rows( tau_n * normalise(theta_n X(n)) normalise([phi_(n,n') X(n')]_n')^T )  (FMB, §3.1)
    Z(n)     = S_hat(n) [g_(n,n') X(n')]_n'                                                     (FRB, §3.2)
    Y(n)     = X(n) + C_n([X(n), Z(n), D_n(Y(n + 1))])                                          (FFB, §3.3)

with Y(N) = X(N). C_n is zero-initialised, so every ablation starts as the plain SSD.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from borrowcore.models.config import NECKS


# How many matching scores exist at once on the CPU. Rows are independent softmaxes, so S_hat V is computed a
# block of query rows at a time and the whole matrix is never held: a block holds no more scores than the
# shallow map X(n) has values (m_n x c_n; at least MIN_BLOCK_SCORES), so borrowing's extra memory stays a
# small multiple of a map ssd holds anyway, at every image size (SPEC §4). MAX_SCORES_IN_MEMORY bounds the
# blocks of the summaries explain computes.
MIN_BLOCK_SCORES = 2**16
MAX_SCORES_IN_MEMORY = 2**20


@dataclass
class MatchingScores:
    """One borrowing layer's matching scores S_hat and the grids that place its rows and columns.

    S_hat (B, m_n, d_n) is held as its factors: ``queries`` (B, m_n, e) and ``keys`` (B, d_n, e), already
    scaled, so S_hat = softmax_rows(queries @ keys^T). That is linear in the cells; ``rows`` computes the
    rows a user inspects, ``summary`` the per-cell statistics the app draws, and ``dense`` the whole
    matrix (small maps, tests). A hand-made S_hat can be given as ``scores`` instead of the factors.
    Row r is query cell r of layer n (row-major on ``query_grid``); columns run over the deeper layers
    ``source_layers`` in order, each row-major on its grid. Layers are numbered 1..N as in the paper.
    With a key budget the deeper maps were pooled: their grids and strides are the pooled ones.
    """

    layer: int
    scores: Tensor | None
    query_grid: tuple[int, int]
    query_stride: int
    source_layers: list[int]
    source_grids: list[tuple[int, int]]
    source_strides: list[int]
    queries: Tensor | None = None
    keys: Tensor | None = None
    top_k: int = 0  # > 0: each row keeps its k largest scores (sparse matching), renormalised


    def select(self, image: int) -> MatchingScores:
        """Image ``image`` of the batch, keeping a batch dimension of 1, on the CPU."""
        def one(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[image:image + 1].cpu()
        return dataclasses.replace(self, scores=one(self.scores), queries=one(self.queries), keys=one(self.keys))

    def rows(self, rows: Tensor | Sequence[int], image: int = 0) -> Tensor:
        """S_hat rows ``rows`` of image ``image``: (len(rows), d_n), float32, each summing to 1."""
        index = torch.as_tensor(rows, dtype=torch.long)
        if self.scores is not None:
            scores = self.scores[image] if self.scores.dim() == 3 else self.scores
            return scores[index].float()
        queries, keys = self.queries[image].float(), self.keys[image].float()  # (m_n, e), (d_n, e)
        return torch.softmax(keep_top_k(queries[index.to(queries.device)] @ keys.T, self.top_k), dim=-1).cpu()

    @property
    def num_queries(self) -> int:
        return self.query_grid[0] * self.query_grid[1]

    @property
    def num_sources(self) -> int:
        return sum(h * w for h, w in self.source_grids)

    def dense(self, image: int = 0) -> Tensor:
        """The whole (m_n, d_n) S_hat of one image: m_n x d_n floats, only for small maps."""
        return self.rows(torch.arange(self.num_queries), image)

    def summary(self, image: int = 0) -> dict[str, Tensor]:
        """Per query cell (m_n,): the arg-max column, its share ("peak") and the row's entropy, computed
        a block of rows at a time (never the whole matrix)."""
        block = max(1, MAX_SCORES_IN_MEMORY // max(1, self.num_sources))
        parts = []
        for start in range(0, self.num_queries, block):
            scores = self.rows(torch.arange(start, min(start + block, self.num_queries)), image)
            peak, argmax = scores.max(dim=1)
            entropy = -(scores * scores.clamp_min(1e-12).log()).sum(dim=1)
            parts.append((argmax, peak, entropy))
        argmax, peak, entropy = (torch.cat(p) for p in zip(*parts))
        return {"argmax": argmax, "peak": peak, "entropy": entropy}


def flatten_cells(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H*W, C), cells row-major."""
    return x.flatten(2).transpose(1, 2)


def conv1x1_together(x: Tensor, convs: list[nn.Conv2d]) -> list[Tensor]:
    """1x1 convs that read the same map, run as one conv: x (B, C, H, W) -> [(B, c_out, H, W)] per conv.

    The weights are concatenated per call, so the state_dict and the gradients stay each module's own: one
    larger product instead of several small ones, where per-call overhead dominates (small maps, batch 1).
    """
    weight = torch.cat([conv.weight for conv in convs])  # (sum of c_out, C, 1, 1)
    bias = torch.cat([conv.bias for conv in convs])
    return list(F.conv2d(x, weight, bias).split([conv.out_channels for conv in convs], dim=1))


def cat_as_conv_reads(parts: list[Tensor]) -> Tensor:
    """torch.cat(parts, dim=1) in the dtype and memory format the convolution that reads it computes in.

    Under autocast a convolution casts its input to the autocast dtype, so casting the parts first gives the
    same numbers without the full-precision copy of the concatenation (X(1) and X(2) leave L2Norm in float32,
    Z(n) and the context are bf16). And when the first part is channels-last the concatenation is made
    channels-last: torch.cat falls back to channels-first when a part's strides are ambiguous (Z(n) at batch
    1), and the convolution then copied the whole concatenation back. Both cost the neck 55.7 against 47.5 ms
    on one thread at a 1024 x 699 photo (docs/benchmarks.md), for the same numbers.
    """
    device = parts[0].device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        parts = [part.to(dtype) for part in parts]
    if parts[0].dim() == 4 and not parts[0].is_contiguous() and parts[0].is_contiguous(memory_format=torch.channels_last):
        return torch.cat([part.permute(0, 2, 3, 1) for part in parts], dim=-1).permute(0, 3, 1, 2)
    return torch.cat(parts, dim=1)


def keep_top_k(scores: Tensor, top_k: int) -> Tensor:
    """Scores (..., d) with all but each row's ``top_k`` largest set to -inf (softmax gives them 0); ties at
    the k-th score are all kept. ``top_k`` 0, or >= d, keeps every score."""
    if top_k <= 0 or top_k >= scores.shape[-1]:
        return scores
    kth = scores.topk(top_k, dim=-1).values[..., -1:]  # (..., 1)
    return scores.masked_fill(scores < kth, float("-inf"))


def attend(queries: Tensor, keys: Tensor, values: Tensor, max_scores: int | None = None, top_k: int = 0) -> Tensor:
    """softmax(Q K^T) V, one head: queries (B, m, e), keys (B, d, e), values (B, d, c) -> (B, m, c).
    ``top_k`` > 0 keeps each row's k largest scores (``keep_top_k``): sparse matching.

    Q and K already carry the scale. SDPA's fused kernels keep no m x d matrix (SPEC §4). On the CPU they
    need values as wide as the keys (narrower ones, c < c_n here, take the math path), so at inference V is
    zero-padded to c_n and the output cut back: the same numbers, 1.3x faster in fp32 and 3.4x in bf16 than
    the plain product at a 1024 x 768 photo's layer 1 (docs/benchmarks.md). With gradients the plain product
    runs instead (as fast there, under bf16 autocast), on blocks of query rows so that at most ``max_scores``
    scores exist at once (default: as many as the queries have values, at least ``MIN_BLOCK_SCORES``).
    """
    if top_k and top_k < keys.shape[1]:
        # sparse rows: the explicit product, in blocks of rows as below (SDPA takes no per-row mask for free)
        keys_t = keys.transpose(1, 2)  # (B, e, d)
        block = max(1, (max_scores or max(queries.numel(), MIN_BLOCK_SCORES)) // max(1, keys.shape[0] * keys.shape[1]))
        return torch.cat([torch.softmax(keep_top_k(q @ keys_t, top_k), dim=-1) @ values
                          for q in queries.split(block, dim=1)], dim=1)
    exporting = torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()
    if queries.device.type != "cpu":
        return F.scaled_dot_product_attention(  # one attention head: (B, 1, L, E)
            queries.unsqueeze(1), keys.unsqueeze(1), values.unsqueeze(1), scale=1.0
        ).squeeze(1)
    if not exporting and not torch.is_grad_enabled():
        padded = F.pad(values, (0, max(0, keys.shape[-1] - values.shape[-1])))  # (B, d, max(c, e))
        # contiguous: the queries arrive as a transposed view, on which the kernel ran 5x slower (measured)
        return F.scaled_dot_product_attention(
            queries.contiguous().unsqueeze(1), keys.unsqueeze(1), padded.unsqueeze(1), scale=1.0
        ).squeeze(1)[..., :values.shape[-1]]
    keys_t = keys.transpose(1, 2)  # (B, e, d)
    if exporting:
        # one product in an exported graph: blocks sized from the batch would bake the traced batch's split
        # sizes into a graph whose batch is dynamic (onnxruntime then fails on another batch)
        return torch.softmax(queries @ keys_t, dim=-1) @ values
    max_scores = max_scores or max(queries.numel(), MIN_BLOCK_SCORES)
    block = max(1, max_scores // max(1, keys.shape[0] * keys.shape[1]))
    if block >= queries.shape[1]:
        return torch.softmax(queries @ keys_t, dim=-1) @ values  # (B, m, d) @ (B, d, c)
    return torch.cat([torch.softmax(q @ keys_t, dim=-1) @ values for q in queries.split(block, dim=1)], dim=1)


def pool_to_budget(x: Tensor, budget: int) -> tuple[Tensor, int]:
    """A deeper map X(n') (B, c, h, w) average-pooled by the smallest power of two r that leaves at most
    ``budget`` cells (ceil(h / r) * ceil(w / r)); returns it and r. ``budget`` 0 keeps every cell.

    The key budget bounds FMB's cost per query cell, so it grows linearly with the image: the deeper
    maps are reduced before matching, as in PVT's spatial-reduction attention and ANN's pooled keys.
    Powers of two keep every pooled cell an exact union of the original cells (edges: ``ceil_mode``
    averages only the cells that exist) and its stride a multiple of the finest one.
    """
    if budget <= 0:
        return x, 1
    h, w = x.shape[-2:]
    r = 1
    while math.ceil(h / r) * math.ceil(w / r) > budget:
        r *= 2
    if r == 1:
        return x, 1
    return F.avg_pool2d(x, r, r, ceil_mode=True), r


class FeatureMatchingBlock(nn.Module):
    """FMB (§3.1): matching scores between the cells of X(n) and every cell of X(n+1..N).

    Args:
        channels: c_n, the channels of the shallow map X(n) (the embedding keeps them).
        deeper_channels: c_n' for each deeper layer n' = n+1..N, in order.
        similarity: "cosine" (normalised, times a learnable inverse temperature tau_n) or "dot"
            (Q K^T / sqrt(c_n), non-local's embedded Gaussian).
    """

    def __init__(self, channels: int, deeper_channels: list[int], similarity: str = "cosine") -> None:
        super().__init__()
        if similarity not in ("cosine", "dot"):
            raise ValueError(f"similarity must be cosine or dot, got {similarity!r}")
        self.similarity = similarity
        self.theta = nn.Conv2d(channels, channels, 1)
        self.phi = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in deeper_channels)
        # SPEC §4: tau_n stored as its log, init log 10
        self.log_tau = nn.Parameter(torch.tensor(math.log(10.0))) if similarity == "cosine" else None

    def embed(self, x: Tensor, deeper: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Queries and keys scaled so that S = queries @ keys^T.

        x: (B, c_n, h_n, w_n); deeper: [X(n'), (B, c_n', h_n', w_n')] -> (B, m_n, c_n), (B, d_n, c_n).
        """
        queries = flatten_cells(self.theta(x))  # (B, m_n, c_n)
        keys = torch.cat([flatten_cells(phi(x_deep)) for phi, x_deep in zip(self.phi, deeper)], dim=1)  # (B, d_n, c_n)
        return self.scale(queries, keys)

    def scale(self, queries: Tensor, keys: Tensor) -> tuple[Tensor, Tensor]:
        """theta_n X(n) (B, m_n, c_n) and [phi_(n,n') X(n')]_n' (B, d_n, c_n) scaled so that S = queries @ keys^T."""
        if self.similarity == "cosine":
            # "after normalization ... a perfect match approaches 1": cosine, sharpened by tau_n
            queries = F.normalize(queries, dim=-1) * self.log_tau.exp()
            keys = F.normalize(keys, dim=-1)
        else:
            queries = queries / math.sqrt(queries.shape[-1])
        return queries, keys

    def forward(self, x: Tensor, deeper: list[Tensor]) -> Tensor:
        """S_hat (B, m_n, d_n): each row a softmax over all d_n deeper cells."""
        queries, keys = self.embed(x, deeper)
        return torch.softmax(queries @ keys.transpose(1, 2), dim=-1)  # (B, m_n, d_n)


class FeatureRepresentingBlock(nn.Module):
    """FRB (§3.2): the borrowed map Z(n) = S_hat V, V the deeper cells encapsulated to c channels.

    Args:
        deeper_channels: c_n' for each deeper layer n' = n+1..N.
        channels: c, the borrowed map's channels.
    """

    def __init__(self, deeper_channels: list[int], channels: int) -> None:
        super().__init__()
        self.g = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in deeper_channels)

    def values(self, deeper: list[Tensor]) -> Tensor:
        """V (B, d_n, c): each deeper cell encapsulated by a 1x1 conv, concatenated as the FMB keys."""
        return torch.cat([flatten_cells(g(x_deep)) for g, x_deep in zip(self.g, deeper)], dim=1)

    def forward(self, matching_scores: Tensor, deeper: list[Tensor], grid: tuple[int, int]) -> Tensor:
        """Z(n) (B, c, h_n, w_n) from a materialised S_hat (B, m_n, d_n)."""
        borrowed = matching_scores @ self.values(deeper)  # (B, m_n, d_n) @ (B, d_n, c) -> (B, m_n, c)
        return borrowed.transpose(1, 2).unflatten(2, grid)  # (B, c, h_n, w_n)

    def fused(self, queries: Tensor, keys: Tensor, deeper: list[Tensor], grid: tuple[int, int]) -> Tensor:
        """Z(n) without returning S_hat: softmax(Q K^T) V, scaled-dot-product attention (see ``attend``).

        queries (B, m_n, c_n) and keys (B, d_n, c_n) already carry the scale, so scale=1.
        """
        borrowed = attend(queries, keys, self.values(deeper))  # (B, m_n, c)
        return borrowed.transpose(1, 2).unflatten(2, grid)  # (B, c, h_n, w_n)


class FeatureFusionBlock(nn.Module):
    """FFB (§3.3): Y(n) = X(n) + C_n([X(n), Z(n), D_n(Y(n+1))]).

    Args:
        channels: c_n of X(n) (and of Y(n)).
        borrowed_channels: c of Z(n), or 0 when the ablation does not borrow.
        deeper_channels: c_(n+1) of Y(n+1) for the deconvolution context, or 0 without context.
        context_channels: c, D_n's output channels.
    """

    def __init__(self, channels: int, borrowed_channels: int, deeper_channels: int, context_channels: int) -> None:
        super().__init__()
        self.deconv = None
        if deeper_channels:
            # D_n: stride-2 transposed conv, output_size picks the parity (38 <- 19, 19 <- 10, 10 <- 5)
            self.deconv = nn.ConvTranspose2d(deeper_channels, context_channels, 3, stride=2, padding=1)
        fused_channels = channels + borrowed_channels + (context_channels if deeper_channels else 0)
        self.combine = nn.Conv2d(fused_channels, channels, 1)  # C_n: one weight vector per output channel
        # zero-init C_n so the neck starts as identity: Y(n) = X(n), every ablation = ssd at step 0
        nn.init.zeros_(self.combine.weight)
        nn.init.zeros_(self.combine.bias)

    def forward(self, x: Tensor, borrowed: Tensor | None = None, deeper_output: Tensor | None = None) -> Tensor:
        """x (B, c_n, h, w), borrowed (B, c, h, w), deeper_output Y(n+1) -> Y(n) (B, c_n, h, w)."""
        parts = [x]
        if borrowed is not None:
            parts.append(borrowed)
        if self.deconv is not None:
            if deeper_output is None:
                raise ValueError("this FeatureFusionBlock has a deconvolution: pass Y(n+1)")
            context = self.deconv(deeper_output, output_size=x.shape[-2:])  # (B, c, h_n, w_n)
            parts.append(F.relu(context))
        return x + self.combine(cat_as_conv_reads(parts))  # §3.3 residual


class BorrowNeck(nn.Module):
    """Wires FMB, FRB and FFB over the N detection layers for one ablation (SPEC §4, "Ablations").

    Args:
        in_channels: c_1..c_N from the backbone.
        strides: the layers' strides, to place matching-score rows and columns on the image.
        neck: "ssd" (identity), "context" (D_n only), "borrow" (FMB + FRB only) or "full".
        borrow_channels: c, the channels of Z(n) and of D_n's output.
        similarity: FMB's matching function.
        key_budget: at most this many cells per deeper map as FMB keys and FRB values (``pool_to_budget``);
            0 matches every cell, as the paper does.
        top_k: > 0, each S_hat row keeps its k largest scores (sparse matching); 0, every one (the paper).
    """

    def __init__(
        self, in_channels: list[int], strides: tuple[int, ...] | list[int], neck: str = "full",
        borrow_channels: int = 256, similarity: str = "cosine", key_budget: int = 0, top_k: int = 0,
    ) -> None:
        super().__init__()
        if neck not in NECKS:
            raise ValueError(f"neck must be one of {NECKS}, got {neck!r}")
        if key_budget < 0:
            raise ValueError(f"key_budget must be >= 0 (0: every cell), got {key_budget}")
        self.neck = neck
        self.key_budget = key_budget
        self.top_k = top_k
        self.strides = list(strides)
        self.borrows = neck in ("borrow", "full")
        self.uses_context = neck in ("context", "full")
        num_layers = len(in_channels)
        self.matching = nn.ModuleList()
        self.representing = nn.ModuleList()
        self.fusion = nn.ModuleList()
        if neck == "ssd":
            return
        for n in range(num_layers - 1):  # 0-based n: shallow layer n borrows from n+1..N-1
            deeper = in_channels[n + 1:]
            if self.borrows:
                self.matching.append(FeatureMatchingBlock(in_channels[n], deeper, similarity))
                self.representing.append(FeatureRepresentingBlock(deeper, borrow_channels))
            self.fusion.append(FeatureFusionBlock(
                in_channels[n],
                borrowed_channels=borrow_channels if self.borrows else 0,
                deeper_channels=in_channels[n + 1] if self.uses_context else 0,
                context_channels=borrow_channels,
            ))

    def forward(self, features: list[Tensor], return_matching: bool = False,
                detach_matching: bool = False) -> tuple[list[Tensor], list[MatchingScores]]:
        """[X(1)..X(N)] -> ([Y(1)..Y(N)], matching scores per borrowing layer when asked, shallow first).

        Returning the matching scores costs no more than not: S_hat is returned as its factors. With
        ``detach_matching`` the returned factors are theta and phi of the detached maps X(n), X(n'): the same
        values, but a loss on them trains theta and phi only, not the backbone (``model.matching_loss_detach``)."""
        if self.neck == "ssd":
            return list(features), []
        # (X(n'), r) for n' = 2..N (0-based 1..N-1): X(1) is never a source
        sources = [(features[0], 1)] + [pool_to_budget(x, self.key_budget) for x in features[1:]] if self.borrows else []
        outputs: list[Tensor] = [features[-1]]  # Y(N) = X(N)
        matching: list[MatchingScores] = []
        for n in range(len(features) - 2, -1, -1):  # top-down: Y(n) needs Y(n + 1)
            x = features[n]
            borrowed = None
            if self.borrows:
                deeper = [pooled for pooled, _ in sources[n + 1:]]  # the original X(n'), not Y(n') (SPEC §4)
                queries, keys, values = self.embed(n, x, deeper)
                borrowed = attend(queries, keys, values, top_k=self.top_k)  # (B, m_n, c)
                borrowed = borrowed.transpose(1, 2).unflatten(2, x.shape[-2:])  # (B, c, h_n, w_n)
                if return_matching:
                    if detach_matching:
                        queries, keys = self.matching[n].embed(x.detach(), [d.detach() for d in deeper])
                    matching.append(MatchingScores(
                        layer=n + 1, scores=None, query_grid=(x.shape[-2], x.shape[-1]), query_stride=self.strides[n],
                        source_layers=list(range(n + 2, len(features) + 1)),
                        source_grids=[(f.shape[-2], f.shape[-1]) for f in deeper],
                        source_strides=[stride * r for stride, (_, r) in zip(self.strides[n + 1:], sources[n + 1:])],
                        queries=queries, keys=keys, top_k=self.top_k,
                    ))
            outputs.insert(0, self.fusion[n](x, borrowed, outputs[0]))
        matching.reverse()  # shallow layer first
        return outputs, matching

    def embed(self, n: int, x: Tensor, deeper: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """FMB's scaled queries (B, m_n, c_n) and keys (B, d_n, c_n) and FRB's values (B, d_n, c) for
        0-based layer n: Z(n) = softmax(queries keys^T) values. phi_(n,n') and g_(n,n') read the same
        X(n'), so each pair runs as one 1x1 conv."""
        fmb, frb = self.matching[n], self.representing[n]
        keys, values = [], []
        for phi, g, x_deep in zip(fmb.phi, frb.g, deeper):
            key, value = conv1x1_together(x_deep, [phi, g])  # (B, c_n, h_n', w_n'), (B, c, h_n', w_n')
            keys.append(flatten_cells(key))
            values.append(flatten_cells(value))
        queries, keys = fmb.scale(flatten_cells(fmb.theta(x)), torch.cat(keys, dim=1))  # (B, m_n, c_n), (B, d_n, c_n)
        return queries, keys, torch.cat(values, dim=1)
