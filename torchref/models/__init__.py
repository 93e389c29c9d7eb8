"""Model families of the PyTorch reference, one file each, mirrored by name in ``jaxnet/models``.

``resnet``: torchvision's BasicBlock ResNet, CIFAR-sized for 28x28 Fashion-MNIST;
``gpt``: a nanoGPT-style character model on ``nn.MultiheadAttention``. Each module imports
torch (and numpy) only; this package imports neither model until asked for.
"""
