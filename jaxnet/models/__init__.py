"""Model families of the Flax NNX side, one file each, mirrored by name in ``torchref/models``.

``resnet``: the idiomatic NNX port of torchvision's BasicBlock ResNet (``nnx.Conv``,
``nnx.BatchNorm``, NHWC); ``gpt``: the NNX port of a nanoGPT-style character model on
``nnx.MultiHeadAttention``. Each module holds its model and its hand-written weight mapping
from torch's state dict (numpy arrays in, NNX state out; no torch import). This package
imports neither until asked for, so ``import jaxnet.models`` loads no framework.
"""
