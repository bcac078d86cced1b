"""The chapter's pictures and a few more: arrays (or CPU tensors) in, a matplotlib ``Figure`` out.

Built without pyplot and rendered by the Agg canvas (:func:`render`), they need no display, and what
is kept of a figure between its drawings goes with it. Without torch, a process of its own can draw them.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator
from numpy.typing import ArrayLike

from fashion_mnist_softmax.data.fashion_mnist import CLASS_NAMES, IMAGE_SIZE, get_fashion_mnist_labels
from fashion_mnist_softmax.run.metrics import CONFUSION, CURVES, PREDICTIONS, WEIGHTS

DPI = 100
WRONG = "tab:red"
# of a figure redrawn in place: the artists a redrawing changes, and the pixels of the others; held weakly, as
# an artist holds its figure: the figure goes, with them, when its run is done with it
_changing: weakref.WeakKeyDictionary[Figure, list[weakref.ref[Artist]]] = weakref.WeakKeyDictionary()
_backgrounds: weakref.WeakKeyDictionary[Figure, Any] = weakref.WeakKeyDictionary()


def _redrawn(fig: Figure, artists: list[Artist]) -> None:
    """Record ``artists`` as what a redrawing of ``fig`` changes, in the order a whole drawing draws them."""
    _changing.setdefault(fig, []).extend(weakref.ref(artist) for artist in artists)


def image_grid(
    images: ArrayLike, titles: Sequence[str], ncols: int = 10, cmap: str = "gray", colors: Sequence[str] = ()
) -> Figure:
    """Images of shape (N, 28, 28) or (N, 1, 28, 28) in rows of ``ncols``, each with its title."""
    images = np.asarray(images, dtype=np.float32).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    nrows = -(-len(images) // ncols)
    fig = Figure(figsize=(1.2 * ncols, 1.5 * nrows), dpi=DPI, layout="constrained")
    for i, ax in enumerate(fig.subplots(nrows, ncols, squeeze=False).flat):
        ax.set_axis_off()
        if i < len(images):
            ax.imshow(images[i], cmap=cmap)
            ax.set_title(titles[i], fontsize=8, color=colors[i] if colors else "black")
    return fig


def samples_figure(images: ArrayLike, labels: ArrayLike) -> Figure:
    """The chapter's ``show_fashion_mnist``: images with their text labels."""
    return image_grid(images, get_fashion_mnist_labels(labels))


def predictions_figure(images: ArrayLike, labels: ArrayLike, predicted: ArrayLike, fig: Figure | None = None) -> Figure:
    """The chapter's last figure: each image titled "true / predicted", wrong predictions in red.

    Given the ``fig`` of an earlier call on the same images, it rewrites only the titles, in place.
    """
    titles = [
        f"{t}\n{p}" for t, p in zip(get_fashion_mnist_labels(labels), get_fashion_mnist_labels(predicted), strict=True)
    ]
    colors = [WRONG if t != p else "black" for t, p in zip(np.asarray(labels), np.asarray(predicted), strict=True)]
    if fig is None:
        fig = image_grid(images, titles, colors=colors)
        fig.suptitle("true / predicted (wrong in red)", fontsize=9)
        _redrawn(fig, [ax.title for ax in fig.axes if ax.images])
        return fig
    fig.set_layout_engine("none")
    for ax, title, color in zip((ax for ax in fig.axes if ax.images), titles, colors, strict=True):
        ax.title.set_text(title)
        ax.title.set_color(color)
    return fig


def weights_figure(templates: ArrayLike, fig: Figure | None = None) -> Figure:
    """The ten (784,) weight templates as 28×28 images on one colour scale centred at 0.

    Red pixels raise a class's score, blue ones lower it. Given the ``fig`` of an earlier call, it
    redraws that figure in place: only the pixels and the colour scale change, and the layout,
    which costs most of a drawing, is kept from the first one.
    """
    w = np.asarray(templates, dtype=np.float32).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    if fig is None:
        fig = Figure(figsize=(9, 4), dpi=DPI, layout="constrained")
        axes = fig.subplots(2, -(-len(w) // 2), squeeze=False)
        norm = Normalize()
        for ax, name in zip(axes.flat, CLASS_NAMES[: len(w)], strict=False):
            ax.imshow(np.zeros((IMAGE_SIZE, IMAGE_SIZE)), cmap="RdBu_r", norm=norm)
            ax.set_title(name, fontsize=9)
        for ax in axes.flat:
            ax.set_axis_off()
        colorbar = fig.colorbar(axes.flat[0].images[0], ax=axes, shrink=0.8, label="weight")
        _redrawn(fig, [ax.images[0] for ax in axes.flat if ax.images] + [colorbar.ax])
    else:
        fig.set_layout_engine("none")
    images = [ax.images[0] for ax in fig.axes if ax.images]
    for image, template in zip(images, w, strict=True):
        image.set_data(template)
    limit = float(np.abs(w).max()) or 1.0
    images[0].norm.vmin, images[0].norm.vmax = -limit, limit
    return fig


def confusion_figure(confusion: ArrayLike, fig: Figure | None = None) -> Figure:
    """A confusion matrix (rows: true class, columns: predicted) in counts and row-normalised.

    The row-normalised panel's diagonal is each class's accuracy, also written next to its name. Given
    the ``fig`` of an earlier call, it redraws that figure in place: the cells, their numbers and the
    accuracies change, the layout is kept.
    """
    counts = np.asarray(confusion, dtype=np.float64)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    ticks = np.arange(len(CLASS_NAMES))
    names = [f"{name} ({acc:.0%})" for name, acc in zip(CLASS_NAMES, np.diag(rates), strict=True)]
    panels = ((counts, "counts", "d"), (rates, "row-normalised", ".2f"))
    if fig is None:
        fig = Figure(figsize=(12, 5), dpi=DPI, layout="constrained")
        for ax, (values, title, _) in zip(fig.subplots(1, 2), panels, strict=True):
            shown = ax.imshow(values, cmap="Blues")
            for i, j in np.ndindex(values.shape):
                ax.text(j, i, "", ha="center", va="center", fontsize=7)
            ax.set_xticks(ticks, CLASS_NAMES, rotation=45, ha="right", fontsize=8)
            ax.set_xlabel("predicted")
            ax.set_ylabel("true (per-class accuracy)")
            ax.set_title(title)
            colorbar = fig.colorbar(shown, ax=ax, shrink=0.8)
            # in the order a whole drawing draws them (by zorder): the frame over the cells, the numbers over both
            _redrawn(fig, [shown, ax.yaxis, *ax.spines.values(), *ax.texts, colorbar.ax])
    else:
        fig.set_layout_engine("none")
    for ax, (values, _, fmt) in zip((ax for ax in fig.axes if ax.images), panels, strict=True):
        ax.images[0].set_data(values)
        ax.images[0].set_clim(values.min(), values.max())
        for text, v in zip(ax.texts, values.flat, strict=True):
            text.set_text(format(int(v) if fmt == "d" else v, fmt))
            text.set_color("white" if v > 0.6 * values.max() else "black")
        ax.set_yticks(ticks, names, fontsize=8)
    return fig


def curves_figure(epochs: Sequence[int], curves: Mapping[str, Sequence[float]], fig: Figure | None = None) -> Figure:
    """Named per-epoch series on one plot, like the d2l ``Animator``.

    Given the ``fig`` of an earlier call, it clears that figure and draws on it anew, keeping its canvas.
    """
    if fig is None:
        fig = Figure(figsize=(5, 3.5), dpi=DPI, layout="constrained")
    else:
        fig.clear()
    ax = fig.subplots()
    for name, values in curves.items():
        ax.plot(epochs, values, marker="o", label=name)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    ax.legend()
    return fig


def render(fig: Figure) -> np.ndarray:
    """The figure as an (H, W, 3) uint8 RGB array, W×H being its size in inches times its dpi.

    A figure redrawn in place keeps its canvas and the canvas's pixel buffer: a new one for each drawing
    cost time, and memory that the allocator did not give back. Of a figure whose redrawing changes only some
    artists (images, colour bars, the texts that depend on the values), the rest is drawn at its second drawing
    and kept, and each drawing from then on draws just those artists over it: the same pixels, without drawing the
    rest's text again (a figure drawn once, as most test figures are, is drawn once). Only the artists so recorded
    may change between drawings; a figure resized, or at another dpi, is drawn whole.
    """
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    changing = [artist for ref in _changing.get(fig, []) if (artist := ref()) is not None]
    size, (kept_size, background) = tuple(fig.bbox.size), _backgrounds.get(fig, (None, None))
    if size != kept_size or not changing:  # its first drawing at this size
        canvas.draw()
        if changing:
            _backgrounds[fig] = size, None
        return np.asarray(canvas.buffer_rgba())[..., :3].copy()
    if background is None:  # its second: the rest, drawn without them in the layout of the first, is kept
        fig.set_layout_engine("none")
        placed = [(text, text.get_position()) for text in changing if isinstance(text, Text)]
        for artist in changing:
            artist.set_visible(False)
        canvas.draw()
        _backgrounds[fig] = size, canvas.copy_from_bbox(fig.bbox)
        for artist in changing:
            artist.set_visible(True)
        for text, position in placed:  # where the whole drawing put them: a hidden title is placed elsewhere
            text.set_position(position)
    else:
        canvas.restore_region(background)
    for artist in changing:
        fig.draw_artist(artist)
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


FIGURES = {WEIGHTS: weights_figure, CURVES: curves_figure, CONFUSION: confusion_figure, PREDICTIONS: predictions_figure}
_drawn_here: dict[str, Figure] = {}  # a drawing process's figures, each redrawn in place


def drawn(name: str, *data: Any, figs: dict[str, Figure] | None = None) -> np.ndarray:
    """Figure ``name`` of :data:`FIGURES` drawn from ``data`` on the one ``figs`` (by default, this process's) holds,
    in place, and rendered."""
    figs = _drawn_here if figs is None else figs
    figs[name] = FIGURES[name](*data, fig=figs.get(name))
    return render(figs[name])
