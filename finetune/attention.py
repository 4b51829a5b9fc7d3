"""Attention maps: the attention weights of every layer and head for one text, drawn as PNG
grids (one row per layer, one column per head).

The model runs with eager attention, which materializes the weights (`output_attentions`);
SDPA and flash kernels never do. A decoder-only or encoder model gives one grid ("self");
an encoder-decoder gives three: the encoder's self-attention over the text, the decoder's
over the target, and the decoder's cross-attention from the target to the text.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import torch

from finetune.errors import FinetuneError

CELL_PX = 256  # each head's map is drawn at least this wide (whole pixels per token)
MARGIN_PX = 18  # room for the layer/head labels


def attention_weights(
    model_dir: str | Path,
    text: str,
    target: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[dict[str, list[torch.Tensor]], list[str], list[str]]:
    """The attention weights of a saved model on `text`.

    Returns:
        ({kind: one (heads, queries, keys) tensor per layer}, the text's tokens, the
        target's tokens (empty unless the model is an encoder-decoder)). Kinds: "self", or
        "encoder", "decoder" and "cross". An encoder-decoder reads `target` (default: the
        text itself) after its decoder start token.

    Raises:
        FinetuneError: `model_dir` holds no model, or the text is empty.
    """
    model, tokenizer = _load(Path(model_dir), trust_remote_code)
    encoded = tokenizer(text, return_tensors="pt")
    inputs = {key: encoded[key] for key in ("input_ids", "attention_mask") if key in encoded}
    if inputs["input_ids"].shape[1] == 0:
        raise FinetuneError("--text: nothing to read (it tokenizes to no tokens)")
    tokens = tokenizer.convert_ids_to_tokens(inputs["input_ids"][0])
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            start = model.config.decoder_start_token_id
            body = tokenizer(target or text, add_special_tokens=False)["input_ids"]
            decoder_ids = torch.tensor([[start, *body]])
            out = model(**inputs, decoder_input_ids=decoder_ids, output_attentions=True)
            kinds = {
                "encoder": out.encoder_attentions,
                "decoder": out.decoder_attentions,
                "cross": out.cross_attentions,
            }
            return (
                {k: [a[0].float() for a in v] for k, v in kinds.items()},
                tokens,
                tokenizer.convert_ids_to_tokens(decoder_ids[0]),
            )
        out = model(**inputs, output_attentions=True)
    return {"self": [a[0].float() for a in out.attentions]}, tokens, []


def _load(path: Path, trust_remote_code: bool):
    """The model without its head (the attention is the base model's), eager attention."""
    from transformers import AutoModel, AutoTokenizer

    from finetune.evaluate import load_trained, loading_errors

    if (path / "adapter_config.json").is_file() or not (path / "config.json").is_file():
        model, tokenizer = load_trained(path, trust_remote_code)  # an adapter, or refused
    else:
        with loading_errors(path):
            model = AutoModel.from_pretrained(path, trust_remote_code=trust_remote_code)
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    model.set_attn_implementation("eager")
    return model.eval(), tokenizer


def attention_grid_png(layers: list[torch.Tensor]) -> bytes:
    """One layer per row, one head per column; in each map, row i is query token i and
    column j key token j, darker for more weight (scaled to the map's largest weight)."""
    from PIL import Image, ImageDraw

    heads = layers[0].shape[0]
    queries, keys = layers[0].shape[1], layers[0].shape[2]
    scale = max(1, CELL_PX // max(queries, keys))
    width, height = keys * scale, queries * scale
    gap = 4
    image = Image.new(
        "RGB",
        (MARGIN_PX + heads * (width + gap), MARGIN_PX + len(layers) * (height + gap)),
        "white",
    )
    draw = ImageDraw.Draw(image)
    for h in range(heads):
        draw.text((MARGIN_PX + h * (width + gap), 2), f"H{h}", fill="black")
    for layer, weights in enumerate(layers):
        top = MARGIN_PX + layer * (height + gap)
        draw.text((1, top + 2), f"L{layer}", fill="black")
        for head in range(heads):
            tile = weights[head]
            peak = float(tile.max()) or 1.0
            shade = (255 * (1 - tile / peak)).clamp(0, 255).to(torch.uint8)
            # white (no weight) to dark blue (the map's largest weight)
            rgb = torch.stack([shade, shade, (shade.int() // 2 + 128).to(torch.uint8)], -1)
            cell = Image.fromarray(rgb.numpy(), "RGB").resize((width, height), Image.NEAREST)
            image.paste(cell, (MARGIN_PX + head * (width + gap), top))
    buffer = BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_attention_maps(
    model_dir: str | Path,
    text: str,
    out: str | Path,
    target: str | None = None,
    trust_remote_code: bool = False,
) -> list[Path]:
    """Write the attention grids of `model_dir` on `text`: `out` itself for a model with one
    kind of attention, else `out` with `-encoder`, `-decoder`, `-cross` before its suffix.
    Returns the files written."""
    maps, _, _ = attention_weights(model_dir, text, target, trust_remote_code)
    out = Path(out)
    written = []
    for kind, layers in maps.items():
        path = out if kind == "self" else out.with_name(f"{out.stem}-{kind}{out.suffix}")
        path.write_bytes(attention_grid_png(layers))
        written.append(path)
    return written
