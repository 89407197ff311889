"""Evaluation: MonST3R / Geo4D / DepthCrafter video-depth metrics and evo-style camera metrics (ATE, RPE-T, RPE-R)."""
