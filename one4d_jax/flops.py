"""Analytic FLOP counts (2 x multiply-adds of every GEMM; norms, softmax and elementwise work not counted) of the
Wan DiT and of One4D's two-branch forward and training step: what the planner's MFU and the benchmarks'
GFLOP/s are measured against. Text is counted at cfg.text_len tokens (the model attends to all of them).
"""

import math


def gemm(m: int, k: int, n: int) -> float:
  """FLOPs of an [m, k] @ [k, n] product."""
  return 2.0 * m * k * n


def wan_flops(cfg, tokens: int, clip_tokens: int = 257) -> dict[str, float]:
  """One plain forward, batch 1, split by what depends on the latent (`per_branch`: token GEMMs and attention) and
  what only on the shared context (`context`: text / CLIP / time embeddings, cross-attention keys and values)."""
  L, Lt, D, Fd = tokens, cfg.text_len, cfg.dim, cfg.ffn_dim
  Li = clip_tokens if cfg.is_i2v else 0
  patch = math.prod(cfg.patch_size)
  n = cfg.num_layers
  token_gemms = n * (6 * gemm(L, D, D) + gemm(L, D, Fd) + gemm(L, Fd, D))  # q k v o, cross q o, FFN
  attention = n * (2 * gemm(L, D, L) + 2 * gemm(L, D, Lt) + 2 * gemm(L, D, Li))  # scores and PV, all heads
  patch_embed, head = gemm(L, cfg.in_dim * patch, D), gemm(L, D, cfg.out_dim * patch)
  context = n * (2 * gemm(Lt, D, D) + 2 * gemm(Li, D, D)) + gemm(Lt, cfg.text_dim, D) + gemm(Lt, D, D) + (
      gemm(1, cfg.freq_dim, D) + gemm(1, D, D) + gemm(1, D, 6 * D))
  if cfg.is_i2v:
    context += gemm(Li, cfg.image_dim, cfg.image_dim) + gemm(Li, cfg.image_dim, D)
  per_branch = token_gemms + attention + patch_embed + head
  return dict(token_gemms=token_gemms, attention=attention, patch_embed=patch_embed, head=head,
              per_branch=per_branch, context=context, total=per_branch + context)


def lora_flops(cfg, tokens: int, rank: int, clip_tokens: int = 257) -> float:
  """One branch's LoRA updates over all blocks, factored (x A then (x A) B) on the 12 linears of a block."""
  L, Lt, D, Fd = tokens, cfg.text_len, cfg.dim, cfg.ffn_dim
  Li = clip_tokens if cfg.is_i2v else 0
  lo = lambda m, i, o: gemm(m, i, rank) + gemm(m, rank, o)
  return cfg.num_layers * (6 * lo(L, D, D) + 2 * lo(Lt, D, D) + 2 * lo(Li, D, D) + lo(L, D, Fd) + lo(L, Fd, D))


def dlc_flops(cfg, tokens: int, rank: int, n_links: int, clip_tokens: int = 257) -> dict[str, float]:
  """One4D's forward, batch 1: both branches' latent-dependent work, the shared context once, two LoRA branches and
  2 x n_links control links."""
  p = wan_flops(cfg, tokens, clip_tokens)
  lora = 2 * lora_flops(cfg, tokens, rank, clip_tokens)
  links = n_links * 2 * gemm(tokens, cfg.dim, cfg.dim)
  return dict(branches=2 * p["per_branch"], context=p["context"], lora=lora, links=links,
              total=2 * p["per_branch"] + p["context"] + lora + links)


def dlc_train_flops(cfg, tokens: int, rank: int, n_links: int, clip_tokens: int = 257) -> dict[str, float]:
  """One4D's training step per example: the forward, then the backward. Frozen GEMMs on the token path need only
  input gradients (1x their forward), the trainable LoRA factors and links input and weight gradients (2x), the
  attention products two each per forward product (2x); the patch embedding and the context need none. Model
  FLOPs: rematerialisation is not counted (MFU's convention)."""
  p, f = wan_flops(cfg, tokens, clip_tokens), dlc_flops(cfg, tokens, rank, n_links, clip_tokens)
  backward = 2 * (p["token_gemms"] + p["head"]) + 2 * 2 * p["attention"] + 2 * (f["lora"] + f["links"])
  return dict(forward=f["total"], backward=backward, total=f["total"] + backward)
