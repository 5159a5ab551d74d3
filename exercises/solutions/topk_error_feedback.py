"""Exercise 6, reference solution: top-k sparsification with error feedback, one rank's side."""

import torch


def topk_error_feedback(grad: torch.Tensor, residual: torch.Tensor, ratio: float):
    """(indices, values, new residual): send the k largest |grad + residual|, keep the rest for later steps."""
    acc = grad + residual  # error feedback: what earlier steps held back joins this step's gradient
    k = max(1, round(ratio * acc.numel()))
    index = acc.abs().topk(k).indices  # largest magnitudes, not largest values
    new_residual = acc.clone()
    new_residual[index] = 0  # what is sent leaves the residual; everything else waits
    return index, acc[index], new_residual
