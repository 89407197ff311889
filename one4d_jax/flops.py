"""Analytic FLOP counts (2 x multiply-adds of every GEMM; norms, softmax and elementwise work not counted) of the
Wan DiT and of One4D's two-branch forward and training step: what the planner's MFU and the benchmarks'
GFLOP/s are measured against. Text is counted at cfg.text_len tokens (the model attends to all of them).
"""

import math

import jax


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


def lora_flops(cfg, tokens: int, rank: int, clip_tokens: int = 257) -> dict[str, float]:
  """One branch's LoRA updates over all blocks, factored (x A then (x A) B) on the 12 linears of a block: on the
  video tokens, and on the shared context (cross-attention keys and values of text and CLIP tokens)."""
  L, Lt, D, Fd = tokens, cfg.text_len, cfg.dim, cfg.ffn_dim
  Li = clip_tokens if cfg.is_i2v else 0
  lo = lambda m, i, o: gemm(m, i, rank) + gemm(m, rank, o)
  on_tokens = cfg.num_layers * (6 * lo(L, D, D) + lo(L, D, Fd) + lo(L, Fd, D))
  on_context = cfg.num_layers * (2 * lo(Lt, D, D) + 2 * lo(Li, D, D))
  return dict(tokens=on_tokens, context=on_context, total=on_tokens + on_context)


def xyz_projection_flops(cfg, tokens: int) -> dict[str, float]:
  """The XYZ branch's own patch embedding (16 latent channels) and head, run as per-branch terms on both branches
  (zeros on RGB: `lora.Dense`)."""
  patch = math.prod(cfg.patch_size)
  return dict(patch_embed=2 * gemm(tokens, 16 * patch, cfg.dim), head=2 * gemm(tokens, cfg.dim, cfg.out_dim * patch))


def dlc_flops(cfg, tokens: int, rank: int, n_links: int, clip_tokens: int = 257,
              xyz_projections: bool = True) -> dict[str, float]:
  """One4D's forward, batch 1: both branches' latent-dependent work, the shared context once, two LoRA branches,
  2 x n_links control links and the XYZ projections."""
  p = wan_flops(cfg, tokens, clip_tokens)
  lora = 2 * lora_flops(cfg, tokens, rank, clip_tokens)["total"]
  links = n_links * 2 * gemm(tokens, cfg.dim, cfg.dim)
  xyz = sum(xyz_projection_flops(cfg, tokens).values()) if xyz_projections else 0.0
  return dict(branches=2 * p["per_branch"], context=p["context"], lora=lora, links=links, xyz_projections=xyz,
              total=2 * p["per_branch"] + p["context"] + lora + links + xyz)


def dlc_train_flops(cfg, tokens: int, rank: int, n_links: int, clip_tokens: int = 257,
                    xyz_projections: bool = True) -> dict[str, float]:
  """One4D's training step per example: the forward, then the backward. Frozen GEMMs on the token path need only
  input gradients (1x their forward); LoRA factors on the tokens and the links input and weight gradients (2x),
  LoRA factors on the shared context no input gradient (3 GEMMs for 2: 1.5x); the attention products two each per
  forward product (2x); the patch embedding and the context embeddings none; the XYZ head 2x, the XYZ patch
  embedding a weight gradient only (1x). Model FLOPs: rematerialisation is not
  counted (MFU's convention). tests/test_plan.py checks this against the traced program's matmuls."""
  p, f = wan_flops(cfg, tokens, clip_tokens), dlc_flops(cfg, tokens, rank, n_links, clip_tokens, xyz_projections)
  lora = lora_flops(cfg, tokens, rank, clip_tokens)
  xyz = xyz_projection_flops(cfg, tokens)
  backward = (2 * (p["token_gemms"] + p["head"]) + 2 * 2 * p["attention"] + 2 * f["links"]
              + 2 * (2 * lora["tokens"] + 1.5 * lora["context"])
              + ((xyz["patch_embed"] + 2 * xyz["head"]) if xyz_projections else 0.0))
  return dict(forward=f["total"], backward=backward, total=f["total"] + backward)


def jaxpr_dot_flops(closed_jaxpr, loop_trips: bool = True) -> float:
  """2 x multiply-adds of every dot_general in a traced program, nested jaxprs included; a scan's body (lax.scan,
  lax.map) counts `length` times, or once with loop_trips=False (how XLA's cost analysis counts a while loop)."""
  def walk(jaxpr, mult):
    total = 0.0
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "dot_general":
        (lhs_contract, _), _ = eqn.params["dimension_numbers"]
        k = math.prod(eqn.invars[0].aval.shape[i] for i in lhs_contract)
        total += mult * 2.0 * math.prod(eqn.outvars[0].aval.shape) * k
      inner = mult * (eqn.params.get("length", 1) if loop_trips and eqn.primitive.name == "scan" else 1)
      for v in eqn.params.values():
        for sub in (v if isinstance(v, (tuple, list)) else (v,)):
          if isinstance(sub, jax.extend.core.ClosedJaxpr):
            total += walk(sub.jaxpr, inner)
          elif isinstance(sub, jax.extend.core.Jaxpr):
            total += walk(sub, inner)
    return total

  return walk(closed_jaxpr.jaxpr, 1)


def xla_flops(compiled) -> float | None:
  """XLA's own FLOP count of a compiled program (its cost analysis), when the backend gives one."""
  ca = compiled.cost_analysis()
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else None
  return None if not ca else float(ca.get("flops", float("nan")))
