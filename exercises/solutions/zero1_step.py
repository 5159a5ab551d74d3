"""Exercise 5, reference solution: one ZeRO-1 optimizer step (SGD with momentum, state sharded)."""

import torch


def zero1_step(net, params: torch.Tensor, grad: torch.Tensor, momentum_buf: torch.Tensor, lr: float, momentum: float) -> None:
    """Reduce-scatter the gradients, step this rank's shard with SGD + momentum, all-gather the parameters.

    params and grad are flat, of a length divisible by n; momentum_buf is this rank's shard of the momentum
    (1/n of it), kept by the caller from step to step.
    """
    n, r = net.world_size, net.rank
    k = params.numel() // n
    g = torch.empty(k)
    net.reduce_scatter(g, grad)  # g = the sum over ranks of shard r of the gradient
    g /= n  # the full-batch gradient is the average of the ranks' gradients
    momentum_buf.mul_(momentum).add_(g)  # torch.optim.SGD's momentum: buf = momentum * buf + grad
    mine = params[r * k : (r + 1) * k]
    mine -= lr * momentum_buf
    net.all_gather(params, mine.clone())  # a copy: all_gather writes into params while reading its input
