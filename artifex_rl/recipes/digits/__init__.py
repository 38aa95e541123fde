"""Digits recipes: generative models (and their RL fine-tuning) on the UCI handwritten digits."""
