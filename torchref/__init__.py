"""The PyTorch reference: the quickstart tutorial's model and recipe, standalone.

Imports torch and numpy only (never jax or jaxnet), so a tutorial reader recognises it and
the harness can trust it as the reference.
"""

from torchref.data import FashionMNISTDataset, to_tensor, tutorial_loader
from torchref.models.mlp import NeuralNetwork, activations
from torchref.train import (
    evaluate,
    load_optimizer_state,
    loss_and_grads,
    loss_fn,
    make_optimizer,
    make_scheduler,
    optimizer_state,
    test_loop,
    train_loop,
    train_step,
    warmup_cosine_factor,
)

__all__ = [
    "FashionMNISTDataset",
    "NeuralNetwork",
    "activations",
    "evaluate",
    "load_optimizer_state",
    "loss_and_grads",
    "loss_fn",
    "make_optimizer",
    "make_scheduler",
    "optimizer_state",
    "test_loop",
    "to_tensor",
    "train_loop",
    "train_step",
    "tutorial_loader",
    "warmup_cosine_factor",
]
