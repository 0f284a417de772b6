import os

# Without a GPU, the Triton backend runs on CPU tensors through Triton's interpreter; the flag
# must be set before triton is first imported.
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover - torch is a hard dependency
    pass

os.environ.setdefault("ADT_FAST_NO_PROGRESS", "1")

# The test models are tiny: one intra-op thread is faster than two and steadier on a shared box.
torch.set_num_threads(1)
