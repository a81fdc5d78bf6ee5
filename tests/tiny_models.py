"""Tiny random diffusion models built at test time, and their pytest fixtures (filled in by the trainer work)."""
