"""Entry points: training, generation, evaluation, planning and summaries (one module per command)."""
