"""The chapter's numbers on the real Fashion-MNIST (installed by CI from Debian's package)."""

import pytest

from fashion_mnist_softmax.run.training import train

from helpers import needs_real_data

SEED_TEST_ACC = {"scratch": 0.827, "concise": 0.822}


@needs_real_data
def test_d2l_recipe_reproduces_the_chapter(compose_cfg, tmp_path):
    runs = {}
    for impl in ("scratch", "concise"):
        cfg = compose_cfg(
            [
                "experiment=d2l",
                f"impl={impl}",
                f"data.root={tmp_path / 'data'}",
                f"paths.output_dir={tmp_path / impl}",
                "callbacks=none",
                "trainer.accelerator=cpu",
            ]
        )
        runs[impl] = train(cfg)
        assert runs[impl]["test/acc"] == pytest.approx(SEED_TEST_ACC[impl], abs=0.01)
        assert len(runs[impl]["history"]) == 5
        assert runs[impl]["test_ckpt"].endswith("last.ckpt")
    first = runs["scratch"]["history"][0]
    assert first["train/loss"] == pytest.approx(0.7851, abs=0.02)  # the chapter's epoch 1
    for a, b in zip(runs["scratch"]["history"], runs["concise"]["history"], strict=True):
        assert a["train/loss"] == pytest.approx(b["train/loss"], abs=1e-4)
        assert a["val/acc"] == pytest.approx(b["val/acc"], abs=1e-3)
