"""The default network's name and input size: facts that its ONNX runtime side
(:mod:`.efficientnet`, no PyTorch) and its PyTorch definition (:mod:`.nets`) both need."""

ARCH = "efficientnet-lite0"
INPUT_SIZE = 224
