"""The umT5 tokenizer as Wan calls it: text cleaning, then ids padded to 512 with truncation and a closing `</s>`.

Wan (wan/modules/tokenizers.py, wan_spec 4.1) runs transformers' tokenizer for google/umt5-xxl with
`padding="max_length", max_length=512, truncation=True, add_special_tokens=True` after `ftfy.fix_text`, a double
`html.unescape` and whitespace collapsing. Here the same ids come without transformers: from the folder's
`tokenizer.json` through the `tokenizers` library (the file transformers itself runs), or, if the folder has only
`spiece.model`, through sentencepiece with transformers' T5Tokenizer conventions (special-token strings in the text are
split out; `<extra_id_i>` sentinels sit after the sentencepiece vocabulary in reverse order).
"""

import dataclasses
import html
import importlib.util
import json
import os
import re
from typing import Callable, Sequence

import ftfy
import numpy as np

TEXT_LEN = 512


def clean(text: str) -> str:
  """Wan's `whitespace_clean(basic_clean(text))`: ftfy repairs, HTML entities unescaped twice, whitespace collapsed.

  Wan collapses with the `regex` module, whose \\s differs from `re`'s only on U+001C-U+001F, which ftfy removes."""
  text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
  return re.sub(r"\s+", " ", text).strip()


def _special_token(config: dict, name: str, default: str) -> str:
  token = config.get(name, default)
  return token["content"] if isinstance(token, dict) else token


@dataclasses.dataclass(frozen=True)
class Tokenizer:
  """`tokenizer(texts)` -> (ids, mask), int32 [B, text_len] each; mask is 1 on the real tokens, `</s>` included."""

  encode_one: Callable[[str], list[int]]  # ids of one cleaned text with `</s>`, truncated to text_len
  pad_id: int
  text_len: int = TEXT_LEN

  def __call__(self, texts: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    texts = [texts] if isinstance(texts, str) else list(texts)
    ids = np.full((len(texts), self.text_len), self.pad_id, np.int32)
    mask = np.zeros((len(texts), self.text_len), np.int32)
    for row, text in enumerate(texts):
      tokens = self.encode_one(clean(text))
      ids[row, :len(tokens)] = tokens
      mask[row, :len(tokens)] = 1
    return ids, mask


def load(folder: str, text_len: int = TEXT_LEN) -> Tokenizer:
  """The tokenizer of a transformers tokenizer folder (e.g. google/umt5-xxl or the `tokenizer/` folder of a diffusers
  Wan pipeline): `tokenizer.json` if present and the `tokenizers` package is installed, else `spiece.model`."""
  config = {}
  if os.path.exists(os.path.join(folder, "tokenizer_config.json")):
    with open(os.path.join(folder, "tokenizer_config.json")) as f:
      config = json.load(f)
  pad, eos = _special_token(config, "pad_token", "<pad>"), _special_token(config, "eos_token", "</s>")
  has_json, has_spm = (os.path.exists(os.path.join(folder, name)) for name in ("tokenizer.json", "spiece.model"))
  if has_json and (importlib.util.find_spec("tokenizers") is not None or not has_spm):
    return _from_tokenizer_json(os.path.join(folder, "tokenizer.json"), pad, text_len)
  if has_spm:
    return _from_sentencepiece(os.path.join(folder, "spiece.model"), pad, eos, config.get("extra_ids", 100), text_len)
  raise FileNotFoundError(f"{folder} has neither tokenizer.json nor spiece.model; point it at the umT5 tokenizer folder "
                          "(google/umt5-xxl, or a Wan checkpoint's google/umt5-xxl/ or tokenizer/ folder)")


def _from_tokenizer_json(path: str, pad: str, text_len: int) -> Tokenizer:
  import tokenizers
  tok = tokenizers.Tokenizer.from_file(path)
  pad_id = tok.token_to_id(pad)
  if pad_id is None:
    raise ValueError(f"{path} has no padding token {pad!r}")
  tok.no_padding()
  tok.enable_truncation(text_len)  # keeps room for the `</s>` the post-processor appends, as transformers does
  return Tokenizer(lambda text: tok.encode(text, add_special_tokens=True).ids, pad_id, text_len)


def _from_sentencepiece(path: str, pad: str, eos: str, extra_ids: int, text_len: int) -> Tokenizer:
  import sentencepiece
  sp = sentencepiece.SentencePieceProcessor(model_file=path)
  n = sp.get_piece_size()
  specials = {piece: sp.piece_to_id(piece) for piece in (pad, eos, "<unk>")}
  specials.update({f"<extra_id_{i}>": n + extra_ids - 1 - i for i in range(extra_ids)})
  missing = [piece for piece in (pad, eos) if sp.id_to_piece(specials[piece]) != piece]
  if missing:
    raise ValueError(f"{path} has no pieces {missing}; a T5 sentencepiece model has <pad>, </s> and <unk>")
  split = re.compile("(" + "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")")

  def encode_one(text: str) -> list[int]:
    ids = []
    for part in split.split(text):
      ids += [specials[part]] if part in specials else sp.encode(part)
    return ids[:text_len - 1] + [specials[eos]]

  return Tokenizer(encode_one, specials[pad], text_len)
