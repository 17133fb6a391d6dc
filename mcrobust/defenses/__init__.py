"""Baselines that are not plain fine-tuning: the noisy model and Fine-Pruning (pure torch)."""
