"""Pictures of layouts, like the Sparse Transformer's attention-pattern figures (PNG, Agg backend).

``save_layout_pictures`` draws, per head, which keys (columns) each query (rows) may attend:

- up to ``TOKEN_PICTURE_MAX`` tokens: the exact token mask in ORIGINAL order (``token_mask``);
- beyond: the block mask instead (``block_mask``, in the layout's own order: for a strided
  layout that is after the transpose). Nothing N x N is ever made at large N: the image is built
  from the stored blocks' coordinates.

Images larger than ``MAX_PIXELS`` a side are max-pooled (a pixel is dark when any token or block
under it is allowed), so a one-token stride line stays visible. ``save_query_picture`` draws one
query's allowed keys with the tokens laid out in rows of ``width`` (the paper's Figure 3, top row).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import LinearSegmentedColormap, ListedColormap, PowerNorm  # noqa: E402

TOKEN_PICTURE_MAX = 2048  # above this many tokens, draw blocks instead of tokens
MAX_PIXELS = 512  # image side of a one-head picture; larger masks are max-pooled down to it
PANEL_PIXELS = 256  # image side of a panel in the overview (about its size on screen at DPI)
MAX_PANELS = 8  # heads drawn in one overview figure
QUERY_ROWS = 32  # rows of tokens shown in a query picture (those just before the query)
DPI = 120
ALLOWED_COLOR, QUERY_COLOR, EMPTY_COLOR = "#2b6cb0", "#c53030", "#ffffff"
MASK_CMAP = LinearSegmentedColormap.from_list("stbench_mask", [EMPTY_COLOR, ALLOWED_COLOR])
# Pooled pixels show the fraction allowed on a square-root scale, so that a one-token stride
# line (1/r of a pixel) stays visible next to a fully dense band.
POOL_GAMMA = 0.5
QUERY_CMAP = ListedColormap([EMPTY_COLOR, "#90cdf4", QUERY_COLOR])


def _pool_coords(
    rows: torch.Tensor, cols: torch.Tensor, side: int, pixels: int = MAX_PIXELS
) -> tuple[np.ndarray, int]:
    """float image [ceil(side / r)]^2: the fraction of the r x r cells under each pixel that hold
    an (i, j) of ``rows``, ``cols``; r >= 1 is the smallest factor bringing ``side`` down to
    ``pixels`` (r = 1: a 0/1 image)."""
    r = max(1, math.ceil(side / pixels))
    px = math.ceil(side / r)
    counts = torch.zeros(px * px, dtype=torch.float64)
    if rows.numel():
        counts = torch.bincount(
            (rows.long() // r) * px + cols.long() // r, minlength=px * px
        ).to(torch.float64)
    return (counts / (r * r)).reshape(px, px).numpy(), r


def head_image(
    layout, h: int, level: str = "auto", pixels: int = MAX_PIXELS
) -> tuple[np.ndarray, str, int]:
    """(image, level, r): head ``h``'s mask as an image of at most ``pixels`` a side (the
    fraction of allowed cells under each pixel),
    ``level`` 'token' (original order) or 'block' (layout order), each pixel covering r x r
    tokens or blocks."""
    if level == "auto":
        level = "token" if layout.n_ctx <= TOKEN_PICTURE_MAX else "block"
    if level == "token":
        if layout.n_ctx > TOKEN_PICTURE_MAX:
            raise ValueError(
                f"a token picture of n_ctx={layout.n_ctx} would be N x N: use level='block' "
                f"(token pictures up to {TOKEN_PICTURE_MAX} tokens)"
            )
        n = layout.n_ctx
        m = layout.layout_order_rows(h, 0, n)  # [N, N], layout order
        perm = layout.perm_of_head(h)
        if perm is not None:
            orig = torch.zeros_like(m)
            orig[perm.unsqueeze(1), perm.unsqueeze(0)] = m
            m = orig
        qi, kj = m.nonzero(as_tuple=True)
        img, r = _pool_coords(qi, kj, n, pixels)
        return img, level, r
    if level != "block":
        raise ValueError(f"level={level!r}: use 'auto', 'token' or 'block'")
    sel = layout.heads_idx == h
    img, r = _pool_coords(layout.q_blocks[sel], layout.k_blocks[sel], layout.n_blocks, pixels)
    return img, level, r


def _axis_labels(ax, layout, level: str, r: int) -> None:
    unit = "token" if level == "token" else "block"
    order = "" if level == "token" or layout.perms is None else " (layout order)"
    ax.set_xlabel(f"key {unit}{order}")
    ax.set_ylabel(f"query {unit}{order}")
    side = layout.n_ctx if level == "token" else layout.n_blocks
    ticks = np.linspace(0, side, 5)
    ax.set_xticks((ticks - 0.5 * r) / r)
    ax.set_xticklabels([f"{int(t)}" for t in ticks], fontsize=7)
    ax.set_yticks((ticks - 0.5 * r) / r)
    ax.set_yticklabels([f"{int(t)}" for t in ticks], fontsize=7)


def _draw(ax, layout, h: int, level: str, pixels: int) -> str:
    img, level, r = head_image(layout, h, level, pixels)
    norm = PowerNorm(POOL_GAMMA, vmin=0.0, vmax=1.0) if r > 1 else None
    ax.imshow(img, cmap=MASK_CMAP, norm=norm, vmin=None if norm else 0, vmax=None if norm else 1,
              interpolation="nearest")
    _axis_labels(ax, layout, level, r)
    dens = float(layout.allowed_pairs_per_head[h]) / layout.n_ctx**2
    ax.set_title(f"head {h}: {100 * dens:.2f}% of pairs", fontsize=9)
    pooled = f"; 1 px = {r}x{r} {level}s, shade = fraction allowed (sqrt scale)" if r > 1 else ""
    return f"{level} mask{pooled}"


def _suptitle(layout, what: str) -> str:
    return (
        f"{layout.name}: N={layout.n_ctx}, block={layout.block}, heads={layout.heads}\n"
        f"block density {layout.block_density:.3g}, token density {layout.token_density:.3g}\n"
        f"{what}"
    )


def save_layout_pictures(
    layout, out_dir, stem: str | None = None, level: str = "auto", per_head: bool = True
) -> list[Path]:
    """Write ``<stem>_heads.png`` (one panel per head, up to MAX_PANELS) and, with ``per_head``,
    ``<stem>_h<h>.png`` for each of those heads; returns the paths written. ``stem`` defaults
    to ``<name>_n<N>_b<block>``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = stem or f"{_safe(layout.name)}_n{layout.n_ctx}_b{layout.block}"
    heads = list(range(min(layout.heads, MAX_PANELS)))
    cols = min(4, len(heads))
    nrows = math.ceil(len(heads) / cols)
    fig, axes = plt.subplots(
        nrows, cols, figsize=(max(7.0, 3.2 * cols), 3.4 * nrows + 0.9), squeeze=False
    )
    what = ""
    for ax, h in zip(axes.flat, heads):
        what = _draw(ax, layout, h, level, PANEL_PIXELS)
    for ax in list(axes.flat)[len(heads):]:
        ax.axis("off")
    more = f" (first {len(heads)} of {layout.heads} heads)" if layout.heads > len(heads) else ""
    fig.suptitle(_suptitle(layout, what + more), fontsize=10)
    fig.tight_layout()
    paths = [out / f"{stem}_heads.png"]
    fig.savefig(paths[0], dpi=DPI)
    plt.close(fig)
    if per_head:
        for h in heads:
            fig, ax = plt.subplots(figsize=(6.0, 6.6))
            what = _draw(ax, layout, h, level, MAX_PIXELS)
            fig.suptitle(_suptitle(layout, what), fontsize=9)
            fig.tight_layout()
            paths.append(out / f"{stem}_h{h}.png")
            fig.savefig(paths[-1], dpi=DPI)
            plt.close(fig)
    return paths


def save_query_picture(
    layout, path, query: int | None = None, width: int | None = None, heads=None
) -> Path:
    """One query's allowed keys (light blue) and the query itself (red), tokens in ORIGINAL order
    laid out row by row, ``width`` per row (default: a power of two near sqrt(N)), showing the
    QUERY_ROWS rows up to the query's; one panel per head (default: up to MAX_PANELS).
    ``query`` defaults to the middle of the last row. Memory O(N) per head."""
    n = layout.n_ctx
    width = width or 2 ** round(math.log2(math.sqrt(n)))
    if not 0 < width <= n:
        raise ValueError(f"width={width} must be in 1..n_ctx={n}")
    if query is None:
        query = ((n - 1) // width) * width + min(width // 2, (n - 1) % width)
    if not 0 <= query < n:
        raise ValueError(f"query={query} must be a token index in 0..{n - 1}")
    heads = list(range(min(layout.heads, MAX_PANELS))) if heads is None else list(heads)
    rows = math.ceil(n / width)
    last = query // width + 1  # rows 0..last-1 hold every key a causal query may see
    first = max(0, last - QUERY_ROWS)
    cols = min(4, len(heads))
    nr = math.ceil(len(heads) / cols)
    fig, axes = plt.subplots(nr, cols, figsize=(max(7.0, 3.2 * cols), 3.2 * nr + 0.9),
                             squeeze=False)
    for ax, h in zip(axes.flat, heads):
        allowed = layout.token_mask_rows(h, torch.tensor([query]))[0].numpy()
        grid = np.zeros(rows * width, dtype=np.int8)
        grid[:n][allowed] = 1
        grid[query] = 2
        shown = grid.reshape(rows, width)[first:last]
        ax.imshow(shown, cmap=QUERY_CMAP, vmin=0, vmax=2, interpolation="nearest",
                  aspect="auto", extent=(-0.5, width - 0.5, last - 0.5, first - 0.5))
        hidden = int(allowed[: first * width].sum())
        note = f", {hidden} above" if hidden else ""
        ax.set_title(f"head {h}: {int(allowed.sum())} keys{note}", fontsize=9)
        ax.set_xlabel(f"token % {width}")
        ax.set_ylabel(f"token // {width}")
    for ax in list(axes.flat)[len(heads):]:
        ax.axis("off")
    span = f"rows {first}..{last - 1} of {rows}" if first else f"{last} rows"
    fig.suptitle(f"{layout.name}: the keys query {query} may attend (red: the query)\n"
                 f"N={n}, tokens in rows of {width}, {span}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _safe(name: str) -> str:
    """A file-name-safe version of a layout name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "layout"
