"""`finetune attention` draws each layer's and head's weights, for every family: a causal
model's maps are empty above the diagonal, an encoder's are not, and an encoder-decoder
gives encoder, decoder and cross-attention grids."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModel

import finetune.models  # noqa: F401  (registers the project's families)
from finetune.attention import CELL_PX, MARGIN_PX, attention_weights
from finetune.config.data import TokenizerTrainConfig
from finetune.data.tokenizer import train_tokenizer
from tests.conftest import run_cli
from tests.models.tiny import decoder_config, encoder_config, seq2seq_config

TEXT = "the cat sat on the mat and the dog ran"
WORDS = ["the cat sat on the mat", "and the dog ran far away", "a bird sang in the tree"]


def _saved(tmp_path: Path, config) -> Path:
    tokenizer = train_tokenizer(WORDS * 20, TokenizerTrainConfig(vocab_size=300))
    torch.manual_seed(0)
    model = AutoModel.from_config(config)
    path = tmp_path / "model"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


SIZES = {"vocab_size": 320, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}


def test_decoder_maps_are_causal_in_the_weights_and_the_png(tmp_path: Path) -> None:
    path = _saved(tmp_path, decoder_config(**SIZES))
    maps, tokens, _ = attention_weights(path, TEXT)
    layers = maps["self"]
    assert len(layers) == 2 and layers[0].shape == (4, len(tokens), len(tokens))
    for weights in layers:
        torch.testing.assert_close(weights.sum(-1), torch.ones(4, len(tokens)))  # softmax rows
        assert torch.all(weights.triu(1) == 0)  # nothing attends to the future
    result = run_cli("attention", str(path), "--text", TEXT, "--out", str(tmp_path / "a.png"))
    assert result.returncode == 0, result.stderr[-2000:]
    image = np.asarray(Image.open(tmp_path / "a.png").convert("L"))
    # the first head of the first layer: above its diagonal is white, the diagonal is not
    scale = CELL_PX // len(tokens)
    tile = image[MARGIN_PX : MARGIN_PX + len(tokens) * scale, MARGIN_PX:][:, : len(tokens) * scale]
    cells = tile[scale // 2 :: scale, scale // 2 :: scale]  # one pixel per (query, key)
    upper = np.triu(np.ones_like(cells, dtype=bool), 1)
    assert (cells[upper] == 255).all()
    assert (cells[~upper] < 255).any() and cells[0, 0] < 255  # token 0 attends to itself


def test_encoder_maps_are_not_causal(tmp_path: Path) -> None:
    path = _saved(tmp_path, encoder_config(**SIZES))
    maps, _, _ = attention_weights(path, TEXT)
    assert list(maps) == ["self"]
    assert torch.all(maps["self"][0].triu(1).sum((-1, -2)) > 0)


def test_seq2seq_writes_encoder_decoder_and_cross_grids(tmp_path: Path) -> None:
    path = _saved(tmp_path, seq2seq_config(**SIZES, decoder_start_token_id=1))
    out = tmp_path / "maps.png"
    result = run_cli(
        "attention", str(path), "--text", TEXT, "--target", "a bird sang", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for kind in ("encoder", "decoder", "cross"):
        png = (tmp_path / f"maps-{kind}.png").read_bytes()
        assert Image.open(BytesIO(png)).format == "PNG"
    maps, source, target = attention_weights(path, TEXT, "a bird sang")
    assert maps["cross"][0].shape[-2:] == (len(target), len(source))


def test_a_directory_without_a_model_is_one_message(tmp_path: Path) -> None:
    result = run_cli("attention", str(tmp_path), "--text", TEXT)
    assert result.returncode != 0
    assert "no model here" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("text", [""])
def test_empty_text_is_refused(tmp_path: Path, text: str) -> None:
    path = _saved(tmp_path, decoder_config(**SIZES))
    result = run_cli("attention", str(path), "--text", text)
    assert result.returncode != 0 and "--text" in result.stderr
