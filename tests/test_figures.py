"""The figure functions: arrays or tensors in, a Figure out, rendered without a display."""

import gc
import multiprocessing
import weakref
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from fashion_mnist_softmax.data.fashion_mnist import CLASS_NAMES
from fashion_mnist_softmax.run import plots
from fashion_mnist_softmax.run.figures import Figures, flush_figures
from fashion_mnist_softmax.run.metrics import CONFUSION, CURVES, PREDICTIONS, TRAIN_LOSS, WEIGHTS


def size_in_pixels(fig) -> tuple[int, int]:
    width, height = fig.get_size_inches() * fig.dpi
    return round(height), round(width)


def test_render_gives_rgb_pixels_of_the_figure_size():
    fig = plots.samples_figure(torch.rand(10, 1, 28, 28), torch.arange(10))
    image = plots.render(fig)
    assert image.dtype == np.uint8
    assert image.shape == (*size_in_pixels(fig), 3)
    assert image.std() > 0
    assert [ax.get_title() for ax in fig.axes] == list(CLASS_NAMES)


def test_predictions_mark_the_wrong_ones():
    labels, predicted = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 5, 3])
    fig = plots.predictions_figure(torch.rand(4, 28, 28), labels, predicted)
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in titled][2] == "pullover\nsandal"
    wrong = [ax.title.get_color() == plots.WRONG for ax in titled]
    assert wrong == [False, False, True, False]


def test_weights_share_one_colour_scale_centred_at_zero():
    templates = torch.randn(10, 784)
    templates[3, 0] = -7.0
    fig = plots.weights_figure(templates)
    limits = {ax.images[0].get_clim() for ax in fig.axes if ax.images}
    assert limits == {(-7.0, 7.0)}


def test_weights_redrawn_in_place_keep_their_layout():
    fig = plots.weights_figure(torch.randn(10, 784))
    plots.render(fig)
    positions = [ax.get_position().bounds for ax in fig.axes]
    templates = torch.randn(10, 784)
    templates[5, 7] = 11.0
    assert plots.weights_figure(templates, fig=fig) is fig
    image = plots.render(fig)
    assert [ax.get_position().bounds for ax in fig.axes] == positions
    shown = [ax.images[0] for ax in fig.axes if ax.images]
    assert {im.get_clim() for im in shown} == {(-11.0, 11.0)}
    assert np.array_equal(shown[5].get_array(), templates[5].reshape(28, 28).numpy())
    assert image.shape == (400, 900, 3)


IMAGES, LABELS = torch.rand(20, 28, 28), torch.randint(0, 10, (20,))
REDRAWN = {  # the figures redrawn in place, with values of a scale: other colour scales, other tick labels
    "weights": lambda scale, fig: plots.weights_figure(torch.randn(10, 784) * scale, fig=fig),
    "confusion": lambda scale, fig: plots.confusion_figure(torch.randint(0, int(scale) + 2, (10, 10)), fig=fig),
    "predictions": lambda scale, fig: plots.predictions_figure(IMAGES, LABELS, torch.randint(0, 10, (20,)), fig),
}


@pytest.mark.parametrize("name", REDRAWN)
def test_a_figure_redrawn_over_its_kept_background_has_the_pixels_of_a_whole_drawing(name):
    draw = REDRAWN[name]
    torch.manual_seed(0)
    fig = draw(1.0, None)
    torch.manual_seed(0)
    whole = draw(1.0, None)
    plots.render(fig)
    FigureCanvasAgg(whole).draw()  # drawn whole each time: no kept background
    for scale in (0.1, 3.0, 400.0):
        torch.manual_seed(int(scale * 10))
        draw(scale, whole).canvas.draw()
        torch.manual_seed(int(scale * 10))
        image = plots.render(draw(scale, fig))
        assert np.array_equal(image, np.asarray(whole.canvas.buffer_rgba())[..., :3])


@pytest.mark.parametrize("name", REDRAWN)
def test_a_figure_redrawn_at_another_size_is_drawn_whole_at_that_size(name):
    fig = REDRAWN[name](1.0, None)
    plots.render(fig)
    fig.set_dpi(fig.dpi * 1.5)
    image = plots.render(REDRAWN[name](2.0, fig))
    assert image.shape == (*np.round(fig.bbox.size[::-1]).astype(int), 3)
    FigureCanvasAgg(fig).draw()
    assert np.array_equal(image, np.asarray(fig.canvas.buffer_rgba())[..., :3])


@pytest.mark.parametrize("name", REDRAWN)
def test_a_figure_redrawn_in_place_is_freed_with_its_last_reference(name):
    """What render keeps of a figure does not keep it alive: a sweep's jobs one after the other would pile them up."""
    fig = REDRAWN[name](1.0, None)
    plots.render(fig)
    plots.render(REDRAWN[name](2.0, fig))
    freed = weakref.ref(fig)
    del fig
    gc.collect()
    assert freed() is None


def test_confusion_shows_counts_rates_and_per_class_accuracy():
    confusion = torch.diag(torch.full((10,), 90)) + 1
    fig = plots.confusion_figure(confusion)
    counts, rates = (ax for ax in fig.axes if ax.images)
    assert counts.images[0].get_array().max() == 91
    assert np.allclose(rates.images[0].get_array().sum(axis=1), 1.0)
    assert counts.get_yticklabels()[0].get_text() == "t-shirt (91%)"


def test_curves_plot_one_line_per_series():
    fig = plots.curves_figure([1, 2, 3], {"train/loss": [0.8, 0.6, 0.5], "val/acc": [0.7, 0.8, 0.81]})
    (ax,) = fig.axes
    assert [line.get_label() for line in ax.lines] == ["train/loss", "val/acc"]
    assert list(ax.lines[1].get_ydata()) == [0.7, 0.8, 0.81]


def test_confusion_and_predictions_redrawn_in_place_show_what_a_fresh_figure_shows():
    first, second = torch.randint(0, 50, (10, 10)), torch.randint(0, 50, (10, 10))
    fig = plots.confusion_figure(first)
    plots.render(fig)
    assert plots.confusion_figure(second, fig=fig) is fig
    fresh = plots.confusion_figure(second)
    for redrawn, drawn in zip(
        (ax for ax in fig.axes if ax.images), (ax for ax in fresh.axes if ax.images), strict=True
    ):
        assert np.array_equal(redrawn.images[0].get_array(), drawn.images[0].get_array())
        assert redrawn.images[0].get_clim() == drawn.images[0].get_clim()
        assert [(t.get_text(), t.get_color()) for t in redrawn.texts] == [
            (t.get_text(), t.get_color()) for t in drawn.texts
        ]
        assert [t.get_text() for t in redrawn.get_yticklabels()] == [t.get_text() for t in drawn.get_yticklabels()]

    images, labels = torch.rand(4, 28, 28), torch.tensor([0, 1, 2, 3])
    fig = plots.predictions_figure(images, labels, labels)
    plots.render(fig)
    plots.predictions_figure(images, labels, torch.tensor([0, 1, 5, 3]), fig=fig)
    fresh = plots.predictions_figure(images, labels, torch.tensor([0, 1, 5, 3]))
    assert [(ax.get_title(), ax.title.get_color()) for ax in fig.axes] == [
        (ax.get_title(), ax.title.get_color()) for ax in fresh.axes
    ]


def test_curves_drawn_anew_on_a_cleared_figure_have_a_fresh_figures_pixels():
    first = {"train loss": [0.9, 0.6, 0.5], "val acc": [0.7, 0.8, 0.82]}
    second = {"train loss": [2.5, 0.4, 0.45], "val acc": [0.1, 0.85, 0.9]}
    fig = plots.curves_figure([1, 2, 3], first)
    plots.render(fig)
    assert plots.curves_figure([1, 2, 3], second, fig=fig) is fig
    assert np.array_equal(plots.render(fig), plots.render(plots.curves_figure([1, 2, 3], second)))


def test_figures_drawn_by_a_painter_process_have_the_pixels_of_those_drawn_here(tmp_path):
    """As a fused sweep draws its members' figures: in processes of their own, while the population trains."""
    here, there = Figures(tmp_path / "here"), Figures(tmp_path / "there")
    with ProcessPoolExecutor(1, multiprocessing.get_context("spawn")) as painter:
        there.painter = painter
        for drawer in (here, there):
            torch.manual_seed(0)
            for epoch in (1, 2):
                drawer.draw_weights([], torch.randn(10, 784), epoch)
            drawer.draw_curves([], [{"epoch": 1, TRAIN_LOSS: 0.6}, {"epoch": 2, TRAIN_LOSS: 0.5}])
            drawer.draw_tested([], torch.randint(0, 90, (10, 10)), (IMAGES, LABELS, torch.randint(0, 10, (20,))), 3)
        flush_figures()
    for name in (WEIGHTS, CURVES, CONFUSION, PREDICTIONS):
        pixels = [np.asarray(Image.open(tmp_path / place / f"{name}.png")) for place in ("here", "there")]
        assert np.array_equal(*pixels), name
