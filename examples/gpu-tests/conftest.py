import torch

# Decided at import time, as engine projects do (transformers' testing_utils, vLLM's conftest).
torch_device = "cuda" if torch.cuda.is_available() else "cpu"
