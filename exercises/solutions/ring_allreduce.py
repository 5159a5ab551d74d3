"""Exercise 2, reference solution: a chunked ring all-reduce from send/recv alone."""

import torch


def ring_allreduce(net, t: torch.Tensor) -> None:
    """Sum the 1-D tensor t over the ranks, in place.

    At step s rank r sends chunk (r - s) mod n to its right neighbour and receives chunk (r - s - 1) mod n
    from its left. Steps 0..n-2 (reduce-scatter) add what arrives; afterwards rank r holds the full sum of
    chunk (r + 1) mod n. Steps n-1..2n-3 (all-gather) pass the finished chunks on, overwriting.
    Each step sends one chunk, S/n bytes: 2(n-1)/n * S in all.
    """
    n, r = net.world_size, net.rank
    right, left = (r + 1) % n, (r - 1) % n
    chunks = list(torch.tensor_split(t, n))
    incoming = torch.empty_like(chunks[0])  # the first chunk is the longest
    for s in range(2 * (n - 1)):
        send_c, recv_c = (r - s) % n, (r - s - 1) % n
        buf = incoming[: chunks[recv_c].numel()]
        request = net.irecv(buf, left)  # posted before sending: no two ranks wait on each other
        net.send(chunks[send_c], right)
        request.wait()
        if s < n - 1:
            chunks[recv_c] += buf  # reduce-scatter: add
        else:
            chunks[recv_c].copy_(buf)  # all-gather: overwrite with the finished chunk
