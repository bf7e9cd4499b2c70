"""Contrastive alignment: data, loss, heads/towers, loop, evaluation."""
